"""Policy v0 decisions, table-tested. Pure: no database, no clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from amber.policy import ApprovalInput, LevelRules, PolicyInput, Subject, decide, may_approve

RULES = LevelRules(
    requesters=frozenset({"engineering"}),
    auto_approve=frozenset({"oncall"}),
    approvals_required=1,
    approver_groups=frozenset({"leads"}),
    owners_approve=True,
    max_ttl=timedelta(hours=8),
    min_reason_length=3,
)


def inp(
    *groups: str,
    ttl: timedelta = timedelta(hours=1),
    reason: str = "INC-1",
    rules: LevelRules = RULES,
    sub: str = "u1",
) -> PolicyInput:
    return PolicyInput(
        requester=Subject("iss", sub, "user", frozenset(groups)),
        resource="db",
        level="ro",
        resource_owners=frozenset({"owners"}),
        rules=rules,
        requested_ttl=ttl,
        reason=reason,
        policy_hash="h",
    )


@pytest.mark.parametrize(
    ("groups", "outcome", "policy_id"),
    [
        ((), "deny", "db/ro#requesters"),
        (("marketing",), "deny", "db/ro#requesters"),
        (("engineering",), "require_approval", "db/ro#approvals"),
        (("engineering", "oncall"), "auto_approve", "db/ro#auto_approve"),
        (("oncall",), "deny", "db/ro#requesters"),  # auto-approve does not bypass who may ask
    ],
)
def test_outcomes(groups: tuple[str, ...], outcome: str, policy_id: str) -> None:
    decision = decide(inp(*groups))
    assert decision.outcome == outcome
    assert decision.policy_ids[-1] == policy_id
    assert decision.policy_hash == "h"
    assert decision.reasons


def test_approvers_include_owners_when_allowed() -> None:
    assert decide(inp("engineering")).approver_groups == ("leads", "owners")
    rules = LevelRules(**{**RULES.__dict__, "owners_approve": False})
    assert decide(inp("engineering", rules=rules)).approver_groups == ("leads",)


def test_ttl_capped_and_explained() -> None:
    decision = decide(inp("engineering", "oncall", ttl=timedelta(hours=12)))
    assert decision.ttl == timedelta(hours=8)
    assert "db/ro#max_ttl" in decision.policy_ids
    assert decide(inp("engineering", "oncall", ttl=timedelta(hours=2))).ttl == timedelta(hours=2)


def test_reason_and_ttl_required() -> None:
    assert decide(inp("engineering", reason="  ")).outcome == "deny"
    assert decide(inp("engineering", ttl=timedelta(0))).outcome == "deny"


def test_no_requester_list_means_anyone_and_zero_approvals_auto_approves() -> None:
    rules = LevelRules(
        requesters=None,
        auto_approve=frozenset(),
        approvals_required=0,
        approver_groups=frozenset(),
        owners_approve=False,
        max_ttl=timedelta(hours=1),
    )
    assert decide(inp(rules=rules)).outcome == "auto_approve"


@pytest.mark.parametrize(
    ("approver_sub", "approver_groups", "allowed", "reason"),
    [
        ("u1", {"leads"}, False, "nobody approves their own request"),
        ("u2", {"leads"}, True, "member of leads"),
        ("u2", {"engineering"}, False, "not in an approver group"),
        ("u2", set(), False, "not in an approver group"),
    ],
)
def test_may_approve(approver_sub: str, approver_groups: set[str], allowed: bool, reason: str) -> None:
    verdict = may_approve(
        ApprovalInput(
            request=inp("engineering", "leads"),
            approver_groups=frozenset({"leads"}),
            approver=Subject("iss", approver_sub, "x", frozenset(approver_groups)),
        )
    )
    assert verdict.allowed is allowed
    assert reason in verdict.reason


def test_same_subject_at_another_issuer_is_another_person() -> None:
    verdict = may_approve(
        ApprovalInput(
            request=inp("engineering"),
            approver_groups=frozenset({"leads"}),
            approver=Subject("other-iss", "u1", "x", frozenset({"leads"})),
        )
    )
    assert verdict.allowed
