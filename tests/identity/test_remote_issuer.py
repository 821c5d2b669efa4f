"""A configured issuer is found by OpenID discovery over HTTP and its JWKS verifies its tokens.

The issuer here is a second amber's development issuer served by uvicorn on loopback: a real HTTP server with
a real discovery document and JWKS, not a stub inside the verifier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.clock import SystemClock
from amber.core.errors import NotAuthenticated
from amber.core.settings import Settings
from amber.identity import DevIssuer, RemoteKeys, TokenVerifier, TrustedIssuer
from tests.conftest import free_port


@pytest.fixture
def issuer_url(tmp_path: Path, catalog_path: Path, target_url: str) -> Iterator[str]:
    port = free_port()
    settings = Settings(
        env="test",
        state_dir=tmp_path / "idp",
        database_url=f"sqlite:///{tmp_path / 'idp.db'}",
        catalog=catalog_path,
        port=port,
    )
    rt = Runtime.build(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(rt, run_worker=False), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/dev-issuer"
    finally:
        server.should_exit = True
        thread.join(10)
        rt.close()


def test_discovery_then_jwks_verifies_the_issuers_tokens(issuer_url: str, tmp_path: Path) -> None:
    provider = DevIssuer(tmp_path / "idp", issuer_url, SystemClock())  # same key file as the server's
    verifier = TokenVerifier(
        [TrustedIssuer(issuer=issuer_url, audience="amber", keys=RemoteKeys(issuer_url), algorithms=("EdDSA",))],
        SystemClock(),
    )
    principal = verifier.verify(provider.mint("alice", ["engineering"]))
    assert (principal.issuer, principal.subject, principal.groups) == (issuer_url, "dev:alice", {"engineering"})

    stranger = DevIssuer(tmp_path / "other", issuer_url, SystemClock())  # right issuer name, wrong key
    with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
        verifier.verify(stranger.mint("mallory", ["admins"]))


def test_unreachable_issuer_fails_closed(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody"
    verifier = TokenVerifier(
        [TrustedIssuer(issuer=url, audience="amber", keys=RemoteKeys(url, timeout_s=1), algorithms=("EdDSA",))],
        SystemClock(),
    )
    token = DevIssuer(tmp_path, url, SystemClock()).mint("alice", ["engineering"])
    with pytest.raises(NotAuthenticated, match=r"cannot fetch the identity provider's (keys|discovery document)"):
        verifier.verify(token)
