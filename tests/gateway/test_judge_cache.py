"""The gateway's verdict caches: by exact text, and by shape only where literals cannot matter."""

from __future__ import annotations

from amber.core.clock import SystemClock
from amber.gateway.server import GatewayServer


class Schema:
    def __init__(self) -> None:
        self.lookups = 0

    def function_volatility(self, schema: str | None, name: str) -> frozenset[str]:
        self.lookups += 1
        if schema not in (None, "pg_catalog") or name != name.lower():
            return frozenset()  # every function here is pg_catalog's, named in lower case as PostgreSQL's are
        return frozenset("v") if name in ("nextval", "set_config") else frozenset("i")

    def operator_volatility(self, name: str) -> frozenset[str]:
        return frozenset("i")

    def view_definition(self, schema: str | None, name: str) -> str | None:
        return None


def server(schema: Schema) -> GatewayServer:
    return GatewayServer(
        authenticator=None,
        recorder=None,
        schema_for=lambda _r: schema,  # type: ignore[arg-type]
        clock=SystemClock(),
        tls=None,
    )


def test_selects_differing_only_in_literals_share_a_verdict_but_keep_their_own_text() -> None:
    schema = Schema()
    gateway = server(schema)
    first = gateway.judge("db", "SELECT abs(balance) FROM accounts WHERE id = 1", frozenset())
    lookups = schema.lookups
    second = gateway.judge("db", "SELECT abs(balance) FROM accounts WHERE id = 2", frozenset())
    assert schema.lookups == lookups  # answered from the shape cache
    assert second[0].allowed
    assert second[0].sql == "SELECT abs(balance) FROM accounts WHERE id = 2"
    assert first[0].sql == "SELECT abs(balance) FROM accounts WHERE id = 1"
    refused = gateway.judge("db", "SELECT nextval('a')", frozenset())
    assert not gateway.judge("db", "SELECT nextval('b')", frozenset())[0].allowed
    assert not refused[0].allowed


def test_statements_whose_verdict_depends_on_a_literal_are_never_cached_by_shape() -> None:
    gateway = server(Schema())
    assert gateway.judge("db", "EXPLAIN (ANALYZE 0) DELETE FROM accounts", frozenset())[0].allowed
    assert not gateway.judge("db", "EXPLAIN (ANALYZE 1) DELETE FROM accounts", frozenset())[0].allowed
    assert gateway.judge("db", "EXPLAIN (ANALYZE 0) DELETE FROM accounts", frozenset())[0].allowed


def test_set_config_is_judged_by_its_literal_setting_name_so_never_cached_by_shape() -> None:
    gateway = server(Schema())
    for sql, allowed in [
        ("SELECT set_config('jit', 'off', false)", True),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", False),
        ("SELECT \"SET_CONFIG\"('jit', 'on', false)", False),  # a quoted upper-case name is another function
        ("SELECT set_config('jit', 'on', false)", True),
        ("SELECT set_config('transaction_read_only', 'off', true)", False),
    ]:
        assert gateway.judge("db", sql, frozenset())[0].allowed is allowed, sql


def test_multi_statement_strings_are_not_cached_by_shape() -> None:
    gateway = server(Schema())
    ok = gateway.judge("db", "SELECT 1; SELECT 2", frozenset())
    assert [v.allowed for v in ok] == [True, True]
    mixed = gateway.judge("db", "SELECT 1; DELETE FROM accounts", frozenset())
    assert [v.allowed for v in mixed] == [True, False]


def test_long_texts_are_judged_every_time_and_never_held_in_a_cache() -> None:
    schema = Schema()
    gateway = server(schema)
    long_text = "SELECT abs(1) FROM accounts WHERE note = '" + "x" * 100_000 + "'"
    first = gateway.judge("db", long_text, frozenset())
    lookups = schema.lookups
    second = gateway.judge("db", long_text, frozenset())
    assert first[0].allowed
    assert second[0].allowed
    assert schema.lookups > lookups  # judged again
    assert not gateway._verdicts  # the test reads the caches on purpose
    assert not gateway._shapes
