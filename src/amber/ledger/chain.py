"""Ledger v1 entry format and hash chain (docs/decisions/0002-ledger-v1-format.md).

entry_hash = SHA-256( canonical_json({
    "v": 1, "seq": n, "at": RFC 3339 UTC with microseconds, "type": event type,
    "actor": {"iss", "sub", "name"}, "subject": {"kind", "id"}, "payload": {...}, "prev": prev_hash }) )
The first entry's prev is 64 zeros. Canonical JSON: sorted keys, no whitespace, UTF-8, no NaN.
This module is pure so that the offline verifier can reuse it verbatim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amber.core.crypto import canonical_json, sha256_hex

GENESIS = "0" * 64
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Actor:
    issuer: str
    subject: str
    name: str


SYSTEM = Actor(issuer="amber", subject="system", name="amber")


def format_at(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_body(
    *,
    seq: int,
    at: datetime,
    event_type: str,
    actor: Actor,
    subject_kind: str,
    subject_id: str,
    payload: dict[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "seq": seq,
        "at": format_at(at),
        "type": event_type,
        "actor": {"iss": actor.issuer, "sub": actor.subject, "name": actor.name},
        "subject": {"kind": subject_kind, "id": subject_id},
        "payload": payload,
        "prev": prev_hash,
    }


def hash_body(body: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(body))


def payload_text(payload: dict[str, Any]) -> str:
    return canonical_json(payload).decode()


def parse_payload(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object")  # noqa: TRY004 - callers treat it as bad data
    return value
