"""Ordinary reads of real clients through the gateway, each with the real program or library: psql's meta-commands,
pg_dump (schema, data, custom and parallel directory formats), psycopg 3 and psycopg2 (read-only sessions,
autocommit toggles, server-side cursors), SQLAlchemy (read-only and isolation execution options), asyncpg pools
(their connection reset), JDBC (read-only, isolation, schema, DatabaseMetaData), and catalog and monitoring reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import psycopg2
import pytest
import sqlalchemy as sa
from psycopg_pool import ConnectionPool

from tests.conftest import Amber, connect_as, create_database, drop_database
from tests.gateway.conftest import gateway_credential

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
HERE = Path(__file__).parent

# Objects real tools describe: a partitioned table, a view, comments, an index (created before the grant, so the
# level's role gets SELECT on them).
SETUP = """
CREATE TABLE IF NOT EXISTS public.events (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE IF NOT EXISTS public.events_2026 PARTITION OF public.events
  FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE OR REPLACE VIEW public.big_orders AS SELECT id, total_cents FROM public.orders WHERE total_cents > 2500;
CREATE INDEX IF NOT EXISTS orders_customer ON public.orders (customer_id);
COMMENT ON TABLE public.orders IS 'one row per order';
COMMENT ON COLUMN public.orders.total_cents IS 'in cents';
"""


@pytest.fixture
def cred(gw: Amber) -> dict[str, Any]:
    with connect_as(gw.target_url) as admin:
        admin.execute(SETUP)
    return gateway_credential(gw)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


# -- psql ----------------------------------------------------------------------------------------------------


def test_psql_meta_commands(cred: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "orders.csv"
    script = tmp_path / "script.sql"
    script.write_text(
        "\n".join(
            [
                r"\d",
                r"\d+ public.orders",
                r"\d+ public.events",
                r"\d public.order_ids",
                r"\dt",
                r"\dt+",
                r"\dn",
                r"\df",
                r"\dv",
                r"\di+",
                r"\ds",
                r"\l",
                r"\x",
                r"\timing",
                "SELECT count(*) AS n FROM public.orders;",
                f"\\copy (SELECT id, total_cents FROM public.orders ORDER BY id) to '{out}' csv",
            ]
        )
        + "\n"
    )
    result = run(["psql", cred["url"], "-X", "-v", "ON_ERROR_STOP=1", "-f", str(script)])
    assert result.returncode == 0, result.stderr
    assert "amber refused" not in result.stderr
    for expected in (
        "orders_customer",  # \d+ public.orders: its index
        "one row per order",  # its comment
        "Partition key: RANGE (at)",  # \d+ public.events
        "events_2026",
        "big_orders",  # \dv
        "Expanded display is on.",
        "Timing is on.",
        "n | 50",  # the count, in expanded display
        "COPY 50",
    ):
        assert expected in result.stdout, expected
    assert out.read_text().splitlines()[:2] == ["1,100", "2,200"]


def test_psql_shows_what_amber_did_with_a_timeout(cred: dict[str, Any]) -> None:
    result = run(["psql", cred["url"], "-X", "-At", "-c", "SET statement_timeout = 0", "-c", "SHOW statement_timeout"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["SET", "30s"]
    assert "NOTICE:  amber keeps this level's limit: statement_timeout is 30000ms" in result.stderr


def test_psycopg_hears_the_notice_over_the_extended_protocol(cred: dict[str, Any]) -> None:
    notices: list[str] = []
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.add_notice_handler(lambda diagnostic: notices.append(str(diagnostic.message_primary)))
        cursor = conn.execute("SET statement_timeout = '2h'")  # Parse, Bind, Execute, Sync
        assert cursor.statusmessage == "SET"
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        with conn.transaction():  # psycopg's BEGIN; then one the client asks READ WRITE
            pass
        conn.execute("BEGIN READ WRITE")
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        conn.execute("ROLLBACK")
    assert notices == [
        "amber keeps this level's limit: statement_timeout is 30000ms (asked for 2h; 0 means none)",
        "amber keeps this transaction read only (asked for READ WRITE); amber grants read-only access",
    ]


# -- pg_dump -------------------------------------------------------------------------------------------------


def test_pg_dump_schema_only_and_data_only_restore_to_the_same_data(cred: dict[str, Any], tmp_path: Path) -> None:
    schema, data = tmp_path / "schema.sql", tmp_path / "data.sql"
    for flag, path in (("--schema-only", schema), ("--data-only", data)):
        result = run(["pg_dump", "-d", cred["url"], "-n", "public", flag, "-f", str(path)])
        assert result.returncode == 0, result.stderr
    assert "CREATE TABLE public.orders" in schema.read_text()
    assert "CREATE VIEW public.big_orders" in schema.read_text()
    assert "SELECT pg_catalog.setval('public.order_ids'" in data.read_text()  # reads the sequence
    copy = create_database("amber_restore")
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{copy}"
        with connect_as(url) as conn:
            conn.execute("DROP SCHEMA public")  # the dump creates it
        for path in (schema, data):
            restored = run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)])
            assert restored.returncode == 0, restored.stderr
        with connect_as(url) as conn:
            assert conn.execute("SELECT count(*), sum(total_cents) FROM public.orders").fetchone() == (50, 127500)
    finally:
        drop_database(copy)


def test_pg_dump_custom_and_parallel_directory_formats(cred: dict[str, Any], tmp_path: Path) -> None:
    custom = run(["pg_dump", "-d", cred["url"], "-n", "public", "-Fc", "-f", str(tmp_path / "all.dump")])
    assert custom.returncode == 0, custom.stderr
    listed = run(["pg_restore", "--list", str(tmp_path / "all.dump")])
    assert "TABLE DATA public orders" in listed.stdout
    # -j 2: a leader exports its snapshot (pg_export_snapshot) and two workers import it (SET TRANSACTION SNAPSHOT)
    parallel = run(["pg_dump", "-d", cred["url"], "-n", "public", "-Fd", "-j", "2", "-f", str(tmp_path / "dir")])
    assert parallel.returncode == 0, parallel.stderr
    assert (tmp_path / "dir" / "toc.dat").exists()


@pytest.mark.parametrize(
    "options",
    [
        ["--inserts"],  # reads through a cursor (DECLARE, FETCH)
        ["--column-inserts", "-t", "public.orders"],
        ["--serializable-deferrable"],  # BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE
        ["--lock-wait-timeout=5s"],  # a statement_timeout below the limit around its LOCKs
        ["--no-owner", "--no-privileges", "-Ft"],
        ["--load-via-partition-root", "--exclude-table=public.big_orders"],
    ],
)
def test_pg_dump_options(cred: dict[str, Any], tmp_path: Path, options: list[str]) -> None:
    result = run(["pg_dump", "-d", cred["url"], "-n", "public", *options, "-f", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").stat().st_size > 0


# -- psycopg 3 and psycopg2 ----------------------------------------------------------------------------------


def test_psycopg_read_only_autocommit_toggles_and_server_side_cursors(cred: dict[str, Any]) -> None:
    with psycopg.connect(cred["url"]) as conn:
        conn.read_only = True
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        conn.commit()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
        conn.autocommit = True
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
        conn.autocommit = False
        with conn.cursor(name="orders_cursor") as cur:  # DECLARE ... CURSOR, FETCH, CLOSE
            cur.execute("SELECT id FROM public.orders ORDER BY id")
            assert [row[0] for row in cur.fetchmany(3)] == [1, 2, 3]
            assert len(cur.fetchall()) == 47
        conn.commit()
        with conn.cursor(name="held", withhold=True) as cur:
            cur.execute("SELECT id FROM public.orders ORDER BY id")
            conn.commit()
            assert cur.fetchone() == (1,)
        conn.read_only = False  # psycopg now begins READ WRITE: amber keeps the transaction read only
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="amber refused"):
            conn.execute("DELETE FROM public.orders")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)


def test_psycopg2_set_session_readonly_autocommit_and_named_cursors(cred: dict[str, Any]) -> None:
    conn = psycopg2.connect(cred["url"])
    try:
        conn.set_session(readonly=True, isolation_level="REPEATABLE READ", deferrable=True)
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('transaction_read_only'), current_setting('transaction_isolation')")
            assert cur.fetchone() == ("on", "repeatable read")
        conn.commit()
        conn.autocommit = True  # psycopg2 now sets default_transaction_* for the session
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM public.customers")
            assert cur.fetchone() == (10,)
        conn.autocommit = False
        conn.set_session(readonly=False)  # BEGIN READ WRITE: kept read only
        with conn.cursor("named") as cur:
            cur.execute("SELECT id FROM public.orders ORDER BY id")
            assert [row[0] for row in cur.fetchmany(2)] == [1, 2]
        conn.commit()
        conn.set_session(readonly="DEFAULT")
        with conn.cursor("held", withhold=True) as cur:
            cur.execute("SELECT name FROM public.customers ORDER BY id")
            conn.commit()
            assert cur.fetchone() == ("customer 1",)
        with conn.cursor() as cur, pytest.raises(psycopg2.Error, match="amber refused"):
            cur.execute("UPDATE public.orders SET total_cents = 0")
    finally:
        conn.close()


def test_psycopg_pool_hands_out_connections_that_read(cred: dict[str, Any]) -> None:
    with ConnectionPool(cred["url"], min_size=2, max_size=4, open=True, check=ConnectionPool.check_connection) as pool:
        counts = []
        for read_only in (True, False, None, True):
            with pool.connection() as conn:  # returned to the pool in between (rolled back, checked)
                conn.read_only = read_only
                counts.append(conn.execute("SELECT count(*) FROM public.orders").fetchone())
        assert counts == [(50,)] * 4


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sqlalchemy_read_only_and_isolation_options_through_one_pool(cred: dict[str, Any], driver: str) -> None:
    engine = sa.create_engine(cred["url"].replace("postgresql://", f"postgresql+{driver}://"), pool_size=2)
    count = sa.text("SELECT count(*) FROM public.orders")
    try:
        with engine.connect() as conn:
            assert conn.execution_options(postgresql_readonly=True).execute(count).scalar() == 50
        # The pool now hands out the same connection with read_only reset to False (BEGIN READ WRITE): it still reads.
        with engine.connect() as conn:
            assert conn.execute(count).scalar() == 50
        with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
            assert conn.execute(sa.text("SHOW transaction_isolation")).scalar() == "serializable"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            assert conn.execute(count).scalar() == 50
        with engine.begin() as conn:
            assert conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
    finally:
        engine.dispose()


# -- asyncpg -------------------------------------------------------------------------------------------------


async def pool_session(url: str) -> list[object]:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=3)
    seen: list[object] = []
    try:
        for _ in range(4):  # each release runs asyncpg's reset (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN, RESET ALL)
            async with pool.acquire() as conn:
                await conn.execute("SET application_name = 'changed'")
                seen.append(await conn.fetchval("SELECT count(*) FROM public.orders"))
        async with pool.acquire() as conn:
            seen.append(await conn.fetchval("SHOW default_transaction_read_only"))
            seen.append(await conn.fetchval("SHOW statement_timeout"))
            async with conn.transaction(readonly=True, isolation="serializable"):
                seen.append(await conn.fetchval("SHOW transaction_isolation"))
            await conn.execute("DISCARD ALL")  # as pgbouncer resets a server connection
            seen.append(await conn.fetchval("SELECT 1"))
    finally:
        await pool.close()
    return seen


def test_asyncpg_pool_resets_connections(cred: dict[str, Any]) -> None:
    assert asyncio.run(pool_session(cred["url"])) == [50, 50, 50, 50, "on", "30s", "serializable", 1]


# -- JDBC ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def jdbc_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None or not JDBC_JAR.exists():
        pytest.fail(f"a JDK and {JDBC_JAR} are needed (scripts/services.sh installs them)")
    out = tmp_path_factory.mktemp("jdbc-clients")
    subprocess.run(
        [javac, "-d", str(out), "-cp", str(JDBC_JAR), str(HERE / "GatewayJdbcClients.java")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def jdbc(cred: dict[str, Any], classes: Path, query: str = "") -> subprocess.CompletedProcess[str]:
    url = urlsplit(cred["url"])
    return run(
        [
            "java",
            "-cp",
            f"{classes}:{JDBC_JAR}",
            "GatewayJdbcClients",
            f"jdbc:postgresql://{url.hostname}:{url.port}{url.path}{query}",
            cred["user"],
        ],
        env={**os.environ, "PGPASSWORD": cred["password"]},
    )


def test_jdbc_read_only_isolation_schema_and_metadata(cred: dict[str, Any], jdbc_classes: Path) -> None:
    result = jdbc(cred, jdbc_classes, "?currentSchema=public")
    assert result.returncode == 0, result.stderr + result.stdout
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    # Other tests add objects to the same database: the ones made here must be among those listed.
    assert {"big_orders", "customers", "events", "events_2026", "orders"} <= set(lines.pop("tables").split(","))
    assert {"orders_customer", "orders_pkey"} <= set(lines.pop("indexes").removeprefix("orders ").split(","))
    assert lines == {
        "schema": "public",
        "read-only": "transaction on 50",
        "isolation": "serializable",
        "setSchema": "public",
        "columns": "orders id,customer_id,total_cents",
        "primary": "key orders id",
        "schemas": "has public",
        "imported": "keys orders customers.id",
        "done": "ok",
    }


def test_jdbc_current_schema_outside_the_level_is_refused_at_login(cred: dict[str, Any], jdbc_classes: Path) -> None:
    result = jdbc(cred, jdbc_classes, "?currentSchema=secret")
    assert result.returncode != 0
    assert "amber refuses the startup search_path 'secret'" in result.stderr + result.stdout


# -- catalog and monitoring reads ------------------------------------------------------------------------------

CATALOG_READS = [
    "SELECT pg_relation_size('public.orders') > 0",
    "SELECT pg_total_relation_size('public.orders') >= pg_table_size('public.orders')",
    "SELECT pg_size_pretty(pg_database_size(current_database())) IS NOT NULL",
    "SELECT pg_indexes_size('public.orders') > 0",
    "SELECT pg_catalog.pg_table_size('public.orders'::regclass) > 0",
    "SELECT pg_is_in_recovery() = false",
    "SELECT pg_last_xact_replay_timestamp() IS NULL",
    "SELECT count(*) >= 0 FROM pg_locks",
    "SELECT pg_blocking_pids(pg_backend_pid()) = '{}'",
    "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = pg_backend_pid() AND usename = current_user",
    "SELECT count(*) >= 2 FROM pg_stat_user_tables WHERE schemaname = 'public'",
    "SELECT last_value IS NULL FROM pg_sequences WHERE sequencename = 'order_ids'",
    "SELECT pg_get_viewdef('public.big_orders'::regclass) LIKE '%total_cents%'",
    "SELECT pg_get_indexdef('public.orders_customer'::regclass) LIKE 'CREATE INDEX%'",
    "SELECT count(*) = 1 FROM pg_constraint WHERE conrelid = 'public.orders'::regclass "
    "AND pg_get_constraintdef(oid) LIKE 'PRIMARY KEY%'",
    "SELECT count(*) = 2 FROM pg_partition_tree('public.events')",
    "SELECT count(*) = 1 FROM pg_partition_ancestors('public.events_2026') WHERE relid = 'public.events'::regclass",
    "SELECT obj_description('public.orders'::regclass, 'pg_class') = 'one row per order'",
    "SELECT col_description('public.orders'::regclass, 3) = 'in cents'",
    "SELECT format_type(atttypid, atttypmod) = 'bigint' FROM pg_attribute "
    "WHERE attrelid = 'public.orders'::regclass AND attname = 'id'",
    "SELECT has_table_privilege('public.orders', 'SELECT') AND NOT has_table_privilege('public.orders', 'INSERT')",
    "SELECT has_schema_privilege('public', 'USAGE') AND has_database_privilege(current_database(), 'CONNECT')",
    "SELECT has_sequence_privilege('public.order_ids', 'SELECT')",
    "SELECT has_column_privilege('public.orders', 'id', 'SELECT') AND has_function_privilege('now()', 'EXECUTE')",
    "SELECT true FROM (SELECT pg_advisory_unlock_all()) s",
    "SELECT current_query() LIKE 'SELECT current_query()%'",
    "SELECT pg_control_checkpoint() IS NOT NULL",
]
# Views monitoring tools read (each behind functions the judge looks through).
MONITORING_VIEWS = [
    "pg_stat_database",
    "pg_stat_bgwriter",
    "pg_prepared_xacts",
    "pg_stat_replication",
    "pg_replication_slots",
    "pg_stat_xact_user_tables",
    "pg_statio_user_tables",
    "pg_stat_user_indexes",
    "pg_stat_progress_vacuum",
    "pg_stat_wal_receiver",
    "pg_stat_recovery_prefetch",
    "pg_stat_archiver",
    "pg_stat_wal",
    "pg_stat_database_conflicts",
    "pg_cursors",
    "pg_prepared_statements",
    "pg_settings",
    "pg_stats",
    "pg_indexes",
    "pg_available_extensions",
    "pg_timezone_names",
    "information_schema.tables",
    "information_schema.columns",
    "information_schema.table_constraints",
    "information_schema.role_table_grants",
]


def test_catalog_and_monitoring_reads(cred: dict[str, Any]) -> None:
    answers = {}
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for sql in CATALOG_READS:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type] - test strings
            answers[sql] = row[0] if row else None
    assert [sql for sql, answer in answers.items() if answer is not True] == []


def test_monitoring_views(cred: dict[str, Any]) -> None:
    counts = {}
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for view in MONITORING_VIEWS:
            row = conn.execute(f"SELECT count(*) FROM {view}").fetchone()  # type: ignore[arg-type] - test names
            counts[view] = row[0] if row else None
    assert [view for view, count in counts.items() if not isinstance(count, int)] == []
    assert counts["information_schema.tables"] > 0
