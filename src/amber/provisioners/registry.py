"""Builds and caches one provisioner per catalog resource."""

from __future__ import annotations

import threading
from collections.abc import Callable

from amber.provisioners.base import Provisioner, ProvisionerError


class ProvisionerRegistry:
    """Provisioners keyed by resource name, rebuilt when the resource's definition changes.

    `describe(name)` returns (kind, admin dsn, grantee group, definition fingerprint) from the current catalog;
    the DSN is a secret and never leaves this object except into the provisioner.
    """

    def __init__(self, describe: Callable[[str], tuple[str, str, str | None, str]]) -> None:
        self._describe = describe
        self._cache: dict[str, tuple[str, Provisioner]] = {}
        self._lock = threading.Lock()

    def __call__(self, resource: str) -> Provisioner:
        kind, dsn, grantee_group, fingerprint = self._describe(resource)
        with self._lock:
            cached = self._cache.get(resource)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            if cached is not None:
                cached[1].close()
            provisioner = build(kind, dsn, grantee_group)
            self._cache[resource] = (fingerprint, provisioner)
            return provisioner

    def close(self) -> None:
        with self._lock:
            for _, provisioner in self._cache.values():
                provisioner.close()
            self._cache.clear()


def build(kind: str, dsn: str, grantee_group: str | None) -> Provisioner:
    if kind == "postgres":
        from amber.provisioners.postgres import PostgresProvisioner  # noqa: PLC0415 - driver loaded on first use

        return PostgresProvisioner(dsn, grantee_group=grantee_group)
    raise ProvisionerError(f"no provisioner for resource kind {kind!r}")
