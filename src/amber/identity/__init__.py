"""Identity: who is acting, as the identity provider verified them. One verification path for every token."""

from amber.identity import directory, sessions
from amber.identity.dev_issuer import DevIssuer
from amber.identity.principals import Principal
from amber.identity.providers import Provider
from amber.identity.roles import ADMIN, APPROVER, AUDITOR, REQUESTER, ROLES, roles_for, with_roles
from amber.identity.tokens import Discovery, KeySource, RemoteKeys, StaticKeys, TokenVerifier, TrustedIssuer

__all__ = [
    "ADMIN",
    "APPROVER",
    "AUDITOR",
    "REQUESTER",
    "ROLES",
    "DevIssuer",
    "Discovery",
    "KeySource",
    "Principal",
    "Provider",
    "RemoteKeys",
    "StaticKeys",
    "TokenVerifier",
    "TrustedIssuer",
    "directory",
    "roles_for",
    "sessions",
    "with_roles",
]
