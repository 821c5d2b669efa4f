"""The FastAPI application: /v1, /healthz, /metrics, the dev issuer's endpoints, problem+json errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from amber import __version__
from amber.api import problems, scim_routes, web_auth
from amber.api.ledger_routes import router as ledger_router
from amber.api.routes import router
from amber.api.runtime import Runtime
from amber.core.errors import NotFound
from amber.identity import DevIssuer


class DevTokenIn(BaseModel):
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    groups: list[str] = Field(default_factory=list, max_length=50)
    ttl_s: int = Field(default=12 * 3600, ge=60, le=7 * 86400)


def create_app(rt: Runtime, *, run_worker: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_worker:
            rt.worker.start()
        await rt.start_gateway()
        rt.start_checkpoints()
        try:
            yield
        finally:
            rt.worker.stop()
            if rt.gateway is not None:
                await rt.gateway.stop()
            rt.stop_checkpoints()  # last: its final checkpoint covers what the worker and gateway appended

    app = FastAPI(
        title="amber",
        version=__version__,
        lifespan=lifespan,
        description="Self-service, time-boxed, read-only access to production.",
    )
    app.state.runtime = rt
    problems.install(app)
    app.include_router(router)
    app.include_router(ledger_router)
    app.include_router(web_auth.router)
    app.include_router(scim_routes.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        """Unauthenticated: says whether amber and its state store answer, never where its files are."""
        with rt.uow() as session:
            session.execute(text("SELECT 1"))
        return {
            "status": "ok",
            "version": __version__,
            "warnings": rt.warnings,
            "catalog": {"hash": rt.catalog().content_hash},
        }

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/dev-issuer/.well-known/openid-configuration", tags=["dev issuer"])
    def dev_discovery() -> dict[str, Any]:
        issuer = _dev(rt)
        return {
            "issuer": issuer.issuer_url,
            "jwks_uri": f"{issuer.issuer_url}/jwks.json",
            "id_token_signing_alg_values_supported": ["EdDSA"],
        }

    @app.get("/dev-issuer/jwks.json", tags=["dev issuer"])
    def dev_jwks() -> dict[str, Any]:
        return _dev(rt).jwks()

    @app.post("/dev-issuer/token", tags=["dev issuer"])
    def dev_token(body: DevTokenIn) -> JSONResponse:
        token = _dev(rt).mint(body.user, body.groups, ttl=timedelta(seconds=body.ttl_s))
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": body.ttl_s,
                "warning": rt.warnings[0] if rt.warnings else None,
            }
        )

    return app


def _dev(rt: Runtime) -> DevIssuer:
    if rt.dev_issuer is None:
        raise NotFound("the development issuer is not enabled")
    return rt.dev_issuer
