"""Fixtures for CLI tests: a real amber server on loopback and a runner for the `amber` command."""

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
from tests.conftest import drop_roles_tagged, free_port


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
