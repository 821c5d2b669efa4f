"""The composition root: builds every part of a running amber from settings. Nothing is built at import.

Entry points (API server, CLI, tests, benchmarks) call `Runtime.build(...)`; nothing else wires parts together.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from amber import ledger
from amber.access_requests import AccessRequestService
from amber.access_requests.notify import Notifier, WebhookNotifier
from amber.catalog import Catalog, IdentityConfig, load_catalog, resolve_reference
from amber.core.clock import Clock, SystemClock
from amber.core.crypto import load_or_create_key
from amber.core.db import UnitOfWork, make_engine, make_unit_of_work
from amber.core.errors import ConfigError
from amber.core.meta import installation_id
from amber.core.migrate import upgrade
from amber.core.observability import Metrics
from amber.core.settings import PRODUCTION_HINT, Settings
from amber.gateway.service import Gateway
from amber.grants import GrantService
from amber.identity import DevIssuer, Discovery, Provider, RemoteKeys, TokenVerifier, TrustedIssuer
from amber.identity.dev_issuer import WARNING as DEV_WARNING
from amber.identity.directory import NO_DIRECTORY, DirectoryScope
from amber.identity.tokens import ACCESS_TOKEN_TYPE
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.checkpoints import LEDGER_DEV_KEY_WARNING, dev_signer, load_signer
from amber.ledger.witnesses import build as build_witnesses
from amber.policy import PolicyBundle, WorkflowSettings, load_bundle
from amber.provisioners.registry import ProvisionerRegistry
from amber.scim import ScimService, ScimSettings
from amber.worker import Worker

log = logging.getLogger("amber")


def load_policies(catalog: Catalog) -> PolicyBundle:
    settings = WorkflowSettings(timezone=catalog.policy.timezone, pending_ttl=catalog.policy.pending_ttl)
    return load_bundle(catalog.bundle_path, settings)


def build_checkpointer(
    settings: Settings, uow: UnitOfWork, clock: Clock, install_id: str, warnings: list[str]
) -> Checkpointer:
    """The ledger's checkpoint signer. Production refuses to start without a configured signing key."""
    if settings.ledger_signing_key:
        signer = load_signer(settings.ledger_signing_key)
    elif settings.env == "production":
        raise ConfigError(
            f"AMBER_LEDGER_SIGNING_KEY is required when AMBER_ENV=production (file:/path or env:NAME) {PRODUCTION_HINT}"
        )
    else:
        signer = dev_signer(settings.state_dir, settings.ledger_origin or f"amber/{install_id}")
        warnings.append(LEDGER_DEV_KEY_WARNING)
    return Checkpointer(
        uow=uow,
        clock=clock,
        signer=signer,
        origin=settings.ledger_origin or f"amber/{install_id}",
        every_entries=settings.ledger_checkpoint_every_entries,
        every=timedelta(seconds=settings.ledger_checkpoint_interval_s),
        witnesses=build_witnesses(settings.ledger_witnesses, clock=clock),
        poll_s=settings.ledger_checkpoint_poll_s,
    )


def check_identity(catalog: Catalog, env: str) -> None:
    """What `identity:` must satisfy to run, naming file:line; production's refusals (dev issuer, plain http,
    an implicit audience) apply when env is production. Raises ConfigError."""
    identity = catalog.identity
    if env == "production":
        if identity.dev_issuer:
            raise ConfigError(
                f"{catalog.where(('identity', 'dev_issuer'))}: identity.dev_issuer is refused when "
                f"AMBER_ENV=production {PRODUCTION_HINT}"
            )
        for index, issuer in enumerate(identity.issuers):
            for what, url in (("issuer", issuer.issuer), ("jwks_uri", issuer.jwks_uri or "")):
                if url.lower().startswith("http://"):
                    raise ConfigError(
                        f"{catalog.where(('identity', 'issuers', index, what))}: identity.issuers[{issuer.name}]."
                        f"{what} is {url!r}: plain http is refused when AMBER_ENV=production (keys fetched without "
                        f"TLS can be replaced in transit) {PRODUCTION_HINT}"
                    )
            if "audience" not in issuer.model_fields_set:
                raise ConfigError(
                    f"{catalog.where(('identity', 'issuers', index))}: identity.issuers[{issuer.name}]: set "
                    "`audience` (the `aud` your provider puts in access tokens for amber); with AMBER_ENV=production "
                    f"it does not default to client_id, the audience of ID tokens {PRODUCTION_HINT}"
                )
    if not identity.dev_issuer and not identity.issuers:
        raise ConfigError(
            f"{catalog.where(('identity',))}: identity: configure at least one issuer (or dev_issuer "
            "for local development); amber accepts no unauthenticated calls"
        )


def identity_state(catalog: Catalog, env: str, clock: Clock, dev_issuer: DevIssuer | None) -> IdentityState:
    """Everything that verifies identities for `catalog`, or ConfigError naming file:line and why. Used at start
    and by every reload, so a reload is refused for exactly what would refuse a start."""
    check_identity(catalog, env)
    identity = catalog.identity
    where = catalog.where(("identity", "dev_issuer"))
    if identity.dev_issuer != (dev_issuer is not None):
        raise ConfigError(f"{where}: identity.dev_issuer cannot be switched while amber runs; restart amber for it")
    issuers, providers = build_identity(identity, catalog.path, clock, production=env == "production")
    if dev_issuer is not None:
        issuers.append(dev_issuer.trusted_issuer())
    try:
        verifier = TokenVerifier(issuers, clock, skew=identity.clock_skew)
    except ValueError as exc:
        raise ConfigError(f"{catalog.where(('identity', 'issuers'))}: {exc}") from None
    scim = identity.scim
    if scim.token:
        scim_where = catalog.where(("identity", "scim"))
        try:
            _scim_issuer(identity, dev_issuer.issuer_url if dev_issuer is not None else None)
        except ConfigError as exc:
            raise ConfigError(f"{scim_where}: {exc.message}") from None
        if env == "production":
            # The limit the SCIM endpoint enforces per call; imported here (that module imports this one).
            from amber.api.scim_routes import MIN_TOKEN_LENGTH as MIN_SCIM_TOKEN_LENGTH  # noqa: PLC0415

            token = resolve_reference(scim.token, where=f"{scim_where}: identity.scim.token", base=catalog.path.parent)
            if len(token.strip()) < MIN_SCIM_TOKEN_LENGTH:
                raise ConfigError(
                    f"{scim_where}: identity.scim.token resolves to fewer than {MIN_SCIM_TOKEN_LENGTH} characters; "
                    f"refused when AMBER_ENV=production {PRODUCTION_HINT}"
                )
    return IdentityState(verifier=verifier, providers=providers)


def build_identity(
    identity: IdentityConfig, catalog_path: Path, clock: Clock, *, production: bool
) -> tuple[list[TrustedIssuer], dict[str, Provider]]:
    """Every configured OpenID provider: how its tokens are verified, and how people sign in with it.

    API tokens must carry typ at+jwt (RFC 9068) or one of the issuer's `token_types`; outside production an
    issuer without `token_types` accepts any typ (the verifier warns once)."""
    issuers: list[TrustedIssuer] = []
    providers: dict[str, Provider] = {}
    for index, config in enumerate(identity.issuers):
        discovery = Discovery(config.issuer)
        token_types: tuple[str, ...] | None = None
        if config.token_types is not None:
            token_types = tuple(config.token_types)
        elif production:
            token_types = (ACCESS_TOKEN_TYPE,)
        issuers.append(
            TrustedIssuer(
                issuer=config.issuer,
                audience=config.audience,
                keys=RemoteKeys(
                    config.issuer,
                    config.jwks_uri,
                    min_refresh_s=identity.jwks_min_refresh.total_seconds(),
                    max_age_s=config.jwks_max_age.total_seconds(),
                    clock=clock,
                    discovery=discovery,
                ),
                algorithms=tuple(config.algorithms),
                groups_claim=config.groups_claim,
                name_claim=config.name_claim,
                email_claim=config.email_claim,
                subject_claim=config.subject_claim,
                group_map=dict(config.group_map),
                name=config.name,
                token_types=token_types,
            )
        )

        def secret(ref: str | None = config.client_secret, where: str = f"identity.issuers[{index}]") -> str | None:
            return resolve_reference(ref, where=f"{catalog_path}: {where}", base=catalog_path.parent) if ref else None

        providers[config.name] = Provider(
            name=config.name,
            display_name=config.display_name,
            issuer=config.issuer,
            client_id=config.client_id,
            cli_client_id=config.cli_client_id,
            scopes=tuple(config.scopes),
            discovery=discovery,
            client_secret=secret,
            resource=config.resource,
        )
    return issuers, providers


@dataclass(frozen=True)
class IdentityState:
    """What verifies identities, built from one catalog: the token verifier (issuers, their keys, audiences,
    token types) and the sign-in providers. SCIM settings are read from the same catalog at each call."""

    verifier: TokenVerifier
    providers: dict[str, Provider]


@dataclass(frozen=True)
class _Loaded:
    catalog: Catalog
    bundle: PolicyBundle
    identity: IdentityState | None


class CatalogHolder:
    """The running catalog, its policy bundle and the identity built from it, replaced together.

    Invariant: all three come from one file. A reload builds the new set completely (catalog, policy bundle,
    then identity via `build_identity`, which may refuse it) and swaps it in with one assignment; if any part
    fails, the running set stays as it was and the error says why. Readers take one snapshot per call.
    """

    def __init__(
        self,
        catalog: Catalog,
        bundle: PolicyBundle,
        identity: IdentityState | None = None,
        build_identity: Callable[[Catalog], IdentityState] | None = None,
    ) -> None:
        self._loaded = _Loaded(catalog, bundle, identity)
        self._build_identity = build_identity
        self._lock = threading.Lock()

    def __call__(self) -> Catalog:
        return self._loaded.catalog

    def policies(self) -> PolicyBundle:
        return self._loaded.bundle

    def identity(self) -> IdentityState:
        identity = self._loaded.identity
        if identity is None:
            raise ConfigError("no identity is configured for this catalog holder")
        return identity

    def reload(self, path: Path | None = None) -> Catalog:
        with self._lock:  # one reload at a time; readers never wait
            new = load_catalog(path or self._loaded.catalog.path)  # raises ConfigError; nothing replaced
            bundle = load_policies(new)  # raises PolicyError; nothing replaced
            identity = self._build_identity(new) if self._build_identity is not None else None  # ConfigError
            self._loaded = _Loaded(new, bundle, identity)
        return new


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    engine: Engine
    uow: UnitOfWork
    catalog: CatalogHolder
    metrics: Metrics
    dev_issuer: DevIssuer | None
    provisioners: ProvisionerRegistry
    grants: GrantService
    requests: AccessRequestService
    worker: Worker
    installation_id: str
    warnings: list[str] = field(default_factory=list)
    gateway: Gateway | None = None
    checkpointer: Checkpointer | None = None
    scim: ScimService | None = None
    directory: Callable[[], DirectoryScope] = field(default_factory=lambda: _no_directory)

    @classmethod
    def build(cls, settings: Settings, *, clock: Clock | None = None, migrate: bool = True) -> Runtime:
        clock = clock or SystemClock()
        first = load_catalog(settings.catalog)
        bundle = load_policies(first)
        warnings: list[str] = []
        check_identity(first, settings.env)
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        dev_issuer = None
        if first.identity.dev_issuer:
            dev_issuer = DevIssuer(settings.state_dir, f"{settings.resolved_public_url}/dev-issuer", clock)

        def identity_for(new: Catalog) -> IdentityState:
            return identity_state(new, settings.env, clock, dev_issuer)

        catalog = CatalogHolder(first, bundle, identity_for(first), identity_for)  # before anything is opened
        if dev_issuer is not None:
            warnings.append(DEV_WARNING)
            log.warning("WARNING: %s", DEV_WARNING)
        engine = make_engine(settings.resolved_database_url)
        if migrate:
            upgrade(engine)
        uow = make_unit_of_work(engine)
        with uow() as session:
            install_id = installation_id(session)
        metrics = Metrics()

        def describe(resource_name: str) -> tuple[str, str, str | None, str]:
            current = catalog()
            resource = current.resource(resource_name)
            dsn = current.resolve_connection(resource_name)
            fingerprint = hashlib.sha256(f"{resource.kind}\0{dsn}\0{resource.grantee_group}".encode()).hexdigest()
            return resource.kind, dsn, resource.grantee_group, fingerprint

        provisioners = ProvisionerRegistry(describe)
        secret_key = load_or_create_key(settings.resolved_secret_key_file)
        grants = GrantService(
            uow=uow,
            clock=clock,
            catalog=catalog,
            provisioners=provisioners,
            installation_id=install_id,
            metrics=metrics,
            secret_key=secret_key,
        )
        directory = directory_scope(catalog, dev_issuer)
        notifier: Notifier | None = None
        if settings.notify_webhook_url:
            notifier = WebhookNotifier(settings.notify_webhook_url, settings.notify_webhook_secret)
        requests = AccessRequestService(
            uow=uow,
            clock=clock,
            catalog=catalog,
            policies=catalog.policies,
            grant_service=grants,
            metrics=metrics,
            notifier=notifier,
            max_start_ahead=settings.max_start_ahead,
            directory=directory,
        )
        worker = Worker(
            grants,
            metrics,
            interval_s=settings.worker_interval_s,
            reconcile_interval_s=settings.reconcile_interval_s,
            requests=requests,
        )
        checkpointer = build_checkpointer(settings, uow, clock, install_id, warnings)
        scim = build_scim(catalog, dev_issuer, uow=uow, clock=clock, grants=grants, requests=requests)
        runtime = cls(
            checkpointer=checkpointer,
            settings=settings,
            clock=clock,
            engine=engine,
            uow=uow,
            catalog=catalog,
            metrics=metrics,
            dev_issuer=dev_issuer,
            provisioners=provisioners,
            grants=grants,
            requests=requests,
            worker=worker,
            installation_id=install_id,
            warnings=warnings,
            scim=scim,
            directory=directory,
        )
        if settings.gateway_port is not None:
            runtime.gateway = Gateway(
                uow=uow,
                clock=clock,
                secret_key=secret_key,
                admin_dsn=lambda resource: catalog().resolve_connection(resource),
                masked_for=lambda resource, level: catalog().level(resource, level).masks(),
                level_for=lambda resource, level: catalog().level(resource, level),
                recorder_database_url=settings.resolved_database_url if settings.gateway_recorder_process else None,
                host=settings.gateway_host,
                port=settings.gateway_port,
                state_dir=settings.state_dir,
                tls_cert=settings.gateway_tls_cert,
                tls_key=settings.gateway_tls_key,
                watch_interval_s=settings.gateway_watch_interval_s,
                refuse_self_signed=settings.env == "production" and not settings.gateway_allow_self_signed,
                schema_poll_s=settings.gateway_schema_poll_s,
                max_pending_logins=settings.gateway_max_pending_logins,
                max_pending_logins_per_source=settings.gateway_max_pending_logins_per_source,
                login_timeout_s=settings.gateway_login_timeout_s,
            )
            grants.on_ended.append(runtime.gateway.grant_ended)
            grants.gateway = (
                settings.gateway_public_host or settings.gateway_host,
                settings.gateway_public_port or settings.gateway_port,
            )
        runtime.record_catalog()
        return runtime

    @property
    def verifier(self) -> TokenVerifier:
        """The token verifier in force (replaced, with the catalog, by a reload)."""
        return self.catalog.identity().verifier

    @property
    def providers(self) -> dict[str, Provider]:
        """The sign-in providers in force (replaced, with the catalog, by a reload)."""
        return self.catalog.identity().providers

    async def start_gateway(self) -> None:
        if self.gateway is None:
            return
        await self.gateway.start()
        if not self.settings.gateway_public_port:
            # A port of 0 means "any free port" (tests): advertise the one we got.
            host = self.settings.gateway_public_host or self.settings.gateway_host
            self.grants.gateway = (host, self.gateway.server.port)

    def start_checkpoints(self) -> None:
        """Sign checkpoints in the background while the server runs. Not under AMBER_ENV=test: tests sign
        explicitly on a moved clock (or build a non-test runtime to exercise the thread)."""
        if self.checkpointer is not None and self.settings.env != "test":
            self.checkpointer.start()

    def stop_checkpoints(self) -> None:
        """Stop the background signer; it signs a final checkpoint. Call it after everything else that appends
        (worker, gateway) has stopped, so that checkpoint covers every entry."""
        if self.checkpointer is not None:
            self.checkpointer.stop()

    def record_catalog(self, actor: ledger.Actor = ledger.SYSTEM) -> bool:
        """Append `catalog.loaded` / `policy.loaded` when what runs differs from the last one on record.

        Every decision carries the policy bundle's hash; these entries tie that hash to files, a time and who.
        """
        current = self.catalog()
        bundle = self.catalog.policies()
        changed = False
        with self.uow() as session:
            last_policy = ledger.latest(session, event_type="policy.loaded")
            previous_policy = last_policy.payload.get("policy_hash") if last_policy else None
            if previous_policy != bundle.hash:
                changed = True
                ledger.append(
                    session,
                    at=self.clock.now(),
                    event_type="policy.loaded",
                    actor=actor,
                    subject_kind="policy",
                    subject_id=bundle.hash[:16],
                    payload={
                        "policy_hash": bundle.hash,
                        "previous_policy_hash": previous_policy,
                        "source": bundle.source,
                        "policies": [s.id for s in bundle.statements],
                        "timezone": bundle.settings.timezone,
                        "pending_ttl_s": int(bundle.settings.pending_ttl.total_seconds()),
                    },
                )
            last = ledger.latest(session, event_type="catalog.loaded")
            previous = last.payload.get("content_hash") if last else None
            if previous == current.content_hash:
                return changed
            ledger.append(
                session,
                at=self.clock.now(),
                event_type="catalog.loaded",
                actor=actor,
                subject_kind="catalog",
                subject_id=current.content_hash[:16],
                payload={
                    "path": str(current.path),
                    "content_hash": current.content_hash,
                    "policy_hash": bundle.hash,
                    "previous_content_hash": previous,
                    "resources": sorted(current.resources),
                },
            )
        return True

    def reload_catalog(self, actor: ledger.Actor = ledger.SYSTEM) -> Catalog:
        """Load the catalog, its policy bundle and the identity settings (issuers, token verifier, sign-in
        providers, SCIM) again, together. On any error (ConfigError, naming why) all stay as they were."""
        catalog = self.catalog.reload()
        self.record_catalog(actor)
        return catalog

    def close(self) -> None:
        self.worker.stop()
        self.stop_checkpoints()
        self.provisioners.close()
        self.engine.dispose()


def _scim_issuer(identity: IdentityConfig, dev_url: str | None) -> str:
    """The issuer whose people SCIM manages: `scim.issuer` by URL or name ("dev" for the dev issuer)."""
    wanted = identity.scim.issuer
    if wanted == "dev" and dev_url:
        return dev_url
    for issuer in identity.issuers:
        if wanted in (issuer.name, issuer.issuer):
            return issuer.issuer
    if not wanted and len(identity.issuers) == 1:
        return identity.issuers[0].issuer
    if not wanted and not identity.issuers and dev_url:
        return dev_url
    raise ConfigError(f"identity.scim.issuer {wanted!r} names no configured issuer")


def _no_directory() -> DirectoryScope:
    return NO_DIRECTORY


def directory_scope(catalog: CatalogHolder, dev_issuer: DevIssuer | None) -> Callable[[], DirectoryScope]:
    """Whose groups the SCIM directory decides, read from the running catalog at each call: the SCIM issuer's
    people while SCIM is on (a provisioning token is configured), nobody's when it is off."""
    dev_url = dev_issuer.issuer_url if dev_issuer is not None else None

    def scope() -> DirectoryScope:
        current = catalog().identity
        if not current.scim.token:
            return NO_DIRECTORY
        return DirectoryScope(
            issuer=_scim_issuer(current, dev_url),
            group_map={k: v for i in current.issuers for k, v in i.group_map.items()},
        )

    return scope


def build_scim(
    catalog: CatalogHolder,
    dev_issuer: DevIssuer | None,
    *,
    uow: UnitOfWork,
    clock: Clock,
    grants: GrantService,
    requests: AccessRequestService,
) -> ScimService:
    """SCIM provisioning, reading its settings from the running catalog at each call."""
    dev_url = dev_issuer.issuer_url if dev_issuer is not None else None

    def scim_settings() -> ScimSettings:
        current = catalog().identity
        issuer = _scim_issuer(current, dev_url)
        group_map = {k: v for i in current.issuers for k, v in i.group_map.items()}
        return ScimSettings(
            issuer=issuer,
            subject_attribute=current.scim.subject_attribute,
            group_map=group_map,
            scope=DirectoryScope(issuer=issuer, group_map=group_map),
        )

    if catalog().identity.scim.token:
        scim_settings()  # a scim.issuer that names no issuer is refused at start, not at the first call
    return ScimService(uow=uow, clock=clock, settings=scim_settings, grants=grants, requests=requests)
