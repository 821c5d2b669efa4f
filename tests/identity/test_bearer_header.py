"""The API's Authorization header is exactly `Bearer <token>` (RFC 6750 b64token, one space): anything else is
refused, never trimmed or guessed at. The token is a real provider's access token."""

from __future__ import annotations

from tests.conftest import Amber
from tests.identity.oidc import OidcProvider


def test_well_formed_bearer_headers_verify(oidc_amber: Amber, provider: OidcProvider) -> None:
    token = provider.access_token("alice")
    for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive (RFC 7235)
        assert oidc_amber.api.get("/v1/me", headers={"authorization": f"{scheme} {token}"}).status_code == 200


MALFORMED = [
    "Bearer  {token}",  # two spaces
    "Bearer\t{token}",
    "Bearer {token} extra",
    "Bearer {token},Bearer {token}",
    "Basic {token}",
    "Bearer",
    "Token {token}",
    "{token}",
    'Bearer "{token}"',
]


def test_malformed_bearer_headers_are_refused(oidc_amber: Amber, provider: OidcProvider) -> None:
    token = provider.access_token("alice")
    for shape in MALFORMED:
        response = oidc_amber.api.get("/v1/me", headers={"authorization": shape.format(token=token)})
        assert response.status_code == 401, shape
        assert "send `Authorization: Bearer <token>`" in response.json()["detail"], shape
