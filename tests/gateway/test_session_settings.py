"""The judge's session rules without a database: values as PostgreSQL reads them, timeouts held at the level's
limit, search_path inside the level, unqualified names shadowed by a level's own functions, and verdicts that
never cross sessions with different rules."""

from __future__ import annotations

import pytest

from amber.core.clock import SystemClock
from amber.gateway.server import GatewayServer
from amber.gateway.session_settings import SessionRules, duration_ms, memory_kb, split_identifiers, surely_on
from amber.gateway.statements import judge

RULES = SessionRules(schemas=("app", "Reports"), statement_timeout_ms=5000)


class Schema:
    """pg_catalog's functions, plus whatever `extra` puts in other schemas."""

    def __init__(self, extra: dict[tuple[str, str], str] | None = None) -> None:
        self.extra = extra or {}

    def function_volatility(self, schema: str | None, name: str) -> frozenset[str]:
        if schema not in (None, "pg_catalog"):
            return frozenset(self.extra.get((schema, name), ""))
        catalog = "v" if name in ("random", "pg_advisory_unlock_all", "set_config", "nextval") else "s"
        others = {v for (_, n), v in self.extra.items() if n == name} if schema is None else set()
        return frozenset({catalog, *others})

    def operator_volatility(self, name: str) -> frozenset[str]:
        return frozenset("i")

    def view_definition(self, schema: str | None, name: str) -> str | None:
        return None


def one(sql: str, schema: Schema | None = None, rules: SessionRules = RULES) -> tuple[bool, str | None, str]:
    verdict = judge(sql, schema or Schema(), rules=rules)[0]
    return verdict.allowed, verdict.rewrite, verdict.rule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0.0),
        ("5000", 5000.0),
        ("1.5s", 1500.0),
        (" 2 min ", 120_000.0),
        ("1h", 3_600_000.0),
        ("250us", 0.25),
        ("1e3", 1000.0),
        ("5S", None),  # units are case-sensitive in PostgreSQL
        ("0x10", None),
        ("never", None),
        ("", None),
    ],
)
def test_durations_read_as_postgresql_does(text: str, expected: float | None) -> None:
    assert duration_ms(text) == expected


def test_memory_and_booleans_and_identifier_lists() -> None:
    assert memory_kb("64MB") == 64 * 1024
    assert memory_kb("1024") == 1024
    assert memory_kb("1gb") is None
    assert [surely_on(v) for v in ("on", "TRUE", " yes ", "1", "t", "off", "of", "0", "f", "no", "", None)] == [
        *[True] * 5,
        *[False] * 7,
    ]
    assert split_identifiers('app, "Reports" ,PG_CATALOG, "$user", ""') == ["app", "Reports", "pg_catalog", "$user", ""]
    assert split_identifiers('"a""b"') == ['a"b']
    assert split_identifiers('app, "open') is None
    assert split_identifiers("app,,x") is None


@pytest.mark.parametrize(
    ("sql", "allowed", "rewrite"),
    [
        ("SET statement_timeout = 4000", True, None),
        ("SET statement_timeout = '5s'", True, None),
        ("SET statement_timeout = 0", True, "SET statement_timeout = '5000ms'"),
        ("SET LOCAL statement_timeout = '6s'", True, "SET LOCAL statement_timeout = '5000ms'"),
        ("SET statement_timeout = '0.4ms'", True, "SET statement_timeout = '5000ms'"),
        ("SET lock_timeout = 0", True, "SET lock_timeout = '5000ms'"),
        (
            "SET idle_in_transaction_session_timeout = '2min'",
            True,
            "SET idle_in_transaction_session_timeout = '60000ms'",
        ),
        ("SET idle_in_transaction_session_timeout = '30s'", True, None),
        ("RESET statement_timeout", True, None),
        ("SET statement_timeout = -1", False, None),
        ("SELECT set_config('statement_timeout', '4s', false)", True, None),
        ("SELECT set_config('statement_timeout', '0', false)", False, None),
        ("SET statement_timeout = 0; SELECT 1", False, None),
        ("BEGIN READ WRITE", True, "BEGIN READ ONLY"),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", True, "BEGIN READ ONLY, ISOLATION LEVEL SERIALIZABLE"),
        ("BEGIN READ ONLY, DEFERRABLE", True, None),
        ("SET TRANSACTION READ WRITE", False, None),
    ],
)
def test_timeouts_and_read_write_transactions(sql: str, allowed: bool, rewrite: str | None) -> None:
    verdict = judge(sql, Schema(), rules=RULES)[0]
    assert (verdict.allowed, verdict.rewrite) == (allowed, rewrite), verdict.message
    if rewrite is not None:  # amber's own text passes the judge as it is
        assert one(rewrite) == (True, None, "read")
        assert "amber keeps" in verdict.notice


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        ("SET search_path = app, \"Reports\", pg_catalog, '$user', ''", True),
        ("SET search_path = reports", False),  # the level's schema is "Reports": names keep their case
        ("SET search_path = public", False),  # public is not one of this level's schemas
        ("SELECT set_config('search_path', 'app, \"Reports\"', false)", True),
        ("SELECT set_config('search_path', 'app, Reports', false)", False),
        ("LOCK TABLE app.t IN ACCESS SHARE MODE", True),
        ('LOCK TABLE "Reports".t, t IN ACCESS SHARE MODE NOWAIT', True),
        ("LOCK TABLE other.t IN ACCESS SHARE MODE", False),
        ("LOCK TABLE app.t", False),
        ("SET work_mem = '256MB'", True),
        ("SET work_mem = '257MB'", False),
        ("SET client_encoding = 'utf-8'", True),
        ("SET client_encoding = 'latin1'", False),
        ("SET default_transaction_read_only = 'yes'", True),
        ("SET default_transaction_read_only = 'off'", False),
        ("RESET ALL", True),
        ("DISCARD ALL", True),
        ("UNLISTEN *", True),
        ("SET SESSION AUTHORIZATION DEFAULT", False),
    ],
)
def test_settings_and_locks_stay_inside_the_level(sql: str, allowed: bool) -> None:
    assert one(sql)[0] is allowed


def test_a_function_in_a_level_schema_shadows_an_unqualified_harmless_name() -> None:
    shadowing = Schema({("app", "pg_advisory_unlock_all"): "v", ("public", "set_config"): "v"})
    assert one("SELECT pg_advisory_unlock_all()", shadowing)[0] is False
    assert one("SELECT pg_catalog.pg_advisory_unlock_all()", shadowing)[0] is True
    assert one("SELECT set_config('jit', 'off', false)", shadowing)[0] is False
    assert one("SELECT pg_catalog.set_config('jit', 'off', false)", shadowing)[0] is True
    assert one("SELECT pg_advisory_unlock_all()")[0] is True


def test_pg_dump_settings_row_stands_for_the_literal_only_in_a_flat_query() -> None:
    query = "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = '{}'"
    assert one(query.format("restrict_nonsystem_relation_kind"))[0] is True
    assert one(query.format("default_transaction_read_only"))[0] is False
    assert one(query.format("jit") + " OR true")[0] is False
    assert (
        one("SELECT (SELECT set_config(name, 'off', false) FROM pg_settings s) FROM pg_settings WHERE name = 'jit'")[0]
        is False
    )


def test_sessions_with_different_rules_never_share_a_verdict() -> None:
    gateway = GatewayServer(
        authenticator=None,  # type: ignore[arg-type] - only judge() is used
        recorder=None,  # type: ignore[arg-type]
        schema_for=lambda _r: Schema(),  # type: ignore[arg-type,return-value]
        clock=SystemClock(),
        tls=None,
    )
    sql = "SET search_path = app"
    assert gateway.judge("db", sql, frozenset(), rules=RULES)[0].allowed
    assert not gateway.judge("db", sql, frozenset(), rules=SessionRules(schemas=("public",)))[0].allowed
    limit = "SET statement_timeout = '10s'"
    assert gateway.judge("db", limit, frozenset(), rules=RULES)[0].rewrite == "SET statement_timeout = '5000ms'"
    assert gateway.judge("db", limit, frozenset(), rules=SessionRules(statement_timeout_ms=60_000))[0].rewrite is None
