"""The request state machine. Pure and table-tested.

submitted ──policy──> denied
    ├─────────────> approved (auto)
    └─────────────> pending ──approvals──> approved
                       ├──> denied
                       ├──> cancelled (by the requester)
                       └──> expired (nobody decided within the pending TTL)
"""

from __future__ import annotations

from amber.core.errors import Conflict

TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"denied", "approved", "pending"}),
    "pending": frozenset({"approved", "denied", "cancelled", "expired"}),
    "approved": frozenset(),
    "denied": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}
OUTCOME_STATUS = {"deny": "denied", "auto_approve": "approved", "require_approval": "pending"}


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def check_move(request_id: str, current: str, target: str) -> None:
    if not can_move(current, target):
        raise Conflict(f"request {request_id} is {current}; it cannot become {target}")
