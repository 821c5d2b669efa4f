"""Shared pieces of the benchmarks: throw-away databases, a catalog, amber served over real HTTP, statistics.

Everything a benchmark creates on the PostgreSQL server (databases, amber's per-grant roles, a baseline
role) has a unique name and is removed in `finally` blocks, also when the benchmark fails half-way.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from psycopg import sql

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.clock import Clock
from amber.core.settings import Settings

PG_HOST = "127.0.0.1"
PG_PORT = 5432
GRANTEE_GROUP = "amber_grantees"
TARGET_ENV = "AMBER_BENCH_TARGET_URL"
RESOURCE = "orders-db"
LEVEL = "read-only"

TARGET_SQL = """
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES public.customers(id),
                            total_cents bigint NOT NULL);
INSERT INTO public.customers SELECT g, 'customer ' || g FROM generate_series(1, 100) g;
INSERT INTO public.orders SELECT g, 1 + g % 100, g * 100 FROM generate_series(1, 1000) g;
"""

CATALOG = """
version: 1
identity:
  dev_issuer: true
  admins: [platform]
  auditors: [security]
resources:
  - name: {resource}
    kind: postgres
    environment: production
    owners: [team-orders]
    connection: env:{env}
    grantee_group: {group}
    levels:
      {level}:
        schemas: [public]
        statement_timeout: {statement_timeout}
        connection_limit: {connection_limit}
        max_ttl: 8h
"""

POLICIES = """
@id("oncall-at-once")
@auto_approve
permit (principal in Amber::Group::"oncall", action == Amber::Action::"request", resource)
when {{ principal in Amber::Group::"engineering" }};

@id("engineers-with-approval")
@approvals("1")
@approvers("leads")
permit (principal in Amber::Group::"engineering", action == Amber::Action::"request", resource);
"""


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def admin_url(dbname: str = "postgres") -> str:
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{dbname}"


def pg_admin(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(admin_url(dbname), autocommit=True, connect_timeout=5)


def create_database(prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(5)}"
    with pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    with pg_admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def require_grantee_group() -> None:
    """The benchmarks need the group role and its scram-sha-256 hba rule (scripts/services.sh sets both)."""
    with pg_admin() as conn:
        found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (GRANTEE_GROUP,)).fetchone()
    if found is None:
        raise SystemExit(f"bench: role {GRANTEE_GROUP} is missing; run `make services` (scripts/services.sh)")


def drop_roles(names: Sequence[str], target_db: str | None) -> int:
    """End the sessions of `names`, drop what they own or hold in `target_db`, and drop them."""
    dropped = 0
    if not names:
        return 0
    with pg_admin() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", (list(names),))
    for name in names:
        with contextlib.suppress(psycopg.Error):
            if target_db is not None:
                with pg_admin(target_db) as conn:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with pg_admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
                dropped += 1
    return dropped


def roles_tagged(tag: str) -> list[str]:
    """amber_g_* roles whose comment names this installation id (roles of other installations are left)."""
    with pg_admin() as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'amber_g_')"
            " AND shobj_description(oid, 'pg_authid') LIKE %s ORDER BY 1",
            (f"% owner {tag}",),
        ).fetchall()
    return [row[0] for row in rows]


@dataclass(frozen=True)
class Budget:
    max_connections: int
    superuser_reserved: int
    in_use: int

    def available(self, headroom: int) -> int:
        """Connections a non-superuser can still open, keeping `headroom` for amber and everyone else."""
        return max(0, self.max_connections - self.superuser_reserved - self.in_use - headroom)


def connection_budget() -> Budget:
    with pg_admin() as conn:
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])  # type: ignore[index]
        in_use = int(
            conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]  # type: ignore[index]
        )
    return Budget(max_connections, reserved, in_use)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    """A running amber (uvicorn on loopback, in a thread of this process) and its fresh databases."""

    rt: Runtime
    url: str
    target_db: str
    state: str

    def token(self, user: str, *groups: str) -> str:
        assert self.rt.dev_issuer is not None
        return self.rt.dev_issuer.mint(user, list(groups))


@contextlib.contextmanager
def serve_amber(
    state: str,
    workdir: Path,
    *,
    clock: Clock | None = None,
    worker_interval_s: float = 0.1,
    connection_limit: int = 2,
    statement_timeout: str = "30s",
) -> Iterator[Served]:
    """A fresh target database, a fresh state store (`sqlite` or `postgres`) and amber serving both.

    On exit: uvicorn and the worker stop, every role this installation made is dropped, the databases too.
    """
    if state not in ("sqlite", "postgres"):
        raise ValueError(f"unknown state store {state!r}")
    target_db = create_database("amber_bench_target")
    state_db: str | None = None
    rt: Runtime | None = None
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        with pg_admin(target_db) as conn:
            conn.execute(TARGET_SQL)
        os.environ[TARGET_ENV] = admin_url(target_db)
        if state == "postgres":
            state_db = create_database("amber_bench_state")
            database_url = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{state_db}"
        else:
            database_url = f"sqlite:///{workdir / 'state' / 'amber.db'}"
        catalog = workdir / "amber.yaml"
        (workdir / "policies").mkdir(exist_ok=True)
        (workdir / "policies" / "bench.cedar").write_text(POLICIES.replace("{{", "{").replace("}}", "}"))
        catalog.write_text(
            textwrap.dedent(CATALOG).format(
                resource=RESOURCE,
                env=TARGET_ENV,
                group=GRANTEE_GROUP,
                level=LEVEL,
                statement_timeout=statement_timeout,
                connection_limit=connection_limit,
            )
        )
        port = free_port()
        settings = Settings(
            env="test",
            state_dir=workdir / "state",
            database_url=database_url,
            catalog=catalog,
            host="127.0.0.1",
            port=port,
            worker_interval_s=worker_interval_s,
            log_level="WARNING",
        )
        rt = Runtime.build(settings, clock=clock)
        config = uvicorn.Config(
            create_app(rt, run_worker=True), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="amber-uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError("amber's HTTP server did not start within 15 s")
        yield Served(rt=rt, url=f"http://127.0.0.1:{port}", target_db=target_db, state=state)
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(15)
        if rt is not None:
            with _warn_on_error("closing amber"):
                rt.close()
            with _warn_on_error("dropping amber's roles"):
                drop_roles(roles_tagged(rt.installation_id), target_db)
        with _warn_on_error(f"dropping database {target_db}"):
            drop_database(target_db)
        if state_db is not None:
            with _warn_on_error(f"dropping database {state_db}"):
                drop_database(state_db)


@contextlib.contextmanager
def _warn_on_error(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - cleanup goes on with its next step; the failure is reported
        print(f"bench: warning: {what} failed: {exc}")


# -- statistics ----------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (p99 of 200 values is the 198th smallest); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max and mean in milliseconds (None when there are no values)."""
    ms = [s * 1000 for s in seconds]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "n": len(ms),
        "p50_ms": rounded(percentile(ms, 50)),
        "p90_ms": rounded(percentile(ms, 90)),
        "p99_ms": rounded(percentile(ms, 99)),
        "max_ms": rounded(max(ms)) if ms else None,
        "mean_ms": rounded(sum(ms) / len(ms)) if ms else None,
    }


def describe(label: str, stats: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        value = stats[key]
        return "       -" if value is None else f"{value:8.2f}"

    return (
        f"{label:<34} n={stats['n']:<4} p50 {ms('p50_ms')} ms   p90 {ms('p90_ms')} ms   "
        f"p99 {ms('p99_ms')} ms   max {ms('max_ms')} ms"
    )


@dataclass
class BenchGateway:
    """amber's gateway running on a caller's event loop, and one live gateway grant on a database."""

    rt: Runtime
    grant_id: str
    password: str
    port: int


@contextlib.contextmanager
def gateway_grant(db: str, work: Path, loop: Any, *, connection_limit: int = 20) -> Iterator[BenchGateway]:
    """A runtime (SQLite state in `work`) whose gateway runs on `loop` (already running in a thread), with an
    auto-approved gateway grant on database `db`. On exit: the gateway stops, the grant's roles are dropped."""
    import asyncio
    from datetime import timedelta

    from amber.identity import Principal

    (work / "policies").mkdir(exist_ok=True)
    (work / "policies" / "bench.cedar").write_text(
        '@id("bench")\n@auto_approve\npermit (principal, action == Amber::Action::"request", resource);\n'
    )
    (work / "amber.yaml").write_text(
        textwrap.dedent(f"""
        version: 1
        identity: {{dev_issuer: true}}
        resources:
          - name: bench
            kind: postgres
            connection: env:AMBER_BENCH_DB
            grantee_group: {GRANTEE_GROUP}
            levels:
              read-only: {{schemas: [public], connection_limit: {connection_limit}, via: gateway, max_ttl: 1h}}
        """)
    )
    os.environ["AMBER_BENCH_DB"] = admin_url(db)
    rt = Runtime.build(Settings(env="test", state_dir=work / "state", catalog=work / "amber.yaml", gateway_port=0))
    try:
        asyncio.run_coroutine_threadsafe(rt.start_gateway(), loop).result(10)
        assert rt.gateway is not None
        who = Principal("https://bench", "bench", "bench", frozenset({"bench"}))
        outcome = rt.requests.submit(
            who, resource="bench", level="read-only", reason="benchmark", ttl=timedelta(minutes=30)
        )
        activation = outcome.activation
        if activation is None or activation.password is None:
            raise RuntimeError(f"no credential: {activation}")
        yield BenchGateway(rt, activation.grant.id, activation.password, rt.gateway.server.port)
    finally:
        if rt.gateway is not None:
            with _warn_on_error("stopping the gateway"):
                asyncio.run_coroutine_threadsafe(rt.gateway.stop(), loop).result(30)
        with _warn_on_error("dropping amber's roles"):
            drop_roles(roles_tagged(rt.installation_id), db)
        rt.close()
