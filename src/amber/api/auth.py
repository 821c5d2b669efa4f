"""Authentication for the API: a bearer JWT, verified on every call through the one TokenVerifier."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from amber.api.runtime import Runtime
from amber.core.errors import NotAuthenticated
from amber.identity import Principal


def runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


def principal(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("send `Authorization: Bearer <token>` (get one with `amber login`)")
    return rt.verifier.verify(token.strip())


RuntimeDep = Annotated[Runtime, Depends(runtime)]
PrincipalDep = Annotated[Principal, Depends(principal)]
