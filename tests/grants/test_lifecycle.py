"""The grant and request state machines, as tables."""

from __future__ import annotations

import pytest

from amber.access_requests import lifecycle as requests_lifecycle
from amber.core.errors import Conflict
from amber.grants import lifecycle

GRANT_ALLOWED = {
    ("issued", "active"),
    ("issued", "expired"),
    ("issued", "revoked"),
    ("active", "expired"),
    ("active", "revoked"),
}
GRANT_STATES = ["issued", "active", "expired", "revoked"]


@pytest.mark.parametrize("current", GRANT_STATES)
@pytest.mark.parametrize("target", GRANT_STATES)
def test_grant_transitions(current: str, target: str) -> None:
    allowed = (current, target) in GRANT_ALLOWED
    assert lifecycle.can_move(current, target) is allowed
    if not allowed:
        with pytest.raises(Conflict, match=f"is {current}; it cannot become {target}"):
            lifecycle.check_move("grt_x", current, target)


REQUEST_ALLOWED = {
    ("submitted", "denied"),
    ("submitted", "approved"),
    ("submitted", "pending"),
    ("pending", "approved"),
    ("pending", "denied"),
    ("pending", "cancelled"),
    ("pending", "expired"),
}
REQUEST_STATES = ["submitted", "pending", "approved", "denied", "cancelled", "expired"]


@pytest.mark.parametrize("current", REQUEST_STATES)
@pytest.mark.parametrize("target", REQUEST_STATES)
def test_request_transitions(current: str, target: str) -> None:
    assert requests_lifecycle.can_move(current, target) is ((current, target) in REQUEST_ALLOWED)
