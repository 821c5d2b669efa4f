"""Identifiers: time-ordered, URL-safe, prefixed by kind (`req_`, `grt_`)."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """`<prefix>_<12 hex ms timestamp><12 hex random>`: sortable by creation time, 48 bits of randomness."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{millis:012x}{secrets.token_hex(6)}"


def short_id(full_id: str) -> str:
    """The random tail of an id, used where names must be short (database role names)."""
    return full_id.rsplit("_", 1)[-1][-12:]
