"""The grant state machine: which transitions exist. Pure and table-tested.

issued ──provisioned──> active ──> expired
  │                        └─────> revoked
  ├──────────────────────────────> expired   (provisioning never finished before expiry)
  └──────────────────────────────> revoked
"""

from __future__ import annotations

from typing import Literal

from amber.core.errors import Conflict

GrantStatus = Literal["issued", "active", "expired", "revoked"]

TRANSITIONS: dict[str, frozenset[str]] = {
    "issued": frozenset({"active", "expired", "revoked"}),
    "active": frozenset({"expired", "revoked"}),
    "expired": frozenset(),
    "revoked": frozenset(),
}
LIVE: frozenset[str] = frozenset({"issued", "active"})
ENDED: frozenset[str] = frozenset({"expired", "revoked"})


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def check_move(grant_id: str, current: str, target: str) -> None:
    if not can_move(current, target):
        raise Conflict(f"grant {grant_id} is {current}; it cannot become {target}")
