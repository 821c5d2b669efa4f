"""Reload (SIGHUP, `amber reload`, POST /v1/reload) rebuilds issuers, the token verifier, sign-in providers and
SCIM settings together with the catalog: all of the new set is in force, or all of the old one stays and the
reason is returned or logged. Tokens come from real OpenID providers on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from tests.conftest import CATALOG, build_runtime, free_port
from tests.identity.conftest import provider_catalog, write_catalog
from tests.identity.oidc import API_RESOURCE, WEB_SECRET, OidcProvider


def second_issuer(idp: OidcProvider, extra: str = "") -> str:
    return textwrap.indent(
        f"- name: second\n  issuer: {idp.issuer}\n  client_id: amber-web\n  audience: {API_RESOURCE}\n"
        f"  algorithms: [RS256]\n{extra}",
        "    ",
    )


def test_reload_adds_an_issuer_and_a_refused_reload_keeps_everything(
    provider: OidcProvider,
    own_provider: OidcProvider,
    state_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    target_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    monkeypatch.setenv("AMBER_TEST_SCIM_RELOAD", "scim-token-for-the-reload-test")
    one = provider_catalog(provider.issuer)
    two = one.replace("  admins: [platform]\n", second_issuer(own_provider) + "  admins: [platform]\n")
    path = write_catalog(tmp_path, one)
    rt = build_runtime(state_url, path, tmp_path, clock)
    admin = {"authorization": f"Bearer {provider.access_token('pat')}"}  # pat is in platform: an admin
    newcomer = {"authorization": f"Bearer {own_provider.access_token('alice')}"}
    try:
        with TestClient(create_app(rt, run_worker=False)) as api:
            refused = api.get("/v1/me", headers=newcomer)
            assert refused.status_code == 401
            assert "issuer is not trusted" in refused.json()["detail"]

            path.write_text(two)
            engineer = {"authorization": f"Bearer {provider.access_token('alice')}"}
            assert api.post("/v1/reload", headers=engineer).status_code == 403  # admins only
            reloaded = api.post("/v1/reload", headers=admin)
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["issuers"] == ["test", "second"]
            assert reloaded.json()["changed"] is True
            assert api.get("/v1/me", headers=newcomer).json()["iss"] == own_provider.issuer
            assert [p["name"] for p in api.get("/auth/providers").json()["providers"]] == ["test", "second"]
            running = rt.catalog().content_hash

            # Each file below is refused; each time the running catalog, issuers and providers stay.
            broken: list[tuple[str, str]] = [
                # valid YAML and schema, but SCIM names an issuer that is not configured
                (
                    one.replace("  admins: [platform]\n", "  scim: {token: env:AMBER_TEST_SCIM_RELOAD, issuer: x}\n")
                    + "\n",
                    "identity.scim.issuer 'x' names no configured issuer",
                ),
                # the schema refuses it: named by file and line
                (
                    two.replace("      algorithms: [RS256]\n    ", "      jwks_max_age: 1s\n    ", 1),
                    "jwks_max_age must be between 10s and 1h",
                ),
                # switching the development issuer on needs a restart
                (one.replace("  admins: [platform]\n", "  dev_issuer: true\n  admins: [platform]\n"), "restart"),
            ]
            for text, reason in broken:
                path.write_text(text)
                response = api.post("/v1/reload", headers=admin)
                assert response.status_code == 422, response.text
                detail = response.json()["detail"]
                assert detail.startswith(f"reload refused; still running catalog {running[:12]}"), detail
                assert f"{path}:" in detail
                assert reason in detail
                assert rt.catalog().content_hash == running
                assert api.get("/v1/me", headers=newcomer).json()["iss"] == own_provider.issuer
                assert [p["name"] for p in api.get("/auth/providers").json()["providers"]] == ["test", "second"]

            # Removing the issuer again: its tokens are refused from that reload on.
            path.write_text(one)
            assert api.post("/v1/reload", headers=admin).json()["issuers"] == ["test"]
            assert api.get("/v1/me", headers=newcomer).status_code == 401
            assert api.get("/v1/me", headers=admin).status_code == 200
    finally:
        rt.close()


def _wait_for(check: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; the server said:\n{log.read_text()}")


def test_sighup_and_amber_reload_on_a_running_server(provider: OidcProvider, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, textwrap.dedent(CATALOG))
    with_issuer = textwrap.dedent(CATALOG).replace(
        "  admins: [platform]\n",
        "  issuers:\n" + second_issuer(provider).replace("second", "okta", 1) + "  admins: [platform]\n",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AMBER_ENV": "test",
        "AMBER_CATALOG": str(catalog),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
        "AMBER_PORT": str(port),
        "AMBER_TEST_TARGET_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "AMBER_URL": url,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    env.pop("AMBER_TOKEN", None)
    log = tmp_path / "serve.log"

    def amber(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    def providers() -> list[str]:
        return [p["name"] for p in httpx.get(f"{url}/auth/providers", timeout=5).json()["providers"]]

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "amber", "serve"], env=env, stdout=out, stderr=out)
    try:
        _wait_for(up, "amber serve", log)
        assert providers() == []
        token = provider.access_token("alice")
        assert httpx.get(f"{url}/v1/me", headers={"authorization": f"Bearer {token}"}).status_code == 401

        catalog.write_text(with_issuer)
        server.send_signal(signal.SIGHUP)
        _wait_for(lambda: providers() == ["okta"], "SIGHUP to add the issuer", log)
        me = httpx.get(f"{url}/v1/me", headers={"authorization": f"Bearer {token}"})
        assert me.json()["iss"] == provider.issuer
        _wait_for(lambda: "identity issuers: okta" in log.read_text(), "the reload's log line", log)

        catalog.write_text(with_issuer.replace("  algorithms: [RS256]\n", "  algorithms: [RS256]\n  token_types: []\n"))
        server.send_signal(signal.SIGHUP)
        _wait_for(lambda: "reload refused" in log.read_text(), "the refusal's log line", log)
        refusal = log.read_text().split("reload refused", 1)[1]  # the message may span lines (one per problem)
        assert "still running the previous catalog, policy and identity settings" in refusal
        assert f"{catalog}:" in refusal
        assert "token_types" in refusal
        assert providers() == ["okta"]
        assert httpx.get(f"{url}/v1/me", headers={"authorization": f"Bearer {token}"}).status_code == 200

        # `amber reload` asks over the API (admins) and prints why it was refused.
        assert amber("login", "--dev", "root", "--groups", "platform").returncode == 0
        refused = amber("reload")
        assert refused.returncode == 1
        assert "reload refused; still running catalog" in refused.stderr
        assert "token_types" in refused.stderr
        catalog.write_text(textwrap.dedent(CATALOG))
        done = amber("reload")
        assert done.returncode == 0, done.stderr
        assert "reloaded: catalog" in done.stdout
        assert "issuers: dev issuer only" in done.stdout
        assert providers() == []
        assert httpx.get(f"{url}/v1/me", headers={"authorization": f"Bearer {token}"}).status_code == 401
    finally:
        server.terminate()
        server.wait(20)
