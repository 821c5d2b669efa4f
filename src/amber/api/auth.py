"""Authentication for the API: who is calling, verified on every call, and which amber roles they hold.

A caller is either a bearer JWT (verified through the one TokenVerifier) or a browser session cookie from
web sign-in (amber.api.web_auth). Either way amber then refuses people SCIM deprovisioned, replaces the
groups SCIM manages by what the directory holds now (amber.identity.directory.groups_now: a token or
session issued before a SCIM group removal no longer carries that group), derives roles from the result
(amber.identity.roles), and checks the role the route needs (`ROUTE_ROLES`). Admin and auditor checks stay
in the routes (`is_admin` / `is_auditor`, which read the same role mapping); policy still decides every
request and approval.

The Authorization header must be exactly `Bearer <token>` (scheme in any case, one space, an RFC 6750
b64token): anything else is refused, never trimmed or guessed at. A browser session is honoured only while the
issuer that signed its person in is still trusted (a reload that removes an issuer ends its sessions too).

What this does NOT check: CSRF for bearer calls (a bearer token is not ambient); cookie calls that change
state must send `X-Requested-With`, which a cross-site form cannot.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated

from fastapi import Depends, Request

from amber.api.runtime import Runtime
from amber.core.errors import Forbidden, NotAuthenticated
from amber.identity import APPROVER, REQUESTER, Principal, with_roles
from amber.identity.directory import groups_now, is_deprovisioned
from amber.identity.sessions import session_principal

SESSION_COOKIE = "amber_session"
# RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token; amber takes exactly one space.
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9\-._~+/]+=*)")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

# The role a route needs beyond being signed in, by (method, route path). Policy still decides the rest.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("POST", "/v1/requests"): REQUESTER,
    ("POST", "/v1/requests/{request_id}/approve"): APPROVER,
    ("POST", "/v1/requests/{request_id}/deny"): APPROVER,
}


def runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


def authenticate(request: Request, rt: Runtime) -> Principal:
    """Bearer token or session cookie -> a Principal with roles; raises NotAuthenticated otherwise."""
    header = request.headers.get("authorization", "")
    if header:
        bearer = _BEARER.fullmatch(header)
        if bearer is None:
            raise NotAuthenticated("send `Authorization: Bearer <token>` (get one with `amber login`)")
        found = rt.verifier.verify(bearer.group(1))
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise NotAuthenticated("send `Authorization: Bearer <token>` (get one with `amber login`) or sign in")
        if request.method not in _SAFE_METHODS and not request.headers.get("x-requested-with"):
            raise Forbidden("a signed-in browser must send X-Requested-With on calls that change something")
        with rt.uow() as session:
            maybe = session_principal(session, cookie, now=rt.clock.now())
        if maybe is None:
            raise NotAuthenticated("your session has ended; sign in again")
        if rt.verifier.issuer(maybe.issuer) is None:
            raise NotAuthenticated("amber no longer trusts the identity provider you signed in with; sign in again")
        found = maybe
    with rt.uow() as session:
        if is_deprovisioned(session, found.issuer, found.subject):
            raise NotAuthenticated("this account was deactivated at the identity provider")
        groups = groups_now(session, rt.directory(), found.issuer, found.subject, found.groups)
    return with_roles(dataclasses.replace(found, groups=groups), rt.catalog().identity.roles.model_dump())


def principal(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Principal:
    who = authenticate(request, rt)
    route = request.scope.get("route")
    needed = ROUTE_ROLES.get((request.method, getattr(route, "path", "")))
    if needed is not None and not who.has_role(needed):
        groups = rt.catalog().identity.roles.model_dump().get(needed, [])
        raise Forbidden(f"this needs the {needed} role (groups: {', '.join(groups)})")
    return who


RuntimeDep = Annotated[Runtime, Depends(runtime)]
PrincipalDep = Annotated[Principal, Depends(principal)]
