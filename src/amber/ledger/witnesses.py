"""Witnesses: copies of every signed checkpoint kept where amber's database administrator cannot rewrite them.

Owns the per-witness delivery cursor (`ledger_cursors`, name `witness:<name>`) and three witnesses:
- `FileWitness`: appends JSON lines to a file (mount it append-only, e.g. `chattr +a`, on another host);
- `WebhookWitness`: POSTs the note, authenticated with HMAC-SHA256 over `timestamp.body` (header
  `X-Amber-Signature: t=<unix>,v1=<hex>`), secret by reference;
- `S3Witness`: PUTs each note as an object with S3 Object Lock retention (COMPLIANCE mode) into a bucket
  created with object lock, on any S3-compatible server (SigV4, path-style).
Invariant: delivery happens after the checkpoint committed, in id order, at least once; the cursor advances
only after the witness accepted the checkpoint, so a witness that was down catches up without gaps.
What this does NOT do: make the witness trustworthy. That the file is append-only, the webhook's receiver is
independent, and the bucket's lock cannot be lifted is the deployment's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.core.db import UnitOfWork, is_postgres
from amber.core.errors import ConfigError
from amber.ledger.checkpoints import CheckpointView, checkpoints
from amber.ledger.models import Cursor

log = logging.getLogger("amber.ledger")


class Witness(Protocol):
    name: str

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        """Deliver one checkpoint; raise on failure (it is retried)."""


def secret(reference: str) -> str:
    """Resolve `env:NAME` or `file:/path`. Errors name the reference, never the value."""
    kind, _, where = reference.partition(":")
    if kind == "env" and os.environ.get(where):
        return os.environ[where]
    if kind == "file":
        try:
            return Path(where).read_text().strip()
        except OSError:
            raise ConfigError(f"witness secret {reference}: cannot read the file") from None
    raise ConfigError(f"witness secret {reference}: give it as env:NAME (set) or file:/path")


def _record(checkpoint: CheckpointView, origin: str) -> dict[str, Any]:
    return {
        "origin": origin,
        "id": checkpoint.id,
        "tree_size": checkpoint.tree_size,
        "signed_at": checkpoint.signed_at.isoformat(),
        "note": checkpoint.note,
    }


class FileWitness:
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        line = (json.dumps(_record(checkpoint, origin), sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def webhook_signature(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookWitness:
    def __init__(self, name: str, url: str, key: bytes, *, timeout_s: float = 5.0) -> None:
        self.name = name
        self.url = url
        self._key = key
        self._timeout_s = timeout_s

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        body = json.dumps(_record(checkpoint, origin), sort_keys=True).encode()
        now = int(time.time())
        headers = {
            "content-type": "application/json",
            "x-amber-signature": f"t={now},v1={webhook_signature(self._key, now, body)}",
        }
        response = httpx.post(self.url, content=body, headers=headers, timeout=self._timeout_s)
        response.raise_for_status()


class S3Error(Exception):
    pass


class S3Client:
    """Just enough S3 (SigV4, path-style) for the witness and its tests. Secrets are never logged."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.host = httpx.URL(self.endpoint).netloc.decode()
        self._access_key = access_key
        self._secret_key = secret_key
        self.region = region

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        now = datetime.now(UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        all_headers = {k.lower(): v for k, v in (headers or {}).items()}
        all_headers |= {"host": self.host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
        canonical_uri = quote(path, safe="/-_.~")
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted((query or {}).items())
        )
        signed = ";".join(sorted(all_headers))
        canonical_headers = "".join(f"{k}:{all_headers[k].strip()}\n" for k in sorted(all_headers))
        canonical = "\n".join([method, canonical_uri, canonical_query, canonical_headers, signed, payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = f"AWS4{self._secret_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        all_headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        url = self.endpoint + canonical_uri + (f"?{canonical_query}" if canonical_query else "")
        return httpx.request(method, url, content=body, headers=all_headers, timeout=10.0)

    def create_locked_bucket(self, bucket: str) -> None:
        response = self.request("PUT", f"/{bucket}", headers={"x-amz-bucket-object-lock-enabled": "true"})
        if response.status_code not in (200, 409):
            raise S3Error(f"create bucket {bucket}: HTTP {response.status_code}")

    def put_locked(self, bucket: str, key: str, body: bytes, retain_until: datetime) -> str | None:
        """PUT an object under COMPLIANCE retention; returns its version id (None if the server has none)."""
        headers = {
            "content-type": "text/plain; charset=utf-8",
            "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324 - S3 requires MD5
            "x-amz-object-lock-mode": "COMPLIANCE",
            "x-amz-object-lock-retain-until-date": retain_until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        response = self.request("PUT", f"/{bucket}/{key}", body=body, headers=headers)
        if response.status_code != 200:
            raise S3Error(f"put {bucket}/{key}: HTTP {response.status_code}: {response.text[:200]}")
        version: str | None = response.headers.get("x-amz-version-id")
        return version

    def get(self, bucket: str, key: str, version_id: str | None = None) -> httpx.Response:
        return self.request("GET", f"/{bucket}/{key}", query={"versionId": version_id} if version_id else None)


class S3Witness:
    def __init__(self, name: str, client: S3Client, bucket: str, *, retention: timedelta, prefix: str = "") -> None:
        self.name = name
        self.client = client
        self.bucket = bucket
        self.retention = retention
        self.prefix = prefix

    def key(self, checkpoint: CheckpointView) -> str:
        return f"{self.prefix}checkpoints/{checkpoint.tree_size:020d}-{checkpoint.id}.checkpoint"

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        retain_until = datetime.now(UTC) + self.retention
        self.client.put_locked(self.bucket, self.key(checkpoint), checkpoint.note.encode(), retain_until)


def build(configs: Sequence[Mapping[str, Any]]) -> list[Witness]:
    """Witnesses from settings (`AMBER_LEDGER_WITNESSES`, a JSON list). Secrets only by reference."""
    witnesses: list[Witness] = []
    for number, config in enumerate(configs, 1):
        kind = str(config.get("kind", ""))
        name = str(config.get("name") or f"{kind}{number}")
        if kind == "file":
            witnesses.append(FileWitness(name, Path(str(config["path"]))))
        elif kind == "webhook":
            witnesses.append(WebhookWitness(name, str(config["url"]), secret(str(config["secret"])).encode()))
        elif kind == "s3":
            client = S3Client(
                str(config["endpoint"]),
                secret(str(config["access_key"])),
                secret(str(config["secret_key"])),
                str(config.get("region", "us-east-1")),
            )
            retention = timedelta(days=int(config.get("retention_days", 3650)))
            witnesses.append(
                S3Witness(
                    name, client, str(config["bucket"]), retention=retention, prefix=str(config.get("prefix", ""))
                )
            )
        else:
            raise ConfigError(f"ledger witness {number}: kind must be file, webhook or s3, not {kind!r}")
    return witnesses


def _cursor(session: Session, name: str) -> int:
    query = select(Cursor).where(Cursor.name == name)
    if is_postgres(session):
        query = query.with_for_update()
    row = session.scalar(query)
    return row.position if row is not None else 0


def advance(session: Session, name: str, position: int, at: datetime) -> None:
    row = session.get(Cursor, name)
    if row is None:
        session.add(Cursor(name=name, position=position, updated_at=at))
    else:
        row.position = position
        row.updated_at = at


def position(uow: UnitOfWork, name: str) -> int:
    with uow() as session:
        return _cursor(session, name)


def publish_pending(uow: UnitOfWork, witnesses: Sequence[Witness], origin: str, now: datetime) -> dict[str, int]:
    """Deliver every checkpoint each witness has not accepted yet, oldest first. Returns how many per witness.

    A failing witness is logged and left at its cursor; the others go on.
    """
    delivered: dict[str, int] = {}
    for witness in witnesses:
        name = f"witness:{witness.name}"
        count = 0
        try:
            with uow() as session:
                pending = checkpoints(session, after_id=_cursor(session, name))
            for checkpoint in pending:
                witness.publish(checkpoint, origin)
                with uow() as session:
                    advance(session, name, checkpoint.id, now)
                count += 1
        except (OSError, httpx.HTTPError, S3Error) as exc:
            log.warning("ledger witness %s is behind (will retry): %s", witness.name, type(exc).__name__)
        delivered[witness.name] = count
    return delivered
