"""RFC 9457 problem+json for every error the API returns, including FastAPI's own validation errors."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from amber.core.errors import AmberError

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    instance: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://amber.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(AmberError)
    async def _amber(request: Request, exc: AmberError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            exc.problem(instance=request.url.path),
            status_code=exc.status,
            media_type=MEDIA_TYPE,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "")).removeprefix("Value error, "),
            }
            for error in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "the request is malformed"
        return problem_response(
            422,
            "Invalid input",
            detail,
            slug="invalid-input",
            instance=request.url.path,
            extra={"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return problem_response(
            exc.status_code,
            detail,
            detail,
            slug=f"http-{exc.status_code}",
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(DataError)
    async def _refused_value(request: Request, exc: DataError) -> JSONResponse:
        # The state database refused a value the API let through (a NUL character in text, a number out of
        # range): the caller's input, not amber's fault. The unit of work has rolled back.
        log.info("the state database refused a value on %s %s: %s", request.method, request.url.path, exc.orig)
        return problem_response(
            422,
            "Invalid input",
            "a value in this request cannot be stored (a NUL character in text, or a number out of range)",
            slug="invalid-input",
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "Internal error",
            "amber failed to handle this request; nothing was granted",
            slug="internal",
            instance=request.url.path,
        )
