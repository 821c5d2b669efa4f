"""`identity:` in amber.yaml: what is accepted, what is refused at load, and several providers at once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.catalog.schema import IdentityConfig
from amber.core.clock import FrozenClock
from amber.core.errors import ConfigError
from amber.core.settings import Settings
from amber.identity import RemoteKeys
from tests.conftest import POLICIES, build_runtime
from tests.identity.conftest import provider_catalog, write_catalog
from tests.identity.oidc import API_RESOURCE, WEB_SECRET, OidcProvider

OKTA = {"issuer": "https://acme.okta.com/oauth2/default", "client_id": "0oa1", "client_secret": "env:OKTA_SECRET"}


def test_defaults_and_role_spellings() -> None:
    config = IdentityConfig.model_validate({"issuers": [OKTA], "admins": ["platform"], "roles": {"auditor": ["sec"]}})
    (issuer,) = config.issuers
    assert issuer.audience == "0oa1"  # defaults to the client id
    assert issuer.cli_client_id == "0oa1"
    assert issuer.name == "acme-okta-com-oauth2-default"
    assert issuer.scopes == ["openid", "profile", "email"]
    assert issuer.jwks_max_age == timedelta(minutes=5)
    assert config.roles.admin == ["platform"]
    assert config.auditors == ["sec"]


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({"issuers": [{**OKTA, "client_secret": "hunter2"}]}, "client_secret must be a reference"),
        ({"scim": {"token": "plain-token"}}, "scim.token must be a reference"),
        ({"issuers": [{**OKTA, "algorithms": ["HS256"]}]}, "algorithms"),
        ({"issuers": [{**OKTA, "algorithms": ["none"]}]}, "algorithms"),
        ({"issuers": [OKTA, {**OKTA, "client_id": "other"}]}, "same name"),
        ({"issuers": [{"issuer": "https://x.test"}]}, "set `audience`"),
        ({"clock_skew": "10m"}, "at most 5m"),
        ({"issuers": [{**OKTA, "jwks_max_age": "5s"}]}, "jwks_max_age must be between 10s and 1h"),
        ({"issuers": [{**OKTA, "jwks_max_age": "2h"}]}, "jwks_max_age must be between 10s and 1h"),
        ({"issuers": [{**OKTA, "issuer": "ftp://x"}]}, "issuer"),
    ],
)
def test_refused_at_load(identity: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IdentityConfig.model_validate(identity)


def test_dev_issuer_is_refused_in_production(catalog_path: Path, tmp_path: Path) -> None:
    settings = Settings(env="production", state_dir=tmp_path / "state", catalog=catalog_path)
    with pytest.raises(ConfigError, match="dev_issuer is refused when AMBER_ENV=production"):
        Runtime.build(settings)


@pytest.mark.parametrize("field", ["issuer", "jwks_uri"])
def test_plain_http_issuers_are_refused_in_production(tmp_path: Path, field: str) -> None:
    issuer = {**OKTA, "client_secret": None, "jwks_uri": "https://acme.okta.com/keys"}
    issuer[field] = "http://acme.okta.com/oauth2/default" if field == "issuer" else "http://acme.okta.com/keys"
    catalog = tmp_path / "amber.yaml"
    catalog.write_text(
        "version: 1\nidentity:\n  issuers:\n"
        + "".join(
            f"    {'-' if i == 0 else ' '} {k}: {v}\n" for i, (k, v) in enumerate(issuer.items()) if v is not None
        )
    )
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    settings = Settings(env="production", state_dir=tmp_path / "state", catalog=catalog)
    with pytest.raises(ConfigError, match=f"{field} is 'http://acme.okta.com/.*': plain http is refused"):
        Runtime.build(settings)


def test_several_providers_at_once(
    provider: OidcProvider,
    own_provider: OidcProvider,
    state_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    target_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    second = (
        f"    - name: second\n      issuer: {own_provider.issuer}\n      client_id: amber-web\n"
        f"      audience: {API_RESOURCE}\n      algorithms: [RS256]\n      group_map: {{engineering: eng-second}}\n"
        "      jwks_max_age: 30s\n"
    )
    text = provider_catalog(provider.issuer).replace("  admins: [platform]\n", second + "  admins: [platform]\n")
    rt = build_runtime(state_url, write_catalog(tmp_path, text), tmp_path, clock)
    try:
        with TestClient(create_app(rt, run_worker=False)) as api:
            first = api.get("/v1/me", headers={"authorization": f"Bearer {provider.access_token('alice')}"})
            other = api.get("/v1/me", headers={"authorization": f"Bearer {own_provider.access_token('alice')}"})
            providers = api.get("/auth/providers").json()["providers"]
            max_ages = []
            for idp in (provider, own_provider):
                trusted = rt.verifier.issuer(idp.issuer)
                assert trusted is not None
                assert isinstance(trusted.keys, RemoteKeys)
                max_ages.append(trusted.keys.max_age_s)
    finally:
        rt.close()
    assert first.json()["iss"] == provider.issuer
    assert other.json()["iss"] == own_provider.issuer
    assert other.json()["groups"] == ["eng-second", "oncall"]
    assert [p["name"] for p in providers] == ["test", "second"]
    assert max_ages == [300.0, 30.0]  # jwks_max_age: default 5m, then as configured
