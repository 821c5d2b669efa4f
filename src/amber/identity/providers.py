"""The OpenID providers people sign in with: what web sign-in and `amber login` need to talk to each one.

Owns the per-provider client settings (client ids, scopes, resource indicator) and the cached discovery
document. The client secret stays a reference until the moment it is sent to the provider's token endpoint;
it is never logged or returned by any API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from amber.identity.tokens import Discovery


@dataclass(frozen=True)
class Provider:
    name: str
    display_name: str
    issuer: str
    client_id: str
    cli_client_id: str
    scopes: tuple[str, ...]
    discovery: Discovery
    client_secret: Callable[[], str | None]
    resource: str | None = None

    def public(self) -> dict[str, object]:
        """What a client (the CLI, the sign-in page) may know: no secret."""
        doc = self.discovery.document()
        return {
            "name": self.name,
            "display_name": self.display_name or self.name,
            "issuer": self.issuer,
            "client_id": self.cli_client_id,
            "scopes": list(self.scopes),
            "resource": self.resource,
            "authorization_endpoint": doc.get("authorization_endpoint"),
            "token_endpoint": doc.get("token_endpoint"),
            "device_authorization_endpoint": doc.get("device_authorization_endpoint"),
        }
