"""The CLI's view of a running amber: base URL, cached token per profile (0600), JSON calls."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from amber.core.errors import AmberError, NotAuthenticated, Unavailable


class ApiError(AmberError):
    """An error the server answered with; its problem+json detail is the message."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "amber"


def token_path(profile: str) -> Path:
    return config_dir() / "profiles" / f"{profile}.json"


def save_token(profile: str, url: str, token: str, user: str) -> Path:
    path = token_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps({"url": url, "access_token": token, "user": user})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return path


def load_profile(profile: str) -> dict[str, str]:
    path = token_path(profile)
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def default_url() -> str:
    return os.environ.get("AMBER_URL", "http://127.0.0.1:8080").rstrip("/")


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self._token = token

    @classmethod
    def for_profile(cls, profile: str, url: str | None) -> Client:
        saved = load_profile(profile)
        token = os.environ.get("AMBER_TOKEN") or saved.get("access_token")
        return cls(url or os.environ.get("AMBER_URL") or saved.get("url") or default_url(), token)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        *,
        auth: bool = True,
    ) -> Any:
        headers = {"accept": "application/json"}
        if auth:
            if not self._token:
                raise NotAuthenticated("not signed in: run `amber login` first")
            headers["authorization"] = f"Bearer {self._token}"
        try:
            response = httpx.request(method, self.url + path, json=body, params=params, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"cannot reach amber at {self.url}: {type(exc).__name__}; is `amber serve` running (make run)?"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail") or response.text
            except ValueError:
                detail = response.text or response.reason_phrase
            raise ApiError(str(detail), extra={"http_status": response.status_code})
        return response.json() if response.content else None
