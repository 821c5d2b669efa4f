"""SCRAM-SHA-256 (RFC 5802 / 7677) as PostgreSQL uses it, client side: the gateway logging in upstream.

What this does NOT do: channel binding (SCRAM-SHA-256-PLUS) or SASLprep of non-ASCII passwords; amber's own
role passwords are ASCII and the upstream link is loopback or TLS-protected by the operator.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class ScramError(Exception):
    pass


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class ScramClient:
    def __init__(self, password: str) -> None:
        self._password = password.encode()
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def first_message(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def final_message(self, server_first: bytes) -> bytes:
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        nonce, salt, iterations = fields.get("r", ""), fields.get("s", ""), int(fields.get("i", "0"))
        if not nonce.startswith(self._nonce) or not salt or iterations < 4096:
            raise ScramError("the upstream server's SCRAM challenge is invalid")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, base64.b64decode(salt), iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = _h(client_key)
        final_without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{server_first.decode()},{final_without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{final_without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        fields = dict(part.split("=", 1) for part in server_final.decode().split(","))
        expected = base64.b64encode(self._server_signature).decode()
        if not hmac.compare_digest(fields.get("v", ""), expected):
            raise ScramError("the upstream server's SCRAM signature does not verify")
