"""What the statement judge needs from an upstream database: looked up in batches off the event loop, cached in a
bounded LRU, and forgotten when the upstream's catalogs change.

Looks up function and operator volatility in `pg_proc`/`pg_operator` (and whether a function's own `SET` clause
changes a setting the gateway pins), view definitions with `pg_get_viewdef` and table columns in `pg_attribute`,
over the resource's admin connection (read-only queries on catalogs).

How the judge uses it without blocking the gateway's event loop (decision 0010): the judge runs against a
`Lookup`, which answers from the cache and notes every name it does not know (answering a placeholder, so one
pass collects every name a statement needs). A verdict judged with missing names is never used: the server
raises `NeedLookups`, the session stops reading its client, `UpstreamSchema.fetch` looks every missing name
up in one query per kind in a worker thread, and the statement is judged again (views can name more: a few
rounds at most). A lookup that fails is refused (fail closed) and retried after a few seconds.

Freshness: `check_generation` (every `schema_poll_s`, in a worker thread) compares a fingerprint of the
catalogs the judge reads (row counts and transaction ids of pg_proc, pg_operator, pg_rewrite, pg_class,
pg_attribute, pg_namespace: any DDL that could change a verdict writes one of them). When it changes, the cache
is emptied and `version` moves on, which retires every cached verdict (the server keys them by version).

What this does NOT do: resolve overloads by argument types (any volatile overload makes a name volatile) or
follow the session's search_path (an unqualified function name matches functions in every schema: stricter,
never looser); see statements.py for unqualified relations.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import psycopg

from amber.gateway.session_settings import PRIVILEGE, Refused

TTL_S = 300.0  # a backstop: the generation check normally empties the cache first
UNAVAILABLE_TTL_S = 5.0  # a failed lookup is refused for this long, then tried again
MAX_ENTRIES = 50_000
# A function whose own SET clause changes one of these changes how the server reads text while it runs.
PINNED_IN_FUNCTIONS = frozenset(
    {"standard_conforming_strings", "client_encoding", "backslash_quote", "escape_string_warning"}
)
SETS_PINNED = "x"  # a volatility letter of amber's own: some function of this name has such a SET clause

Key = tuple[str, ...]  # ("f", schema or "", name) | ("o", name) | ("v", schema or "", name) | ("c", schema, name)
_UNAVAILABLE = object()

GENERATION_SQL = "SELECT " + " || '/' || ".join(
    f"(SELECT count(*) || '.' || coalesce(sum(xmin::text::bigint), 0) FROM pg_catalog.{table})"
    for table in ("pg_proc", "pg_operator", "pg_rewrite", "pg_class", "pg_attribute", "pg_namespace")
)


class NeedLookups(Exception):
    """The judge needs names it does not know yet; look them up (off the loop) and judge again."""

    def __init__(self, schema: UpstreamSchema, keys: frozenset[Key]) -> None:
        super().__init__(f"{len(keys)} names to look up")
        self.schema = schema
        self.keys = keys


class UpstreamSchema:
    def __init__(self, dsn: str, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        self._dsn = dsn
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()  # one query at a time on the admin connection
        self._lock = threading.Lock()  # the cache (read on the loop, written by fetching threads)
        self._cache: OrderedDict[Key, tuple[float, Any]] = OrderedDict()
        self._generation: str | None = None
        self.version = 0  # moves on whenever the cache is emptied because the catalogs changed
        self.fetches = 0  # how many batched lookups ran (figures and tests)

    # -- the cache, as the judge sees it ---------------------------------------------------------------------

    def cached(self, key: Key) -> Any:
        """The cached answer for `key`, `_UNAVAILABLE` if its lookup failed lately, or None if not known."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            at, value = hit
            if now - at >= (UNAVAILABLE_TTL_S if value is _UNAVAILABLE else self._ttl_s):
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return hit[1]

    def _store(self, values: dict[Key, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            for key, value in values.items():
                self._cache[key] = (now, value)
                self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)

    # -- looking up (blocking: call from a worker thread) -------------------------------------------------------

    def fetch(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """Look every key up in one query per kind, cache the answers and return them. If the database cannot
        be asked, the keys are cached as unavailable (refused for UNAVAILABLE_TTL_S) and the error is raised.

        The catalogs' fingerprint is read in the same snapshot as the answers: if it moved since the last look,
        the cache is emptied first, so no answer older than a change is kept beside newer ones."""
        wanted = set(keys)
        try:
            with self._conn_lock:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    generation = str(self._rows(GENERATION_SQL, ())[0][0])
                    found = self._lookup(wanted)
        except Exception:  # any failure: the keys are refused for a while (fail closed), never retried at once
            with self._conn_lock:
                self._conn = None
            self._store(dict.fromkeys(wanted, _UNAVAILABLE))
            raise
        self._moved_to(generation)
        self._store(found)
        self.fetches += 1
        return found

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
        return self._conn

    def _lookup(self, keys: set[Key]) -> dict[Key, Any]:
        """One query per kind of key; each answer built from that query's rows grouped by name (no rescans)."""
        found: dict[Key, Any] = {}
        functions = [k for k in keys if k[0] == "f"]
        if functions:
            procs = self._by_name(
                "SELECT p.proname, n.nspname, p.provolatile, p.proconfig FROM pg_catalog.pg_proc p "
                "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.proname = ANY(%s)",
                {k[2] for k in functions},
            )
            for key in functions:
                letters = set()
                for schema, volatility, config in procs.get(key[2], ()):
                    if not key[1] or schema == key[1]:
                        letters.add(str(volatility))
                        if any(str(item).split("=", 1)[0].lower() in PINNED_IN_FUNCTIONS for item in config or ()):
                            letters.add(SETS_PINNED)
                found[key] = frozenset(letters)
        operators = [k for k in keys if k[0] == "o"]
        if operators:
            ops = self._by_name(
                "SELECT o.oprname, p.provolatile FROM pg_catalog.pg_operator o "
                "JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE o.oprname = ANY(%s)",
                {k[1] for k in operators},
            )
            for key in operators:
                found[key] = frozenset(str(volatility) for (volatility,) in ops.get(key[1], ()))
        views = [k for k in keys if k[0] == "v"]
        if views:
            defined = self._by_name(
                "SELECT c.relname, n.nspname, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = ANY(%s) AND c.relkind IN ('v', 'm')",
                {k[2] for k in views},
            )
            for key in views:
                # Unqualified: every view of that name in any schema is judged (the session's search_path, not
                # amber's, decides which one it reads).
                definitions = sorted(
                    str(definition)
                    for schema, definition in defined.get(key[2], ())
                    if (schema == key[1] or not key[1]) and definition is not None
                )
                found[key] = "\n".join(definitions)  # "" for a table or nothing: cached as known
        tables = [k for k in keys if k[0] == "c"]
        if tables:
            columns = self._by_name(
                "SELECT c.relname, n.nspname, a.attname FROM pg_catalog.pg_attribute a "
                "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                {k[2] for k in tables},
            )
            for key in tables:
                found[key] = frozenset(str(col) for schema, col in columns.get(key[2], ()) if schema == key[1])
        return found

    def _by_name(self, sql: str, names: set[str]) -> dict[str, list[tuple[Any, ...]]]:
        """Rows of a catalog query whose first column is the name asked for, grouped by it."""
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for name, *rest in self._rows(sql, (sorted(names),)):
            grouped.setdefault(str(name), []).append(tuple(rest))
        return grouped

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of one catalog query (the caller holds _conn_lock)."""
        return self._connection().execute(sql, params).fetchall()

    def check_generation(self) -> bool:
        """Compare the catalogs' fingerprint with the last one; if they changed, empty the cache and move
        `version` on. True if they changed. Blocking: call from a worker thread."""
        try:
            with self._conn_lock:
                generation = str(self._rows(GENERATION_SQL, ())[0][0])
        except psycopg.Error:
            with self._conn_lock:
                self._conn = None
            raise
        return self._moved_to(generation)

    def _moved_to(self, generation: str) -> bool:
        with self._lock:
            if generation == self._generation:
                return False
            changed = self._generation is not None
            self._generation = generation
            if changed:
                self._cache.clear()
                self.version += 1
            return changed

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Lookup:
    """The SchemaInfo one judgement runs against: the shared cache plus what this statement's earlier rounds
    fetched. Unknown names are collected in `missing` and answered with placeholders that let the judge walk
    on; a verdict reached with anything missing must be thrown away (see NeedLookups)."""

    def __init__(self, schema: UpstreamSchema, fetched: dict[Key, Any] | None = None) -> None:
        self.schema = schema
        self.fetched = fetched or {}
        self.missing: set[Key] = set()
        self.unavailable = False

    def _get(self, key: Key, placeholder: Any) -> Any:
        value = self.fetched[key] if key in self.fetched else self.schema.cached(key)
        if value is _UNAVAILABLE:
            self.unavailable = True
            raise Refused(
                "lookup",
                "amber could not look this statement's functions and relations up in the database just now "
                "(fail closed); try again in a few seconds",
                PRIVILEGE,
            )
        if value is None and key not in self.fetched:
            self.missing.add(key)
            return placeholder
        return value

    def function_volatility(self, schema: str | None, name: str) -> frozenset[str]:
        value: frozenset[str] = self._get(("f", schema or "", name), frozenset("i"))
        return value

    def operator_volatility(self, name: str) -> frozenset[str]:
        value: frozenset[str] = self._get(("o", name), frozenset())
        return value

    def view_definition(self, schema: str | None, name: str) -> str | None:
        value: str = self._get(("v", schema or "", name), "")
        return value or None

    def table_columns(self, schema: str, name: str) -> frozenset[str]:
        value: frozenset[str] = self._get(("c", schema, name), frozenset())
        return value
