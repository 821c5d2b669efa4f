"""Witnesses: copies of every signed checkpoint kept where amber's database administrator cannot rewrite them.

Owns the per-witness delivery cursor (`ledger_cursors`, name `witness:<name>`) and three witnesses:
- `FileWitness`: appends JSON lines to a file (mount it append-only, e.g. `chattr +a`, on another host);
- `WebhookWitness`: POSTs the note, authenticated with HMAC-SHA256 over `timestamp.body` (header
  `X-Amber-Signature: t=<unix>,v1=<hex>`), secret by reference;
- `S3Witness`: PUTs each note as an object with S3 Object Lock retention (COMPLIANCE mode) into a bucket
  created with object lock, on any S3-compatible server (SigV4, path-style).
Invariant: delivery happens after the checkpoint committed, in id order, at least once; the cursor advances
only after the witness accepted the checkpoint, so a witness that was down catches up without gaps.
Reading back (`fetch`): every checkpoint a file or S3 witness holds (S3: every version of every object under
`<prefix>checkpoints/`, so a version written over a locked one hides nothing), saved one note per file, named by
content. A webhook cannot be read back: amber only pushes to it.
What this does NOT do: make the witness trustworthy. That the file is append-only, the webhook's receiver is
independent, and the bucket's lock cannot be lifted is the deployment's job. `fetch` does not judge what it
reads either: the verifier does (`amber audit verify --checkpoint DIR`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from amber.core.clock import Clock
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

    def held(self) -> Iterator[tuple[str, bytes | None]]:
        """(where, note) for every line of the file; note None for a line that is not a record with a note."""
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"file witness {self.name}: cannot read {self.path} ({exc.strerror})") from None
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                note = json.loads(line)["note"]
            except (ValueError, TypeError, KeyError):
                note = None
            yield f"{self.path}:{number}", note.encode() if isinstance(note, str) else None


def webhook_signature(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookWitness:
    """POSTs each checkpoint, signed `t=<unix time of the injected clock>,v1=<hex HMAC>`. Write-only: a webhook
    cannot be read back (`fetch` refuses it); its receiver's own log is the record."""

    def __init__(self, name: str, url: str, key: bytes, *, clock: Clock, timeout_s: float = 5.0) -> None:
        self.name = name
        self.url = url
        self._key = key
        self._clock = clock
        self._timeout_s = timeout_s

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        body = json.dumps(_record(checkpoint, origin), sort_keys=True).encode()
        now = int(self._clock.now().timestamp())
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
        # NOTE: SigV4's x-amz-date is checked against the S3 server's own clock (15 minutes of skew at most),
        # so it is the real time, never the injected clock.
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

    def list_versions(self, bucket: str, prefix: str, *, page_size: int = 1000) -> Iterator[S3Version]:
        """Every version of every object under `prefix`, all pages (ListObjectVersions); delete markers skipped.

        Versions rather than ListObjectsV2's latest objects: in a locked bucket an older version outlives any
        newer one written over it, and both are evidence.
        """
        query = {"versions": "", "prefix": prefix, "max-keys": str(page_size)}
        while True:
            response = self.request("GET", f"/{bucket}", query=query)
            if response.status_code != 200:
                raise S3Error(f"list {bucket}/{prefix}: HTTP {response.status_code}: {response.text[:200]}")
            try:
                # The answer comes from the configured S3 server; expat (>= 2.4.1) refuses entity expansion
                # bombs and ElementTree never fetches external entities.
                root = ElementTree.fromstring(response.content)  # noqa: S314 - see above
            except ElementTree.ParseError:
                raise S3Error(f"list {bucket}/{prefix}: the server's answer is not XML") from None
            for element in root:
                if _local(element.tag) == "Version":
                    fields = {_local(child.tag): child.text or "" for child in element}
                    if not fields.get("Key"):
                        raise S3Error(f"list {bucket}/{prefix}: a version without a key")
                    yield S3Version(fields["Key"], fields.get("VersionId", "null"), fields.get("LastModified", ""))
            values = {_local(child.tag): child.text or "" for child in root}
            if values.get("IsTruncated") != "true":
                return
            markers = {
                "key-marker": values.get("NextKeyMarker", ""),
                "version-id-marker": values.get("NextVersionIdMarker", ""),
            }
            if not markers["key-marker"] or all(query.get(k) == v for k, v in markers.items()):
                raise S3Error(f"list {bucket}/{prefix}: the server's listing does not advance")
            query = {**query, **markers}


@dataclass(frozen=True)
class S3Version:
    key: str
    version_id: str
    last_modified: str


def _local(tag: str) -> str:
    """An XML tag without its namespace (S3 servers differ in whether they send one)."""
    return tag.rpartition("}")[2]


class S3Witness:
    def __init__(
        self,
        name: str,
        client: S3Client,
        bucket: str,
        *,
        retention: timedelta,
        clock: Clock,
        prefix: str = "",
    ) -> None:
        self.name = name
        self.client = client
        self.bucket = bucket
        self.retention = retention
        self.prefix = prefix
        self._clock = clock

    def key(self, checkpoint: CheckpointView) -> str:
        return f"{self.prefix}checkpoints/{checkpoint.tree_size:020d}-{checkpoint.id}.checkpoint"

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        retain_until = self._clock.now() + self.retention
        self.client.put_locked(self.bucket, self.key(checkpoint), checkpoint.note.encode(), retain_until)

    def held(self) -> Iterator[tuple[str, bytes | None]]:
        """(where, bytes) for every version of every checkpoint object; bytes None if it cannot be read."""
        for version in self.client.list_versions(self.bucket, f"{self.prefix}checkpoints/"):
            where = f"s3://{self.bucket}/{version.key}?versionId={version.version_id}"
            response = self.client.get(self.bucket, version.key, version.version_id)
            yield where, response.content if response.status_code == 200 else None


def _name(config: Mapping[str, Any], number: int) -> str:
    """A witness's name (its cursor is `witness:<name>`): `name`, else kind and position in the list."""
    return str(config.get("name") or f"{config.get('kind', '')}{number}")


def build(configs: Sequence[Mapping[str, Any]], *, clock: Clock) -> list[Witness]:
    """Witnesses from settings (`AMBER_LEDGER_WITNESSES`, a JSON list). Secrets only by reference."""
    return [_build(config, number, clock) for number, config in enumerate(configs, 1)]


def build_named(configs: Sequence[Mapping[str, Any]], name: str, *, clock: Clock) -> Witness:
    """The one configured witness called `name` (only its secrets are resolved)."""
    for number, config in enumerate(configs, 1):
        if _name(config, number) == name:
            return _build(config, number, clock)
    known = ", ".join(_name(c, n) for n, c in enumerate(configs, 1)) or "none"
    raise ConfigError(f"no ledger witness is named {name!r} in AMBER_LEDGER_WITNESSES (configured: {known})")


def _build(config: Mapping[str, Any], number: int, clock: Clock) -> Witness:
    kind, name = str(config.get("kind", "")), _name(config, number)
    try:
        if kind == "file":
            return FileWitness(name, Path(str(config["path"])))
        if kind == "webhook":
            return WebhookWitness(name, str(config["url"]), secret(str(config["secret"])).encode(), clock=clock)
        if kind == "s3":
            client = S3Client(
                str(config["endpoint"]),
                secret(str(config["access_key"])),
                secret(str(config["secret_key"])),
                str(config.get("region", "us-east-1")),
            )
            return S3Witness(
                name,
                client,
                str(config["bucket"]),
                retention=timedelta(days=int(config.get("retention_days", 3650))),
                clock=clock,
                prefix=str(config.get("prefix", "")),
            )
    except KeyError as exc:
        raise ConfigError(f"ledger witness {number} ({kind}): {exc.args[0]!r} is missing") from None
    raise ConfigError(f"ledger witness {number}: kind must be file, webhook or s3, not {kind!r}")


# -- reading back what a witness holds ---------------------------------------------------------------------


@dataclass
class Fetched:
    saved: list[Path] = field(default_factory=list)
    already: int = 0  # held twice (at-least-once delivery) or saved by an earlier fetch
    unreadable: list[str] = field(default_factory=list)  # where the witness holds something that is not a note


def note_file_name(content: bytes) -> str | None:
    """`<tree size, 20 digits>-<first 16 hex of SHA-256(note)>.checkpoint`, or None if `content` is not a
    checkpoint note (UTF-8 text, origin line, tree size line, blank line, signatures). Named by content: the
    same note held twice is one file, two notes that differ are two files."""
    try:
        lines = content.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if len(lines) < 4 or not lines[0] or not lines[1].isdigit() or "" not in lines[2:-1]:
        return None
    return f"{int(lines[1]):020d}-{hashlib.sha256(content).hexdigest()[:16]}.checkpoint"


def fetch(witness: Witness, dest: Path) -> Fetched:
    """Save every checkpoint `witness` holds into `dest`, one note per file (see `note_file_name`), byte-exact.

    Re-running adds only what is new. Does NOT check signatures, origin or consistency: the verifier does.
    """
    if not isinstance(witness, FileWitness | S3Witness):
        raise ConfigError(
            f"ledger witness {witness.name} cannot be fetched: amber only pushes to a webhook; ask the receiver's "
            "operator for the JSON bodies it accepted (JSON lines, as `--checkpoint` reads them)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    result = Fetched()
    for where, content in witness.held():
        name = note_file_name(content) if content is not None else None
        if content is None or name is None:
            result.unreadable.append(where)
        elif (dest / name).exists():
            result.already += 1
        else:
            (dest / name).write_bytes(content)
            result.saved.append(dest / name)
    return result


def _cursor(session: Session, name: str) -> int:
    query = select(Cursor).where(Cursor.name == name)
    if is_postgres(session):
        query = query.with_for_update()
    row = session.scalar(query)
    return row.position if row is not None else 0


def advance(session: Session, name: str, position: int, at: datetime) -> None:
    """Move cursor `name` forward to `position`; never back. Several amber processes sharing the state database
    may deliver the same checkpoints or entries (at least once), and a slower one must not rewind a faster one's
    cursor (which would deliver everything after it once more)."""
    # One statement (an upsert), so two processes creating the same cursor at once do not collide either.
    upsert = (postgres_insert if is_postgres(session) else sqlite_insert)(Cursor)
    statement = upsert.values(name=name, position=position, updated_at=at)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[Cursor.name],
            set_={"position": statement.excluded.position, "updated_at": statement.excluded.updated_at},
            where=Cursor.position < statement.excluded.position,
        )
    )


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
