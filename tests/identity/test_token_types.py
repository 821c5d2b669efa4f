"""Access tokens are told from ID tokens: header typ at+jwt (RFC 9068) or the issuer's `token_types`, never an ID
token's claims, and in production an explicit audience. Tokens come from the real OpenID provider on loopback."""

from __future__ import annotations

import logging
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from amber.api.runtime import Runtime
from amber.catalog.schema import IssuerConfig
from amber.core.clock import FrozenClock
from amber.core.errors import ConfigError, NotAuthenticated
from amber.core.settings import Settings
from amber.identity import RemoteKeys, TokenVerifier, TrustedIssuer
from amber.ledger import tlog
from tests.conftest import POLICIES
from tests.identity.oidc import API_RESOURCE, CLI_CLIENT, OidcProvider


@pytest.fixture
def now_clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))


def verifier(
    provider: OidcProvider, clock: FrozenClock, token_types: tuple[str, ...] | None, audience: str = API_RESOURCE
) -> TokenVerifier:
    trusted = TrustedIssuer(
        issuer=provider.issuer,
        audience=audience,
        keys=RemoteKeys(provider.issuer, clock=clock),
        algorithms=("RS256",),
        name="test",
        token_types=token_types,
    )
    return TokenVerifier([trusted], clock)


def signed(provider: OidcProvider, clock: FrozenClock, typ: str | None) -> str:
    """An access token of the provider's shape, signed with its key, with the header typ the test needs."""
    now = int(clock.now().timestamp())
    claims = {"iss": provider.issuer, "aud": API_RESOURCE, "sub": "alice", "iat": now, "exp": now + 600}
    # typ None: no typ header at all (PyJWT adds "JWT" unless told None).
    headers = {"kid": provider.keys[0]["kid"], "typ": typ}
    return jwt.encode(claims, jwt.PyJWK(provider.keys[0]).key, algorithm="RS256", headers=headers)


def test_the_providers_access_token_is_at_jwt_and_its_id_token_is_refused_as_one(
    provider: OidcProvider, now_clock: FrozenClock
) -> None:
    tokens = provider.tokens("alice", client_id=CLI_CLIENT)
    assert jwt.get_unverified_header(tokens["access_token"])["typ"] == "at+jwt"
    # The audience is the client id here, so the audience check alone would let the ID token in.
    strict = verifier(provider, now_clock, ("at+jwt",), audience=CLI_CLIENT)
    assert "typ" not in jwt.get_unverified_header(tokens["id_token"])  # this provider sends none on ID tokens
    with pytest.raises(NotAuthenticated, match=r"header typ none.*an ID token is not an access token"):
        strict.verify(tokens["id_token"])
    # Many providers (Google, Entra ID) send typ JWT on ID tokens: the same ID token with that header passes an
    # allow-list that admits JWT, and is still refused, for the claims only ID tokens carry.
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    as_jwt = jwt.encode(claims, jwt.PyJWK(provider.keys[0]).key, algorithm="RS256", headers={"kid": "key-1"})
    assert jwt.get_unverified_header(as_jwt)["typ"] == "JWT"
    lenient_typ = verifier(provider, now_clock, ("at+jwt", "jwt"), audience=CLI_CLIENT)
    with pytest.raises(NotAuthenticated, match="an ID token is not an access token \\(it carries nonce"):
        lenient_typ.verify(as_jwt)
    # So does the lenience outside production.
    with pytest.raises(NotAuthenticated, match="an ID token is not an access token"):
        verifier(provider, now_clock, None, audience=CLI_CLIENT).verify(tokens["id_token"])
    # The access token verifies under the strict rule.
    assert verifier(provider, now_clock, ("at+jwt",)).verify(tokens["access_token"]).subject == "alice"


def test_web_sign_in_still_verifies_the_id_token(provider: OidcProvider, now_clock: FrozenClock) -> None:
    id_token = provider.tokens("alice", client_id=CLI_CLIENT)["id_token"]
    nonce = jwt.decode(id_token, options={"verify_signature": False})["nonce"]
    strict = verifier(provider, now_clock, ("at+jwt",))
    assert strict.verify(id_token, audience=CLI_CLIENT, nonce=nonce).subject == "alice"


@pytest.mark.parametrize(
    ("token_types", "typ", "accepted"),
    [
        (("at+jwt",), "at+jwt", True),
        (("at+jwt",), "application/AT+JWT", True),  # RFC 7515: case-insensitive, application/ optional
        (("at+jwt",), "JWT", False),
        (("at+jwt",), None, False),
        (("jwt",), "JWT", True),
        (("jwt",), "at+jwt", False),
    ],
)
def test_typ_allow_list(
    provider: OidcProvider,
    now_clock: FrozenClock,
    token_types: tuple[str, ...],
    typ: str | None,
    accepted: bool,
) -> None:
    check = verifier(provider, now_clock, token_types)
    token = signed(provider, now_clock, typ)
    if accepted:
        assert check.verify(token).subject == "alice"
    else:
        with pytest.raises(NotAuthenticated, match="is not one this issuer's access tokens are accepted with"):
            check.verify(token)


def test_outside_production_any_typ_is_accepted_with_one_warning(
    provider: OidcProvider, now_clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    check = verifier(provider, now_clock, None)
    with caplog.at_level(logging.WARNING, logger="amber.identity"):
        assert check.verify(signed(provider, now_clock, "at+jwt")).subject == "alice"
        assert not caplog.records
        for _ in range(3):
            assert check.verify(signed(provider, now_clock, "JWT")).subject == "alice"
    (record,) = caplog.records
    assert "issuer test sent an access token with typ 'JWT', not at+jwt" in record.getMessage()
    assert "token_types" in record.getMessage()


def test_token_types_in_the_catalog() -> None:
    base = {"issuer": "https://idp.test", "client_id": "amber", "audience": "api://amber"}
    assert IssuerConfig.model_validate(base).token_types is None
    config = IssuerConfig.model_validate({**base, "token_types": ["JWT", "application/at+JWT"]})
    assert config.token_types == ["at+jwt", "jwt"]
    for bad in ([], ["a b"], [""]):
        with pytest.raises(ValidationError, match="token_types"):
            IssuerConfig.model_validate({**base, "token_types": bad})
    with pytest.raises(ValidationError, match="`audience` is empty"):
        IssuerConfig.model_validate({**base, "audience": ""})


ISSUER_BLOCK = """\
version: 1
identity:
  admins: [platform]
  issuers:
    - name: okta
      issuer: https://acme.okta.test/oauth2/default
      client_id: 0oa1
{extra}
"""


def _production(tmp_path: Path, state_url: str, extra: str, identity_extra: str = "") -> Runtime:
    catalog = tmp_path / "amber.yaml"
    text = ISSUER_BLOCK.format(extra=textwrap.indent(textwrap.dedent(extra), "      "))
    catalog.write_text(text.replace("  admins: [platform]\n", f"  admins: [platform]\n{identity_extra}"))
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    key = tmp_path / "ledger.key"
    key.write_text(tlog.Signer.generate("test").skey())
    settings = Settings(
        env="production",
        state_dir=tmp_path / "state",
        database_url=state_url,
        catalog=catalog,
        ledger_signing_key=f"file:{key}",
    )
    return Runtime.build(settings)


def test_production_needs_an_explicit_audience(tmp_path: Path, state_url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _production(tmp_path, state_url, "")
    assert f"{tmp_path / 'amber.yaml'}:5: identity.issuers[okta]: set `audience`" in refused.value.message
    assert "does not default to client_id" in refused.value.message
    assert "AMBER_ENV=development" in refused.value.message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("audience: api://amber\n", ("at+jwt",)),
        ("audience: api://amber\ntoken_types: [JWT, at+jwt]\n", ("at+jwt", "jwt")),
    ],
)
def test_production_requires_at_jwt_unless_listed(
    tmp_path: Path, state_url: str, extra: str, expected: tuple[str, ...]
) -> None:
    rt = _production(tmp_path, state_url, extra)
    try:
        trusted = rt.verifier.issuer("https://acme.okta.test/oauth2/default")
        assert trusted is not None
        assert (trusted.audience, trusted.token_types) == ("api://amber", expected)
    finally:
        rt.close()


def test_production_refuses_a_short_scim_token_at_start(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBER_TEST_SCIM_SHORT", "short")
    scim = "  scim: {token: env:AMBER_TEST_SCIM_SHORT, issuer: okta}\n"
    with pytest.raises(ConfigError, match=r"amber.yaml:\d+: identity.scim.token resolves to fewer than 16"):
        _production(tmp_path, state_url, "audience: api://amber\n", scim)
    monkeypatch.setenv("AMBER_TEST_SCIM_SHORT", "a-long-enough-scim-token")
    _production(tmp_path, state_url, "audience: api://amber\n", scim).close()
