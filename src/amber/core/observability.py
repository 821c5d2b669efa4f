"""Logging set-up and Prometheus metrics. One registry per running amber (tests build many)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "amber_requests_total", "Access requests by decision outcome", ["outcome"], registry=self.registry
        )
        self.grants_ended = Counter("amber_grants_ended_total", "Grants ended, by how", ["how"], registry=self.registry)
        self.provision_seconds = Histogram(
            "amber_provision_seconds",
            "Time to provision a grant on its target",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.provision_failures = Counter(
            "amber_provision_failures_total",
            "Failed provisioner calls",
            ["kind", "operation"],
            registry=self.registry,
        )
        self.revocation_lag = Histogram(
            "amber_revocation_lag_seconds",
            "From a grant's expiry to its sessions being ended",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60),
            registry=self.registry,
        )
        self.foreign_roles = Gauge(
            "amber_foreign_roles",
            "amber_g_* roles on targets that amber does not own",
            registry=self.registry,
        )
        self.orphans_dropped = Counter(
            "amber_orphan_roles_dropped_total",
            "Roles dropped by the reconciler because no live grant owns them",
            registry=self.registry,
        )
        self.worker_ticks = Counter("amber_worker_ticks_total", "Worker loop iterations", registry=self.registry)
        self.worker_errors = Counter(
            "amber_worker_errors_total", "Worker loop iterations that failed", registry=self.registry
        )


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
