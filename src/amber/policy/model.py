"""Policy inputs and decisions: plain, immutable values. No I/O, no database, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from amber.policy.bundle import PolicyBundle

Outcome = Literal["deny", "auto_approve", "require_approval"]
Action = Literal["request", "break_glass"]


@dataclass(frozen=True)
class Subject:
    """Who is asking or approving, as the identity provider verified them at the time of the action."""

    issuer: str
    subject: str
    name: str
    groups: frozenset[str]
    oncall: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.subject)


@dataclass(frozen=True)
class ResourceInfo:
    name: str
    kind: str
    environment: str
    tags: frozenset[str]
    owners: frozenset[str]


@dataclass(frozen=True)
class LevelInfo:
    name: str
    max_ttl: timedelta
    min_reason_length: int = 0
    reason_pattern: str | None = None  # a regular expression the reason must contain (a ticket id)


@dataclass(frozen=True)
class History:
    """The requester's recent history, as the context of the decision."""

    requests_last_24h: int = 0
    denials_last_24h: int = 0
    active_grants: int = 0


@dataclass(frozen=True)
class PolicyInput:
    bundle: PolicyBundle
    requester: Subject
    resource: ResourceInfo
    level: LevelInfo
    requested_ttl: timedelta
    reason: str
    at: datetime  # when the decision is made (the injected clock's now)
    starts_at: datetime | None = None  # a requested start; None = now
    history: History = field(default_factory=History)
    action: Action = "request"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reasons: tuple[str, ...]
    policy_ids: tuple[str, ...]
    policy_hash: str
    ttl: timedelta = timedelta(0)
    approvals_required: int = 0
    approver_groups: tuple[str, ...] = ()  # approvals may come from members of any of these
    approver_all_groups: tuple[str, ...] = ()  # ... and at least one from each of these
    single_use: bool = False
    window_end_at: datetime | None = None  # business-hours condition: access ends here at the latest
    break_glass: bool = False

    @property
    def allowed(self) -> bool:
        return self.outcome != "deny"

    @property
    def conditions(self) -> dict[str, object]:
        return {
            "single_use": self.single_use,
            "window_end_at": self.window_end_at.isoformat() if self.window_end_at else None,
            "break_glass": self.break_glass,
            "approver_all_groups": list(self.approver_all_groups),
        }


@dataclass(frozen=True)
class ApprovalInput:
    bundle: PolicyBundle
    requester: Subject
    approver: Subject
    resource: ResourceInfo
    level: LevelInfo
    approver_groups: frozenset[str]  # from the pinned decision
    approver_all_groups: frozenset[str]
    at: datetime


@dataclass(frozen=True)
class ApprovalDecision:
    allowed: bool
    reason: str
    policy_ids: tuple[str, ...] = ()
    counts_for: frozenset[str] = frozenset()  # the approver-set groups this approval satisfies


def approvals_satisfied(required: int, all_groups: frozenset[str], approvals: list[frozenset[str]]) -> bool:
    """k distinct approvals, and at least one from each `all` group. `approvals` = each approver's groups."""
    if len(approvals) < required:
        return False
    return all(any(group in groups for groups in approvals) for group in all_groups)
