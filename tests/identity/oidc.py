"""Drive a real OpenID provider (panva/oidc-provider under Node.js) on loopback for the identity tests.

`OidcProvider` writes the provider's configuration (its RSA keys, clients, test accounts with groups), runs
`node provider.mjs` on a free loopback port, and signs test accounts in through the provider's real
endpoints: authorization code + PKCE by following redirects like a browser, or the device grant. Nothing here
imitates the provider; it only plays the user at its login page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent / "oidc_provider"
API_RESOURCE = "https://amber.test/api"
OTHER_RESOURCE = "https://other.test/api"
WEB_CLIENT = "amber-web"
WEB_SECRET = "web-client-secret-for-tests-only-0123456789"
CLI_CLIENT = "amber-cli"
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"groups": ["engineering", "oncall"], "email": "alice@example.test"},
    "bob": {"groups": ["engineering"], "email": "bob@example.test"},
    "carol": {"groups": ["leads"], "email": "carol@example.test"},
    "pat": {"groups": ["platform"], "email": "pat@example.test"},
}


def ensure_node_modules() -> None:
    """`npm ci` the pinned provider (package-lock.json) the first time; later runs reuse node_modules."""
    if (HERE / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the identity tests need Node.js and npm (a real OpenID provider runs under node)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, capture_output=True, timeout=300)


def new_key(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return jwk


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


@dataclass
class OidcProvider:
    workdir: Path
    port: int
    redirect_uris: list[str] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "port": self.port,
            "keys": self.keys,
            "cookie_keys": [secrets.token_hex(16)],
            "accounts": ACCOUNTS,
            "resource": {"indicator": API_RESOURCE, "others": [OTHER_RESOURCE], "scope": "amber", "ttl_s": 600},
            "clients": [
                {
                    "client_id": WEB_CLIENT,
                    "client_secret": WEB_SECRET,
                    "redirect_uris": [*self.redirect_uris, "http://127.0.0.1/callback"],
                    "post_logout_redirect_uris": [uri.rsplit("/", 2)[0] + "/" for uri in self.redirect_uris],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
                {
                    "client_id": CLI_CLIENT,
                    "token_endpoint_auth_method": "none",
                    "application_type": "native",
                    "redirect_uris": ["http://127.0.0.1/callback"],
                    "grant_types": [
                        "authorization_code",
                        "refresh_token",
                        "urn:ietf:params:oauth:grant-type:device_code",
                    ],
                    "response_types": ["code"],
                },
            ],
        }

    def start(self) -> None:
        ensure_node_modules()
        if not self.keys:
            self.keys = [new_key("key-1")]
        path = self.workdir / f"provider-{self.port}.json"
        path.write_text(json.dumps(self.config()))
        path.chmod(0o600)
        node = shutil.which("node") or "node"
        self.process = subprocess.Popen(
            [node, str(HERE / "provider.mjs"), str(path)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("ready"):
            raise RuntimeError(f"the OpenID provider did not start: {line!r}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the OpenID provider does not answer discovery")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def rotate(self, *, keep_old: bool = True) -> str:
        """Key rotation at the provider: a new signing key first, the old one still published (or not)."""
        kid = f"key-{len(self.keys) + 1}"
        self.keys = [new_key(kid), *(self.keys if keep_old else [])]
        self.stop()
        self.start()
        return kid

    def withdraw(self, kid: str) -> None:
        """The provider stops publishing (and signing with) the key `kid`; the others stay."""
        self.keys = [key for key in self.keys if key["kid"] != kid]
        self.stop()
        self.start()

    # -- playing the user ------------------------------------------------------------------------------------

    def sign_in(self, browser: httpx.Client, authorize_url: str, user: str) -> httpx.Response:
        """Follow the provider's pages from an authorization URL to the redirect back (not followed)."""
        response = browser.get(authorize_url)
        for _ in range(10):
            if response.status_code in (302, 303) and not response.headers["location"].startswith(self.issuer):
                location = response.headers["location"]
                if location.startswith("/"):
                    location = self.issuer + location
                else:
                    return response
                response = browser.get(location)
                continue
            if response.status_code in (302, 303):
                response = browser.get(response.headers["location"])
                continue
            form = re.search(r'action="(/interaction/[^"]+/login)"', response.text)
            if form is None:
                raise AssertionError(f"unexpected provider page: {response.status_code} {response.text[:300]}")
            response = browser.post(self.issuer + form.group(1), data={"login": user})
        raise AssertionError("too many redirects at the provider")

    def tokens(self, user: str, *, resource: str = API_RESOURCE, client_id: str = CLI_CLIENT) -> dict[str, Any]:
        """Sign `user` in with authorization code + PKCE as the public CLI client; returns the token response."""
        verifier, challenge = pkce()
        redirect = "http://127.0.0.1/callback"
        query = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": "openid profile email groups amber offline_access",
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
            "prompt": "consent",
        }
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            back = self.sign_in(browser, f"{self.issuer}/auth?{urlencode(query)}", user)
        code = parse_qs(urlparse(back.headers["location"]).query)["code"][0]
        response = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "client_id": client_id,
                "code_verifier": verifier,
                "resource": resource,
            },
            timeout=10,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def access_token(self, user: str, *, resource: str = API_RESOURCE) -> str:
        return str(self.tokens(user, resource=resource)["access_token"])

    def approve_device(self, verification_uri: str, user_code: str, user: str) -> None:
        """At the provider's device page: enter the code, sign in, confirm (what a person does in a browser)."""
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            page = browser.get(verification_uri)
            xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
            assert xsrf is not None, page.text[:300]
            response = browser.post(verification_uri, data={"xsrf": xsrf.group(1), "user_code": user_code})
            for _ in range(10):
                if response.status_code in (302, 303):
                    location = response.headers["location"]
                    response = browser.get(location if location.startswith("http") else self.issuer + location)
                    continue
                form = re.search(r'action="(/interaction/[^"]+/login)"', response.text)
                if form is not None:
                    response = browser.post(self.issuer + form.group(1), data={"login": user})
                    continue
                confirm = re.search(r'name="xsrf" value="([^"]+)"', response.text)
                if confirm is not None and "op.deviceConfirmForm" in response.text:
                    response = browser.post(
                        verification_uri, data={"xsrf": confirm.group(1), "user_code": user_code, "confirm": "yes"}
                    )
                    continue
                return
            raise AssertionError("too many steps at the provider's device pages")
