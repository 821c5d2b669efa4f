"""Crypto helpers: amber-issued secrets, their hashes, constant-time comparison, canonical JSON.

Secrets carry the `amb_` prefix and a CRC32 checksum so leak scanners recognise them; they are shown once
and stored only as HMAC-SHA-256 hashes. Nothing here logs its inputs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

_ALPHABET_BYTES = 24  # 192 bits of randomness


def new_secret(kind: str) -> str:
    """A fresh secret like `amb_pg_<32 url-safe chars>_<6 base32 checksum>`."""
    body = base64.urlsafe_b64encode(secrets.token_bytes(_ALPHABET_BYTES)).decode().rstrip("=")
    # `-` in passwords trips up some URL parsers and shells; keep the alphabet boring.
    body = body.replace("-", "A").replace("_", "B")
    prefix = f"amb_{kind}_{body}"
    return f"{prefix}_{_checksum(prefix)}"


def _checksum(text: str) -> str:
    crc = zlib.crc32(text.encode()) & 0xFFFFFFFF
    return base64.b32encode(crc.to_bytes(4, "big")).decode().rstrip("=").lower()


def secret_checksum_ok(secret: str) -> bool:
    """True if `secret` looks like an amber secret with an intact checksum (a typo check, not a proof)."""
    prefix, _, checksum = secret.rpartition("_")
    return bool(prefix.startswith("amb_")) and hmac.compare_digest(_checksum(prefix), checksum)


def hash_secret(secret: str, key: bytes) -> str:
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def canonical_json(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no insignificant whitespace, UTF-8. The ledger hashes these bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def derived_secret(key: bytes, purpose: str, subject: str, *, prefix: str = "amb_up_") -> str:
    """A secret amber can recompute but never stores (e.g. the upstream password of a gateway-only role)."""
    digest = hmac.new(key, f"amber:{purpose}:{subject}".encode(), hashlib.sha256).digest()
    body = base64.urlsafe_b64encode(digest).decode().rstrip("=").replace("-", "A").replace("_", "B")
    return prefix + body


def load_or_create_key(path: Path) -> bytes:
    """amber's secret key (32 random bytes, hex, 0600). Created on first use; never logged."""
    if path.exists():
        text = path.read_text().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{path} does not hold a hex secret key") from None
        if len(key) < 32:
            raise ValueError(f"{path}: the secret key must be at least 32 bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key


SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations); libpq, asyncpg and JDBC all accept it


def scram_sha256_verifier(secret: str, *, iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None) -> str:
    """A SCRAM-SHA-256 verifier for `secret`, in PostgreSQL's format:
    `SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>` (RFC 5802/7677).

    It lets a server check a SCRAM proof without holding the secret; recovering the secret from it takes a
    brute-force search per guess of `iterations` PBKDF2 rounds, hopeless for amber's 192-bit tokens.
    NOTE: no SASLprep: amber's secrets are printable ASCII, which SASLprep leaves unchanged.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
