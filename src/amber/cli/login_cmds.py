"""`amber login` with the identity provider: the device authorization grant (RFC 8628) when the provider offers
it, a loopback redirect with PKCE (RFC 8252) otherwise; the token cache per profile and its refresh.

Owns the profile cache's identity fields (`<config>/amber/profiles/<profile>.json`, written 0600 in a 0700
folder): the token amber checks, the refresh token, when it expires and where to refresh it. Protects: no
token is ever printed or logged; the loopback listener binds 127.0.0.1 only, takes one callback, and checks
`state` in constant time. What this does NOT do: verify the tokens itself (amber does, on every call: the
CLI only asks `/v1/me` who they name).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx

from amber.cli.client import Client, load_profile, token_path
from amber.cli.text import echo
from amber.core.errors import InvalidInput, NotAuthenticated, Unavailable

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_MARGIN_S = 30
LOOPBACK_WAIT_S = 300


def _post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.post(url, data=form, timeout=30, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the identity provider at {url}: {type(exc).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body if isinstance(body, dict) else {}


def _choose(base: str, name: str | None) -> dict[str, Any]:
    listed = Client(base, None).call("GET", "/auth/providers", auth=False)
    providers: list[dict[str, Any]] = listed.get("providers", [])
    if name is not None:
        for provider in providers:
            if provider["name"] == name:
                return provider
        raise InvalidInput(f"amber at {base} has no identity provider {name!r}")
    if len(providers) == 1:
        return providers[0]
    if not providers:
        raise InvalidInput(f"amber at {base} has no identity provider configured; use `amber login --dev USER`")
    names = ", ".join(p["name"] for p in providers)
    raise InvalidInput(f"choose a provider with --provider ({names})")


def _device_flow(provider: dict[str, Any]) -> dict[str, Any]:
    form = {"client_id": provider["client_id"], "scope": " ".join(provider["scopes"])}
    if provider.get("resource"):
        form["resource"] = provider["resource"]
    status, started = _post(provider["device_authorization_endpoint"], form)
    if status != 200 or "device_code" not in started:
        raise NotAuthenticated(f"the identity provider refused device sign-in ({started.get('error', status)})")
    where = started.get("verification_uri_complete") or started["verification_uri"]
    echo(f"To sign in, open {where}")
    echo(f"and check that it shows the code: {started['user_code']}")
    sys.stdout.flush()
    interval = float(started.get("interval", 5))
    deadline = time.monotonic() + float(started.get("expires_in", 600))
    while time.monotonic() < deadline:
        time.sleep(interval)
        status, body = _post(
            provider["token_endpoint"],
            {"grant_type": DEVICE_GRANT, "device_code": started["device_code"], "client_id": provider["client_id"]},
        )
        if status == 200:
            return body
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        raise NotAuthenticated(f"device sign-in ended: {error or status}")
    raise NotAuthenticated("device sign-in expired before it was approved; run `amber login` again")


def _loopback_flow(provider: dict[str, Any], *, open_browser: bool) -> dict[str, Any]:
    state = secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    received: dict[str, str] = {}
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            if urlparse(self.path).path != "/callback" or done.is_set():
                self.send_response(404)
                self.end_headers()
                return
            received.update(query)
            done.set()
            self.send_response(200)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"amber: you can close this window and return to the terminal.\n")

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the query carries the authorization code: never log it

    server = HTTPServer(("127.0.0.1", 0), Handler)
    redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
    query = {
        "response_type": "code",
        "client_id": provider["client_id"],
        "redirect_uri": redirect_uri,
        "scope": " ".join(provider["scopes"]),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if provider.get("resource"):
        query["resource"] = provider["resource"]
    url = f"{provider['authorization_endpoint']}?{urlencode(query)}"
    echo(f"To sign in, open {url}")
    sys.stdout.flush()
    if open_browser:
        webbrowser.open(url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        if not done.wait(LOOPBACK_WAIT_S):
            raise NotAuthenticated("no sign-in arrived at the loopback address in time; run `amber login` again")
    finally:
        server.shutdown()
        server.server_close()
    if "error" in received:
        raise NotAuthenticated(f"the identity provider refused the sign-in: {received['error']}")
    if not hmac.compare_digest(received.get("state", "").encode(), state.encode()):
        raise NotAuthenticated("the sign-in answer does not match this login (state mismatch)")
    form = {
        "grant_type": "authorization_code",
        "code": received.get("code", ""),
        "redirect_uri": redirect_uri,
        "client_id": provider["client_id"],
        "code_verifier": verifier,
    }
    if provider.get("resource"):
        form["resource"] = provider["resource"]
    status, body = _post(provider["token_endpoint"], form)
    if status != 200:
        raise NotAuthenticated(f"the identity provider refused the authorization code ({body.get('error', status)})")
    return body


def _bearer(tokens: dict[str, Any]) -> str:
    """The token amber checks: a JWT access token (meant for amber's audience), else the ID token."""
    access = tokens.get("access_token")
    if isinstance(access, str) and access.count(".") == 2:
        return access
    id_token = tokens.get("id_token")
    if isinstance(id_token, str):
        return id_token
    raise NotAuthenticated("the identity provider returned no token amber can check (no JWT)")


def _write_profile(profile: str, data: dict[str, Any]) -> str:
    path = token_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data))
    os.chmod(path, 0o600)
    return str(path)


def _cache(profile: str, base: str, provider: dict[str, Any], tokens: dict[str, Any], user: str) -> str:
    expires_in = tokens.get("expires_in")
    return _write_profile(
        profile,
        {
            "url": base,
            "access_token": _bearer(tokens),
            "user": user,
            "provider": provider["name"],
            "issuer": provider["issuer"],
            "token_endpoint": provider["token_endpoint"],
            "client_id": provider["client_id"],
            "resource": provider.get("resource"),
            "refresh_token": tokens.get("refresh_token"),
            "expires_at": time.time() + float(expires_in) if isinstance(expires_in, int | float) else None,
        },
    )


def provider_login(
    base: str, name: str | None, *, profile: str, as_json: bool, browser: bool, open_browser: bool
) -> None:
    """Sign in at the identity provider amber names, check the token with amber, cache it for the profile."""
    provider = _choose(base, name)
    if provider.get("error"):
        raise Unavailable(f"{provider['name']}: {provider['error']}")
    if provider.get("device_authorization_endpoint") and not browser:
        tokens = _device_flow(provider)
    else:
        if not provider.get("authorization_endpoint"):
            raise InvalidInput(f"{provider['name']}: the provider offers neither device nor browser sign-in")
        tokens = _loopback_flow(provider, open_browser=open_browser)
    me = Client(base, _bearer(tokens)).call("GET", "/v1/me")
    path = _cache(profile, base, provider, tokens, me["name"])
    if as_json:
        echo(json.dumps(me, indent=2, sort_keys=True))
    else:
        echo(f"signed in as {me['name']} ({me['iss']}), groups: {', '.join(me['groups']) or '-'}")
        echo(f"token cached in {path}")


def refresh_if_due(profile: str) -> None:
    """Refresh the profile's token with its refresh token when it expires within REFRESH_MARGIN_S.

    A refresh that fails leaves the cache alone; the next call then says the token expired. What this does
    NOT do: sign in again interactively.
    """
    saved: dict[str, Any] = dict(load_profile(profile))
    expires_at = saved.get("expires_at")
    if not saved.get("refresh_token") or not isinstance(expires_at, int | float):
        return
    if time.time() < expires_at - REFRESH_MARGIN_S:
        return
    form = {"grant_type": "refresh_token", "refresh_token": saved["refresh_token"], "client_id": saved["client_id"]}
    if saved.get("resource"):
        form["resource"] = saved["resource"]
    try:
        status, tokens = _post(saved["token_endpoint"], form)
    except Unavailable:
        return
    if status != 200:
        return
    saved["access_token"] = _bearer(tokens)
    saved["refresh_token"] = tokens.get("refresh_token") or saved["refresh_token"]
    expires_in = tokens.get("expires_in")
    saved["expires_at"] = time.time() + float(expires_in) if isinstance(expires_in, int | float) else None
    _write_profile(profile, saved)


def client_for(profile: str, url: str | None) -> Client:
    """The API client for a profile, its token refreshed first when due."""
    if not os.environ.get("AMBER_TOKEN"):
        refresh_if_due(profile)
    return Client.for_profile(profile, url)
