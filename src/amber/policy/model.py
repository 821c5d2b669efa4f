"""Policy inputs and decisions: plain, immutable values. No I/O, no database, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

Outcome = Literal["deny", "auto_approve", "require_approval"]


@dataclass(frozen=True)
class Subject:
    """Who is asking or approving, as the identity provider verified them at the time of the action."""

    issuer: str
    subject: str
    name: str
    groups: frozenset[str]

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.subject)


@dataclass(frozen=True)
class LevelRules:
    """Policy v0 for one access level, as the catalog declares it."""

    requesters: frozenset[str] | None
    auto_approve: frozenset[str]
    approvals_required: int
    approver_groups: frozenset[str]
    owners_approve: bool
    max_ttl: timedelta
    min_reason_length: int = 0


@dataclass(frozen=True)
class PolicyInput:
    requester: Subject
    resource: str
    level: str
    resource_owners: frozenset[str]
    rules: LevelRules
    requested_ttl: timedelta
    reason: str
    policy_hash: str


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reasons: tuple[str, ...]
    policy_ids: tuple[str, ...]
    policy_hash: str
    ttl: timedelta = timedelta(0)
    approvals_required: int = 0
    approver_groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def allowed(self) -> bool:
        return self.outcome != "deny"


@dataclass(frozen=True)
class ApprovalInput:
    request: PolicyInput
    approver_groups: frozenset[str]  # the approver sets the decision named (groups, owners resolved)
    approver: Subject


@dataclass(frozen=True)
class ApprovalDecision:
    allowed: bool
    reason: str
