"""SCIM 2.0 endpoints (`/scim/v2/Users`, `/scim/v2/Groups`): the subset Okta and Entra ID send. Thin: check the
provisioning token, call amber.scim, render `application/scim+json`.

The caller is the identity provider, authenticated by one bearer token configured by reference
(`identity.scim.token: env:NAME | file:PATH`) and compared in constant time. SCIM is off (404) when no token
is configured. What this does NOT check: which provider sent the call (whoever holds the token is "SCIM").
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from amber.api.auth import RuntimeDep
from amber.catalog import resolve_reference
from amber.core.crypto import constant_time_equal
from amber.core.errors import ConfigError, NotAuthenticated, NotFound
from amber.scim import ScimService

SCIM_JSON = "application/scim+json"
# RFC 6750 section 2.1: `Bearer`, one ASCII space, a b64token. Anything else (another space, a tab, a non-ASCII
# space, an empty token) is malformed and refused.
BEARER = re.compile(r"[Bb]earer ([A-Za-z0-9\-._~+/]+=*)")
MIN_TOKEN_LENGTH = 16
log = logging.getLogger(__name__)


def scim_service(request: Request, rt: RuntimeDep) -> ScimService:
    """The SCIM service, once the caller proved it holds the provisioning token."""
    config = rt.catalog().identity.scim
    if config.token is None or rt.scim is None:
        raise NotFound("SCIM provisioning is not enabled (identity.scim.token)")
    try:
        expected = resolve_reference(config.token, where="identity.scim.token", base=rt.catalog().path.parent).strip()
    except ConfigError as exc:  # fail closed, and say why in the log (never in the answer)
        log.error("SCIM: %s; refusing every call", exc)  # noqa: TRY400 - the reason, without a traceback
        expected = ""
    if len(expected) < MIN_TOKEN_LENGTH:  # an empty or trivial token file must not open SCIM to anyone
        log.error(
            "SCIM: identity.scim.token resolves to fewer than %d characters; refusing every call", MIN_TOKEN_LENGTH
        )
        raise NotAuthenticated(
            "SCIM provisioning is misconfigured (its token is empty or too short); calls are refused"
        )
    match = BEARER.fullmatch(request.headers.get("authorization", ""))
    if match is None or not constant_time_equal(match.group(1), expected):
        raise NotAuthenticated("SCIM calls need the provisioning bearer token (`Authorization: Bearer <token>`)")
    return rt.scim


Scim = Annotated[ScimService, Depends(scim_service)]
JsonBody = Annotated[dict[str, Any], Body()]
router = APIRouter(prefix="/scim/v2", tags=["scim"])


def _scim(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=SCIM_JSON)


def _call(request: Request) -> str:
    return f"{request.method} {request.url.path}"


@router.get("/ServiceProviderConfig")
def service_provider_config(_scim_service: Scim) -> JSONResponse:
    return _scim(
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": True},
            "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": 200},
            "changePassword": {"supported": False},
            "sort": {"supported": False},
            "etag": {"supported": False},
            "authenticationSchemes": [
                {"type": "oauthbearertoken", "name": "Bearer token", "description": "The provisioning token"}
            ],
        }
    )


@router.get("/Users")
def list_users(
    scim: Scim,
    filter_: Annotated[str | None, Query(alias="filter")] = None,
    start_index: Annotated[int, Query(alias="startIndex", ge=1)] = 1,
    count: Annotated[int, Query(ge=0, le=200)] = 100,
) -> JSONResponse:
    return _scim(scim.list_users(filter_, start=start_index, count=count))


@router.post("/Users")
def create_user(scim: Scim, body: JsonBody, request: Request) -> JSONResponse:
    return _scim(scim.create_user(body, call=_call(request)), 201)


@router.get("/Users/{user_id}")
def get_user(user_id: str, scim: Scim) -> JSONResponse:
    return _scim(scim.get_user(user_id))


@router.put("/Users/{user_id}")
def replace_user(user_id: str, scim: Scim, body: JsonBody, request: Request) -> JSONResponse:
    return _scim(scim.replace_user(user_id, body, call=_call(request)))


@router.patch("/Users/{user_id}")
def patch_user(user_id: str, scim: Scim, body: JsonBody, request: Request) -> JSONResponse:
    return _scim(scim.patch_user(user_id, body, call=_call(request)))


@router.delete("/Users/{user_id}", status_code=204)
def delete_user(user_id: str, scim: Scim, request: Request) -> Response:
    scim.delete_user(user_id, call=_call(request))
    return Response(status_code=204)


@router.get("/Groups")
def list_groups(
    scim: Scim,
    filter_: Annotated[str | None, Query(alias="filter")] = None,
    start_index: Annotated[int, Query(alias="startIndex", ge=1)] = 1,
    count: Annotated[int, Query(ge=0, le=200)] = 100,
    excluded: Annotated[str, Query(alias="excludedAttributes")] = "",
) -> JSONResponse:
    members = "members" not in excluded.lower()
    return _scim(scim.list_groups(filter_, start=start_index, count=count, members=members))


@router.post("/Groups")
def create_group(scim: Scim, body: JsonBody, request: Request) -> JSONResponse:
    return _scim(scim.create_group(body, call=_call(request)), 201)


@router.get("/Groups/{group_id}")
def get_group(
    group_id: str, scim: Scim, excluded: Annotated[str, Query(alias="excludedAttributes")] = ""
) -> JSONResponse:
    return _scim(scim.get_group(group_id, members="members" not in excluded.lower()))


@router.put("/Groups/{group_id}")
def replace_group(group_id: str, scim: Scim, body: JsonBody, request: Request) -> JSONResponse:
    return _scim(scim.replace_group(group_id, body, call=_call(request)))


@router.patch("/Groups/{group_id}")
def patch_group(group_id: str, scim: Scim, body: JsonBody, request: Request) -> JSONResponse:
    return _scim(scim.patch_group(group_id, body, call=_call(request)))


@router.delete("/Groups/{group_id}", status_code=204)
def delete_group(group_id: str, scim: Scim, request: Request) -> Response:
    scim.delete_group(group_id, call=_call(request))
    return Response(status_code=204)
