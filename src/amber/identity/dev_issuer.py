"""The local development issuer: its own Ed25519 key and JWKS, for `make run`, the demo and tests.

Its tokens go through the very same TokenVerifier as any provider's. It is refused when AMBER_ENV=production
and amber warns loudly whenever it is enabled. What it does NOT do: authenticate anyone. Whoever can reach
its token endpoint can be anyone; that is the point of a development issuer and why it must never run in
production.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from amber.core.clock import Clock
from amber.identity.tokens import StaticKeys, TrustedIssuer

DEV_AUDIENCE = "amber"
WARNING = (
    "the DEVELOPMENT identity issuer is enabled: anyone who can reach amber can sign in as anyone. "
    "Never use it in production (AMBER_ENV=production refuses it)."
)


class DevIssuer:
    def __init__(self, state_dir: Path, issuer_url: str, clock: Clock) -> None:
        self.issuer_url = issuer_url
        self._clock = clock
        self._key = _load_or_create_key(state_dir / "dev-issuer-ed25519.pem")
        public = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._x = base64.urlsafe_b64encode(public).decode().rstrip("=")
        thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": self._x}, separators=(",", ":"))
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(thumb.encode()).digest()).decode().rstrip("=")

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def trusted_issuer(self) -> TrustedIssuer:
        return TrustedIssuer(
            issuer=self.issuer_url,
            audience=DEV_AUDIENCE,
            keys=StaticKeys(self.jwks),
            algorithms=("EdDSA",),
        )

    def mint(self, user: str, groups: list[str], *, ttl: timedelta = timedelta(hours=12)) -> str:
        now = int(self._clock.now().timestamp())
        claims = {
            "iss": self.issuer_url,
            "aud": DEV_AUDIENCE,
            "sub": f"dev:{user}",
            "preferred_username": user,
            "groups": sorted(set(groups)),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl.total_seconds()),
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid, "typ": "at+jwt"})


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key
