"""The shape of amber.yaml, as Pydantic models. Loading rules live in loader.py.

Invariant: an access level is an immutable profile that can only read. Anything that would let a level
write is rejected here, at load, with a message saying so (guarantee 1: amber never grants a write).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from amber.core.durations import MAX_LEVEL_TTL, format_duration, parse_duration

_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
_SECRET_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_QUOTED = re.compile(r'^"(?:[^"\x00]|"")+"$')
_MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names, so amber refuses them
# How long a fetched JWKS is trusted before it is fetched again (a withdrawn key is refused within it).
JWKS_MAX_AGE_DEFAULT = timedelta(minutes=5)
JWKS_MAX_AGE_MIN = timedelta(seconds=10)
JWKS_MAX_AGE_MAX = timedelta(hours=1)
_WRITE_WORDS = {"insert", "update", "delete", "truncate", "create", "write", "all", "references", "trigger"}


def _duration(value: object) -> timedelta:
    if isinstance(value, str | int | float | timedelta):
        return parse_duration(value)
    raise ValueError(f"not a duration: {value!r}")


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def sql_identifier(raw: str) -> str:
    """The name PostgreSQL resolves an identifier written in SQL to: unquoted folded to lower case, a
    double-quoted one exactly as written (with `""` meaning one quote). ValueError for anything else."""
    if _QUOTED.match(raw):
        name = raw[1:-1].replace('""', '"')
        if len(name.encode("utf-8")) > _MAX_IDENT_BYTES:
            raise ValueError(f"identifier {raw} is longer than PostgreSQL's 63 bytes")
        return name
    if _IDENT.match(raw):
        return raw.lower()
    raise ValueError(f"not a plain or double-quoted identifier: {raw!r}")


def split_qualified(raw: str) -> list[str]:
    """`schema.table` with either part plain or double-quoted -> the parts as written (dots inside quotes kept)."""
    parts, current, quoted = [], "", False
    for char in raw:
        if char == '"':
            quoted = not quoted  # a doubled quote toggles twice: still inside
        if char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Justification(_Strict):
    """What a reason must look like for this level (checked before policy; a miss is a deny with its id)."""

    min_length: int = Field(default=3, ge=0, le=500)
    pattern: str | None = Field(default=None, description="A regular expression the reason must contain.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class PostgresLevel(_Strict):
    """Level `read-only` for PostgreSQL: USAGE on the schemas and SELECT on their tables, nothing else."""

    access: Literal["read-only"] = "read-only"
    schemas: list[str] = Field(min_length=1)
    masked_columns: dict[str, list[str]] = Field(
        default_factory=dict,
        description="schema.table -> columns the role may not read (column-level grants; the gateway also "
        'refuses statements that would touch them). Names as in SQL: plain ones fold to lower case, "Quoted" '
        "ones keep their case.",
    )
    privileges: list[str] = Field(default_factory=lambda: ["SELECT"])
    statement_timeout: Duration = timedelta(seconds=30)
    # Tools keep pools (asyncpg, SQLAlchemy, JDBC: 5-10 connections) and pg_dump opens one per job.
    connection_limit: int = Field(default=10, ge=1, le=100)
    max_ttl: Duration = timedelta(hours=8)
    justification: Justification = Field(default_factory=Justification)
    via: Literal["direct", "gateway"] = Field(
        default="direct",
        description="gateway: users connect through amber's gateway with a token and never see a database "
        "password; direct: the role's own password is shown once (weaker: recorded only where the target loads "
        "pgaudit, and ended at expiry while amber is down only where amber can use pg_cron there; `amber resource "
        "check` says which).",
    )

    @field_validator("access", mode="before")
    @classmethod
    def _read_only(cls, value: object) -> object:
        if isinstance(value, str) and value != "read-only":
            raise ValueError(f"amber never grants a write: access {value!r} is not allowed, only 'read-only'")
        return value

    @field_validator("schemas")
    @classmethod
    def _schema_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _IDENT.match(name):
                raise ValueError(f"not a plain schema name: {name!r}")
        return value

    @field_validator("masked_columns")
    @classmethod
    def _masked_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for table, columns in value.items():
            parts = split_qualified(table)
            if len(parts) != 2:
                raise ValueError(f"masked_columns keys are schema.table, not {table!r}")
            for part in parts:
                sql_identifier(part)
            if not columns:
                raise ValueError(f"masked_columns: {table} lists no column")
            for column in columns:
                sql_identifier(column)
        return value

    def masks(self) -> dict[tuple[str, str], frozenset[str]]:
        """(schema, table) -> masked columns, every name as PostgreSQL resolves it (see sql_identifier)."""
        resolved: dict[tuple[str, str], frozenset[str]] = {}
        for table, columns in self.masked_columns.items():
            schema, name = (sql_identifier(part) for part in split_qualified(table))
            key = (schema, name)
            resolved[key] = resolved.get(key, frozenset()) | {sql_identifier(column) for column in columns}
        return resolved

    @field_validator("privileges")
    @classmethod
    def _only_select(cls, value: list[str]) -> list[str]:
        for privilege in value:
            if privilege.strip().lower() in _WRITE_WORDS or privilege.strip().upper() != "SELECT":
                raise ValueError(f"amber never grants a write: privilege {privilege!r} is not allowed, only SELECT")
        return value

    @field_validator("max_ttl")
    @classmethod
    def _ttl_bound(cls, value: timedelta) -> timedelta:
        if value > MAX_LEVEL_TTL:
            raise ValueError(f"max_ttl may be at most {format_duration(MAX_LEVEL_TTL)}")
        return value


class Resource(_Strict):
    name: str = Field(pattern=_NAME)
    kind: Literal["postgres"]
    description: str = ""
    environment: str = Field(default="production", pattern=_NAME)
    tags: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list, description="Groups that own the resource.")
    connection: str = Field(description="Admin connection by reference: env:NAME or file:PATH, never inline.")
    grantee_group: str | None = Field(
        default=None, description="A privilege-less group role every granted role joins (for pg_hba rules)."
    )
    levels: dict[str, PostgresLevel] = Field(min_length=1)

    @field_validator("connection")
    @classmethod
    def _by_reference(cls, value: str) -> str:
        if not _SECRET_REF.match(value):
            raise ValueError(
                "the admin connection must be a reference (env:NAME or file:PATH), never an inline URL or password"
            )
        return value

    @field_validator("grantee_group")
    @classmethod
    def _group_name(cls, value: str | None) -> str | None:
        if value is not None and not _IDENT.match(value):
            raise ValueError(f"not a plain role name: {value!r}")
        return value

    @field_validator("levels")
    @classmethod
    def _level_names(cls, value: dict[str, PostgresLevel]) -> dict[str, PostgresLevel]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"level name {name!r} must match {_NAME}")
        return value


class IssuerConfig(_Strict):
    """One OpenID provider amber trusts. Discovery (`<issuer>/.well-known/openid-configuration`) finds its
    endpoints and keys; the client secret is a reference (env:NAME or file:PATH), never inline."""

    name: str = Field(default="", pattern=r"^$|^[a-z][a-z0-9_-]{0,62}$", description="Short name (login, URLs).")
    display_name: str = ""
    issuer: str = Field(pattern=r"^https?://")
    audience: str = Field(
        default="",
        description="The `aud` amber accepts on API tokens (default: client_id; required in production).",
    )
    token_types: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Header `typ` values accepted on API tokens, for providers that do not send at+jwt (RFC 9068), "
        'e.g. ["JWT"]. Default: at+jwt only in production, any (warned once) elsewhere.',
    )
    client_id: str = ""
    client_secret: str | None = Field(default=None, description="env:NAME or file:PATH (the web sign-in client).")
    cli_client_id: str = Field(default="", description="A public client for `amber login` (default: client_id).")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    resource: str | None = Field(default=None, description="RFC 8707 resource indicator sent when signing in.")
    jwks_uri: str | None = Field(default=None, pattern=r"^https?://")
    jwks_max_age: Duration = Field(
        default=JWKS_MAX_AGE_DEFAULT,
        description="The provider's keys are fetched again before the first verification after this long, so a "
        "key it withdrew is refused within this interval (10s to 1h).",
    )
    algorithms: list[Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]] = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"]  # type: ignore[arg-type]
    )
    subject_claim: str = Field(default="sub", description="The stable id (`oid` for Entra ID's directory id).")
    groups_claim: str = "groups"
    name_claim: str = "preferred_username"
    email_claim: str = "email"
    group_map: dict[str, str] = Field(
        default_factory=dict, description="Provider group (name or id) -> amber group; others pass unchanged."
    )

    @field_validator("token_types")
    @classmethod
    def _token_types(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for typ in value:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.+/_-]{0,62}$", typ):
                raise ValueError(f"token_types: {typ!r} is not a media type such as at+jwt or JWT")
        # As compared (amber.identity.tokens.token_type): case-insensitive, `application/` optional.
        return sorted({typ.lower().removeprefix("application/") for typ in value})

    @field_validator("jwks_max_age")
    @classmethod
    def _max_age_bounds(cls, value: timedelta) -> timedelta:
        if not JWKS_MAX_AGE_MIN <= value <= JWKS_MAX_AGE_MAX:
            raise ValueError(
                f"jwks_max_age must be between {format_duration(JWKS_MAX_AGE_MIN)} and "
                f"{format_duration(JWKS_MAX_AGE_MAX)} (a key the provider withdraws is trusted at most this long)"
            )
        return value

    @field_validator("client_secret")
    @classmethod
    def _secret_by_reference(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_REF.match(value):
            raise ValueError("client_secret must be a reference (env:NAME or file:PATH), never the secret itself")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> IssuerConfig:
        if not self.audience and not self.client_id:
            raise ValueError(f"issuer {self.issuer}: set `audience` (or `client_id`, which it defaults to)")
        if not self.audience and "audience" in self.model_fields_set:
            raise ValueError(f"issuer {self.issuer}: `audience` is empty; set it, or leave it out (then: client_id)")
        if not self.name:
            host = re.sub(r"[^a-z0-9]+", "-", self.issuer.split("://", 1)[1].lower()).strip("-")[:60]
            object.__setattr__(self, "name", host if re.match(r"^[a-z]", host) else f"idp-{host}"[:63])
        if not self.audience:
            object.__setattr__(self, "audience", self.client_id)
        if not self.cli_client_id:
            object.__setattr__(self, "cli_client_id", self.client_id)
        return self


class RolesConfig(_Strict):
    """amber roles from groups (after each provider's group_map). A role with no groups listed is open to
    every signed-in person for `requester` and `approver` (policy still decides), and to nobody for `admin`
    and `auditor`."""

    requester: list[str] = Field(default_factory=list)
    approver: list[str] = Field(default_factory=list)
    admin: list[str] = Field(default_factory=list)
    auditor: list[str] = Field(default_factory=list)


class ScimConfig(_Strict):
    """SCIM 2.0 provisioning from the identity provider (Okta, Entra ID). Off unless a token is configured."""

    token: str | None = Field(default=None, description="The bearer token the provider sends: env:NAME or file:PATH.")
    issuer: str = Field(default="", description="The issuer (URL or provider name) whose people SCIM manages.")
    subject_attribute: Literal["externalId", "userName", "id"] = Field(
        default="externalId", description="Which SCIM User attribute equals the token's subject claim."
    )

    @field_validator("token")
    @classmethod
    def _token_by_reference(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_REF.match(value):
            raise ValueError("scim.token must be a reference (env:NAME or file:PATH), never the token itself")
        return value


class IdentityConfig(_Strict):
    dev_issuer: bool = Field(default=False, description="Local development issuer; refused in production.")
    issuers: list[IssuerConfig] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list, description="Groups that may revoke any grant.")
    auditors: list[str] = Field(default_factory=list, description="Groups that may read the whole ledger.")
    roles: RolesConfig = Field(default_factory=RolesConfig)
    clock_skew: Duration = Field(default=timedelta(seconds=30), description="Leeway on exp/nbf/iat (at most 5m).")
    jwks_min_refresh: Duration = Field(default=timedelta(seconds=30), description="Unknown-kid refetch limit.")
    session_ttl: Duration = Field(default=timedelta(hours=8), description="Web session lifetime.")
    scim: ScimConfig = Field(default_factory=ScimConfig)

    @model_validator(mode="after")
    def _roles_and_names(self) -> IdentityConfig:
        if self.clock_skew > timedelta(minutes=5):
            raise ValueError("identity.clock_skew may be at most 5m")
        names = [issuer.name for issuer in self.issuers]
        if len(names) != len(set(names)):
            raise ValueError("identity.issuers: two issuers have the same name; give each a distinct `name`")
        urls = [issuer.issuer.rstrip("/") for issuer in self.issuers]
        if len(urls) != len(set(urls)):
            raise ValueError("identity.issuers: the same issuer URL is configured twice")
        # `admins`/`auditors` (the older spelling) and `roles.admin`/`roles.auditor` mean the same thing.
        admins = sorted(set(self.admins) | set(self.roles.admin))
        auditors = sorted(set(self.auditors) | set(self.roles.auditor))
        object.__setattr__(self, "admins", admins)
        object.__setattr__(self, "auditors", auditors)
        object.__setattr__(self, "roles", self.roles.model_copy(update={"admin": admins, "auditor": auditors}))
        return self


class PolicyConfig(_Strict):
    """Where the Cedar policy bundle is and the workflow settings it runs with."""

    bundle: str = Field(default="policies", description="Folder of .cedar files, relative to this catalog.")
    timezone: str = Field(default="UTC", description="For hours and weekdays in policies and business hours.")
    pending_ttl: Duration = Field(default=timedelta(hours=24), description="Pending requests expire after this.")
    security_groups: list[str] = Field(
        default_factory=list, description="Told about every break-glass access, with the resource's owners."
    )
    reviewers: list[str] = Field(
        default_factory=list, description="Groups that may complete break-glass reviews (owners always may)."
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415 - only needed here

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class CatalogFile(_Strict):
    version: Literal[1] = 1
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    resources: list[Resource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> CatalogFile:
        seen: set[str] = set()
        for resource in self.resources:
            if resource.name in seen:
                raise ValueError(f"resource {resource.name!r} is declared twice")
            seen.add(resource.name)
        return self
