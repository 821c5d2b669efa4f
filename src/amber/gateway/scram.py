"""SCRAM-SHA-256 (RFC 5802 / 7677 / 5929) as PostgreSQL uses it, both sides, sans-I/O.

- `ScramClient`: the gateway logging in upstream as the grant's role.
- `ScramServer`: a client logging in to the gateway with its gateway token, checked against the stored verifier
  (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, made by `amber.core.crypto`), so the token
  never crosses the wire and amber never holds it. Offers SCRAM-SHA-256-PLUS with `tls-server-end-point`
  channel binding when it is given the TLS certificate's hash.

Invariants (server): the proof is compared in constant time; the server nonce comes from `secrets`; anything
malformed, out of order or a channel-binding downgrade raises `ScramProtocolError` (never another exception);
the server signature is released only after the proof verified.
What this does NOT do: SASLprep of non-ASCII passwords (amber's tokens and role passwords are ASCII, which
SASLprep leaves unchanged); the client side does no channel binding (the upstream link is loopback or
TLS-protected by the operator); the user name inside the SCRAM message is ignored, as PostgreSQL ignores it
(the startup packet's user is the one that counts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from amber.core.crypto import SCRAM_ITERATIONS


class ScramError(Exception):
    pass


class ScramProtocolError(ScramError):
    """The peer's SCRAM message is malformed, out of order, or downgrades channel binding. Safe to show."""


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


SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True)
class ScramVerifier:
    """A parsed `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Raises ValueError if `text` is not a SCRAM-SHA-256 verifier."""
        match = re.fullmatch(r"SCRAM-SHA-256\$(\d{1,7}):([^$:]+)\$([^$:]+):([^$:]+)", text)
        if match is None:
            raise ValueError("not a SCRAM-SHA-256 verifier")
        iterations, salt, stored_key, server_key = match.groups()
        verifier = cls(int(iterations), _b64decode(salt), _b64decode(stored_key), _b64decode(server_key))
        if verifier.iterations < 1 or not verifier.salt or {len(verifier.stored_key), len(verifier.server_key)} != {32}:
            raise ValueError("not a SCRAM-SHA-256 verifier")
        return verifier


def mock_verifier(key: bytes, user: str) -> str:
    """A verifier for a user that has none: the same salt for the same user every time, keys nobody knows.

    The exchange then runs its course and is refused at the end, as PostgreSQL does for an unknown role, so the
    challenge itself tells a prober nothing.
    """
    salt = _hmac(key, f"amber:scram-mock-salt:{user}".encode())[:16]
    keys = _hmac(key, f"amber:scram-mock-keys:{user}".encode())
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt).decode()}${b64(_h(keys)).decode()}:{b64(keys).decode()}"


class ScramServer:
    """One SCRAM-SHA-256 login, server side: `server_first`, then `client_final`, then `proves`, then
    `server_final`. Each step raises `ScramProtocolError` for a malformed or out-of-order message.

    `channel_binding` is the TLS connection's `tls-server-end-point` data (the hash of the server certificate,
    RFC 5929), or None when there is no TLS or it cannot be computed; with it, SCRAM-SHA-256-PLUS is offered
    and a client that says it could bind but thinks the server cannot (`y`) is refused as a downgrade.
    What this does NOT check: who the user is (the caller chose the verifier from the startup packet's user).
    """

    def __init__(self, verifier: str, *, channel_binding: bytes | None = None, server_nonce: str | None = None) -> None:
        self._verifier_text = verifier
        self._verifier = ScramVerifier.parse(verifier)
        self._channel_binding = channel_binding
        # NOTE: server_nonce is for the RFC test vectors only; a real exchange always draws a fresh one.
        self._server_nonce = server_nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._nonce = ""
        self._gs2_header = b""
        self._first_bare = ""
        self._server_first = ""
        self._auth_message = b""
        self._proof = b""
        self._proved = False

    @property
    def mechanisms(self) -> list[str]:
        """What to offer in AuthenticationSASL, preferred first (as PostgreSQL lists them)."""
        if self._channel_binding is not None:
            return [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        return [SCRAM_SHA_256]

    def server_first(self, mechanism: str, client_first: bytes) -> bytes:
        """Answer the client-first-message (from SASLInitialResponse) with the server-first-message."""
        if self._nonce:
            raise ScramProtocolError("unexpected SASL initial response")
        if mechanism not in self.mechanisms:
            # NOTE: the name is not echoed: a confused client may have put its password there.
            raise ScramProtocolError(f"the SASL mechanism chosen was not offered; use {' or '.join(self.mechanisms)}")
        text = _ascii(client_first, "client-first-message")
        header, sep, bare = _split_gs2(text)
        if not sep:
            raise ScramProtocolError("malformed SCRAM client-first-message")
        flag = header.split(",", 1)[0]
        plus = mechanism == SCRAM_SHA_256_PLUS
        if flag == "p=tls-server-end-point":
            if not plus:
                raise ScramProtocolError("channel binding was requested, but the mechanism is not SCRAM-SHA-256-PLUS")
        elif flag.startswith("p="):
            raise ScramProtocolError(f"unsupported SCRAM channel binding type {flag[2:40]!r}")
        elif plus:
            raise ScramProtocolError("SCRAM-SHA-256-PLUS was chosen, but the client sent no channel binding")
        elif flag == "y" and self._channel_binding is not None:
            # The client could bind and we offered it: someone in between removed -PLUS from our offer.
            raise ScramProtocolError("the client supports SCRAM channel binding, but thinks the server does not")
        elif flag not in ("n", "y"):
            raise ScramProtocolError("malformed SCRAM GS2 header")
        if header.split(",", 1)[1] != "":
            raise ScramProtocolError("SCRAM authorization identities are not supported")
        attributes = _attributes(bare, "client-first-message")
        if [name for name, _ in attributes][:2] != ["n", "r"] or len(attributes) != 2:
            raise ScramProtocolError("malformed SCRAM client-first-message (expected n=...,r=...)")
        client_nonce = attributes[1][1]
        if not client_nonce or not client_nonce.isprintable():
            raise ScramProtocolError("malformed SCRAM client nonce")
        self._gs2_header = (header + ",").encode()
        self._first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        salt = base64.b64encode(self._verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._verifier.iterations}"
        return self._server_first.encode()

    def client_final(self, client_final: bytes) -> None:
        """Take the client-final-message (from SASLResponse); `proves` then says whether its proof is right."""
        if not self._nonce or self._auth_message:
            raise ScramProtocolError("unexpected SASL response")
        text = _ascii(client_final, "client-final-message")
        without_proof, sep, proof = text.rpartition(",p=")
        if not sep:
            raise ScramProtocolError("malformed SCRAM client-final-message (no proof)")
        attributes = _attributes(without_proof, "client-final-message")
        if [name for name, _ in attributes][:2] != ["c", "r"]:
            raise ScramProtocolError("malformed SCRAM client-final-message (expected c=...,r=...)")
        expected_binding = self._gs2_header
        if self._gs2_header.startswith(b"p="):
            expected_binding += self._channel_binding or b""  # server_first refused p= without binding data
        if not hmac.compare_digest(_b64decode_or_refuse(attributes[0][1], "channel binding"), expected_binding):
            raise ScramProtocolError("SCRAM channel binding does not match (is something between you and amber?)")
        if not hmac.compare_digest(attributes[1][1].encode(), self._nonce.encode()):
            raise ScramProtocolError("SCRAM nonce does not match")
        self._proof = _b64decode_or_refuse(proof, "proof")
        if len(self._proof) != 32:
            raise ScramProtocolError("malformed SCRAM client proof")
        self._auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()

    def proves(self, verifier: str) -> bool:
        """True if the client's proof was made with the secret behind `verifier`, which must also be the verifier
        this exchange started from (a token re-issued meanwhile fails). Constant time in the proof."""
        if not self._auth_message:
            raise ScramProtocolError("no SCRAM proof received")
        same = hmac.compare_digest(verifier.encode(), self._verifier_text.encode())
        signature = _hmac(self._verifier.stored_key, self._auth_message)
        client_key = bytes(a ^ b for a, b in zip(self._proof, signature, strict=True))
        proved = hmac.compare_digest(_h(client_key), self._verifier.stored_key)
        self._proved = same and proved
        return self._proved

    def server_final(self) -> bytes:
        """The server-final-message (for AuthenticationSASLFinal): only after `proves` said yes."""
        if not self._proved:
            raise ScramProtocolError("the SCRAM proof was not verified")
        return b"v=" + base64.b64encode(_hmac(self._verifier.server_key, self._auth_message))


def _ascii(data: bytes, what: str) -> str:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ScramProtocolError(f"malformed SCRAM {what} (not ASCII)") from None
    if "\0" in text:
        raise ScramProtocolError(f"malformed SCRAM {what}")
    return text


def _split_gs2(text: str) -> tuple[str, str, str]:
    """`<flag>,<authzid>,<bare>` -> (`<flag>,<authzid>`, ",", `<bare>`)."""
    first = text.find(",")
    second = text.find(",", first + 1) if first >= 0 else -1
    if first < 0 or second < 0:
        return text, "", ""
    return text[:second], ",", text[second + 1 :]


def _attributes(text: str, what: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or len(name) != 1 or not name.isalpha():
            raise ScramProtocolError(f"malformed SCRAM {what}")
        if name == "m":
            raise ScramProtocolError("SCRAM extensions are not supported")
        out.append((name, value))
    return out


def _b64decode(text: str) -> bytes:
    if not _B64.fullmatch(text) or len(text) % 4:
        raise ValueError("invalid base64")
    return base64.b64decode(text, validate=True)


def _b64decode_or_refuse(text: str, what: str) -> bytes:
    try:
        return _b64decode(text)
    except ValueError:
        raise ScramProtocolError(f"malformed SCRAM {what} (not base64)") from None
