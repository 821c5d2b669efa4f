"""The /v1 API. Thin: parse, authenticate, call a service, render."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from amber import audit, ledger
from amber.access_requests import is_admin, is_auditor
from amber.access_requests.schemas import RequestIn, RequestOut, ReviewIn
from amber.api.auth import PrincipalDep, RuntimeDep
from amber.core.errors import ConfigError, Forbidden, InvalidInput, NotFound
from amber.grants import LIVE, Grant, get
from amber.grants.schemas import CredentialOut, GrantOut, RevokeIn, credential_of
from amber.identity import Principal
from amber.ledger import Actor

router = APIRouter(prefix="/v1")


def _actor(principal: Principal) -> Actor:
    return Actor(principal.issuer, principal.subject, principal.name)


@router.post("/requests", status_code=201, response_model=RequestOut, tags=["requests"])
def submit_request(body: RequestIn, rt: RuntimeDep, who: PrincipalDep, response: Response) -> RequestOut:
    outcome = rt.requests.submit(
        who,
        resource=body.resource,
        level=body.level,
        reason=body.reason,
        ttl=body.ttl,
        starts_at=body.start,
        break_glass=body.break_glass,
        supersedes=body.supersedes,
    )
    rt.worker.wake()
    response.headers["Location"] = f"/v1/requests/{outcome.request.id}"
    credential = credential_of(outcome.activation) if outcome.activation else None
    return RequestOut.of(outcome.request, grant=outcome.grant, credential=credential)


@router.get("/requests", response_model=list[RequestOut], tags=["requests"])
def list_requests(
    rt: RuntimeDep,
    who: PrincipalDep,
    scope: Literal["mine", "to_approve", "to_review", "all"] = "mine",
    status: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[RequestOut]:
    return [RequestOut.of(row) for row in rt.requests.list(who, scope=scope, status=status, limit=limit)]


@router.get("/requests/{request_id}", response_model=RequestOut, tags=["requests"])
def show_request(request_id: str, rt: RuntimeDep, who: PrincipalDep) -> RequestOut:
    request, approvals, grant = rt.requests.get(request_id, who)
    return RequestOut.of(request, approvals=approvals, grant=grant)


@router.post("/requests/{request_id}/approve", response_model=RequestOut, tags=["approvals"])
def approve_request(request_id: str, body: ReviewIn, rt: RuntimeDep, who: PrincipalDep) -> RequestOut:
    outcome = rt.requests.approve(request_id, who, comment=body.comment)
    rt.worker.wake()
    return RequestOut.of(outcome.request, grant=outcome.grant)


@router.post("/requests/{request_id}/deny", response_model=RequestOut, tags=["approvals"])
def deny_request(request_id: str, body: ReviewIn, rt: RuntimeDep, who: PrincipalDep) -> RequestOut:
    return RequestOut.of(rt.requests.deny(request_id, who, comment=body.comment).request)


@router.post("/requests/{request_id}/cancel", response_model=RequestOut, tags=["requests"])
def cancel_request(request_id: str, rt: RuntimeDep, who: PrincipalDep) -> RequestOut:
    return RequestOut.of(rt.requests.cancel(request_id, who).request)


@router.get("/requests/{request_id}/explain", tags=["requests"])
def explain_request(request_id: str, rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    return rt.requests.explain(request_id, who)


@router.post("/requests/{request_id}/review", response_model=RequestOut, tags=["approvals"])
def complete_review(request_id: str, body: ReviewIn, rt: RuntimeDep, who: PrincipalDep) -> RequestOut:
    """Complete the post-hoc review of a break-glass access."""
    return RequestOut.of(rt.requests.complete_review(request_id, who, comment=body.comment))


@router.get("/policy", tags=["policy"])
def show_policy(rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    bundle = rt.catalog.policies()
    return {
        "policy_hash": bundle.hash,
        "source": bundle.source,
        "timezone": bundle.settings.timezone,
        "pending_ttl_s": int(bundle.settings.pending_ttl.total_seconds()),
        "policies": [
            {"id": s.id, "effect": s.effect, "where": s.where, "message": s.message} for s in bundle.statements
        ],
    }


@router.post("/policy/reload", tags=["policy"])
def reload_policy(rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    """Reload the catalog, its policy bundle and identity settings (admins; as POST /v1/reload, reporting the
    policy hashes). A bad file is refused and nothing changes."""
    if not is_admin(rt.catalog(), who):
        raise Forbidden("reloading policy needs the admin role")
    before = rt.catalog.policies().hash
    try:
        rt.reload_catalog(_actor(who))
    except ConfigError as exc:
        raise InvalidInput(
            f"the new catalog, policy bundle or identity settings were refused; still running {before[:12]}: "
            f"{exc.message}"
        ) from None
    return {
        "previous_policy_hash": before,
        "policy_hash": rt.catalog.policies().hash,
        "changed": before != rt.catalog.policies().hash,
    }


@router.post("/reload", tags=["catalog"])
def reload_all(rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    """Reload the catalog, its policy bundle and identity (issuers, token verifier, sign-in providers, SCIM
    settings) together (admins), as SIGHUP does. Anything refused (422, with why) changes nothing."""
    if not is_admin(rt.catalog(), who):
        raise Forbidden("reloading needs the admin role")
    before, before_policy = rt.catalog().content_hash, rt.catalog.policies().hash
    try:
        rt.reload_catalog(_actor(who))
    except ConfigError as exc:
        raise InvalidInput(
            f"reload refused; still running catalog {before[:12]} and policy {before_policy[:12]} with their "
            f"identity settings: {exc.message}"
        ) from None
    current = rt.catalog()
    return {
        "previous_catalog_hash": before,
        "catalog_hash": current.content_hash,
        "previous_policy_hash": before_policy,
        "policy_hash": rt.catalog.policies().hash,
        "changed": (before, before_policy) != (current.content_hash, rt.catalog.policies().hash),
        "issuers": [issuer.name for issuer in current.identity.issuers],
    }


@router.get("/grants", response_model=list[GrantOut], tags=["grants"])
def list_grants(
    rt: RuntimeDep,
    who: PrincipalDep,
    scope: Literal["mine", "all"] = "mine",
    live: bool = False,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[GrantOut]:
    with rt.uow() as session:
        query = select(Grant).order_by(Grant.issued_at.desc()).limit(limit)
        if scope == "mine":
            query = query.where(Grant.grantee_issuer == who.issuer, Grant.grantee_subject == who.subject)
        elif not is_auditor(rt.catalog(), who):
            raise Forbidden("listing every grant needs the auditor or admin role")
        if live:
            query = query.where(Grant.status.in_(LIVE))
        return [GrantOut.of(grant, rt.grants.gateway) for grant in session.scalars(query)]


@router.get("/grants/{grant_id}", response_model=GrantOut, tags=["grants"])
def show_grant(grant_id: str, rt: RuntimeDep, who: PrincipalDep) -> GrantOut:
    with rt.uow() as session:
        grant = get(session, grant_id)
    own = (grant.grantee_issuer, grant.grantee_subject) == who.key
    if not (own or is_auditor(rt.catalog(), who)):
        raise NotFound(f"no grant {grant_id}")
    return GrantOut.of(grant, rt.grants.gateway)


@router.post("/grants/{grant_id}/credentials", response_model=CredentialOut, tags=["grants"])
def claim_credentials(grant_id: str, rt: RuntimeDep, who: PrincipalDep) -> CredentialOut:
    activation = rt.grants.claim_credential(grant_id, issuer=who.issuer, subject=who.subject)
    credential = credential_of(activation)
    if credential is None:
        raise NotFound(f"grant {grant_id} has no connection details yet")
    return credential


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut, tags=["grants"])
def revoke_grant(grant_id: str, body: RevokeIn, rt: RuntimeDep, who: PrincipalDep) -> GrantOut:
    grant = rt.grants.revoke(
        grant_id, actor=_actor(who), reason=body.reason or "revoked", is_admin=is_admin(rt.catalog(), who)
    )
    with rt.uow() as session:
        return GrantOut.of(get(session, grant.id), rt.grants.gateway)


@router.get("/ledger", tags=["ledger"])
def read_ledger(
    rt: RuntimeDep,
    who: PrincipalDep,
    after: int = Query(default=0, ge=0, le=2**63 - 1),  # a sequence number: BIGINT
    limit: int = Query(default=100, ge=1, le=1000),
    subject: str | None = None,
) -> dict[str, Any]:
    if not is_auditor(rt.catalog(), who):
        raise Forbidden("reading the ledger needs the auditor or admin role")
    with rt.uow() as session:
        items = [entry.as_dict() for entry in ledger.entries(session, after_seq=after, limit=limit, subject_id=subject)]
        seq, head = ledger.head(session)
    return {"entries": items, "head": {"seq": seq, "hash": head}}


@router.get("/ledger/verify", tags=["ledger"])
def verify_ledger(rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    if not is_auditor(rt.catalog(), who):
        raise Forbidden("verifying the ledger needs the auditor or admin role")
    with rt.uow() as session:
        report = audit.verify(session)
    return {
        "ok": report.ok,
        "entries": report.entries,
        "head_hash": report.head_hash,
        "problems": report.problems,
    }


@router.get("/me", tags=["identity"])
def whoami(rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    catalog = rt.catalog()
    return {
        "iss": who.issuer,
        "sub": who.subject,
        "name": who.name,
        "groups": sorted(who.groups),
        "admin": is_admin(catalog, who),
        "auditor": is_auditor(catalog, who),
    }


@router.get("/resources", tags=["catalog"])
def list_resources(rt: RuntimeDep, who: PrincipalDep) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "description": r.description,
            "environment": r.environment,
            "tags": r.tags,
            "owners": r.owners,
            "levels": {
                name: {
                    "schemas": lvl.schemas,
                    "max_ttl_s": int(lvl.max_ttl.total_seconds()),
                    "access": lvl.access,
                }
                for name, lvl in r.levels.items()
            },
        }
        for r in rt.catalog().resources.values()
    ]
