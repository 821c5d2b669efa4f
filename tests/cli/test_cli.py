"""The lifecycle through the real `amber` command against a real server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.cli.conftest import Cli
from tests.conftest import connect_as


def test_whole_lifecycle_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    login = cli.run("login", "--dev", "bob", "--groups", "engineering")
    assert "signed in as bob" in login.stdout
    token_file = tmp_path / "config" / "amber" / "profiles" / "default.json"
    assert token_file.stat().st_mode & 0o777 == 0o600
    cli.run("login", "--dev", "carol", "--groups", "leads", profile="carol")

    pending = cli.json("request", "orders-db", "--level", "read-only", "--for", "30m", "--reason", "INC-7 refunds")
    assert pending["status"] == "pending"
    listed = cli.run("requests", "--to-approve", profile="carol").stdout
    assert pending["id"] in listed

    own = cli.run("approve", pending["id"], ok=False)
    assert own.returncode == 1
    assert own.stderr.strip() == (
        f"amber: error: you cannot review request {pending['id']}: nobody approves their own request"
    )

    approved = cli.json("approve", pending["id"], "--comment", "go ahead", profile="carol")
    assert approved["status"] == "approved"
    grant_id = approved["grant"]["id"]

    shown = cli.run("credentials", grant_id)
    assert "shown once" in shown.stdout
    url = next(word.strip("'") for word in shown.stdout.split() if word.startswith("'postgresql://"))
    with connect_as(url) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
        again = cli.run("credentials", grant_id, ok=False)
        assert again.returncode == 1
        assert "already shown" in again.stderr
        grants = cli.json("grants", "--live")
        assert [g["id"] for g in grants] == [grant_id]
        revoked = cli.json("revoke", grant_id, "--reason", "done")
        assert revoked["status"] == "revoked"
    verify = cli.run("audit", "verify", "--allow-unsigned-tail")  # nothing signed a checkpoint here
    assert "ledger OK" in verify.stdout
    assert "trusting the public key stored in the very database" in verify.stderr
    tail = cli.run("audit", "tail", "-n", "3").stdout
    assert "grant.revoked" in tail
    assert "grant.deprovisioned" in tail


def test_auto_approved_request_prints_connection_once_and_waits(cli: Cli) -> None:
    cli.run("login", "--dev", "alice", "--groups", "engineering,oncall")
    out = cli.run("request", "orders-db", "-l", "read-only", "--for", "5m", "-r", "INC-9").stdout
    assert "approved" in out
    assert out.count("psql 'postgresql://amber_g_") == 1
    assert "auto-approved by oncall-at-once" in out


def test_cli_errors_are_one_line_without_traceback(cli: Cli) -> None:
    not_signed_in = cli.run("requests", ok=False)
    assert not_signed_in.returncode == 1
    assert not_signed_in.stderr.strip() == "amber: error: not signed in: run `amber login` first"
    cli.run("login", "--dev", "bob", "--groups", "engineering")
    bad_duration = cli.run("request", "orders-db", "-l", "read-only", "--for", "soon", "-r", "x", ok=False)
    assert bad_duration.returncode == 1
    assert "not a duration: 'soon'" in bad_duration.stderr
    unknown = cli.run("request", "payroll", "-l", "read-only", "--for", "5m", "-r", "x", ok=False)
    assert "no resource named 'payroll'" in unknown.stderr
    denied = cli.run("login", "--dev", "eve", "--groups", "marketing", profile="eve")
    assert denied.returncode == 0
    refused = cli.run(
        "request", "orders-db", "-l", "read-only", "--for", "5m", "-r", "curious", profile="eve", ok=False
    )
    assert refused.returncode == 2
    assert "denied" in refused.stdout
    for result in (not_signed_in, bad_duration, unknown, refused):
        assert "Traceback" not in result.stderr


def test_catalog_validate_reports_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nresources:\n  - name: x\n    kind: postgres\n    connection: postgresql://a@b/c\n"
        "    levels: {ro: {schemas: [public]}}\n"
    )
    result = cli.run("catalog", "validate", str(bad), ok=False)
    assert result.returncode == 1
    assert f"{bad}:5: resources[0].connection: the admin connection must be a reference" in result.stderr


def test_resource_check_and_harden(tmp_path: Path) -> None:
    from tests.conftest import create_database, drop_database

    name = create_database("amber_check")
    try:
        catalog = tmp_path / "check.yaml"
        catalog.write_text(
            "version: 1\nidentity: {dev_issuer: true}\nresources:\n  - name: fresh\n    kind: postgres\n"
            "    connection: env:AMBER_CHECK_URL\n    grantee_group: amber_grantees\n"
            "    levels: {read-only: {schemas: [public]}}\n"
        )
        env = {
            **os.environ,
            "AMBER_CATALOG": str(catalog),
            "AMBER_CHECK_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        }

        def amber(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
            )

        before = amber("resource", "check", "fresh")
        assert before.returncode == 1, before.stderr
        assert "[DANGER]" in before.stdout
        assert f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC' in before.stdout
        assert "lo_from_bytea" in before.stdout
        hardened = amber("resource", "harden", "fresh", "--yes")
        assert hardened.returncode == 0, hardened.stderr
        assert "applied: REVOKE" in hardened.stdout
        after = amber("resource", "check", "fresh")
        assert after.returncode == 0, after.stdout
        assert "[DANGER]" not in after.stdout
    finally:
        drop_database(name)


def test_resource_harden_preview_cautions_when_the_application_may_rely_on_a_fix(tmp_path: Path) -> None:
    from tests.conftest import create_database, drop_database

    name = create_database("amber_check")
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION public.stamp() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user';"
                "CREATE VIEW public.stamped AS SELECT public.stamp() AS who"
            )
        catalog = tmp_path / "check.yaml"
        catalog.write_text(
            "version: 1\nidentity: {dev_issuer: true}\nresources:\n  - name: fresh\n    kind: postgres\n"
            "    connection: env:AMBER_CHECK_URL\n    grantee_group: amber_grantees\n"
            "    levels: {read-only: {schemas: [public]}}\n"
        )
        env = {
            **os.environ,
            "AMBER_ENV": "development",
            "AMBER_CATALOG": str(catalog),
            "AMBER_CHECK_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        }
        preview = subprocess.run(
            [sys.executable, "-m", "amber", "resource", "harden", "fresh"],
            env=env,
            input="n\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert preview.returncode == 0, preview.stderr
        assert '  REVOKE EXECUTE ON FUNCTION "public"."stamp"() FROM PUBLIC\n' in preview.stdout
        assert "    CAUTION, the application may rely on it (used by rule _RETURN on view stamped)" in preview.stdout
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True) as conn:
            # Answered no: nothing applied.
            assert conn.execute("SELECT has_function_privilege('public', 'public.stamp()', 'EXECUTE')").fetchone() == (
                True,
            )
    finally:
        drop_database(name)


def test_resource_check_names_the_direct_levels_a_weaker_guarantee_applies_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amber.cli.main import _direct_levels_caveat

    catalog = tmp_path / "levels.yaml"
    catalog.write_text(
        "version: 1\nidentity: {dev_issuer: true}\nresources:\n  - name: db\n    kind: postgres\n"
        "    connection: env:AMBER_CHECK_URL\n    levels:\n"
        "      read-only: {schemas: [public]}\n      audit: {schemas: [public]}\n"
        "      gw: {schemas: [public], via: gateway}\n"
    )
    monkeypatch.setenv("AMBER_CATALOG", str(catalog))
    monkeypatch.setenv("AMBER_CHECK_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    (caveat,) = _direct_levels_caveat("db", {"expiry-cut-unavailable", "pgaudit-unavailable"})
    assert (caveat.code, caveat.severity) == ("direct-levels-weaker", "warning")
    assert caveat.message == (
        "direct levels of db (audit, read-only): a live session can outlive the grant's expiry while amber is "
        "down; what a session reads is not recorded (gateway levels are not affected)"
    )
    assert _direct_levels_caveat("db", {"expiry-cut-pg-cron", "pgaudit-per-role"}) == []
