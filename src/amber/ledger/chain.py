"""Ledger v1 entry format and hash chain (docs/decisions/0002-ledger-v1-format.md).

entry_hash = SHA-256( canonical_json({
    "v": 1, "seq": n, "at": RFC 3339 UTC with microseconds, "type": event type,
    "actor": {"iss", "sub", "name"}, "subject": {"kind", "id"}, "payload": {...}, "prev": prev_hash }) )
The first entry's prev is 64 zeros. Canonical JSON: sorted keys, no whitespace, UTF-8, no NaN.
This module is pure so that the offline verifier can reuse it verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any

from amber.core.crypto import canonical_json, sha256_hex

GENESIS = "0" * 64
FORMAT_VERSION = 1

_ZERO = timedelta(0)
# The very encoders `canonical_json` runs (json.dumps with these options), built once: json.dumps builds a
# fresh JSONEncoder on every call, which costs more than encoding a small payload.
_json_object: Callable[[Any], str] = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_json_string: Callable[[str], str] = encode_basestring  # how json.dumps(ensure_ascii=False) writes a str


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder `_json_object` builds on every call, built once (a third of a small payload's encoding time):
# the same options; no circular-reference bookkeeping (a circular payload raises RecursionError instead).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # None where the C accelerator is missing
_c_object = (
    _c_make_encoder(None, _not_json, encode_basestring, None, ":", ",", True, False, False)
    if _c_make_encoder is not None
    else None
)


@dataclass(frozen=True)
class Actor:
    issuer: str
    subject: str
    name: str


SYSTEM = Actor(issuer="amber", subject="system", name="amber")


def format_at(at: datetime) -> str:
    """The entry's `at` as hashed: RFC 3339 UTC with microseconds and a Z."""
    # The usual case, twice as fast and the same text (tests/ledger/test_encoding.py); not before the year 1000,
    # which strftime does not zero-pad.
    if at.utcoffset() == _ZERO and at.year >= 1000:
        return at.isoformat(timespec="microseconds")[:26] + "Z"
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_utc(at: datetime) -> tuple[str, str]:
    """`format_at(at)` and the same instant as `YYYY-MM-DD HH:MM:SS.ffffff` (how SQLite state stores it), from
    one isoformat call; `at` must be in UTC (offset zero)."""
    text = at.isoformat(sep=" ", timespec="microseconds")
    if at.year < 1000:  # see format_at
        return format_at(at), text[:26]
    return f"{text[:10]}T{text[11:26]}Z", text[:26]


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


def entry_bytes(
    *,
    seq: int,
    at: datetime,
    event_type: str,
    actor: Actor,
    subject_kind: str,
    subject_id: str,
    payload_json: str,
    prev_hash: str,
    at_text: str | None = None,
) -> bytes:
    """`canonical_json(entry_body(...))` written out directly (the append path's hot spot), given the payload's
    canonical JSON (`payload_text`) and, if the caller has it, `format_at(at)`. The bytes are identical
    (tests/ledger/test_encoding.py): the keys in sorted order, every string through the encoder json.dumps
    uses. Raises TypeError if a field is not a str.
    """
    s = _json_string
    when = format_at(at) if at_text is None else at_text
    return (
        f'{{"actor":{{"iss":{s(actor.issuer)},"name":{s(actor.name)},"sub":{s(actor.subject)}}},'
        f'"at":{s(when)},"payload":{payload_json},"prev":{s(prev_hash)},"seq":{int(seq)},'
        f'"subject":{{"id":{s(subject_id)},"kind":{s(subject_kind)}}},"type":{s(event_type)},"v":{FORMAT_VERSION}}}'
    ).encode()


def hash_body(body: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(body))


def payload_text(payload: dict[str, Any]) -> str:
    """The payload's canonical JSON (what the ledger stores and hashes); ValueError on NaN or Infinity."""
    if _c_object is not None and type(payload) is dict:
        return "".join(_c_object(payload, 0))
    return _json_object(payload)


def parse_payload(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object")  # noqa: TRY004 - callers treat it as bad data
    return value
