"""Fixtures for the identity tests: a real OpenID provider (oidc-provider under Node.js) on loopback, and an
amber configured to trust it (no dev issuer), on both state stores."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from tests.conftest import CATALOG, POLICIES, Amber, build_runtime, drop_roles_tagged, free_port
from tests.identity.oidc import API_RESOURCE, WEB_SECRET, OidcProvider

AMBER_URL = "http://amber.test"


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the session; tests that rotate its keys use `own_provider`."""
    idp = OidcProvider(
        tmp_path_factory.mktemp("idp"),
        free_port(),
        redirect_uris=[f"{AMBER_URL}/auth/callback", "https://amber.test/auth/callback"],
    )
    idp.start()
    yield idp
    idp.stop()


@pytest.fixture
def own_provider(tmp_path: Path) -> Iterator[OidcProvider]:
    idp = OidcProvider(tmp_path, free_port())
    idp.start()
    yield idp
    idp.stop()


def provider_catalog(issuer: str, extra_identity: str = "") -> str:
    block = textwrap.indent(
        textwrap.dedent(
            f"""\
            issuers:
              - name: test
                display_name: Test provider
                issuer: {issuer}
                client_id: amber-web
                client_secret: env:AMBER_TEST_OIDC_SECRET
                cli_client_id: amber-cli
                audience: {API_RESOURCE}
                resource: {API_RESOURCE}
                scopes: [openid, profile, email, groups, amber]
                algorithms: [RS256]
            """
        )
        + textwrap.dedent(extra_identity),
        "  ",
    )
    return textwrap.dedent(CATALOG).replace("  dev_issuer: true\n", block)


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "amber.yaml"
    path.write_text(text)
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    return path


@pytest.fixture
def oidc_amber(
    provider: OidcProvider,
    state_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    target_db: str,
    target_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Amber]:
    """amber trusting only the real provider; roles: requesters are engineers, approvers are leads."""
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    roles = """\
    roles:
      requester: [engineering]
      approver: [leads]
    """
    catalog = write_catalog(tmp_path, provider_catalog(provider.issuer, roles))
    rt = build_runtime(state_url, catalog, tmp_path, clock)
    try:
        with TestClient(create_app(rt, run_worker=False), raise_server_exceptions=False) as api:
            yield Amber(rt=rt, api=api, clock=clock, target_db=target_db, target_url=target_url)
    finally:
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)
