"""Telling people about requests: the break-glass notice to owners and security.

Notifications are outbox rows written in the request's transaction and delivered at least once by the
worker. `LogNotifier` writes a WARNING line (the default); `WebhookNotifier` POSTs JSON, signed with
HMAC-SHA-256 when a secret is configured, to a chat or paging bridge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any, Protocol

import httpx

log = logging.getLogger("amber.notify")


class NotifyError(Exception):
    pass


class Notifier(Protocol):
    def send(self, notice: dict[str, Any]) -> None: ...


class LogNotifier:
    def send(self, notice: dict[str, Any]) -> None:
        log.warning("NOTICE to %s: %s", ", ".join(notice["recipients"]), notice["message"])


class WebhookNotifier:
    """POST each notice as JSON. What this does NOT do: resolve groups to people; the receiver does."""

    def __init__(self, url: str, secret: str | None = None, timeout_s: float = 5.0) -> None:
        self._url = url
        self._secret = secret.encode() if secret else None
        self._timeout_s = timeout_s

    def send(self, notice: dict[str, Any]) -> None:
        body = json.dumps(notice, sort_keys=True).encode()
        headers = {"content-type": "application/json"}
        if self._secret is not None:
            headers["x-amber-signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        try:
            response = httpx.post(self._url, content=body, headers=headers, timeout=self._timeout_s)
        except httpx.HTTPError as exc:
            raise NotifyError(f"webhook unreachable: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise NotifyError(f"webhook answered {response.status_code}")
