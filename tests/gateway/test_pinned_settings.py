"""The judge and the server read the same text (decision 0010), even on a database with hostile defaults.

The target database here defaults to `standard_conforming_strings = off`, `backslash_quote = on`,
`escape_string_warning = off` and a LATIN1 client encoding, for the database and for every role in it. Through
the gateway the session still reads SQL exactly as pglast does: the gateway pins those settings in the upstream
startup packet, refuses every way to change them, and ends a session whose upstream reports another value.
String tricks (backslash before a quote, E'', U&'', dollar quotes, nested comments) are sent as raw bytes in
every client encoding the gateway allows; each ends refused by amber or harmless, with no state change.
"""

from __future__ import annotations

import select
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from amber.core.clock import FrozenClock
from amber.gateway.pgwire import codec
from tests.conftest import CATALOG, POLICIES, Amber, connect_as, create_database, drop_database, pg_admin
from tests.gateway.conftest import gateway_credential, running
from tests.gateway.test_bounds import fatal_message, reply, tls_socket

HOSTILE_SQL = """
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint, total_cents bigint NOT NULL);
CREATE SEQUENCE public.order_ids;
INSERT INTO public.customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO public.orders SELECT g, 1 + g % 10, g * 100 FROM generate_series(1, 50) g;
-- A STABLE function that changes a pinned setting: mislabelled, as only an administrator could make it.
CREATE FUNCTION public.sneaky_sscs() RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$;
CREATE FUNCTION public.sneaky_encoding() RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT set_config('client_encoding', 'WIN1252', false) $$;
"""
HOSTILE_DEFAULTS = [
    "standard_conforming_strings = off",
    "backslash_quote = on",
    "escape_string_warning = off",
    "client_encoding = 'LATIN1'",
]


@pytest.fixture(scope="module")
def hostile_db() -> Iterator[str]:
    name = create_database("amber_target")
    with pg_admin(name) as conn:
        conn.execute(HOSTILE_SQL)
        for setting in HOSTILE_DEFAULTS:
            conn.execute(f"ALTER DATABASE {name} SET {setting}")  # type: ignore[arg-type] - fixed test text
            conn.execute(f"ALTER ROLE ALL IN DATABASE {name} SET {setting}")  # type: ignore[arg-type]
    yield name
    with pg_admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            "DELETE FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = %s)",
            (name,),
        )
    drop_database(name)


@pytest.fixture
def hgw(
    state_url: str, tmp_path: Path, clock: FrozenClock, hostile_db: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Amber]:
    url = f"postgresql://postgres@127.0.0.1:5432/{hostile_db}"
    monkeypatch.setenv("AMBER_TEST_HOSTILE_URL", url)
    catalog = tmp_path / "amber.yaml"
    catalog.write_text(textwrap.dedent(CATALOG).replace("env:AMBER_TEST_TARGET_URL", "env:AMBER_TEST_HOSTILE_URL"))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    with running(state_url, catalog, tmp_path, clock, hostile_db, url, recorder_process=False) as amber:
        yield amber


def state(url: str) -> tuple[Any, ...]:
    with connect_as(url) as admin:
        row = admin.execute(
            "SELECT (SELECT count(*) FROM public.orders), (SELECT count(*) FROM public.customers), "
            "(SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace), "
            "(SELECT count(*) FROM pg_largeobject_metadata)"
        ).fetchone()
        assert row is not None
        return tuple(row)


def test_the_hostile_database_really_is_hostile(hgw: Amber) -> None:
    """Directly, a connection gets the hostile defaults: what the gateway must undo."""
    with psycopg.connect(hgw.target_url, autocommit=True) as conn:
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("off",)
        assert conn.execute("SHOW backslash_quote").fetchone() == ("on",)
        # Under these defaults a backslash ends nothing: the whole thing is one literal for the server.
        assert conn.execute(r"SELECT 'a\'; SELECT 1; --'").fetchone() == ("a'; SELECT 1; --",)


def test_the_gateway_pins_the_settings_that_change_how_text_is_read(hgw: Amber) -> None:
    cred = gateway_credential(hgw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW backslash_quote").fetchone() == ("safe_encoding",)
        assert conn.execute("SHOW escape_string_warning").fetchone() == ("on",)
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        assert conn.execute(r"SELECT 'a\b', E'c\\d'").fetchone() == ("a\\b", "c\\d")


CHANGES = [
    "SET standard_conforming_strings = off",
    "SET SESSION standard_conforming_strings TO off",
    "SET LOCAL standard_conforming_strings = off",
    "SET standard_conforming_strings TO DEFAULT",
    "RESET standard_conforming_strings",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true)",
    "SELECT set_config(U&'standard\\005fconforming\\005fstrings', 'off', false)",
    "SELECT set_config('STANDARD_CONFORMING_STRINGS', 'off', false)",
    "SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', false)",
    "SET backslash_quote = on",
    "SET backslash_quote TO off",
    "RESET backslash_quote",
    "SELECT set_config('backslash_quote', 'on', false)",
    "SET escape_string_warning = off",
    "SELECT set_config('escape_string_warning', 'off', false)",
    "SET client_encoding = 'SJIS'",
    "SET client_encoding TO 'LATIN1'",
    "SET NAMES 'WIN1252'",
    "SELECT set_config('client_encoding', 'LATIN1', false)",
    "SELECT set_config('client_encoding', 'EUC_JP', false)",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'",
    "PREPARE s AS SELECT set_config('standard_conforming_strings', 'off', false)",
    "DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$",
]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_no_way_to_change_a_pinned_setting(hgw: Amber, protocol: str) -> None:
    cred = gateway_credential(hgw)
    before = state(hgw.target_url)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        changed = []
        for sql in CHANGES:
            try:
                if protocol == "simple":
                    simple(conn, sql.encode())
                else:
                    conn.execute(sql)  # type: ignore[arg-type] - test strings
            except psycopg.Error as exc:
                if "amber refused" not in str(exc):
                    changed.append((sql, str(exc)))
            else:
                changed.append((sql, "ran"))
            if not conn.closed and conn.execute("SHOW standard_conforming_strings").fetchone() != ("on",):
                changed.append((sql, "standard_conforming_strings changed"))
        assert changed == []
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SHOW backslash_quote").fetchone() == ("safe_encoding",)
    assert state(hgw.target_url) == before


@pytest.mark.parametrize("function", ["sneaky_sscs", "sneaky_encoding"])
def test_a_session_whose_upstream_changes_a_pinned_setting_is_ended(hgw: Amber, function: str) -> None:
    """A mislabelled STABLE function changes a pinned setting behind the judge's back: the upstream reports it
    in a ParameterStatus message, and the gateway ends the session (fail closed) before anything else runs."""
    cred = gateway_credential(hgw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError, match="amber ended this session: the database reports"):
            conn.execute(f"SELECT public.{function}()")  # type: ignore[arg-type] - fixed test text
        assert conn.closed or conn.broken
    with psycopg.connect(cred["url"], autocommit=True) as conn:  # a new session is pinned again
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)


def simple(conn: psycopg.Connection[Any], data: bytes) -> list[tuple[str, str]]:
    """Send one simple Query with these exact bytes; raise the first error like psycopg would."""
    pg = conn.pgconn
    pg.send_query(data)
    while pg.flush():
        pass
    results = []
    first_error: str | None = None
    while True:
        while pg.is_busy():
            select.select([pg.socket], [], [], 5)
            pg.consume_input()
        res = pg.get_result()
        if res is None:
            break
        status = psycopg.pq.ExecStatus(res.status).name
        message = (res.error_message or b"").decode("utf-8", "replace")
        if status == "FATAL_ERROR" and first_error is None:
            first_error = message
        results.append((status, message))
    if first_error is not None:
        raise psycopg.Error(first_error)
    return results


def outcome_of(conn: psycopg.Connection[Any], data: bytes) -> str:
    try:
        results = simple(conn, data)
    except psycopg.Error as exc:
        if "amber refused" in str(exc):
            return "refused"
        return "error" if str(exc).startswith("ERROR:") else f"other: {exc}"
    return "read" if all(status == "TUPLES_OK" for status, _ in results) else f"ran: {results}"


# Each one, read as the server with the *hostile* defaults would, hides a write inside what looks like a
# literal or a comment, or the other way round. Through the gateway each must be refused or harmless.
TRICKS = [
    "SELECT 'a\\'; DELETE FROM public.orders; --'",
    "SELECT 'a\\\\'; DELETE FROM public.orders; --'",
    "SELECT 'x\\' ; DROP TABLE public.customers; SELECT '",
    "SELECT E'a\\''; DELETE FROM public.orders; --'",
    "SELECT E'\\\\'; DELETE FROM public.orders; --'",
    "SELECT e'\\x27; DELETE FROM public.orders; --'",
    "SELECT E'\\047'; DELETE FROM public.orders; --'",
    "SELECT U&'\\0027'; DELETE FROM public.orders; --'",
    "SELECT U&'!0027' UESCAPE '!'; DELETE FROM public.orders; --'",
    "SELECT U&'\\'; DELETE FROM public.orders; --' UESCAPE '#'",
    'SELECT U&"a\\0022; DELETE FROM public.orders; --"',
    "SELECT $$\\$$; DELETE FROM public.orders; --$$",
    "SELECT $a$ $$ ' $a$; DELETE FROM public.orders; -- '",
    "SELECT $a$\\$a$; DELETE FROM public.orders; --$a$",
    "SELECT /* /* */ DELETE FROM public.orders; */ 1",
    "SELECT /* */ 1 /* /* nested */ ; DELETE FROM public.orders; -- */",
    "SELECT 1 -- \\\n; DELETE FROM public.orders",
    "SELECT 'a' \n 'b\\'; DELETE FROM public.orders; --'",
    "SELECT B'1\\'; DELETE FROM public.orders; --'",
    "SELECT X'1\\'; DELETE FROM public.orders; --'",
    "SELECT N'a\\'; DELETE FROM public.orders; --'",
    "SELECT 'a'' \\'; DELETE FROM public.orders; --'",
    "SELECT '\\'' ; DELETE FROM public.orders; --'",
    "SELECT 0x1F; DELETE FROM public.orders",
    "SELECT 1_000; DELETE FROM public.orders",
    "SELECT 1e\\'; DELETE FROM public.orders; --'",
]
# (client_encoding at login, Python codec for the test's bytes)
ENCODINGS = [
    ("UTF8", "utf-8"),
    ("SQL_ASCII", "utf-8"),
    ("LATIN1", "latin-1"),
    ("WIN1252", "cp1252"),
    ("KOI8R", "koi8_r"),
    ("WIN1251", "cp1251"),
    ("ISO_8859_7", "iso8859_7"),
]


@pytest.mark.parametrize(("encoding", "python_codec"), ENCODINGS)
def test_string_tricks_are_refused_or_harmless_in_every_allowed_encoding(
    hgw: Amber, encoding: str, python_codec: str
) -> None:
    cred = gateway_credential(hgw)
    before = state(hgw.target_url)
    non_ascii = "é".encode(python_codec, errors="ignore") or b""
    with psycopg.connect(cred["url"], autocommit=True, client_encoding=encoding) as conn:
        for trick in TRICKS:
            for data in (trick.encode(python_codec), trick.encode(python_codec).replace(b"a", b"a" + non_ascii)):
                outcome = outcome_of(conn, data)
                # refused by amber, an error of the database's own (a harmless read that failed), or a read
                assert outcome in ("refused", "error", "read"), (trick, outcome)
                assert state(hgw.target_url) == before, trick
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        expected = "UTF8" if encoding == "SQL_ASCII" else encoding
        assert conn.execute("SHOW client_encoding").fetchone() == (expected,)
        if non_ascii:  # the text reaches the database as the client meant it
            row = simple(conn, b"SELECT '" + non_ascii + b"' = U&'\\00e9'")
            assert row == [("TUPLES_OK", "")]


@pytest.mark.parametrize(
    "encoding", ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "SHIFT_JIS_2004", "EUC_JP", "MULE_INTERNAL"]
)
def test_encodings_whose_bytes_the_judge_cannot_read_as_the_server_are_refused_at_login(
    hgw: Amber, encoding: str
) -> None:
    cred = gateway_credential(hgw)
    with pytest.raises(psycopg.OperationalError, match="amber refuses client_encoding"):
        psycopg.connect(cred["url"], client_encoding=encoding)


def startup_refusal(amber: Amber, params: dict[str, str]) -> str:
    """The FATAL message the gateway answers a startup packet with (before any login)."""
    with tls_socket(amber) as tls:
        tls.sendall(codec.startup_message({"user": "x", "database": "x", **params}))
        return fatal_message(reply(tls))


def test_a_client_asking_for_hostile_settings_at_login_is_refused(hgw: Amber) -> None:
    refusal = startup_refusal(hgw, {"standard_conforming_strings": "off"})
    assert "amber keeps standard_conforming_strings on" in refusal
    assert "amber refuses the startup parameter(s) backslash_quote" in startup_refusal(hgw, {"backslash_quote": "on"})
    assert "amber refuses the startup parameter(s) options" in startup_refusal(
        hgw, {"options": "-c standard_conforming_strings=off"}
    )
    assert "amber refuses client_encoding" in startup_refusal(hgw, {"client_encoding": "BIG5"})
