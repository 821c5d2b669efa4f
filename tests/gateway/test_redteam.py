"""Bypasses a red-team review found in the gateway (2026-11-27), each now refused by amber itself.

- EXECUTE's arguments are expressions that PostgreSQL evaluates: `EXECUTE p(set_config(...))`, and
  EXPLAIN EXECUTE evaluates them even without ANALYZE.
- `set_config` spelled `U&"set\\005fconfig"` escaped the shape cache's text check: an allowed
  `set_config('jit', ...)` made `set_config('search_path', ...)` of the same shape allowed too.
- Client encodings whose multibyte characters end in a backslash or quote byte (SJIS, BIG5, GBK, ...) let a
  statement hide another from amber's parser, which reads the text as UTF-8.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import Amber, connect_as
from tests.gateway.conftest import gateway_credential
from tests.gateway.test_corpus import SETUP, snapshot


@pytest.fixture
def cred(gw: Amber) -> dict[str, Any]:
    with connect_as(gw.target_url) as admin:
        admin.execute(SETUP)
    return gateway_credential(gw)


def refused_by_amber(conn: psycopg.Connection[Any], sql: str) -> bool:
    try:
        conn.execute(sql)  # type: ignore[arg-type] - test strings
    except psycopg.Error as exc:
        return "amber refused" in str(exc)
    return False


EXECUTE_ARGUMENTS = [
    "EXECUTE p(set_config('search_path', 'pg_temp, evil', false))",
    "EXECUTE p(set_config('default_transaction_read_only', 'off', false))",
    "EXECUTE p(pg_advisory_lock(42)::text)",
    "EXECUTE p(lo_from_bytea(0, 'pwned')::text)",
    "EXECUTE p(nextval('public.order_ids')::text)",
    "EXECUTE p(pg_notify('ch', 'x')::text)",
    "EXECUTE p(public.side_effect(1, 2)::text)",
    "EXECUTE p((SELECT lo_create(0))::text)",
    "EXPLAIN EXECUTE p(set_config('statement_timeout', '0', false))",
    "EXPLAIN (COSTS off) EXECUTE p(pg_advisory_lock(43)::text)",
]


def test_execute_arguments_are_judged(gw: Amber, cred: dict[str, Any]) -> None:
    before = snapshot(gw.target_url, cred["role"])
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.execute("PREPARE p(text) AS SELECT $1")
        assert [sql for sql in EXECUTE_ARGUMENTS if not refused_by_amber(conn, sql)] == []
        assert conn.execute("EXECUTE p('plain' || 'text')").fetchone() == ("plaintext",)
        assert conn.execute("EXECUTE p(upper('stable'))").fetchone() == ("STABLE",)
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    assert snapshot(gw.target_url, cred["role"]) == before


def test_a_set_config_allowed_by_its_literal_is_never_reused_for_another_literal(
    gw: Amber, cred: dict[str, Any]
) -> None:
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for _ in range(2):  # the second time the first verdict would be in the cache
            assert conn.execute("SELECT U&\"set\\005fconfig\"('jit', 'off', false)").fetchone() == ("off",)
        for name in ("search_path", "default_transaction_read_only", "standard_conforming_strings"):
            assert refused_by_amber(conn, f"SELECT U&\"set\\005fconfig\"('{name}', 'off', false)"), name
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


@pytest.mark.parametrize(
    "sql",
    [
        "SET client_encoding TO 'SJIS'",
        "SET client_encoding = 'Shift_JIS_2004'",
        "SET NAMES 'BIG5'",
        "SET SESSION client_encoding TO gbk",
        "SELECT set_config('client_encoding', 'UHC', false)",
        "SELECT set_config('client_encoding', 'GB18030', true)",
        "SELECT pg_catalog.set_config('client_encoding', 'johab', false)",
        "SELECT set_config('client_encoding', (SELECT 'SJIS'), false)",
    ],
)
def test_encodings_that_can_hide_a_quote_are_refused(gw: Amber, cred: dict[str, Any], sql: str) -> None:
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert refused_by_amber(conn, sql)
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)


def test_a_safe_encoding_may_be_chosen_and_an_unsafe_one_not_even_at_login(gw: Amber, cred: dict[str, Any]) -> None:
    with psycopg.connect(cred["url"], autocommit=True, client_encoding="LATIN1") as conn:
        assert conn.execute("SHOW client_encoding").fetchone() == ("LATIN1",)
        conn.execute("SET client_encoding TO 'latin1'")  # the session's own encoding: a no-op
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="client_encoding is fixed at login"):
            conn.execute("SET NAMES 'UTF8'")
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert conn.execute("SELECT set_config('client_encoding', 'UTF8', false)").fetchone() == ("UTF8",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="client_encoding is fixed at login"):
            conn.execute("SELECT set_config('client_encoding', 'EUC_JP', false)")
    with pytest.raises(psycopg.OperationalError, match="amber refuses client_encoding 'SJIS'"):
        psycopg.connect(cred["url"], client_encoding="SJIS")
