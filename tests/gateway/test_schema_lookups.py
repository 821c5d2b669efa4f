"""The judge's schema lookups: batched, off the event loop, bounded, and never older than a schema change.

- Thousands of unknown function names in one statement cost one batched lookup, made in a worker thread, and
  the statement is refused; other sessions are served meanwhile.
- The cache is an LRU with a bound.
- When the upstream's catalogs change (a function relabelled VOLATILE, a view redefined), the next check
  empties the cache and no verdict cached before the change is reused.
- A function whose own SET clause changes a pinned setting is refused.
- A lookup that fails is refused (fail closed) and not cached as a verdict.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from amber.gateway.schema_info import UpstreamSchema
from amber.gateway.service import Gateway
from tests.conftest import Amber, connect_as
from tests.gateway.conftest import gateway_credential

SETUP = """
CREATE OR REPLACE FUNCTION public.amber_t_labelled(a int) RETURNS int LANGUAGE sql STABLE AS 'SELECT a + 1';
CREATE OR REPLACE VIEW public.amber_t_view AS SELECT 1 AS one;
CREATE OR REPLACE FUNCTION public.amber_t_sets_sscs() RETURNS int LANGUAGE sql STABLE
  SET standard_conforming_strings = off AS 'SELECT 1';
"""
TEARDOWN = """
DROP VIEW IF EXISTS public.amber_t_view;
DROP FUNCTION IF EXISTS public.amber_t_labelled(int);
DROP FUNCTION IF EXISTS public.amber_t_sets_sscs();
"""


@pytest.fixture
def objects(gw: Amber) -> Iterator[None]:
    with connect_as(gw.target_url) as admin:
        admin.execute(SETUP)
    yield
    with connect_as(gw.target_url) as admin:
        admin.execute(TEARDOWN)


def gateway(amber: Amber) -> Gateway:
    assert amber.rt.gateway is not None
    return amber.rt.gateway


def schema(amber: Amber) -> UpstreamSchema:
    return gateway(amber).schema_for("orders-db")


def refusal(conn: psycopg.Connection[Any], sql: str) -> str | None:
    try:
        conn.execute(sql)  # type: ignore[arg-type] - test strings
    except psycopg.Error as exc:
        return str(exc)
    return None


def test_many_unknown_names_cost_one_lookup_in_a_worker_thread(gw: Amber, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = gateway_credential(gw)
    upstream = schema(gw)
    calls: list[tuple[str, int]] = []
    fetch = upstream.fetch

    def spying_fetch(keys: Any) -> Any:
        keys = list(keys)
        calls.append((threading.current_thread().name, len(keys)))
        return fetch(keys)

    monkeypatch.setattr(upstream, "fetch", spying_fetch)
    names = ", ".join(f"amber_no_such_function_{i}()" for i in range(5000))
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        message = refusal(conn, f"SELECT {names}")
        assert message is not None
        assert "amber refused" in message
        assert "is unknown here" in message
        assert conn.execute("SELECT 1").fetchone() == (1,)
    loop_thread = gateway(gw).server._loop
    assert loop_thread is not None
    assert len(calls) == 1  # one batched lookup for all 5,000 names
    thread, count = calls[0]
    assert count == 5000
    assert thread != "MainThread"
    assert "asyncio" in thread or "ThreadPool" in thread  # asyncio.to_thread's worker, never the loop's thread


def test_the_cache_is_bounded() -> None:
    upstream = UpstreamSchema("postgresql://postgres@127.0.0.1:5432/postgres", max_entries=100)
    try:
        keys = [("f", "", f"amber_no_such_{i}") for i in range(250)]
        upstream.fetch(keys)
        assert len(upstream) == 100
        assert sum(upstream.cached(key) == frozenset() for key in keys) == 100
        upstream.fetch([("f", "", "amber_newest")])  # the least recently used goes first
        assert upstream.cached(("f", "", "amber_newest")) == frozenset()
        assert len(upstream) == 100
    finally:
        upstream.close()


def test_a_verdict_never_outlives_a_schema_change_that_alters_it(gw: Amber, objects: None) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert conn.execute("SELECT public.amber_t_labelled(1)").fetchone() == (2,)
        assert conn.execute("SELECT one FROM public.amber_t_view").fetchone() == (1,)
        with connect_as(gw.target_url) as admin:
            admin.execute("ALTER FUNCTION public.amber_t_labelled(int) VOLATILE")
            admin.execute(
                "CREATE OR REPLACE VIEW public.amber_t_view AS SELECT length(pg_advisory_lock(1)::text) AS one"
            )
        version = schema(gw).version
        gateway(gw).refresh_schemas()  # what the watcher does every schema_poll_s
        assert schema(gw).version == version + 1
        message = refusal(conn, "SELECT public.amber_t_labelled(1)")
        assert message is not None
        assert "is volatile" in message
        message = refusal(conn, "SELECT one FROM public.amber_t_view")
        assert message is not None
        assert "view public.amber_t_view" in message
        gateway(gw).refresh_schemas()  # nothing changed since: the cache stays
        assert schema(gw).version == version + 1


def test_the_schema_watcher_runs_by_itself(gw: Amber, objects: None) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert conn.execute("SELECT public.amber_t_labelled(1)").fetchone() == (2,)
    version = schema(gw).version
    with connect_as(gw.target_url) as admin:
        admin.execute("ALTER FUNCTION public.amber_t_labelled(int) VOLATILE")
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for _ in range(300):  # the watcher polls every second
            if schema(gw).version != version:
                break
            conn.execute("SELECT pg_sleep(0.01)")
        assert schema(gw).version == version + 1


def test_a_function_that_sets_a_pinned_setting_is_refused(gw: Amber, objects: None) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        message = refusal(conn, "SELECT public.amber_t_sets_sscs()")
    assert message is not None
    assert "keeps those pinned" in message


def test_a_lookup_that_fails_is_refused_and_retried_later(gw: Amber, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = gateway_credential(gw)
    upstream = schema(gw)
    monkeypatch.setattr(upstream, "_dsn", "postgresql://postgres@127.0.0.1:1/nowhere")
    upstream.close()
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        message = refusal(conn, "SELECT upper('x')")
        assert message is not None
        assert "could not look this statement's functions and relations up" in message
        monkeypatch.undo()
        for key in [k for k in list(upstream._cache) if k[0] == "f"]:
            del upstream._cache[key]
        assert conn.execute("SELECT upper('x')").fetchone() == ("X",)  # the refusal was not cached
