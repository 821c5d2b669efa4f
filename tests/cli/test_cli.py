"""The lifecycle through the real `amber` command against a real server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.settings import Settings
from tests.conftest import connect_as, drop_roles_tagged, free_port


class Cli:
    def __init__(self, url: str, config_dir: Path, env: dict[str, str]) -> None:
        self.url = url
        self.env = {**os.environ, **env, "AMBER_URL": url, "XDG_CONFIG_HOME": str(config_dir)}

    def run(self, *args: str, profile: str = "default", ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "amber", *args, "--profile", profile]
            if args[0] not in ("audit", "catalog")
            else [sys.executable, "-m", "amber", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if ok:
            assert result.returncode == 0, result.stderr + result.stdout
        return result

    def json(self, *args: str, profile: str = "default") -> Any:
        return json.loads(self.run(*args, "--json", profile=profile).stdout)


@pytest.fixture
def cli(state_url: str, catalog_path: Path, tmp_path: Path, target_db: str, target_url: str) -> Iterator[Cli]:
    port = free_port()
    settings = Settings(
        env="test",
        state_dir=tmp_path / "state",
        database_url=state_url,
        catalog=catalog_path,
        port=port,
        worker_interval_s=0.05,
    )
    rt = Runtime.build(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    env = {
        "AMBER_DATABASE_URL": state_url,
        "AMBER_STATE_DIR": str(tmp_path / "state"),
        "AMBER_CATALOG": str(catalog_path),
        "AMBER_TEST_TARGET_URL": target_url,
    }
    try:
        yield Cli(f"http://127.0.0.1:{port}", tmp_path / "config", env)
    finally:
        server.should_exit = True
        thread.join(10)
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


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
    verify = cli.run("audit", "verify")
    assert "ledger OK" in verify.stdout
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
