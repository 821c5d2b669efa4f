"""`amber audit verify`: replay the ledger and compare it with the state tables.

Three checks, in order, stopping at the first problem of each:
1. the hash chain (ledger.verify_chain): every entry's hash, link and sequence number;
2. the Merkle tree and signed checkpoints (ledger.tlog.verify_log): the stored tree's root equals the root
   recomputed from the entries, and every checkpoint (stored, witnessed, or kept by the auditor) is signed by
   the key in force and matches the entries (no truncation, rollback or split view);
3. the replay: rebuild every request's and grant's lifecycle state from the events and compare it with the
   rows in `access_requests` and `grants`. A row no event explains, an event no row matches, or a field that
   differs is reported with the entry (or row) that disagrees.
Lifecycle fields only; retry bookkeeping (attempts, last_error) is not in the ledger by design.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber import ledger
from amber.access_requests.models import AccessRequest
from amber.core.clock import as_utc
from amber.grants.models import Grant
from amber.ledger import tlog
from amber.ledger.chain import format_at, parse_payload
from amber.ledger.models import LedgerEntry
from amber.ledger.proofs import verify_tree


@dataclass
class AuditReport:
    entries: int = 0
    head_hash: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _RequestState:
    seq: int
    fields: dict[str, Any]


def verify(
    session: Session,
    *,
    keys: Sequence[tlog.Verifier] = (),
    witnessed: Sequence[tuple[str, str]] = (),
    since: tuple[str, str] | None = None,
    origin: str | None = None,
) -> AuditReport:
    """Chain, then Merkle tree and checkpoints, then replay against the state tables.

    `keys` are the trusted checkpoint keys (default: the first key on record, i.e. trust on first use);
    `witnessed` are checkpoints kept outside amber; `since` is a checkpoint the auditor kept earlier.
    """
    chain = ledger.verify_chain(ledger.iter_raw(session))
    report = AuditReport(entries=chain.entries, head_hash=chain.head_hash)
    if chain.problem is not None:
        report.problems.append(str(chain.problem))
        return report
    report.problems += verify_tree(session, keys, witnessed, since, origin)
    if report.problems:
        return report
    requests, grants = _replay(ledger.iter_raw(session))
    _compare_requests(session, requests, report)
    _compare_grants(session, grants, report)
    return report


def _replay(rows: Iterator[LedgerEntry]) -> tuple[dict[str, _RequestState], dict[str, _RequestState]]:
    requests: dict[str, _RequestState] = {}
    grants: dict[str, _RequestState] = {}
    for row in rows:
        payload = parse_payload(row.payload)
        at = format_at(as_utc(row.entry_at))
        kind, event = row.event_type.split(".", 1) if "." in row.event_type else ("", row.event_type)
        if row.subject_kind == "request":
            state = requests.setdefault(row.subject_id, _RequestState(row.seq, {}))
            state.seq = row.seq
            f = state.fields
            if event == "submitted":
                f.update(
                    requester=(row.actor_issuer, row.actor_subject),
                    resource=payload["resource"],
                    level=payload["level"],
                    reason=payload["reason"],
                    requested_ttl_s=payload["requested_ttl_s"],
                    submitted_at=at,
                    status="submitted",
                )
            elif event == "decided":
                f.update(
                    outcome=payload["outcome"],
                    policy_hash=payload["policy_hash"],
                    granted_ttl_s=payload["granted_ttl_s"],
                    approvals_required=payload["approvals_required"],
                )
                if payload["outcome"] == "require_approval":
                    f["status"] = "pending"
            elif event in ("approved", "denied", "cancelled"):
                f["status"] = event
        elif row.subject_kind == "grant" and kind == "grant":
            state = grants.setdefault(row.subject_id, _RequestState(row.seq, {}))
            state.seq = row.seq
            f = state.fields
            if event == "issued":
                f.update(
                    request_id=payload["request_id"],
                    resource=payload["resource"],
                    level=payload["level"],
                    role_name=payload["role"],
                    expires_at=payload["expires_at"],
                    status="issued",
                    grantee=(payload["grantee"]["iss"], payload["grantee"]["sub"]),
                    deprovisioned=False,
                )
            elif event == "activated":
                f["status"] = "active"
            elif event in ("expired", "revoked"):
                f["status"] = event
            elif event == "deprovisioned":
                f["deprovisioned"] = True
            elif event == "credential_issued":
                f["credential_shown"] = True
            elif event == "credential_failed":
                f["credential_shown"] = False
    return requests, grants


def _ts(value: datetime | None) -> str | None:
    return format_at(as_utc(value)) if value is not None else None


def _compare_requests(session: Session, replayed: dict[str, _RequestState], report: AuditReport) -> None:
    seen: set[str] = set()
    for row in session.scalars(select(AccessRequest).order_by(AccessRequest.id)):
        seen.add(row.id)
        state = replayed.get(row.id)
        if state is None:
            report.problems.append(f"request {row.id}: the state row has no ledger events (inserted outside amber?)")
            continue
        actual = {
            "requester": (row.requester_issuer, row.requester_subject),
            "resource": row.resource,
            "level": row.level,
            "reason": row.reason,
            "requested_ttl_s": row.requested_ttl_s,
            "submitted_at": _ts(row.submitted_at),
            "status": row.status,
            "outcome": row.outcome,
            "policy_hash": row.policy_hash,
            "granted_ttl_s": row.granted_ttl_s,
            "approvals_required": row.approvals_required,
        }
        _diff(report, f"request {row.id}", state, actual)
    for missing in sorted(set(replayed) - seen):
        report.problems.append(
            f"request {missing}: the ledger (entry {replayed[missing].seq}) records it but the state row is gone"
        )


def _compare_grants(session: Session, replayed: dict[str, _RequestState], report: AuditReport) -> None:
    seen: set[str] = set()
    for row in session.scalars(select(Grant).order_by(Grant.id)):
        seen.add(row.id)
        state = replayed.get(row.id)
        if state is None:
            report.problems.append(f"grant {row.id}: the state row has no ledger events (inserted outside amber?)")
            continue
        actual = {
            "request_id": row.request_id,
            "resource": row.resource,
            "level": row.level,
            "role_name": row.role_name,
            "expires_at": _ts(row.expires_at),
            "status": row.status,
            "grantee": (row.grantee_issuer, row.grantee_subject),
            "deprovisioned": row.deprovisioned_at is not None,
        }
        if "credential_shown" in state.fields:
            actual["credential_shown"] = row.credential_shown_at is not None
        _diff(report, f"grant {row.id}", state, actual)
    for missing in sorted(set(replayed) - seen):
        report.problems.append(
            f"grant {missing}: the ledger (entry {replayed[missing].seq}) records it but the state row is gone"
        )


def _diff(report: AuditReport, label: str, state: _RequestState, actual: dict[str, Any]) -> None:
    for key, value in actual.items():
        expected = state.fields.get(key)
        if expected != value:
            report.problems.append(
                f"{label}: {key} is {value!r} in the state table but the ledger (up to entry {state.seq}) "
                f"says {expected!r}"
            )
