"""Web sign-in with the identity provider: OpenID Connect authorization code flow with PKCE, and sign-out.

Owns `/auth/*`. Protects: a browser session exists only for an ID token that verified through the one
TokenVerifier (audience = the client id) with the nonce amber sent, after a callback whose `state` matches
the one this browser was given (cookie, constant-time) and was issued by amber at most 10 minutes ago and
never used before. The session cookie is HttpOnly, SameSite=Lax, Secure outside local development, and
expires with the session; sign-out ends it on the server too.

What this does NOT do: keep the provider's access or refresh tokens (the browser session is amber's own),
or sign the person out at the provider (the response names the provider's end-session URL when it has one).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse

from amber.api.auth import SESSION_COOKIE, RuntimeDep
from amber.api.runtime import Runtime
from amber.core.crypto import constant_time_equal
from amber.core.errors import InvalidInput, NotAuthenticated, NotFound, Unavailable
from amber.identity import Provider
from amber.identity.directory import is_deprovisioned
from amber.identity.sessions import LOGIN_TTL, end_session, open_session, start_login, take_login

LOGIN_COOKIE = "amber_login"
router = APIRouter(prefix="/auth", tags=["sign-in"])


def _secure(rt: Runtime) -> bool:
    """Secure cookies everywhere except plain-http local development and tests."""
    return rt.settings.env == "production" or rt.settings.resolved_public_url.startswith("https://")


def _provider(rt: Runtime, name: str | None) -> Provider:
    if name is None and len(rt.providers) == 1:
        return next(iter(rt.providers.values()))
    provider = rt.providers.get(name or "")
    if provider is None:
        raise NotFound(f"no identity provider named {name!r}; see /auth/providers")
    return provider


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def _redirect_uri(rt: Runtime) -> str:
    return f"{rt.settings.resolved_public_url}/auth/callback"


@router.get("/providers")
def providers(rt: RuntimeDep) -> dict[str, Any]:
    """The providers people can sign in with, for the sign-in page and `amber login` (no secrets)."""
    listed: list[dict[str, object]] = []
    for provider in rt.providers.values():
        try:
            listed.append(provider.public())
        except NotAuthenticated as exc:  # its discovery document is unreachable right now: say so, list the rest
            listed.append({"name": provider.name, "issuer": provider.issuer, "error": exc.message})
    return {"providers": listed, "dev_issuer": rt.dev_issuer is not None}


@router.get("/login")
def login(
    rt: RuntimeDep,
    provider: str | None = None,
    return_to: Annotated[str, Query(max_length=512)] = "/",
) -> RedirectResponse:
    """Start signing in: remember state, nonce and PKCE verifier, and send the browser to the provider."""
    if not return_to.startswith("/") or return_to.startswith("//") or "\\" in return_to:
        raise InvalidInput("return_to must be a path on this amber")
    chosen = _provider(rt, provider)
    authorize = chosen.discovery.endpoint("authorization_endpoint")
    if authorize is None:
        raise Unavailable(f"{chosen.name}: the provider's discovery document has no authorization_endpoint")
    with rt.uow() as session:
        state, pending = start_login(session, provider=chosen.name, return_to=return_to, now=rt.clock.now())
    query = {
        "response_type": "code",
        "client_id": chosen.client_id,
        "redirect_uri": _redirect_uri(rt),
        "scope": " ".join(chosen.scopes),
        "state": state,
        "nonce": pending.nonce,
        "code_challenge": _challenge(pending.code_verifier),
        "code_challenge_method": "S256",
    }
    if chosen.resource:
        query["resource"] = chosen.resource
    response = RedirectResponse(f"{authorize}?{urlencode(query)}", status_code=302)
    response.set_cookie(
        LOGIN_COOKIE,
        state,
        max_age=int(LOGIN_TTL.total_seconds()),
        path="/auth",
        httponly=True,
        secure=_secure(rt),
        samesite="lax",
    )
    return response


@router.get("/callback")
def callback(
    request: Request,
    rt: RuntimeDep,
    *,
    state: str = "",
    code: str = "",
    error: str | None = None,
    error_description: str | None = None,
) -> RedirectResponse:
    """The provider sends the browser back here. Checks state, exchanges the code, verifies the ID token."""
    if error:
        raise NotAuthenticated(f"the identity provider refused the sign-in: {error} {error_description or ''}".strip())
    remembered = request.cookies.get(LOGIN_COOKIE, "")
    if not state or not remembered or not constant_time_equal(state, remembered):
        raise NotAuthenticated("this sign-in was not started in this browser (state mismatch); start again")
    with rt.uow() as session:
        pending = take_login(session, state, now=rt.clock.now())
    if pending is None:
        raise NotAuthenticated("this sign-in expired or was already used; start again")
    if not code:
        raise NotAuthenticated("the identity provider sent no authorization code")
    provider = _provider(rt, pending.provider)
    tokens = _exchange(rt, provider, code, pending.code_verifier)
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise NotAuthenticated("the identity provider returned no ID token")
    who = rt.verifier.verify(id_token, audience=provider.client_id, nonce=pending.nonce)
    if who.issuer != provider.issuer:
        # Mix-up defence: the ID token must come from the provider this sign-in was sent to.
        raise NotAuthenticated("the ID token was issued by another provider than the one this sign-in used")
    ttl = rt.catalog().identity.session_ttl
    with rt.uow() as session:
        if is_deprovisioned(session, who.issuer, who.subject):
            raise NotAuthenticated("this account was deactivated at the identity provider")
        value = open_session(session, who, provider=provider.name, now=rt.clock.now(), ttl=ttl)
    response = RedirectResponse(pending.return_to, status_code=303)
    response.delete_cookie(LOGIN_COOKIE, path="/auth", httponly=True, secure=_secure(rt), samesite="lax")
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(ttl.total_seconds()),
        path="/",
        httponly=True,
        secure=_secure(rt),
        samesite="lax",
    )
    return response


def _exchange(rt: Runtime, provider: Provider, code: str, verifier: str) -> dict[str, Any]:
    """Trade the code for tokens at the provider's token endpoint (client secret sent only there)."""
    endpoint = provider.discovery.endpoint("token_endpoint")
    if endpoint is None:
        raise Unavailable(f"{provider.name}: the provider's discovery document has no token_endpoint")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _redirect_uri(rt),
        "code_verifier": verifier,
    }
    if provider.resource:
        form["resource"] = provider.resource
    secret = provider.client_secret()
    auth = httpx.BasicAuth(provider.client_id, secret) if secret else None
    if secret is None:
        form["client_id"] = provider.client_id
    try:
        response = httpx.post(endpoint, data=form, auth=auth, timeout=10, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the identity provider's token endpoint: {type(exc).__name__}") from None
    if response.status_code != 200:
        # The provider's error code only; its body may echo what we sent.
        try:
            reason = str(response.json().get("error", response.status_code))
        except ValueError:
            reason = str(response.status_code)
        raise NotAuthenticated(f"the identity provider refused the authorization code ({reason})")
    body = response.json()
    if not isinstance(body, dict):
        raise NotAuthenticated("the identity provider's token response is not a JSON object")
    return body


@router.post("/logout")
def logout(request: Request, rt: RuntimeDep) -> JSONResponse:
    """Sign out: end the session on the server and clear the cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    ended = False
    end_session_url = None
    if cookie:
        with rt.uow() as session:
            ended = end_session(session, cookie, now=rt.clock.now(), reason="signed out")
    if len(rt.providers) == 1:
        try:
            end_session_url = next(iter(rt.providers.values())).discovery.endpoint("end_session_endpoint")
        except NotAuthenticated:
            end_session_url = None
    response = JSONResponse({"signed_out": ended, "end_session_endpoint": end_session_url})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=_secure(rt), samesite="lax")
    return response
