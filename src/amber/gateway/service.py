"""Wiring the gateway into a running amber: the server, its authenticator, recorder and upstream schemas."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from amber.catalog.schema import PostgresLevel
from amber.core.clock import Clock
from amber.core.db import UnitOfWork
from amber.core.errors import ConfigError
from amber.core.settings import PRODUCTION_HINT
from amber.gateway.auth import GrantAuthenticator
from amber.gateway.recording import LedgerRecorder
from amber.gateway.schema_info import UpstreamSchema
from amber.gateway.server import GatewayServer
from amber.gateway.statements import Masked
from amber.gateway.tls import (
    UpstreamTls,
    self_signed,
    server_context,
    signs_itself,
    tls_server_end_point,
    upstream_tls,
)
from amber.gateway.watch import GrantWatcher, ended_grants

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        secret_key: bytes,
        admin_dsn: Callable[[str], str],
        masked_for: Callable[[str, str], Masked] | None = None,
        level_for: Callable[[str, str], PostgresLevel] | None = None,
        recorder_database_url: str | None = None,
        host: str,
        port: int,
        state_dir: Path,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        watch_interval_s: float = 0.5,
        schema_poll_s: float = 1.0,
        refuse_self_signed: bool = False,
        max_pending_logins: int = 256,
        max_pending_logins_per_source: int = 32,
        login_timeout_s: float = 60.0,
    ) -> None:
        if refuse_self_signed and (tls_cert is None or tls_key is None):
            raise ConfigError(
                "AMBER_ENV=production: the gateway needs a certificate clients can verify (AMBER_GATEWAY_TLS_CERT and "
                "AMBER_GATEWAY_TLS_KEY); set AMBER_GATEWAY_ALLOW_SELF_SIGNED=true to run it with a self-signed one "
                + PRODUCTION_HINT
            )
        if tls_cert is None or tls_key is None:
            tls_cert, tls_key = self_signed(state_dir)
        if refuse_self_signed and signs_itself(tls_cert.read_bytes()):
            raise ConfigError(
                f"AMBER_ENV=production: the gateway certificate {tls_cert} is self-signed, so clients cannot verify "
                "it; use one from your CA, or set AMBER_GATEWAY_ALLOW_SELF_SIGNED=true if clients pin it"
            )
        self._uow = uow
        self.authenticator = GrantAuthenticator(uow, clock, secret_key, masked_for, level_for)
        self.recorder = LedgerRecorder(uow, clock, database_url=recorder_database_url)
        self._admin_dsn = admin_dsn
        self._schemas: dict[str, UpstreamSchema] = {}
        self._upstream_tls: dict[str, UpstreamTls] = {}
        # How often each upstream's catalogs are compared with what the judge's cache was filled from.
        self.schema_poll_s = schema_poll_s
        self._schema_watch: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self.server = GatewayServer(
            authenticator=self.authenticator,
            recorder=self.recorder,
            schema_for=self.schema_for,
            clock=clock,
            tls=server_context(tls_cert, tls_key),
            host=host,
            port=port,
            channel_binding=tls_server_end_point(tls_cert.read_bytes()),
            upstream_tls=self.upstream_tls_for,
            max_pending_logins=max_pending_logins,
            max_pending_logins_per_source=max_pending_logins_per_source,
            login_timeout_s=login_timeout_s,
        )

        self.watcher = GrantWatcher(
            uow,
            lambda: [gid for gid, sessions in self.server.sessions.items() if sessions],
            self.grant_ended,
            interval_s=watch_interval_s,
            on_token=self.server.cut_old_tokens,
        )

        self.server.explain_end = self.why_ended

    async def why_ended(self, grant_id: str) -> str | None:
        """None while the grant is live; otherwise why it ended (this process's knowledge, then the database)."""
        reason = self.authenticator.still_live(grant_id)
        if reason is not None:
            return reason
        return (await asyncio.to_thread(ended_grants, self._uow, [grant_id])).get(grant_id)

    def upstream_tls_for(self, resource: str) -> UpstreamTls:
        """The TLS the resource's catalog connection asks for, with its context made once per connection string."""
        dsn = self._admin_dsn(resource)
        with self._lock:
            tls = self._upstream_tls.get(dsn)
            if tls is None:
                tls = self._upstream_tls[dsn] = upstream_tls(dsn)
            return tls

    def schema_for(self, resource: str) -> UpstreamSchema:
        with self._lock:
            schema = self._schemas.get(resource)
            if schema is None:
                schema = self._schemas[resource] = UpstreamSchema(self._admin_dsn(resource))
            return schema

    def refresh_schemas(self) -> None:
        """Ask every upstream whether its catalogs changed (blocking; the schema watcher runs it in a thread)."""
        with self._lock:
            schemas = list(self._schemas.values())
        for schema in schemas:
            try:
                schema.check_generation()
            except Exception:
                log.warning("gateway: could not check whether an upstream's catalogs changed", exc_info=True)

    async def _watch_schemas(self) -> None:
        while True:
            await asyncio.sleep(self.schema_poll_s)
            await asyncio.to_thread(self.refresh_schemas)

    async def start(self) -> None:
        # NOTE: the collector's full passes hold the GIL, so the gateway's loop waits for them wherever they run;
        # with the objects made at start-up frozen out of them and young generations collected less often, a
        # statement that makes a huge syntax tree no longer stalls every session for a tenth of a second
        # (bench/gateway_abuse.py). Process-wide: it applies to the API in the same process too.
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        self.recorder.start()
        await self.server.start()
        self.watcher.start()
        self._schema_watch = asyncio.get_running_loop().create_task(self._watch_schemas())

    async def stop(self) -> None:
        if self._schema_watch is not None:
            self._schema_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._schema_watch
        await self.watcher.stop()
        await self.server.stop()
        await self.recorder.stop()
        with self._lock:
            for schema in self._schemas.values():
                schema.close()
            self._schemas.clear()

    def grant_ended(self, grant_id: str, reason: str) -> None:
        """Called by GrantService (from any thread) when a grant ends: refuse its statements, cut its sessions."""
        self.authenticator.mark_ended(grant_id, reason)
        self.server.cut(grant_id, reason)
