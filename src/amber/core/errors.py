"""The one error hierarchy. Every error a user can cause is an AmberError with a clear message.

API endpoints render these as RFC 9457 problem+json; the CLI prints the message on one line.
A policy *deny* is a value (`policy.Decision`), never an exception.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AmberError(Exception):
    status: ClassVar[int] = 400
    type_slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://amber.dev/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.message,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class InvalidInput(AmberError):
    status = 422
    type_slug = "invalid-input"
    title = "Invalid input"


class NotAuthenticated(AmberError):
    status = 401
    type_slug = "not-authenticated"
    title = "Not authenticated"


class Forbidden(AmberError):
    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


class NotFound(AmberError):
    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(AmberError):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class ConfigError(AmberError):
    """A catalog, policy or settings file is wrong. The message names the file, the place and the problem."""

    status = 500
    type_slug = "configuration"
    title = "Configuration error"


class Unavailable(AmberError):
    """A dependency (target database, ledger) is unavailable. amber fails closed and says so."""

    status = 503
    type_slug = "unavailable"
    title = "Service unavailable"
