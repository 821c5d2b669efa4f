"""What the statement judge needs from an upstream database, looked up once and cached for a while.

Looks up function and operator volatility in `pg_proc`/`pg_operator`, view definitions with `pg_get_viewdef`
and the columns of masked tables in `pg_attribute`, over the resource's admin connection (read-only queries on
catalogs). What this does NOT do: resolve overloads by argument types (any volatile overload makes a name
volatile) or follow search_path (an unqualified name matches functions in every schema: stricter, never looser).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

TTL_S = 60.0


class UpstreamSchema:
    def __init__(self, dsn: str, ttl_s: float = TTL_S) -> None:
        self._dsn = dsn
        self._ttl_s = ttl_s
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, Any], tuple[float, Any]] = {}

    def _query(self, key: tuple[str, Any], sql: str, params: tuple[Any, ...]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self._ttl_s:
                return hit[1]
            for attempt in range(2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                    rows = self._conn.execute(sql, params).fetchall()
                    break
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt:
                        raise
            self._cache[key] = (now, rows)
            return rows

    def function_volatility(self, schema: str | None, name: str) -> frozenset[str]:
        rows = self._query(
            ("f", (schema, name)),
            "SELECT p.provolatile FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = %s AND (%s::text IS NULL OR n.nspname = %s)",
            (name, schema, schema),
        )
        return frozenset(str(row[0]) for row in rows)

    def operator_volatility(self, name: str) -> frozenset[str]:
        rows = self._query(
            ("o", name),
            "SELECT p.provolatile FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode WHERE o.oprname = %s",
            (name,),
        )
        return frozenset(str(row[0]) for row in rows)

    def view_definition(self, schema: str | None, name: str) -> str | None:
        rows = self._query(
            ("v", (schema, name)),
            # Every view of that name (search_path decides which one an unqualified name reads): all are judged.
            "SELECT string_agg(pg_get_viewdef(c.oid), E'\\n') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND c.relkind IN ('v', 'm') AND (%s::text IS NULL OR n.nspname = %s "
            "OR (%s::text IS NULL AND pg_table_is_visible(c.oid)))",
            (name, schema, schema, schema),
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def table_columns(self, schema: str, name: str) -> frozenset[str]:
        rows = self._query(
            ("c", (schema, name)),
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (schema, name),
        )
        return frozenset(str(row[0]) for row in rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
