"""An independent corpus of write and side-effect attempts through PostgreSQL quirks, against the gateway.

Every attempt must be refused by the gateway (its own message, not an upstream error), over the extended
protocol (psycopg) and the simple protocol (psql); afterwards nothing in the database may have changed, and reads
must still work in the same session. HARMLESS lists what the gateway allows because real clients send it (pools'
resets, pg_dump's settings): each must leave the session as read-only and time-limited as it was, and change
nothing either.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import Amber, connect_as
from tests.gateway.conftest import gateway_credential

SETUP = """
CREATE OR REPLACE FUNCTION public.side_effect(a int, b int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT a + b';
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = '#@#') THEN
    CREATE OPERATOR public.#@# (LEFTARG = int, RIGHTARG = int, FUNCTION = public.side_effect);
  END IF;
END $$;
CREATE OR REPLACE VIEW public.next_ids AS SELECT nextval('public.order_ids') AS id;
CREATE OR REPLACE VIEW public.order_totals AS SELECT customer_id, sum(total_cents) AS total FROM public.orders
  GROUP BY customer_id;
"""

CORPUS = [
    # plain writes and DDL
    "INSERT INTO public.customers VALUES (999, 'x')",
    "UPDATE public.orders SET total_cents = 0",
    "DELETE FROM public.orders",
    "TRUNCATE public.orders",
    "MERGE INTO public.customers c USING (SELECT 1 AS id) s ON c.id = s.id WHEN MATCHED THEN DELETE",
    "COPY public.customers FROM STDIN",
    "CREATE TABLE public.t (a int)",
    "CREATE TEMP TABLE scratch (a int)",
    "CREATE TEMPORARY VIEW tv AS SELECT 1",
    "CREATE UNLOGGED TABLE u (a int)",
    "DROP TABLE public.orders",
    "ALTER TABLE public.orders ADD COLUMN x int",
    "CREATE INDEX ON public.orders (total_cents)",
    "CREATE VIEW public.v2 AS SELECT 1",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA s2",
    "CREATE SEQUENCE s3",
    "CREATE TYPE mood AS ENUM ('ok')",
    "CREATE EXTENSION IF NOT EXISTS hstore",
    "CREATE RULE r AS ON INSERT TO public.orders DO NOTHING",
    "CREATE TRIGGER tr BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE POLICY p ON public.orders USING (true)",
    "CREATE ROLE sneaky",
    "CREATE DATABASE sneaky",
    "GRANT SELECT ON public.orders TO PUBLIC",
    "REVOKE SELECT ON public.orders FROM PUBLIC",
    "COMMENT ON TABLE public.orders IS 'pwned'",
    "SECURITY LABEL ON TABLE public.orders IS 'x'",
    "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
    "REASSIGN OWNED BY CURRENT_USER TO postgres",
    "DROP OWNED BY CURRENT_USER",
    "VACUUM public.orders",
    "ANALYZE public.orders",
    "CLUSTER public.orders",
    "REINDEX TABLE public.orders",
    "LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE",
    "CHECKPOINT",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "LOAD 'auto_explain'",
    "DO $$ BEGIN DELETE FROM public.orders; END $$",
    "CALL some_procedure()",
    "REFRESH MATERIALIZED VIEW public.mv",
    "IMPORT FOREIGN SCHEMA public FROM SERVER s INTO public",
    # role self-modification and session settings
    "ALTER ROLE CURRENT_USER PASSWORD 'x'",
    "ALTER ROLE CURRENT_USER SET default_transaction_read_only = off",
    "ALTER USER CURRENT_USER VALID UNTIL 'infinity'",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SET default_transaction_read_only = off",
    "SET SESSION default_transaction_read_only TO false",
    "SET transaction_read_only = off",
    "SET LOCAL transaction_read_only = off",
    "SET session_replication_role = replica",
    "SET search_path = evil, public",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT * FROM set_config('transaction_read_only', 'off', true)",
    "SELECT set_config((SELECT 'default_transaction_read_only'), 'off', false)",
    "SELECT pg_catalog.set_config('search_path', 'public, pg_temp', false)",
    "SELECT set_config('jit', (SELECT lo_creat(-1))::text, false)",
    # transaction tricks (BEGIN ... READ WRITE alone is kept read only: see HARMLESS)
    "BEGIN READ WRITE; DELETE FROM public.orders",
    "START TRANSACTION READ WRITE; SELECT 1",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "ROLLBACK PREPARED 'x'",
    # SELECT that writes or locks
    "SELECT * INTO public.copy FROM public.orders",
    "CREATE TABLE public.copy AS SELECT * FROM public.orders",
    "SELECT * FROM public.orders FOR UPDATE",
    "SELECT * FROM public.orders FOR SHARE",
    "SELECT * FROM public.orders FOR NO KEY UPDATE SKIP LOCKED",
    "SELECT * FROM (SELECT * FROM public.orders FOR UPDATE) s",
    "WITH d AS (DELETE FROM public.orders RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE public.orders SET total_cents = 1 RETURNING id) SELECT * FROM u",
    "WITH i AS (INSERT INTO public.customers VALUES (998, 'y') RETURNING id) SELECT 1",
    "WITH a AS (SELECT 1), b AS (DELETE FROM public.orders) SELECT * FROM a",
    "EXPLAIN ANALYZE DELETE FROM public.orders",
    "EXPLAIN (ANALYZE, BUFFERS) UPDATE public.orders SET total_cents = 0",
    "EXPLAIN ANALYZE SELECT nextval('public.order_ids')",
    # volatile and side-effect functions, anywhere in a query
    "SELECT nextval('public.order_ids')",
    "SELECT setval('public.order_ids', 1000)",
    "SELECT currval('public.order_ids')",
    "SELECT lastval()",
    "SELECT lo_create(0)",
    "SELECT lo_creat(-1)",
    "SELECT lo_from_bytea(0, 'data')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_unlink(1)",
    "SELECT lo_put(1, 0, 'x')",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT pg_try_advisory_lock(1)",
    "SELECT pg_notify('ch', 'x')",
    "SELECT pg_logical_emit_message(true, 'p', 'x')",
    "SELECT txid_current()",
    "SELECT pg_current_xact_id()",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_reload_conf()",
    "SELECT pg_stat_reset()",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT public.side_effect(1, 2)",
    "SELECT side_effect(1, 2)",
    "SELECT 1 #@# 2",
    "SELECT * FROM public.next_ids",
    "SELECT id FROM public.orders WHERE nextval('public.order_ids') > 0",
    "SELECT id FROM public.orders ORDER BY nextval('public.order_ids')",
    "SELECT (SELECT nextval('public.order_ids'))",
    "SELECT * FROM public.orders o, LATERAL (SELECT setval('public.order_ids', o.id)) s",
    "VALUES (nextval('public.order_ids'))",
    "SELECT * FROM generate_series(1, 2) g WHERE pg_advisory_lock(g) IS NOT NULL",
    "SELECT does_not_exist()",
    # NOTIFY, LISTEN, cursors and prepared statements
    "NOTIFY ch",
    "NOTIFY ch, 'payload'",
    "LISTEN ch",
    "DECLARE c CURSOR FOR SELECT * FROM public.orders FOR UPDATE",
    "DECLARE c CURSOR FOR SELECT nextval('public.order_ids')",
    "PREPARE w AS DELETE FROM public.orders",
    "PREPARE n AS SELECT nextval('public.order_ids')",
    "EXECUTE w",
    "EXECUTE never_prepared",
    # COPY tricks
    "COPY public.orders TO '/tmp/amber-pwned'",
    "COPY public.orders TO PROGRAM 'id'",
    "COPY (DELETE FROM public.orders RETURNING *) TO STDOUT",
    "COPY (SELECT nextval('public.order_ids')) TO STDOUT",
    # comments, quoting and multi-statement strings
    "/* just a comment */ DELETE FROM public.orders",
    "-- a comment\nINSERT INTO public.customers VALUES (997, 'z')",
    "SELECT 1; DELETE FROM public.orders",
    "sElEcT 1;dElEtE fRoM public.orders",
    "SELECT $$;$$; DELETE FROM public.orders",
    "SELECT E'\\';'; DELETE FROM public.orders",
    'INSERT INTO "public"."customers" VALUES (996, \'q\')',
    'DELETE FROM U&"public"."orders"',
    "SELECT 1 /* ; DELETE FROM public.orders */; UPDATE public.orders SET id = id",
    "SELECT 'unterminated",
    "DELETE",
    # functions that run SQL given as text, or serialize whole objects (issue 12 item 2): no write through them
    "SELECT query_to_xml('select lo_from_bytea(0, ''x'')', true, true, '')",
    "SELECT query_to_xml('select set_config(''default_transaction_read_only'', ''off'', false)', true, true, '')",
    "SELECT query_to_xmlschema('select nextval(''public.order_ids'')', true, true, '')",
    "SELECT query_to_xml_and_xmlschema('delete from public.orders returning id', true, true, '')",
    "SELECT query_to_xml('select 1; delete from public.orders', true, true, '')",
    "SELECT query_to_xml('with d as (delete from public.orders returning id) select 1', true, true, '')",
    "SELECT query_to_xml((SELECT 'select lo_creat(-1)'), true, true, '')",
    "SELECT query_to_xml('select query_to_xml(''select pg_advisory_lock(1)'', true, true, '''')', true, true, '')",
    "SELECT * FROM ts_stat('select to_tsvector(lo_creat(-1)::text)')",
    "SELECT ts_rewrite('a'::tsquery, 'select ''a''::tsquery, lo_creat(-1)::text::tsquery')",
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    "SELECT table_to_xml('public.orders', true, true, '')",
    # default_transaction_read_only / transaction_read_only off, in every spelling
    "SET default_transaction_read_only TO 'off'",
    "SET default_transaction_read_only = false",
    "SET default_transaction_read_only = 0",
    "SET default_transaction_read_only = 'of'",
    "SET default_transaction_read_only = no",
    "SET default_transaction_read_only = 'f'",
    "SET default_transaction_read_only = ' on x'",
    'SET "default_transaction_read_only" = off',
    'SET "DEFAULT_TRANSACTION_READ_ONLY" = off',
    'SET U&"default\\005ftransaction_read_only" = off',
    "SET LOCAL default_transaction_read_only = off",
    "SET default_transaction_read_only FROM CURRENT",
    "RESET transaction_read_only",
    "SET transaction_read_only TO DEFAULT",
    "SET transaction_read_only = 'false'",
    "SELECT set_config('DEFAULT_TRANSACTION_READ_ONLY', 'off', false)",
    "SELECT set_config(U&'default\\005ftransaction_read_only', 'off', false)",
    "SELECT set_config(E'default\\x5ftransaction_read_only', 'off', false)",
    "SELECT pg_catalog.set_config('default_transaction_read_only', 'false', true)",
    "SELECT set_config('default_transaction_read_only', (SELECT 'off'), false)",
    "SELECT set_config('default_transaction_read_only', 'o' || 'ff', false)",
    "SELECT set_config('transaction_read_only', 'no', false)",
    "SELECT set_config('jit', 'off', false), set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'default_transaction_read_only'",
    "SELECT set_config(name, 'off', false) FROM pg_settings",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'jit' OR true",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name <> 'jit'",
    "SELECT (SELECT set_config(name, 'off', false) FROM pg_settings p) FROM pg_settings WHERE name = 'jit'",
    "SELECT set_config(s.name, 'off', false) FROM pg_settings s, pg_settings WHERE pg_settings.name = 'jit'",
    "WITH s AS (SELECT 'default_transaction_read_only' AS name) SELECT set_config(name, 'off', false) FROM s",
    "SELECT set_config(setting, 'off', false) FROM pg_settings WHERE name = 'jit'",
    "SELECT set_config('default_transaction_read_only', 'off')",
    "SELECT set_config(NULL, 'off', false)",
    # READ WRITE transactions and session characteristics
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, READ WRITE",
    "SET LOCAL SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    # search_path outside the level (the level here is `public`)
    "SET search_path = secret",
    "SET search_path TO secret, public",
    "SET SCHEMA 'secret'",
    "SET LOCAL search_path = secret",
    "SET search_path = pg_temp, public",
    "SET search_path = information_schema",
    "SET search_path = 'public, secret'",
    "SELECT set_config('search_path', 'secret', false)",
    "SELECT set_config('search_path', 'public, secret', false)",
    "SELECT set_config('search_path', '\"secret\"', true)",
    "SELECT set_config('search_path', 'public,\"unterminated', false)",
    "SELECT set_config('search_path', current_setting('search_path') || ', secret', false)",
    # LOCK: only ACCESS SHARE, only inside the level (LOCK without a mode is ACCESS EXCLUSIVE)
    "LOCK TABLE public.orders",
    "LOCK orders",
    "LOCK public.orders IN ROW EXCLUSIVE MODE",
    "LOCK TABLE public.orders IN ROW SHARE MODE",
    "LOCK TABLE public.orders IN SHARE MODE",
    "LOCK TABLE public.orders IN SHARE UPDATE EXCLUSIVE MODE",
    "LOCK TABLE public.orders IN SHARE ROW EXCLUSIVE MODE",
    "LOCK TABLE public.orders IN EXCLUSIVE MODE",
    "LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE NOWAIT",
    "LOCK TABLE ONLY public.orders IN EXCLUSIVE MODE NOWAIT",
    "LOCK TABLE secret.api_keys IN ACCESS SHARE MODE",
    "LOCK TABLE public.orders, secret.api_keys IN ACCESS SHARE MODE",
    "LOCK TABLE pg_catalog.pg_class IN ACCESS SHARE MODE",
    # advisory locks (only pg_advisory_unlock_all is allowed), NOTIFY, LISTEN
    "SELECT pg_advisory_lock_shared(1)",
    "SELECT pg_advisory_lock(1, 2)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT pg_advisory_xact_lock_shared(1)",
    "SELECT pg_try_advisory_lock_shared(1)",
    "SELECT pg_catalog.pg_advisory_lock(1)",
    "SELECT pg_advisory_unlock(1)",
    "SELECT pg_advisory_unlock_all(), pg_advisory_lock(7)",
    "SELECT pg_catalog.pg_notify('ch', 'x')",
    'LISTEN "ch"',
    'NOTIFY "ch"',
    # who the session is
    "SET ROLE NONE",
    "RESET ROLE",
    "SET LOCAL ROLE postgres",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET SESSION AUTHORIZATION",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config('session_authorization', 'postgres', false)",
    # settings the gateway pins to read statements as the database does
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings TO DEFAULT",
    "RESET standard_conforming_strings",
    "SET LOCAL standard_conforming_strings = off",
    "SET standard_conforming_strings = on",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SET backslash_quote = on",
    "SET backslash_quote = safe_encoding",
    "RESET backslash_quote",
    "SELECT set_config('backslash_quote', 'on', true)",
    "SET escape_string_warning = off",
    "SET LOCAL escape_string_warning = off",
    "SELECT set_config('escape_string_warning', 'off', false)",
    "SET client_encoding = 'LATIN1'",
    "SET NAMES 'SJIS'",
    "SET client_encoding TO 'BIG5'",
    "SET LOCAL client_encoding = 'LATIN1'",
    "RESET client_encoding",
    "SET client_encoding TO DEFAULT",
    "SELECT set_config('client_encoding', 'LATIN1', false)",
    "SELECT set_config('client_encoding', 'SJIS', false)",
    # timeouts cannot be lifted through set_config, nor sent in a string of several statements
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT set_config('statement_timeout', '1h', false)",
    "SELECT set_config('statement_timeout', '0.1', false)",
    "SELECT set_config('idle_in_transaction_session_timeout', '0', false)",
    "SELECT set_config('lock_timeout', '0', true)",
    "SET statement_timeout = 'never'",
    "SET statement_timeout = -1",
    "SET statement_timeout = '0x10'",
    # settings that are not the session's to change
    "SET work_mem = '1TB'",
    "SET work_mem = '300MB'",
    "SELECT set_config('work_mem', '10GB', false)",
    "SET maintenance_work_mem = '10GB'",
    "SET temp_buffers = '1GB'",
    "SET hash_mem_multiplier = 1000",
    "SET log_statement = 'none'",
    "SET default_tablespace = ''",
    "SET check_function_bodies = off",
    "SET myapp.user_id = '1'",
    "SET allow_system_table_mods = on",
    "SET zero_damaged_pages = on",
    "SET lo_compat_privileges = on",
    "SET session_preload_libraries = 'auto_explain'",
    "SET temp_file_limit = -1",
    "SET idle_in_transaction_session_timeout FROM CURRENT",
]

# Allowed (real clients send them), and harmless: afterwards the session is as read-only and time-limited as before.
HARMLESS = [
    "RESET ALL",
    "DISCARD ALL",
    "DISCARD PLANS",
    "DISCARD SEQUENCES",
    "DISCARD TEMP",
    "DISCARD TEMPORARY",
    "UNLISTEN *",
    "UNLISTEN ch",
    "CLOSE ALL",
    "SELECT pg_advisory_unlock_all()",
    "SELECT pg_catalog.pg_advisory_unlock_all()",
    "SET statement_timeout = 0",
    "SET statement_timeout = '1h'",
    "SET statement_timeout = '0.4ms'",
    "SET statement_timeout = 1e12",
    "SET LOCAL statement_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    "SET lock_timeout = 0",
    "RESET statement_timeout",
    "SET statement_timeout TO DEFAULT",
    "RESET default_transaction_read_only",
    "SET default_transaction_read_only TO DEFAULT",
    "SET default_transaction_read_only = on",
    "SET transaction_read_only = on",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET search_path = ''",
    "SET search_path = public, pg_catalog",
    'SET search_path = pg_catalog, "$user"',
    "RESET search_path",
    "SELECT set_config('search_path', '', false)",
    "SET row_security = off",
    "SET synchronize_seqscans = off",
    "SET restrict_nonsystem_relation_kind = 'view, foreign-table'",
    "SET work_mem = '64MB'",
    "SET client_encoding = 'UTF8'",
    "SET NAMES 'utf8'",
    "SET enable_seqscan = off",
    "SET jit = off",
    "SET application_name = 'x'",
    # kept read only (drivers send READ WRITE after `read_only = False`, e.g. SQLAlchemy's pool reset)
    "BEGIN READ WRITE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE",
    "START TRANSACTION READ WRITE",
    "BEGIN TRANSACTION READ ONLY, READ WRITE",
    "START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ WRITE, DEFERRABLE",
    "BEGIN; ROLLBACK; BEGIN READ ONLY",
]

# What a session must still be after any HARMLESS statement (the level's limit here is the default, 30s).
STILL_READ_ONLY = [
    ("SHOW default_transaction_read_only", "on"),
    ("SHOW statement_timeout", "30s"),
    ("SHOW idle_in_transaction_session_timeout", "1min"),
    ("SHOW standard_conforming_strings", "on"),
    ("SELECT (current_user = session_user)::text", "true"),
]

READS = [
    ("SELECT count(*) FROM public.orders", [(50,)]),
    ("WITH big AS (SELECT * FROM public.orders WHERE total_cents > 2500) SELECT count(*) FROM big", [(25,)]),
    ("TABLE public.customers LIMIT 1", [(1, "customer 1")]),
    ("VALUES (1, 'a')", [(1, "a")]),
    ("SELECT upper(name), now() IS NOT NULL FROM public.customers WHERE id = 2", [("CUSTOMER 2", True)]),
    ("SELECT customer_id, total::int FROM public.order_totals WHERE customer_id = 1", [(1, 15000)]),
    ("SELECT random() < 2", [(True,)]),
    ("SELECT set_config('jit', 'off', false)", [("off",)]),  # asyncpg's type introspection does this
]


@pytest.fixture
def cred(gw: Amber) -> dict[str, Any]:
    with connect_as(gw.target_url) as admin:
        admin.execute(SETUP)
    return gateway_credential(gw)


def snapshot(url: str, role: str) -> dict[str, Any]:
    """What a write would change. Role settings: only the grant's role's and this database's (pg_db_role_setting
    is cluster-wide, and other databases' tests may change theirs meanwhile)."""
    with connect_as(url) as admin:
        return {
            "orders": admin.execute(
                "SELECT count(*), sum(total_cents), md5(string_agg(id::text || total_cents::text,"
                " ',' ORDER BY id)) FROM public.orders"
            ).fetchone(),
            "customers": admin.execute("SELECT count(*) FROM public.customers").fetchone(),
            "sequence": admin.execute("SELECT last_value, is_called FROM public.order_ids").fetchone(),
            "large_objects": admin.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone(),
            "tables": admin.execute(
                "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            ).fetchone(),
            "role_settings": admin.execute(
                "SELECT count(*), string_agg(array_to_string(setconfig, ','), ';') FROM pg_db_role_setting "
                "WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = %s) "
                "OR setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (role,),
            ).fetchone(),
            "advisory_locks": admin.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone(),
        }


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) > 100
    assert len(set(CORPUS)) == len(CORPUS)


def test_every_attempt_is_refused_over_the_extended_protocol(gw: Amber, cred: dict[str, Any]) -> None:
    before = snapshot(gw.target_url, cred["role"])
    not_refused = []
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for sql in CORPUS:
            try:
                conn.execute(sql)  # type: ignore[arg-type] - test strings
            except psycopg.Error as exc:
                if "amber refused" not in str(exc):
                    not_refused.append((sql, f"upstream error: {exc}"))
            else:
                not_refused.append((sql, "succeeded"))
        for sql, expected in READS:  # the same session still reads
            assert conn.execute(sql).fetchall() == expected, sql  # type: ignore[arg-type]
    assert not_refused == []
    assert snapshot(gw.target_url, cred["role"]) == before


def test_every_attempt_is_refused_over_the_simple_protocol(gw: Amber, cred: dict[str, Any]) -> None:
    before = snapshot(gw.target_url, cred["role"])
    script = "\n".join(f"{sql.rstrip(';')};" if "\n" not in sql else sql + ";" for sql in CORPUS[:60])
    # psql sends each statement as its own Query; ON_ERROR_STOP=0 keeps going after every refusal.
    args = ["psql", cred["url"], "-X", "-v", "ON_ERROR_STOP=0", "-At"]
    for sql in CORPUS:
        if "'unterminated" in sql:
            continue
        args += ["-c", sql]
    args += ["-c", "SELECT 'still reading', count(*) FROM public.orders"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert "still reading|50" in result.stdout
    refusals = result.stderr.count("amber refused")
    assert refusals == len(CORPUS) - 1, result.stderr[-3000:]
    assert snapshot(gw.target_url, cred["role"]) == before
    assert script  # the script form is kept for humans debugging a failure


def still_read_only(conn: psycopg.Connection[Any], after: str) -> list[tuple[str, str, object]]:
    """What differs from a read-only, time-limited session of the grant's own role (empty when nothing does)."""
    problems: list[tuple[str, str, object]] = []
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:  # a HARMLESS BEGIN opened one
        row = conn.execute("SHOW transaction_read_only").fetchone()
        if row != ("on",):
            problems.append((after, "SHOW transaction_read_only (in its transaction)", row))
        conn.execute("ROLLBACK")
    for sql, expected in STILL_READ_ONLY:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type] - test strings
        if row is None or row[0] != expected:
            problems.append((after, sql, row))
    with conn.transaction():
        row = conn.execute("SHOW transaction_read_only").fetchone()
        if row != ("on",):
            problems.append((after, "SHOW transaction_read_only (in a transaction)", row))
    try:
        conn.execute("INSERT INTO public.customers VALUES (990, 'after')")
    except psycopg.Error as exc:
        if "amber refused" not in str(exc):
            problems.append((after, "INSERT", f"upstream error: {exc}"))
    else:
        problems.append((after, "INSERT", "succeeded"))
    return problems


def test_harmless_statements_are_allowed_and_leave_the_session_read_only(gw: Amber, cred: dict[str, Any]) -> None:
    before = snapshot(gw.target_url, cred["role"])
    refused, problems = [], []
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for sql in HARMLESS:
            try:
                conn.execute(sql)  # type: ignore[arg-type] - test strings
            except psycopg.Error as exc:
                refused.append((sql, str(exc)))
            problems += still_read_only(conn, sql)
    assert refused == []
    assert problems == []
    assert snapshot(gw.target_url, cred["role"]) == before


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # DISCARD ALL cannot run inside a transaction block (the database says so); the block then rolls back.
        (["BEGIN", "DISCARD ALL", "ROLLBACK", "SHOW default_transaction_read_only"], "on"),
        (["BEGIN READ ONLY", "RESET ALL", "SHOW transaction_read_only", "COMMIT", "SHOW statement_timeout"], "30s"),
        (["BEGIN", "SET LOCAL statement_timeout = 0", "SHOW statement_timeout", "COMMIT"], "30s"),
        (["BEGIN", "LOCK TABLE public.orders IN ACCESS SHARE MODE NOWAIT", "CLOSE ALL", "COMMIT"], "ok"),
        (["BEGIN", "DECLARE c CURSOR FOR SELECT id FROM public.orders", "CLOSE ALL", "CLOSE ALL", "ROLLBACK"], "ok"),
        (["BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "SELECT pg_export_snapshot()", "COMMIT"], "ok"),
        (["SET search_path = ''", "SELECT count(*) FROM orders"], "error"),  # unqualified names find nothing
        (["RESET ALL", "SHOW search_path"], '"$user", public'),
        (["SET statement_timeout = '1s'", "DISCARD ALL", "SHOW statement_timeout"], "30s"),
        (["SET statement_timeout = '1s'", "SHOW statement_timeout"], "1s"),
        (["SET lock_timeout = '2s'", "SHOW lock_timeout"], "2s"),
    ],
)
def test_harmless_scripts(gw: Amber, cred: dict[str, Any], script: list[str], expected: str) -> None:
    before = snapshot(gw.target_url, cred["role"])
    last: object = "ok"
    refused: list[tuple[str, str]] = []
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for sql in script:
            try:
                cursor = conn.execute(sql)  # type: ignore[arg-type] - test strings
            except psycopg.Error as exc:
                refused += [(sql, str(exc))] if "amber refused" in str(exc) else []
                last = "error"
            else:
                if sql.startswith("SHOW"):
                    row = cursor.fetchone()
                    last = row[0] if row is not None else None
        conn.execute("RESET ALL")  # a shorter timeout is allowed too; RESET ALL brings back the level's
        assert still_read_only(conn, script[-1]) == []
    assert refused == []
    assert last == expected
    assert snapshot(gw.target_url, cred["role"]) == before


def test_harmless_statements_over_the_simple_protocol(gw: Amber, cred: dict[str, Any]) -> None:
    before = snapshot(gw.target_url, cred["role"])
    args = ["psql", cred["url"], "-X", "-v", "ON_ERROR_STOP=1", "-At"]
    for sql in HARMLESS:
        args += ["-c", sql]
    args += ["-c", "SHOW statement_timeout", "-c", "SHOW default_transaction_read_only"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == ["30s", "on"]
    assert "amber keeps this level's limit: statement_timeout is 30000ms" in result.stderr
    assert snapshot(gw.target_url, cred["role"]) == before


def test_reads_work_extended_and_prepared(gw: Amber, cred: dict[str, Any]) -> None:
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for sql, expected in READS:
            assert conn.execute(sql).fetchall() == expected, sql  # type: ignore[arg-type]
        assert conn.execute("SELECT name FROM public.customers WHERE id = %s", (3,)).fetchone() == ("customer 3",)
        for i in range(1, 8):  # psycopg prepares server-side after a few executions
            assert conn.execute("SELECT id FROM public.customers WHERE id = %s", (i,), prepare=True).fetchone() == (i,)
        with conn.transaction():
            assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
        with conn.transaction(), conn.cursor(name="server_side") as cur:
            cur.execute("SELECT id FROM public.orders ORDER BY id")
            assert len(cur.fetchmany(10)) == 10
        with conn.cursor().copy("COPY (SELECT id FROM public.customers ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
        assert len(rows) == 10


def test_refusal_inside_a_pipeline_keeps_the_session_usable(gw: Amber, cred: dict[str, Any]) -> None:
    def pipeline(conn: psycopg.Connection[Any]) -> None:
        with conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("DELETE FROM public.orders")
            conn.execute("SELECT 2")

    with psycopg.connect(cred["url"], autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="amber refused"):
            pipeline(conn)
        assert conn.execute("SELECT 3").fetchone() == (3,)


# Functions named like a harmless or query-text function, in another schema or in another case (issue 12 item 2).
LOOKALIKES_SETUP = """
CREATE OR REPLACE FUNCTION public.shout(a int) RETURNS int LANGUAGE sql STABLE AS 'SELECT a';
CREATE OR REPLACE FUNCTION public."SHOUT"(a int) RETURNS bigint LANGUAGE sql VOLATILE
  AS 'SELECT nextval(''public.order_ids'')';
CREATE OR REPLACE FUNCTION public.query_to_xml(q text, a bool, b bool, c text) RETURNS bigint LANGUAGE sql VOLATILE
  AS 'SELECT nextval(''public.order_ids'')';
"""
LOOKALIKES_TEARDOWN = """
DROP FUNCTION public.shout(int); DROP FUNCTION public."SHOUT"(int);
DROP FUNCTION public.query_to_xml(text, bool, bool, text);
"""
LOOKALIKES = [
    'SELECT "SHOUT"(1)',
    'SELECT public."SHOUT"(1)',
    "SELECT public.query_to_xml('SELECT 1', true, true, '')",
]


@pytest.fixture
def lookalikes(gw: Amber) -> Iterator[None]:
    """In the session's shared target database: dropped afterwards (a public.query_to_xml shadows pg_catalog's
    for every later test)."""
    with connect_as(gw.target_url) as admin:
        admin.execute(LOOKALIKES_SETUP)
    yield
    with connect_as(gw.target_url) as admin:
        admin.execute(LOOKALIKES_TEARDOWN)


@pytest.mark.usefixtures("lookalikes")
def test_lookalike_functions_are_judged_as_what_postgresql_calls(gw: Amber) -> None:
    cred = gateway_credential(gw)
    before = snapshot(gw.target_url, cred["role"])
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for sql in LOOKALIKES:
            with pytest.raises(psycopg.Error, match="amber refused"):
                conn.execute(sql)  # type: ignore[arg-type] - test strings
        assert conn.execute("SELECT shout(7)").fetchone() == (7,)
        assert conn.execute("SELECT pg_catalog.query_to_xml('SELECT 1 AS a', true, true, '')").fetchone() is not None
    assert snapshot(gw.target_url, cred["role"]) == before
