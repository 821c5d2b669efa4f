"""`amber audit verify`: replay the ledger and compare it with the state tables.

Three checks, in order, stopping at the first problem of each:
1. the hash chain (ledger.verify_chain): every entry's hash, link and sequence number;
2. the Merkle tree and signed checkpoints (ledger.tlog.verify_log): the stored tree's root equals the root
   recomputed from the entries, and every checkpoint (stored, witnessed, or kept by the auditor) is signed by
   the key in force and matches the entries (no truncation, rollback or split view);
3. the replay: rebuild every row of `access_requests`, `approvals` and `grants` from the events and compare
   it, column by column, with the state tables. A row no event explains, an event no row matches, or a
   column that differs is reported naming the table, the row, the column and the entry that disagrees.

Invariant: every column of those tables is either compared (COMPARED) or listed in EXEMPT with the reason
it cannot be derived from the ledger; tests/audit/test_replay_columns.py fails when a new column is neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber import ledger
from amber.access_requests.models import AccessRequest, Approval
from amber.core.clock import as_utc
from amber.core.crypto import sha256_hex
from amber.core.db import Base
from amber.grants.models import Grant
from amber.ledger import tlog
from amber.ledger.chain import format_at, parse_payload
from amber.ledger.models import LedgerEntry
from amber.ledger.proofs import verify_tree

# Columns the replay cannot derive from the ledger, each with the reason. Every other column is compared.
EXEMPT: dict[str, dict[str, str]] = {
    "access_requests": {},
    "approvals": {
        "id": "a surrogate key the database assigns (a PostgreSQL sequence skips values after a rollback); "
        "rows are matched by (request_id, approver_issuer, approver_subject), which is unique, and nothing "
        "refers to approvals.id",
    },
    "grants": {
        "attempts": "retry bookkeeping of provisioner calls, not lifecycle state: a failed call is not an event",
        "next_attempt_at": "retry bookkeeping of provisioner calls (when the worker tries again), not an event",
        "last_error": "retry bookkeeping of provisioner calls (the last failure's text), not an event",
    },
}

# Hashes of credentials are compared through their SHA-256 (the ledger is exported; the values stay private).
DIGESTED = frozenset({"gateway_token_hash", "gateway_scram_verifier"})


class _Set:
    """The ledger says a value exists but predates recording it: the column must be set, to anything."""

    def __repr__(self) -> str:
        return "<set, value not on record>"


SET_BUT_UNRECORDED = _Set()


@dataclass
class AuditReport:
    entries: int = 0
    head_hash: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Row:
    """One state row as the ledger says it must be: its columns and the last entry that changed it."""

    seq: int
    values: dict[str, Any]


@dataclass
class _Replayed:
    requests: dict[str, _Row] = field(default_factory=dict)
    approvals: dict[tuple[str, str, str], _Row] = field(default_factory=dict)
    grants: dict[str, _Row] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def compared_columns(table: str) -> tuple[str, ...]:
    """Every column of `table` that the replay derives and compares: all of them but the exempt ones."""
    columns = Base.metadata.tables[table].columns
    return tuple(column.name for column in columns if column.name not in EXEMPT[table])


def verify(
    session: Session,
    *,
    keys: Sequence[tlog.Verifier] = (),
    witnessed: Sequence[tuple[str, str]] = (),
    since: tuple[str, str] | None = None,
    origin: str | None = None,
    allow_unsigned_tail: bool = True,
    legacy_key_names: bool = False,
    witness_keys: Sequence[tlog.Verifier] = (),
    min_witnesses: int = 0,
) -> AuditReport:
    """Chain, then Merkle tree and checkpoints, then replay against the state tables.

    `keys` are the trusted checkpoint keys (default: the first key on record, i.e. trust on first use);
    `witnessed` are checkpoints kept outside amber; `since` is a checkpoint the auditor kept earlier.
    `allow_unsigned_tail=False` (the CLI's default) fails when no trusted checkpoint covers the last entry.
    """
    chain = ledger.verify_chain(ledger.iter_raw(session))
    report = AuditReport(entries=chain.entries, head_hash=chain.head_hash)
    if chain.problem is not None:
        report.problems.append(str(chain.problem))
        return report
    report.problems += verify_tree(
        session,
        keys,
        witnessed,
        since,
        origin,
        allow_unsigned_tail=allow_unsigned_tail,
        legacy_key_names=legacy_key_names,
        witness_keys=witness_keys,
        min_witnesses=min_witnesses,
    )
    if report.problems:
        return report
    replayed = _replay(ledger.iter_raw(session))
    report.problems += replayed.problems
    _compare_requests(session, replayed.requests, report)
    _compare_approvals(session, replayed.approvals, report)
    _compare_grants(session, replayed.grants, report)
    return report


# -- the replay: events -> rows ------------------------------------------------------------------------------


def _replay(rows: Iterator[LedgerEntry]) -> _Replayed:
    replayed = _Replayed()
    for row in rows:
        kind, _, event = row.event_type.partition(".")
        try:
            if row.subject_kind == "request" and kind == "request":
                _request_event(replayed, row, event)
            elif row.subject_kind == "grant" and kind == "grant":
                _grant_event(replayed, row, event)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # Fail closed: an entry the replay cannot read is a problem, and its row will disagree too.
            replayed.problems.append(
                f"entry {row.seq} ({row.event_type}): the replay cannot read its payload ({type(exc).__name__}: {exc})"
            )
    return replayed


def _json(value: Any) -> str:
    """A JSON list column as amber writes it (json.dumps, default separators)."""
    return json.dumps(value)


def _instant(text: str | None) -> str | None:
    """A time from a payload (RFC 3339, any offset) in the ledger's form, so instants compare as instants."""
    return format_at(as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))) if text else None


def _actor_key(row: LedgerEntry) -> str:
    return f"{row.actor_issuer}#{row.actor_subject}"


def _request_event(replayed: _Replayed, row: LedgerEntry, event: str) -> None:
    payload = parse_payload(row.payload)
    at = format_at(as_utc(row.entry_at))
    if event == "submitted":
        replayed.requests[row.subject_id] = _Row(row.seq, _submitted(row, payload, at))
        return
    if event == "reviewed":
        key = (row.subject_id, row.actor_issuer, row.actor_subject)
        replayed.approvals[key] = _Row(row.seq, _reviewed(row, payload, at))
    state = replayed.requests.setdefault(row.subject_id, _Row(row.seq, {}))
    state.seq = row.seq
    values = state.values
    if event == "decided":
        values.update(_decided(payload))
    elif event in ("approved", "denied", "cancelled", "expired"):
        values.update(status=event, closed_at=at)
    elif event == "break_glass":
        values["review_status"] = payload["review"]
    elif event == "review_completed":
        values.update(review_status="done", reviewed_at=at, reviewed_by=_actor_key(row))


def _submitted(row: LedgerEntry, payload: dict[str, Any], at: str) -> dict[str, Any]:
    # Keys absent from entries written before their column existed: the migration gave those rows the default.
    return {
        "id": row.subject_id,
        "requester_issuer": row.actor_issuer,
        "requester_subject": row.actor_subject,
        "requester_name": row.actor_name,
        "requester_groups": _json(payload["groups"]),
        "resource": payload["resource"],
        "level": payload["level"],
        "reason": payload["reason"],
        "requested_ttl_s": payload["requested_ttl_s"],
        "supersedes_id": payload["supersedes"],
        "submitted_at": at,
        "status": "submitted",
        "closed_at": None,
        "requested_start_at": _instant(payload.get("starts_at")),
        "break_glass": payload.get("break_glass", False),
        "review_status": None,
        "reviewed_at": None,
        "reviewed_by": None,
    }


def _decided(payload: dict[str, Any]) -> dict[str, Any]:
    conditions = payload.get("conditions", {})
    values = {
        "outcome": payload["outcome"],
        "decision_reasons": _json(payload["reasons"]),
        "policy_ids": _json(payload["policy_ids"]),
        "policy_hash": payload["policy_hash"],
        "granted_ttl_s": payload["granted_ttl_s"],
        "approvals_required": payload["approvals_required"],
        "approver_groups": _json(payload["approver_groups"]),
        "pending_expires_at": _instant(payload.get("pending_expires_at")),
        "approver_all_groups": _json(conditions.get("approver_all_groups", [])),
        "single_use": conditions.get("single_use", False),
        "window_end_at": _instant(conditions.get("window_end_at")),
    }
    if payload["outcome"] == "require_approval":
        values["status"] = "pending"
    return values


def _reviewed(row: LedgerEntry, payload: dict[str, Any], at: str) -> dict[str, Any]:
    return {
        "request_id": row.subject_id,
        "approver_issuer": row.actor_issuer,
        "approver_subject": row.actor_subject,
        "approver_name": row.actor_name,
        "verdict": payload["verdict"],
        "comment": payload["comment"],
        "decided_at": at,
        "approver_groups": _json(payload.get("groups", [])),
    }


def _grant_event(replayed: _Replayed, row: LedgerEntry, event: str) -> None:
    payload = parse_payload(row.payload)
    at = format_at(as_utc(row.entry_at))
    if event == "issued":
        replayed.grants[row.subject_id] = _Row(row.seq, _issued(replayed, row, payload, at))
        return
    state = replayed.grants.setdefault(row.subject_id, _Row(row.seq, {}))
    state.seq = row.seq
    values = state.values
    if event == "activated":
        values.update(status="active", activated_at=at, **_target(payload))
    elif event in ("expired", "revoked"):
        values.update(status=event, ended_at=at, end_reason=payload["reason"], ended_by=_actor_key(row))
    elif event == "deprovisioned":
        values["deprovisioned_at"] = at
    elif event == "credential_issued":
        values["credential_shown_at"] = at
        values.update(_credential(payload, via=values.get("via")))
    elif event == "credential_failed":
        values["credential_shown_at"] = None
    elif event == "session_started":
        values["session_seen_at"] = at


def _issued(replayed: _Replayed, row: LedgerEntry, payload: dict[str, Any], at: str) -> dict[str, Any]:
    grantee = payload["grantee"]
    request = replayed.requests.get(payload["request_id"])
    # The grantee is the requester; entries before `name` was recorded name them through the request.
    name = grantee.get("name", request.values.get("requester_name") if request else None)
    return {
        "id": row.subject_id,
        "request_id": payload["request_id"],
        "grantee_issuer": grantee["iss"],
        "grantee_subject": grantee["sub"],
        "grantee_name": name,
        "resource": payload["resource"],
        "level": payload["level"],
        "role_name": payload["role"],
        "issued_at": at,
        "expires_at": _instant(payload["expires_at"]),
        "status": "issued",
        "activated_at": None,
        "ended_at": None,
        "end_reason": None,
        "ended_by": None,
        "credential_shown_at": None,
        "deprovisioned_at": None,
        "connect_host": None,
        "connect_port": None,
        "connect_database": None,
        "starts_at": _instant(payload.get("starts_at")),
        "single_use": payload.get("single_use", False),
        "session_seen_at": None,
        "via": payload.get("via", "direct"),
        "gateway_token_hash": None,
        "gateway_scram_verifier": None,
    }


def _target(payload: dict[str, Any]) -> dict[str, Any]:
    """Where the grant connects: `host:port/database` as recorded at activation (a host has no '/')."""
    host_port, _, database = payload["target"].partition("/")
    host, _, port = host_port.rpartition(":")
    return {"connect_host": host, "connect_port": int(port), "connect_database": database}


def _credential(payload: dict[str, Any], *, via: object) -> dict[str, Any]:
    """The gateway token's stored hashes after a credential was issued, as SHA-256 digests.

    Entries written before the digests were recorded only say that a gateway token was issued: then the
    columns must be set, and their values cannot be checked.
    """
    if "gateway_token_hash_sha256" in payload:
        return {
            "gateway_token_hash": payload["gateway_token_hash_sha256"],
            "gateway_scram_verifier": payload["gateway_scram_verifier_sha256"],
        }
    if via == "gateway":
        return {"gateway_token_hash": SET_BUT_UNRECORDED, "gateway_scram_verifier": SET_BUT_UNRECORDED}
    return {}


# -- the comparison: rows -> problems ------------------------------------------------------------------------


def _column_value(row: Base, column: str) -> Any:
    value = getattr(row, column)
    if isinstance(value, datetime):
        return format_at(as_utc(value))
    if column in DIGESTED and value is not None:
        return sha256_hex(str(value).encode())
    return value


def _compare_requests(session: Session, replayed: dict[str, _Row], report: AuditReport) -> None:
    seen: set[str] = set()
    for row in session.scalars(select(AccessRequest).order_by(AccessRequest.id)):
        seen.add(row.id)
        _compare_row(report, "access_requests", row.id, row, replayed.get(row.id))
    for missing in sorted(set(replayed) - seen):
        report.problems.append(
            f"access_requests {missing}: the ledger (entry {replayed[missing].seq}) records it but the state row "
            "is gone"
        )


def _compare_approvals(session: Session, replayed: dict[tuple[str, str, str], _Row], report: AuditReport) -> None:
    seen: set[tuple[str, str, str]] = set()
    for row in session.scalars(select(Approval).order_by(Approval.id)):
        key = (row.request_id, row.approver_issuer, row.approver_subject)
        seen.add(key)
        _compare_row(report, "approvals", str(row.id), row, replayed.get(key))
    for missing in sorted(set(replayed) - seen):
        request_id, issuer, subject = missing
        report.problems.append(
            f"approvals: the ledger (entry {replayed[missing].seq}) records a review of request {request_id} by "
            f"{issuer}#{subject} but the state row is gone"
        )


def _compare_grants(session: Session, replayed: dict[str, _Row], report: AuditReport) -> None:
    seen: set[str] = set()
    for row in session.scalars(select(Grant).order_by(Grant.id)):
        seen.add(row.id)
        _compare_row(report, "grants", row.id, row, replayed.get(row.id))
    for missing in sorted(set(replayed) - seen):
        report.problems.append(
            f"grants {missing}: the ledger (entry {replayed[missing].seq}) records it but the state row is gone"
        )


def _compare_row(report: AuditReport, table: str, label: str, row: Base, state: _Row | None) -> None:
    if state is None:
        report.problems.append(f"{table} {label}: the state row has no ledger events (inserted outside amber?)")
        return
    for column in compared_columns(table):
        actual = _column_value(row, column)
        expected = state.values.get(column)
        if expected is SET_BUT_UNRECORDED and actual is not None:
            continue
        if expected != actual:
            shown = f"{column} (SHA-256)" if column in DIGESTED else column
            report.problems.append(
                f"{table} {label}: {shown} is {actual!r} in the state table but the ledger (up to entry "
                f"{state.seq}) says {expected!r}"
            )
