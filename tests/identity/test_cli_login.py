"""`amber login` against the real provider: the device grant, the loopback redirect with PKCE, the 0600 cache and
its refresh. amber runs as a real server on loopback (SQLite state: these tests exercise the CLI and the
provider, not the state store, which the rest of the suite runs on both stores)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
import uvicorn

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.settings import Settings
from tests.conftest import free_port
from tests.identity.conftest import provider_catalog, write_catalog
from tests.identity.oidc import WEB_SECRET, OidcProvider


@pytest.fixture
def live_amber(provider: OidcProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    catalog = write_catalog(tmp_path, provider_catalog(provider.issuer))
    port = free_port()
    settings = Settings(
        env="test",
        state_dir=tmp_path / "state",
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        catalog=catalog,
        port=port,
    )
    rt = Runtime.build(settings)
    server = uvicorn.Server(
        uvicorn.Config(create_app(rt, run_worker=False), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        rt.close()


def amber_cli(url: str, config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AMBER_URL": url, "XDG_CONFIG_HOME": str(config)}
    env.pop("AMBER_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "amber", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream: IO[str], pattern: str) -> re.Match[str]:
    for _ in range(20):
        line = stream.readline()
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"the CLI never printed {pattern!r}")


def test_device_flow_signs_in_and_caches_0600(live_amber: str, provider: OidcProvider, tmp_path: Path) -> None:
    login = amber_cli(live_amber, tmp_path / "config", "login", "--provider", "test", "--profile", "work")
    assert login.stdout is not None
    where = read_until(login.stdout, r"open (\S+)").group(1)
    code = read_until(login.stdout, r"code: (\S+)").group(1)
    assert where.endswith(f"user_code={code}")
    provider.approve_device(where.split("?")[0], code, "alice")
    out, err = login.communicate(timeout=30)
    assert login.returncode == 0, err
    assert "signed in as alice" in out
    assert "eyJ" not in out + err  # no token is ever printed

    cache = tmp_path / "config" / "amber" / "profiles" / "work.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    saved = json.loads(cache.read_text())
    assert saved["refresh_token"]
    assert saved["issuer"] == provider.issuer

    whoami = amber_cli(live_amber, tmp_path / "config", "whoami", "--profile", "work", "--json")
    out, err = whoami.communicate(timeout=30)
    assert whoami.returncode == 0, err
    assert json.loads(out)["sub"] == "alice"

    # The cached token runs out: the next command refreshes it with the refresh token, then works.
    saved["expires_at"] = time.time() - 1
    cache.write_text(json.dumps(saved))
    whoami = amber_cli(live_amber, tmp_path / "config", "whoami", "--profile", "work", "--json")
    out, err = whoami.communicate(timeout=30)
    assert whoami.returncode == 0, err
    refreshed = json.loads(cache.read_text())
    assert refreshed["access_token"] != saved["access_token"]
    assert refreshed["expires_at"] > time.time() + 60
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


def test_loopback_redirect_with_pkce(live_amber: str, provider: OidcProvider, tmp_path: Path) -> None:
    login = amber_cli(live_amber, tmp_path / "config", "login", "--browser", "--no-open", "--profile", "laptop")
    assert login.stdout is not None
    url = read_until(login.stdout, r"open (\S+)").group(1)
    assert "code_challenge_method=S256" in url
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        back = provider.sign_in(browser, url, "bob")
        assert back.headers["location"].startswith("http://127.0.0.1:")
        assert browser.get(back.headers["location"]).status_code == 200  # the CLI's loopback listener
    out, err = login.communicate(timeout=30)
    assert login.returncode == 0, err
    assert "signed in as bob" in out
