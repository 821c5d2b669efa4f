"""Identity: who is acting, as the identity provider verified them. One verification path for every token."""

from amber.identity.dev_issuer import DevIssuer
from amber.identity.principals import Principal
from amber.identity.tokens import KeySource, RemoteKeys, StaticKeys, TokenVerifier, TrustedIssuer

__all__ = [
    "DevIssuer",
    "KeySource",
    "Principal",
    "RemoteKeys",
    "StaticKeys",
    "TokenVerifier",
    "TrustedIssuer",
]
