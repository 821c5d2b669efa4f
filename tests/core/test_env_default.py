"""AMBER_ENV unset means production: whoever forgets to say where amber runs gets the strict checks, and the
refusal says how to opt into development. `make run` sets AMBER_ENV=development explicitly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from amber.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart" / "amber.yaml"


def test_unset_means_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMBER_ENV", raising=False)
    assert Settings().env == "production"
    monkeypatch.setenv("AMBER_ENV", "development")
    assert Settings().env == "development"


def _serve(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AMBER_ENV"}
    env.update(AMBER_CATALOG=str(QUICKSTART), AMBER_STATE_DIR=str(tmp_path / "state"), **extra)
    return subprocess.run(
        [sys.executable, "-m", "amber", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_without_amber_env_refuses_the_demo_and_says_how_to_opt_in(tmp_path: Path) -> None:
    result = _serve(tmp_path)
    assert result.returncode == 1
    assert "identity.dev_issuer is refused when AMBER_ENV=production" in result.stderr
    assert "set AMBER_ENV=development" in result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was created


def test_makefile_runs_the_demo_in_development() -> None:
    makefile = (REPO / "Makefile").read_text()
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "AMBER_ENV=development" in run
    assert "amber serve" in run
