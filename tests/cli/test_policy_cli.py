"""`amber policy validate | test | explain | reload` as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cli.test_cli import Cli

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def amber(*args: str, catalog: Path = QUICKSTART / "amber.yaml") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMBER_CATALOG": str(catalog)}
    return subprocess.run(
        [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def copy_quickstart(tmp_path: Path) -> Path:
    shutil.copytree(QUICKSTART, tmp_path / "qs")
    return tmp_path / "qs"


def test_quickstart_policy_tests_pass() -> None:
    result = amber("policy", "test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert "policy tests: 15 passed, 0 failed" in result.stdout


def test_a_failing_case_is_reported_like_a_test_runner(tmp_path: Path) -> None:
    root = copy_quickstart(tmp_path)
    cases = root / "policies" / "tests" / "requests.yaml"
    cases.write_text(
        cases.read_text().replace(
            'expect: {outcome: deny, policies: ["default:deny"]}', "expect: {outcome: auto_approve}"
        )
    )
    result = amber("policy", "test", catalog=root / "amber.yaml")
    assert result.returncode == 1
    assert f"FAIL  someone outside engineering is denied by default  ({cases}:30)" in result.stdout
    assert "expected outcome auto_approve, got deny by ['default:deny']" in result.stdout
    assert "14 passed, 1 failed" in result.stdout


def test_validate_names_file_and_line(tmp_path: Path) -> None:
    root = copy_quickstart(tmp_path)
    good = amber("policy", "validate", catalog=root / "amber.yaml")
    assert good.returncode == 0
    assert "OK, 10 policies" in good.stdout
    broken = root / "policies" / "approvals.cedar"
    broken.write_text(
        broken.read_text() + '\n@id("typo")\npermit (principal, action == Amber::Action::"aprove", resource);\n'
    )
    bad = amber("policy", "validate", catalog=root / "amber.yaml")
    assert bad.returncode == 1
    assert f"{broken}:10:" in bad.stderr
    assert "aprove" in bad.stderr
    assert "Traceback" not in bad.stderr
    serve_refuses = amber("catalog", "validate", catalog=root / "amber.yaml")
    assert serve_refuses.returncode == 1


def test_explain_and_reload_through_the_server(cli: Cli) -> None:
    cli.run("login", "--dev", "alice", "--groups", "engineering,oncall")
    request = cli.json("request", "orders-db", "-l", "read-only", "--for", "5m", "-r", "INC-9 check")
    explained = cli.run("policy", "explain", request["id"]).stdout
    assert f"request {request['id']}: approved (decided auto_approve" in explained
    assert "policy oncall-at-once  at " in explained
    assert "@auto_approve" in explained
    refused = cli.run("policy", "reload", ok=False)
    assert refused.returncode == 1
    assert "needs the admin role" in refused.stderr
    cli.run("login", "--dev", "root", "--groups", "platform", profile="root")
    assert "policy unchanged" in cli.run("policy", "reload", profile="root").stdout
