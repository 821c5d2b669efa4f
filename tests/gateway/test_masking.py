"""Masked columns: the database refuses them by column-level grants; the gateway refuses and says why.

The `masked` level masks public.customers.name and public."Contacts"."Email" (quoted in the catalog: it keeps its
case; its lower-case neighbour `email` stays readable). Every path to a masked column is tried against the
real PostgreSQL through the gateway, and so is every function that serializes rows or runs SQL given as text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from amber.core.crypto import derived_secret, load_or_create_key
from tests.conftest import CATALOG, POLICIES, Amber, pg_admin

OBJECTS = """
CREATE TABLE IF NOT EXISTS public."Contacts" (id int PRIMARY KEY, "Email" text, email text);
INSERT INTO public."Contacts" VALUES (1, 'Hidden@example.com', 'shown@example.com') ON CONFLICT DO NOTHING;
CREATE OR REPLACE VIEW public.customer_names AS SELECT id, name FROM public.customers;
CREATE OR REPLACE VIEW public.customer_ids AS SELECT id FROM public.customers;
CREATE OR REPLACE VIEW public.customer_rows AS SELECT c.* FROM public.customers c;
CREATE OR REPLACE VIEW public.customer_json AS SELECT c.id, to_json(c) AS j FROM public.customers c;
CREATE MATERIALIZED VIEW IF NOT EXISTS public.customer_names_kept AS SELECT id, name FROM public.customers;
"""
DROP_OBJECTS = """
DROP MATERIALIZED VIEW public.customer_names_kept;
DROP VIEW public.customer_json, public.customer_rows, public.customer_ids, public.customer_names;
DROP TABLE public."Contacts";
"""


@pytest.fixture
def catalog_path(tmp_path: Path, target_db: str) -> Iterator[Path]:
    """The test catalog, masking "Contacts"."Email" too; the objects live in the session's shared target
    database only for this test."""
    with pg_admin(target_db) as conn:
        conn.execute(OBJECTS)
    yield _write_catalog(tmp_path)
    with pg_admin(target_db) as conn:
        conn.execute(DROP_OBJECTS)


def _write_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "amber.yaml"
    masked = "          public.customers: [name]\n"
    assert masked in CATALOG
    path.write_text(textwrap.dedent(CATALOG.replace(masked, masked + "          public.Contacts: ['\"Email\"']\n")))
    # `public.Contacts` unquoted folds to public.contacts, which does not exist: the provisioner would fail.
    path.write_text(path.read_text().replace("public.Contacts:", "'public.\"Contacts\"':"))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    return path


def masked_grant(gw: Amber) -> dict[str, str]:
    body = gw.request("alice", "engineering", "oncall", level="masked")
    assert body["grant"]["status"] == "active", body
    return {"url": body["credential"]["url"], "grant_id": body["grant"]["id"], "role": body["grant"]["role"]}


REFUSED = [
    # plain references, qualified or not, quoted or not, aliased
    ("SELECT name FROM public.customers", "column name is masked"),
    ('SELECT "name" FROM customers', "column name is masked"),
    ("SELECT c.name FROM customers AS c", "column name is masked"),
    ("SELECT public.customers.name FROM public.customers", "column name is masked"),
    ('SELECT "public"."customers"."name" FROM "public"."customers"', "column name is masked"),
    ("SELECT id FROM public.customers WHERE name LIKE 'c%'", "column name is masked"),
    ("SELECT upper(c.name) FROM public.customers c", "column name is masked"),
    (
        "SELECT id FROM public.orders o JOIN public.customers c ON c.id = o.customer_id ORDER BY c.name",
        "name is masked",
    ),
    ('SELECT "Email" FROM public."Contacts"', "column Email is masked"),
    ('SELECT k."Email" FROM public."Contacts" k', "column Email is masked"),
    # stars
    ("SELECT * FROM public.customers", "`*` would include masked columns (name)"),
    ("SELECT c.* FROM public.customers c", "`*` would include masked columns"),
    ("SELECT (c).* FROM public.customers c", "`.*` would include masked columns"),
    ('SELECT * FROM public."Contacts"', "`*` would include masked columns (Email)"),
    ("TABLE public.customers", "`*` would include masked columns"),
    ("TABLE customers", "`*` would include masked columns"),
    ("SELECT ROW(c.*) FROM public.customers c", "`*` would include masked columns"),
    ("SELECT * FROM (SELECT * FROM public.customers) s", "`*` would include masked columns"),
    # whole rows and functions over them
    ("SELECT c FROM public.customers c", "as a whole row would include masked columns"),
    ("SELECT customers FROM public.customers", "as a whole row"),
    ("SELECT (c).name FROM public.customers c", "column name is masked"),
    ("SELECT (c).id FROM public.customers c", "as a whole row"),  # PostgreSQL checks every column here too
    ("SELECT c.text FROM public.customers c", "c.text is not a visible column of a masked table"),
    ("SELECT (c).text FROM public.customers c", "as a whole row"),
    ("SELECT customers.text FROM public.customers", "is not a visible column"),
    ("SELECT id FROM public.customers c WHERE c > ROW(0, 'a')", "as a whole row"),
    ("SELECT id FROM public.customers c WHERE (c.id, c.name) > (0, 'a')", "column name is masked"),
    ("SELECT row_to_json(customers) FROM public.customers", "as a whole row"),
    ("SELECT to_json(c) FROM public.customers c", "as a whole row"),
    ("SELECT to_jsonb(c) FROM public.customers c", "as a whole row"),
    ("SELECT json_agg(c) FROM public.customers c", "as a whole row"),
    ("SELECT jsonb_agg(c) FROM public.customers c", "as a whole row"),
    ("SELECT array_agg(c) FROM public.customers c", "as a whole row"),
    ("SELECT hstore(c) FROM public.customers c", "as a whole row"),
    ("SELECT string_agg(c::text, ',') FROM public.customers c", "as a whole row"),
    ("SELECT json_populate_record(c, '{}') FROM public.customers c", "as a whole row"),
    ("SELECT md5(c::text) FROM public.customers c", "as a whole row"),
    ("SELECT row_to_json(ROW(c.*)) FROM public.customers c", "`*` would include masked columns"),
    # joins, renames, subqueries, CTEs, views
    ("SELECT id FROM public.customers NATURAL JOIN public.orders", "NATURAL joins compare every common column"),
    ("SELECT id FROM public.customers JOIN (SELECT 'x' AS name) s USING (name)", "name is masked"),
    ("SELECT n FROM public.customers AS c(i, n)", "column aliases on public.customers rename masked columns"),
    ("SELECT j FROM (public.customers JOIN public.orders o USING (id)) AS j", "j as a whole row"),
    ("SELECT j.text FROM (public.customers c JOIN public.orders o USING (id)) AS j", "j.text is not a visible"),
    ("SELECT j.b FROM (public.customers c JOIN public.orders o USING (id)) AS j(a, b)", "column aliases on a join"),
    ("WITH x(a, b) AS (SELECT id, name FROM public.customers) SELECT a FROM x", "column name is masked"),
    ("SELECT (SELECT max(name) FROM public.customers)", "column name is masked"),
    ("SELECT id FROM public.orders WHERE customer_id IN (SELECT id FROM customers WHERE name = 'x')", "name"),
    ("SELECT id FROM public.customer_names", "view public.customer_names: column name is masked"),
    ("SELECT id FROM public.customer_rows", "view public.customer_rows: column name is masked"),
    ("SELECT id FROM public.customer_json", "view public.customer_json: `*` would include"),  # to_json(c.*)
    ("SELECT id FROM public.customer_names_kept", "view public.customer_names_kept: column name is masked"),
    # COPY
    ("COPY public.customers TO STDOUT", "would include masked columns (name)"),
    ("COPY public.customers (id, name) TO STDOUT", "column name is masked"),
    ("COPY (SELECT name FROM public.customers) TO STDOUT", "column name is masked"),
    ("COPY (SELECT c FROM public.customers c) TO STDOUT", "as a whole row"),
    ("DECLARE cur CURSOR FOR SELECT name FROM public.customers", "column name is masked"),
    ("EXPLAIN SELECT id FROM public.customers WHERE name = 'customer 1'", "column name is masked"),
    ("EXPLAIN (ANALYZE) SELECT c FROM public.customers c", "as a whole row"),
]

# Every function that serializes whole tables, schemas or databases, reads a cursor by name, or runs SQL
# given as text, each by name: refused, or its query text judged (here: one that reaches the masked column).
SERIALIZING = [
    ("table_to_xml", "SELECT table_to_xml('public.customers', true, true, '')", "serializes a whole table"),
    ("table_to_xml", "SELECT table_to_xml('public.orders', true, true, '')", "serializes a whole table"),
    ("table_to_xml", "SELECT table_to_xml('secret.api_keys', true, true, '')", "serializes a whole table"),
    ("table_to_xmlschema", "SELECT table_to_xmlschema('public.customers', true, true, '')", "serializes"),
    ("table_to_xml_and_xmlschema", "SELECT table_to_xml_and_xmlschema('public.customers', true, true, '')", "serial"),
    ("schema_to_xml", "SELECT schema_to_xml('public', true, true, '')", "serializes a whole table, schema"),
    ("schema_to_xml", "SELECT schema_to_xml('secret', true, true, '')", "serializes a whole table, schema"),
    ("schema_to_xmlschema", "SELECT schema_to_xmlschema('public', true, true, '')", "serializes"),
    ("schema_to_xml_and_xmlschema", "SELECT schema_to_xml_and_xmlschema('public', true, true, '')", "serializes"),
    ("database_to_xml", "SELECT database_to_xml(true, true, '')", "serializes a whole table, schema or database"),
    ("database_to_xmlschema", "SELECT database_to_xmlschema(true, true, '')", "serializes"),
    ("database_to_xml_and_xmlschema", "SELECT database_to_xml_and_xmlschema(true, true, '')", "serializes"),
    ("cursor_to_xml", "SELECT cursor_to_xml('cur', 10, true, true, '')", "reads a cursor by name"),
    ("cursor_to_xmlschema", "SELECT cursor_to_xmlschema('cur', true, true, '')", "reads a cursor by name"),
    (
        "query_to_xml",
        "SELECT query_to_xml('SELECT name FROM public.customers', true, true, '')",
        "query_to_xml's query: column name is masked",
    ),
    ("query_to_xml", "SELECT query_to_xml('SELECT * FROM public.customers', true, true, '')", "`*` would include"),
    ("query_to_xml", "SELECT query_to_xml('TABLE secret.api_keys', true, true, '')", None),  # privilege: upstream
    ("query_to_xml", "SELECT query_to_xml($$SELECT 'SELECT 1'$$ || 'x', true, true, '')", "literal string"),
    ("query_to_xml", "SELECT query_to_xml(current_query(), true, true, '')", "only as a literal string"),
    ("query_to_xml", "SELECT query_to_xml(q, true, true, '') FROM (SELECT 'SELECT 1' AS q) s", "literal string"),
    (
        "query_to_xmlschema",
        "SELECT query_to_xmlschema('SELECT c FROM public.customers c', true, true, '')",
        "query_to_xmlschema's query: c as a whole row",
    ),
    (
        "query_to_xml_and_xmlschema",
        "SELECT query_to_xml_and_xmlschema('SELECT name FROM customers', true, true, '')",
        "query_to_xml_and_xmlschema's query: column name is masked",
    ),
    (
        "ts_stat",
        "SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM public.customers')",
        "ts_stat's query: column name is masked",
    ),
    (
        "ts_stat",
        "SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM public.customers', 'a')",
        "ts_stat's query: column name is masked",
    ),
    (
        "ts_rewrite",
        "SELECT ts_rewrite('a'::tsquery, 'SELECT name::tsquery, ''b''::tsquery FROM public.customers')",
        "ts_rewrite's query: column name is masked",
    ),
    ("row_to_json", "SELECT row_to_json(c) FROM public.customers c", "as a whole row"),
    ("to_json", "SELECT to_json(c) FROM public.customers c", "as a whole row"),
    ("to_jsonb", "SELECT to_jsonb(c) FROM public.customers c", "as a whole row"),
    ("json_agg", "SELECT json_agg(c) FROM public.customers c", "as a whole row"),
    ("json_object_agg", "SELECT json_object_agg(c.id, c) FROM public.customers c", "as a whole row"),
    ("xmlforest", "SELECT xmlforest(c.name) FROM public.customers c", "column name is masked"),
]


@pytest.mark.parametrize(("sql", "needle"), REFUSED)
def test_gateway_refuses_masked_columns(gw: Amber, sql: str, needle: str) -> None:
    grant = masked_grant(gw)
    with psycopg.connect(grant["url"], autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="amber refused") as info:
            conn.execute(sql)  # type: ignore[arg-type]
        assert needle in str(info.value)
        assert conn.execute("SELECT id FROM public.customers ORDER BY id LIMIT 2").fetchall() == [(1,), (2,)]
        assert conn.execute("SELECT count(*) FROM public.customers").fetchone() == (10,)


@pytest.mark.parametrize(("function", "sql", "needle"), SERIALIZING)
def test_serializing_and_query_text_functions_by_name(gw: Amber, function: str, sql: str, needle: str | None) -> None:
    assert function in sql
    grant = masked_grant(gw)
    with psycopg.connect(grant["url"], autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)  # type: ignore[arg-type]
        if needle is None:  # judged and allowed by amber; the database's privileges refuse it
            assert "amber refused" not in str(info.value)
            assert isinstance(info.value, psycopg.errors.InsufficientPrivilege | psycopg.errors.SyntaxError)
        else:
            assert "amber refused" in str(info.value)
            assert needle in str(info.value)
        assert conn.execute("SELECT count(*) FROM public.customers").fetchone() == (10,)


ALLOWED = [
    ("SELECT id FROM public.customers ORDER BY id LIMIT 2", [(1,), (2,)]),
    ("SELECT c.id FROM customers c WHERE c.id = 3", [(3,)]),
    ("SELECT count(*) FROM public.customers", [(10,)]),
    ("SELECT o.id FROM public.orders o JOIN public.customers c USING (id) WHERE o.id = 1", [(1,)]),
    ("SELECT id FROM public.customer_ids WHERE id = 4", [(4,)]),
    ("SELECT s::text FROM (SELECT id FROM public.customers WHERE id = 5) s", [("(5)",)]),
    ('SELECT id, email FROM public."Contacts"', [(1, "shown@example.com")]),
    ("SELECT query_to_xml('SELECT id FROM public.customers WHERE id = 1', false, true, '')::text", None),
    ("SELECT count(*) FROM ts_stat('SELECT to_tsvector(''cat dog'')')", [(2,)]),
]


@pytest.mark.parametrize(("sql", "expected"), ALLOWED)
def test_reads_that_avoid_masked_columns_still_work(gw: Amber, sql: str, expected: list[tuple[object]] | None) -> None:
    grant = masked_grant(gw)
    with psycopg.connect(grant["url"], autocommit=True) as conn:
        rows = conn.execute(sql).fetchall()  # type: ignore[arg-type]
        if expected is None:
            assert "<id>1</id>" in str(rows[0][0])
        else:
            assert rows == expected
        with conn.cursor().copy("COPY public.customers (id) TO STDOUT") as copy:
            assert len(list(copy.rows())) == 10


def test_a_query_text_verdict_is_never_reused_for_another_literal(gw: Amber) -> None:
    grant = masked_grant(gw)
    with psycopg.connect(grant["url"], autocommit=True) as conn:
        allowed = "SELECT query_to_xml('SELECT id FROM public.customers', true, true, '')"
        assert conn.execute(allowed).fetchone() is not None
        with pytest.raises(psycopg.Error, match="column name is masked"):
            conn.execute("SELECT query_to_xml('SELECT name FROM public.customers', true, true, '')")
        with pytest.raises(psycopg.Error, match="column name is masked"):
            conn.execute("SELECT query_to_xml('SELECT name FROM public.customers', true, true, '')", prepare=True)


def test_the_database_itself_refuses_masked_columns(gw: Amber) -> None:
    grant = masked_grant(gw)
    key = load_or_create_key(gw.rt.settings.resolved_secret_key_file)
    password = derived_secret(key, "upstream", grant["grant_id"])
    direct = f"postgresql://{grant['role']}:{password}@127.0.0.1:5432/{gw.target_db}"
    with psycopg.connect(direct, autocommit=True) as conn:  # around the gateway, as only amber could
        assert conn.execute("SELECT id FROM public.customers WHERE id = 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT name FROM public.customers")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT id FROM public.customers WHERE name = 'customer 1'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute('SELECT "Email" FROM public."Contacts"')
        assert conn.execute('SELECT email FROM public."Contacts"').fetchone() == ("shown@example.com",)
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)


@pytest.fixture
def extensions(gw: Amber) -> Iterator[None]:
    """tablefunc, dblink and hstore in the shared target database, for this test only."""
    with pg_admin(gw.target_db) as conn:
        conn.execute("CREATE EXTENSION tablefunc; CREATE EXTENSION dblink; CREATE EXTENSION hstore")
    yield
    with pg_admin(gw.target_db) as conn:
        conn.execute("DROP EXTENSION tablefunc, dblink, hstore")


EXTENSION_REFUSED = [
    ("SELECT hstore(c) FROM public.customers c", "as a whole row"),
    ("SELECT * FROM crosstab('SELECT name, ''a'', 1 FROM public.customers') AS t(n text, a int)", "name is masked"),
    ("SELECT * FROM crosstab('SELECT 1; DELETE FROM public.orders') AS t(n text, a int)", "may only be a SELECT"),
    ("SELECT * FROM crosstab('SELECT lo_creat(-1)::text, ''a'', 1') AS t(n text, a int)", "volatile"),
    (
        "SELECT * FROM crosstab('SELECT id::text, ''a'', id FROM public.customers',"
        " 'SELECT name FROM public.customers') AS t(k text, a bigint)",
        "crosstab's query: column name is masked",
    ),
    ("SELECT * FROM connectby('public.customers', 'id', 'name', '1', 0) AS t(a bigint, b bigint, l int)", "builds"),
    ("SELECT dblink('dbname=postgres', 'DELETE FROM public.orders')", "builds or runs SQL"),
    ("SELECT dblink_exec('dbname=postgres', 'DELETE FROM public.orders')", "builds or runs SQL"),
]


@pytest.mark.usefixtures("extensions")
def test_extension_functions_that_run_sql_or_serialize_rows(gw: Amber) -> None:
    grant = masked_grant(gw)
    with psycopg.connect(grant["url"], autocommit=True) as conn:
        for sql, needle in EXTENSION_REFUSED:
            with pytest.raises(psycopg.Error, match="amber refused") as info:
                conn.execute(sql)  # type: ignore[arg-type]
            assert needle in str(info.value), sql
        rows = conn.execute(
            "SELECT * FROM crosstab('SELECT id::text, ''a'', id FROM public.customers WHERE id < 3 ORDER BY 1', 1)"
            " AS t(k text, a bigint)"
        ).fetchall()
        assert rows == [("1", 1), ("2", 2)]
