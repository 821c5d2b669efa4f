"""Masked columns: the database refuses them by column-level grants; the gateway refuses and says why."""

from __future__ import annotations

import psycopg
import pytest

from amber.core.crypto import derived_secret, load_or_create_key
from tests.conftest import Amber


def masked_grant(gw: Amber) -> dict[str, str]:
    body = gw.request("alice", "engineering", "oncall", level="masked")
    assert body["grant"]["status"] == "active", body
    return {"url": body["credential"]["url"], "grant_id": body["grant"]["id"], "role": body["grant"]["role"]}


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("SELECT name FROM public.customers", "column name is masked"),
        ("SELECT * FROM public.customers", "`*` would include masked columns (name)"),
        ("SELECT c.* FROM public.customers c", "`*` would include masked columns"),
        ("SELECT id FROM public.customers WHERE name LIKE 'c%'", "column name is masked"),
        ("SELECT upper(c.name) FROM public.customers c", "column name is masked"),
        ("SELECT c FROM public.customers c", "as a whole row would include masked columns"),
        ("SELECT row_to_json(customers) FROM public.customers", "as a whole row"),
        ("COPY public.customers TO STDOUT", "would include masked columns"),
        (
            "SELECT id FROM public.orders o JOIN public.customers c ON c.id = o.customer_id ORDER BY c.name",
            "column name is masked",
        ),
    ],
)
def test_gateway_refuses_masked_columns(gw: Amber, sql: str, needle: str) -> None:
    grant = masked_grant(gw)
    with psycopg.connect(grant["url"], autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="amber refused") as info:
            conn.execute(sql)  # type: ignore[arg-type]
        assert needle in str(info.value)
        assert conn.execute("SELECT id FROM public.customers ORDER BY id LIMIT 2").fetchall() == [(1,), (2,)]
        assert conn.execute("SELECT count(*) FROM public.customers").fetchone() == (10,)


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
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
