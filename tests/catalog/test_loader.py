"""Catalog loading: a good file loads whole; a bad one names the file, the line, the path and the problem."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from amber.catalog import load_catalog
from amber.core.errors import ConfigError, NotFound

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
version: 1
identity:
  dev_issuer: true
resources:
  - name: orders-db
    kind: postgres
    owners: [team-orders]
    connection: env:ORDERS_URL
    levels:
      read-only:
        schemas: [public, reporting]
        statement_timeout: 45s
        max_ttl: 4h
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "amber.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_quickstart_catalog_loads() -> None:
    catalog = load_catalog(ROOT / "examples" / "quickstart" / "amber.yaml")
    assert "orders-db" in catalog.resources
    assert set(catalog.resource("orders-db").levels) == {"read-only", "audited", "analytics"}


def test_good_catalog_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    level = catalog.level("orders-db", "read-only")
    assert level.schemas == ["public", "reporting"]
    assert level.statement_timeout == timedelta(seconds=45)
    assert level.max_ttl == timedelta(hours=4)
    assert level.connection_limit == 10  # the default: enough for a tool's pool (asyncpg, SQLAlchemy, JDBC)
    assert catalog.bundle_path == tmp_path / "policies"
    monkeypatch.setenv("ORDERS_URL", "postgresql://db.internal/orders")
    assert catalog.resolve_connection("orders-db") == "postgresql://db.internal/orders"


def test_content_hash_changes_with_the_file(tmp_path: Path) -> None:
    base = load_catalog(write(tmp_path, GOOD)).content_hash
    assert load_catalog(write(tmp_path, GOOD)).content_hash == base
    assert load_catalog(write(tmp_path, "# a comment\n" + GOOD)).content_hash != base


@pytest.mark.parametrize(
    ("old", "new", "line", "needle"),
    [
        (
            "        max_ttl: 4h",
            "        max_ttl: forever",
            13,
            "levels.read-only.max_ttl: not a duration: 'forever'",
        ),
        ("        max_ttl: 4h", "        max_ttl: 30d", 13, "max_ttl may be at most 7d"),
        (
            "    connection: env:ORDERS_URL",
            "    connection: postgresql://admin:hunter2@db/orders",
            8,
            "must be a reference",
        ),
        (
            "        max_ttl: 4h",
            "        max_ttl: 4h\n        privileges: [SELECT, INSERT]",
            14,
            "amber never grants a write: privilege 'INSERT'",
        ),
        (
            "        max_ttl: 4h",
            "        max_ttl: 4h\n        access: read-write",
            14,
            "amber never grants a write: access 'read-write'",
        ),
        ("        max_ttl: 4h", "        max_ttl: 4h\n        can_write: true", 14, "unknown key"),
        ("    kind: postgres", "    kind: oracle", 6, "resources[0].kind: Input should be 'postgres'"),
        (
            "        schemas: [public, reporting]",
            '        schemas: ["public; DROP TABLE x"]',
            11,
            "not a plain schema name",
        ),
        ("  - name: orders-db", "  - name: Orders DB", 5, "resources[0].name"),
    ],
)
def test_bad_catalog_names_file_line_and_problem(tmp_path: Path, old: str, new: str, line: int, needle: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    message = info.value.message
    assert f"{path}:{line}:" in message, message
    assert needle in message, message
    assert "hunter2" not in message


def test_not_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "resources:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: not valid YAML"):
        load_catalog(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read catalog"):
        load_catalog(tmp_path / "nope.yaml")


def test_duplicate_resource(tmp_path: Path) -> None:
    text = GOOD + GOOD.split("resources:\n", 1)[1]
    with pytest.raises(ConfigError, match="declared twice"):
        load_catalog(write(tmp_path, text))


def test_unset_reference_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_URL", raising=False)
    catalog = load_catalog(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"amber.yaml:8: environment variable ORDERS_URL"):
        catalog.resolve_connection("orders-db")


def test_file_reference(tmp_path: Path) -> None:
    (tmp_path / "orders.dsn").write_text("postgresql://db/orders\n")
    catalog = load_catalog(write(tmp_path, GOOD.replace("env:ORDERS_URL", "file:orders.dsn")))
    assert catalog.resolve_connection("orders-db") == "postgresql://db/orders"


def test_unknown_names(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    with pytest.raises(NotFound, match="known: orders-db"):
        catalog.resource("payroll")
    with pytest.raises(NotFound, match="known: read-only"):
        catalog.level("orders-db", "admin")


def test_justification_and_policy_settings(tmp_path: Path) -> None:
    text = GOOD.replace("identity:", "policy:\n  timezone: Europe/Berlin\n  pending_ttl: 2h\nidentity:") + (
        "        justification:\n          min_length: 12\n          pattern: '(INC|CHG)-[0-9]+'\n"
    )
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.policy.timezone == "Europe/Berlin"
    assert catalog.policy.pending_ttl == timedelta(hours=2)
    assert catalog.level("orders-db", "read-only").justification.min_length == 12
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Base'"):
        load_catalog(write(tmp_path, text.replace("Europe/Berlin", "Mars/Base")))
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_catalog(write(tmp_path, text.replace("(INC|CHG)-[0-9]+", "(INC")))


def test_reload_keeps_running_catalog_on_error(tmp_path: Path) -> None:
    from amber.api.runtime import CatalogHolder, load_policies

    path = write(tmp_path, GOOD)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.cedar").write_text('@id("p")\npermit (principal, action, resource);\n')
    holder = CatalogHolder(load_catalog(path), load_policies(load_catalog(path)))
    path.write_text(GOOD.replace("max_ttl: 4h", "max_ttl: nope"))
    with pytest.raises(ConfigError):
        holder.reload()
    assert holder().level("orders-db", "read-only").max_ttl == timedelta(hours=4)


MASKED = GOOD.replace(
    "        max_ttl: 4h\n",
    "        max_ttl: 4h\n        masked_columns:\n          public.customers: [name]\n",
)


def test_masked_names_resolve_as_postgresql_does(tmp_path: Path) -> None:
    text = MASKED.replace(
        "          public.customers: [name]\n",
        '          Public.Customers: [Name, \'"Email"\']\n          \'reporting."Odd.Table"\': [\'"a""b"\']\n',
    )
    level = load_catalog(write(tmp_path, text)).level("orders-db", "read-only")
    assert level.masks() == {
        ("public", "customers"): frozenset({"name", "Email"}),
        ("reporting", "Odd.Table"): frozenset({'a"b'}),
    }


@pytest.mark.parametrize(
    ("old", "new", "line", "needle"),
    [
        (
            "          public.customers: [name]",
            "          secret.api_keys: [key]",
            15,
            "levels.read-only.masked_columns: masked table secret.api_keys is outside the level's schemas "
            "(public, reporting)",
        ),
        (
            "          public.customers: [name]",
            "          public.customers: [name]\n          '\"Public\".customers': [name]",
            16,
            'masked table "Public".customers is outside the level\'s schemas',  # quoted: keeps its case
        ),
        ("          public.customers: [name]", "          customers: [name]", 14, "keys are schema.table"),
        ("          public.customers: [name]", "          public.customers: ['na me']", 14, "not a plain or"),
        ("          public.customers: [name]", "          public.customers: []", 14, "lists no column"),
    ],
)
def test_bad_masks_name_file_line_and_problem(tmp_path: Path, old: str, new: str, line: int, needle: str) -> None:
    assert old in MASKED
    path = write(tmp_path, MASKED.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    message = info.value.message
    assert f"{path}:{line}:" in message, message
    assert needle in message, message


def test_a_mask_spelled_in_another_case_than_its_schema_says_how_to_quote_it(tmp_path: Path) -> None:
    text = MASKED.replace("[public, reporting]", "[public, Reporting]").replace("public.customers:", "Reporting.t:")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert f"{path}:15: " in info.value.message
    assert """unquoted here, Reporting means reporting: write '"Reporting".t'""" in info.value.message


def test_a_key_given_twice_is_refused_not_silently_dropped(tmp_path: Path) -> None:
    text = MASKED.replace("        max_ttl: 4h\n", "        max_ttl: 4h\n        masked_columns: {}\n", 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert f"{path}:15: " in info.value.message
    assert "masked_columns is given twice" in info.value.message
