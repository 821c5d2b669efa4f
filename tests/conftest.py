"""Shared fixtures: real PostgreSQL targets, both state stores, a runtime on a frozen clock, API clients.

Every test that touches amber's state runs twice: on SQLite and on PostgreSQL (`state_url`). Target
databases and state databases get unique names and are dropped afterwards; so are the roles amber created.
"""

from __future__ import annotations

import os
import secrets
import socket
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.clock import FrozenClock
from amber.core.settings import Settings

# amber assumes production when AMBER_ENV is unset. Tests say where they run: `test` for every Settings() read
# from the environment and every `amber` command they start (subprocesses inherit it); tests of production's
# refusals pass env="production" or AMBER_ENV=production themselves.
os.environ["AMBER_ENV"] = "test"

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_SQL = """
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES public.customers(id),
                            total_cents bigint NOT NULL);
CREATE SEQUENCE public.order_ids;
CREATE SCHEMA secret;
CREATE TABLE secret.api_keys (id int PRIMARY KEY, key text NOT NULL);
INSERT INTO public.customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO public.orders SELECT g, 1 + g % 10, g * 100 FROM generate_series(1, 50) g;
INSERT INTO secret.api_keys VALUES (1, 'do-not-read');
"""


def pg_admin(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{dbname}", autocommit=True)


def create_database(prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(5)}"
    with pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    with pg_admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_roles_tagged(tag: str, target_db: str) -> None:
    """Drop every amber_g_* role whose comment carries this installation id (what a test left behind)."""
    with pg_admin(target_db) as conn:
        rows = conn.execute(
            "SELECT r.rolname FROM pg_roles r WHERE starts_with(r.rolname, 'amber_g_') "
            "AND shobj_description(r.oid, 'pg_authid') LIKE %s",
            (f"%{tag}%",),
        ).fetchall()
        for (role,) in rows:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    if rows:
        drop_cut_jobs([role for (role,) in rows])


def drop_cut_jobs(roles: list[str]) -> None:
    """Unschedule the pg_cron expiry cuts (`amber-cut:<role>:<grant>`, database postgres) of these roles."""
    with pg_admin() as conn:
        conn.execute(
            "WITH mine AS MATERIALIZED (SELECT jobid FROM cron.job WHERE starts_with(jobname, 'amber-cut:')"
            " AND split_part(jobname, ':', 2) = ANY(%s)) SELECT cron.unschedule(jobid) FROM mine",
            (roles,),
        )


@pytest.fixture(scope="session")
def target_db() -> Iterator[str]:
    """One target database (the 'production' resource) for the session, with tables in two schemas."""
    name = create_database("amber_target")
    with pg_admin(name) as conn:
        conn.execute(TARGET_SQL)
    yield name
    drop_database(name)


@pytest.fixture
def target_url(target_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"postgresql://postgres@127.0.0.1:5432/{target_db}"
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    name = create_database("amber_state")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    drop_database(name)


CATALOG = """
version: 1
identity:
  dev_issuer: true
  admins: [platform]
  auditors: [security]
policy:
  bundle: policies
  security_groups: [security]
resources:
  - name: orders-db
    kind: postgres
    environment: production
    owners: [team-orders]
    connection: env:AMBER_TEST_TARGET_URL
    grantee_group: amber_grantees
    levels:
      read-only:
        schemas: [public]
        statement_timeout: 5s
        connection_limit: 3
        max_ttl: 8h
      two-approvals:
        schemas: [public]
        max_ttl: 1h
      gateway:
        schemas: [public]
        max_ttl: 8h
        via: gateway
      masked:
        schemas: [public]
        max_ttl: 8h
        via: gateway
        masked_columns:
          public.customers: [name]
"""

POLICIES = """
@id("engineers-read-only")
@approvals("1")
@approvers("leads, owners")
permit (principal in Amber::Group::"engineering", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only");

@id("oncall-at-once")
@auto_approve
permit (principal in Amber::Group::"oncall", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only")
when { principal in Amber::Group::"engineering" };

@id("two-leads")
@approvals("2")
@approvers("leads")
permit (principal, action == Amber::Action::"request", resource == Amber::Level::"orders-db/two-approvals");

@id("oncall-through-the-gateway")
@auto_approve
permit (principal in Amber::Group::"oncall", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/gateway");

@id("oncall-masked-through-the-gateway")
@auto_approve
permit (principal in Amber::Group::"oncall", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/masked");

@id("approvers-approve")
permit (principal, action == Amber::Action::"approve", resource);
"""


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "amber.yaml"
    path.write_text(textwrap.dedent(CATALOG))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    return path


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@dataclass
class Amber:
    """A running amber (without its background worker) plus what tests need to drive it."""

    rt: Runtime
    api: TestClient
    clock: FrozenClock
    target_db: str
    target_url: str

    def token(self, user: str, *groups: str) -> str:
        assert self.rt.dev_issuer is not None
        return self.rt.dev_issuer.mint(user, list(groups))

    def headers(self, user: str, *groups: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(user, *groups)}"}

    def request(
        self,
        user: str,
        *groups: str,
        level: str = "read-only",
        duration: str = "30m",
        reason: str = "investigating INC-42",
    ) -> dict[str, Any]:
        response = self.api.post(
            "/v1/requests",
            headers=self.headers(user, *groups),
            json={"resource": "orders-db", "level": level, "reason": reason, "duration": duration},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def tick(self) -> list[str]:
        return self.rt.worker.run_once(reconcile=True)

    def role_exists(self, role: str) -> bool:
        with pg_admin() as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def build_runtime(state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock, **overrides: Any) -> Runtime:
    settings = Settings(
        env="test",
        state_dir=tmp_path / "state",
        database_url=state_url,
        catalog=catalog_path,
        public_url="http://amber.test",
        **overrides,
    )
    return Runtime.build(settings, clock=clock)


@pytest.fixture
def amber(
    state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock, target_db: str, target_url: str
) -> Iterator[Amber]:
    rt = build_runtime(state_url, catalog_path, tmp_path, clock)
    try:
        with TestClient(create_app(rt, run_worker=False), raise_server_exceptions=False) as api:
            yield Amber(rt=rt, api=api, clock=clock, target_db=target_db, target_url=target_url)
    finally:
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def connect_as(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def later(clock: FrozenClock, **kwargs: float) -> datetime:
    return clock.advance(timedelta(**kwargs))
