"""Fixtures for provisioner tests: a throwaway database on the real local PostgreSQL, and cleanup of roles.

Each test gets its own database `amber_t_<hex>` (from template1, dropped WITH (FORCE) afterwards) holding:
- schema `app`: table `orders` (2 rows), sequence `order_ids`, view `order_items`  (the schema tests grant);
- schema `vault`: table `keys` (1 row)                                               (never granted);
- table `public.notes`.
Roles are cluster-wide, so every role a test makes is registered and dropped at teardown.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from amber.provisioners.base import ROLE_PREFIX, GrantSpec
from amber.provisioners.postgres import PostgresProvisioner

SERVER_URL = os.environ.get("AMBER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GRANTEE_GROUP = "amber_grantees"  # created, with a scram-sha-256 pg_hba rule, by scripts/services.sh
OWNER_TAG = "inst_test"

_SEED = """
CREATE SCHEMA app;
CREATE TABLE app.orders (id int PRIMARY KEY, item text NOT NULL);
INSERT INTO app.orders VALUES (1, 'apple'), (2, 'pear');
CREATE SEQUENCE app.order_ids;
CREATE VIEW app.order_items AS SELECT item FROM app.orders;
CREATE SCHEMA vault;
CREATE TABLE vault.keys (k text);
INSERT INTO vault.keys VALUES ('top secret');
CREATE TABLE public.notes (n text);
"""


def drop_cut_jobs(server: psycopg.Connection[tuple[object, ...]], roles: list[str]) -> None:
    """Unschedule the pg_cron expiry cuts (`amber-cut:<role>:<grant>`) of these roles, whoever owns them."""
    server.execute(
        "WITH mine AS MATERIALIZED (SELECT jobid FROM cron.job WHERE starts_with(jobname, 'amber-cut:')"
        " AND split_part(jobname, ':', 2) = ANY(%s)) SELECT cron.unschedule(jobid) FROM mine",
        [roles],
    )


def _server_params() -> dict[str, object]:
    return dict(psycopg.conninfo.conninfo_to_dict(SERVER_URL))


def admin_connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(SERVER_URL, dbname=dbname, autocommit=True, connect_timeout=5)


@dataclass
class TargetDb:
    """One throwaway database and the roles a test made on the cluster."""

    name: str
    host: str
    port: int
    roles: list[str] = field(default_factory=list)

    @property
    def admin_dsn(self) -> str:
        return psycopg.conninfo.make_conninfo(SERVER_URL, dbname=self.name)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return admin_connect(self.name)

    def new_role_name(self) -> str:
        name = f"{ROLE_PREFIX}t{secrets.token_hex(6)}"
        self.roles.append(name)
        return name

    def spec(
        self,
        *,
        schemas: tuple[str, ...] = ("app",),
        expires_in: timedelta = timedelta(hours=1),
        statement_timeout: timedelta = timedelta(seconds=30),
        connection_limit: int = 3,
        role_name: str | None = None,
        grant_id: str | None = None,
    ) -> GrantSpec:
        return GrantSpec(
            grant_id=grant_id or f"grt_{secrets.token_hex(12)}",
            role_name=role_name or self.new_role_name(),
            owner_tag=OWNER_TAG,
            expires_at=datetime.now(UTC) + expires_in,
            schemas=schemas,
            statement_timeout=statement_timeout,
            connection_limit=connection_limit,
        )

    def connect_as(self, user: str, password: str | None) -> psycopg.Connection[tuple[object, ...]]:
        """A session as `user` over TCP on loopback, where pg_hba asks +amber_grantees for a password."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=self.name,
            user=user,
            password=password or "",
            autocommit=True,
            connect_timeout=5,
        )


@pytest.fixture
def target_db() -> Iterator[TargetDb]:
    params = _server_params()
    server_db = str(params.get("dbname") or "postgres")
    name = f"amber_t_{secrets.token_hex(6)}"
    try:
        with admin_connect(server_db) as server:
            server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {SERVER_URL} (run `bash scripts/services.sh`): {exc}")
    target = TargetDb(name=name, host=str(params.get("host") or "127.0.0.1"), port=int(params.get("port") or 5432))
    try:
        with target.admin() as conn:
            conn.execute(_SEED)
        yield target
    finally:
        # A fresh connection: the test may have ended sessions, including one opened here before it.
        with admin_connect(server_db) as server:
            server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if target.roles:
                drop_cut_jobs(server, target.roles)
                server.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                    [target.roles],
                )
                for role in target.roles:
                    server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def provisioner(target_db: TargetDb) -> Iterator[PostgresProvisioner]:
    with PostgresProvisioner(target_db.admin_dsn, grantee_group=GRANTEE_GROUP) as provisioner:
        yield provisioner
