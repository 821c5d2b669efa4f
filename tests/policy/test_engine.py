"""Cedar decisions, pure: a bundle compiled from text, inputs in, a Decision out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from amber.policy import (
    ApprovalDecision,
    ApprovalInput,
    Decision,
    History,
    LevelInfo,
    PolicyInput,
    ResourceInfo,
    Subject,
    WorkflowSettings,
    approvals_satisfied,
    compile_bundle,
    decide,
    may_approve,
)

POLICIES = """
@id("eng-with-approval")
@approvals("1")
@approvers("leads, owners")
@message("engineers need a lead or an owner")
permit (principal in Amber::Group::"engineering", action == Amber::Action::"request",
        resource == Amber::Level::"db/ro");

@id("oncall-at-once")
@auto_approve
@max_ttl("2h")
permit (principal in Amber::Group::"oncall", action == Amber::Action::"request", resource in Amber::Resource::"db")
when { principal in Amber::Group::"engineering" };

@id("auditors-need-two-sets")
@approvals("2")
@approvers_all("security, owners")
@single_use
permit (principal in Amber::Group::"auditors", action == Amber::Action::"request",
        resource == Amber::Level::"db/ro");

@id("contractors-office-hours")
@approvals("1")
@approvers("leads")
@business_hours("09:00-17:00")
permit (principal in Amber::Group::"contractors", action == Amber::Action::"request",
        resource == Amber::Level::"db/ro");

@id("no-weekends-for-contractors")
@message("contractors: weekdays only")
forbid (principal in Amber::Group::"contractors", action == Amber::Action::"request", resource)
when { context.weekday >= 5 };

@id("cool-down")
@message("too many denials today")
forbid (principal, action == Amber::Action::"request", resource) when { context.denials_last_24h >= 3 };

@id("sre-break-glass")
@max_ttl("1h")
permit (principal in Amber::Group::"sre", action == Amber::Action::"break_glass", resource);

@id("approve")
permit (principal, action == Amber::Action::"approve", resource);

@id("interns-never-approve")
@message("interns do not approve")
forbid (principal in Amber::Group::"interns", action == Amber::Action::"approve", resource);
"""

BUNDLE = compile_bundle({"main.cedar": POLICIES}, WorkflowSettings(timezone="Europe/Berlin"))
DB = ResourceInfo(
    name="db", kind="postgres", environment="production", tags=frozenset({"pii"}), owners=frozenset({"owners"})
)
RO = LevelInfo(name="ro", max_ttl=timedelta(hours=8), min_reason_length=3, reason_pattern=None)
THURSDAY_10 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # 10:00 in Berlin
SATURDAY_10 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def who(*groups: str, sub: str = "u1") -> Subject:
    return Subject("https://idp", sub, sub, frozenset(groups))


def ask(
    *groups: str,
    ttl: timedelta = timedelta(hours=1),
    reason: str = "INC-1 look",
    at: datetime = THURSDAY_10,
    level: LevelInfo = RO,
    history: History | None = None,
    action: str = "request",
    starts_at: datetime | None = None,
) -> Decision:
    return decide(
        PolicyInput(
            bundle=BUNDLE,
            requester=who(*groups),
            resource=DB,
            level=level,
            requested_ttl=ttl,
            reason=reason,
            at=at,
            history=history or History(),
            action=action,  # type: ignore[arg-type]
            starts_at=starts_at,
        )
    )


def test_default_deny_names_no_policy() -> None:
    decision = ask("marketing")
    assert decision.outcome == "deny"
    assert decision.policy_ids == ("default:deny",)
    assert "no policy permits u1 to request db/ro" in decision.reasons[0]
    assert decision.policy_hash == BUNDLE.hash


def test_require_approval_from_any_of_several_groups_and_owners() -> None:
    decision = ask("engineering")
    assert decision.outcome == "require_approval"
    assert decision.approvals_required == 1
    assert decision.approver_groups == ("leads", "owners")
    assert decision.policy_ids == ("eng-with-approval",)
    assert "engineers need a lead or an owner" in decision.reasons[-1]


def test_auto_approve_wins_over_approval_and_caps_ttl() -> None:
    decision = ask("engineering", "oncall", ttl=timedelta(hours=5))
    assert decision.outcome == "auto_approve"
    assert decision.policy_ids == ("oncall-at-once",)
    assert decision.ttl == timedelta(hours=2)
    assert decision.reasons[0] == "duration shortened to 2h (policy oncall-at-once allows at most 2h)"


def test_the_shortening_message_names_the_level_when_the_level_binds() -> None:
    short_level = LevelInfo(name="ro", max_ttl=timedelta(minutes=90), min_reason_length=3)
    decision = ask("engineering", "oncall", ttl=timedelta(hours=5), level=short_level)
    assert decision.ttl == timedelta(minutes=90)
    assert decision.reasons[0] == "duration shortened to 1h30m (the maximum of db/ro is 1h30m)"
    unshortened = ask("engineering", "oncall", ttl=timedelta(minutes=30))
    assert not any("shortened" in reason for reason in unshortened.reasons)


def test_all_of_several_groups_and_single_use() -> None:
    decision = ask("auditors")
    assert decision.outcome == "require_approval"
    assert decision.approver_all_groups == ("owners", "security")
    assert decision.approvals_required == 2
    assert decision.single_use


def test_approvals_satisfied_needs_count_and_each_required_group() -> None:
    sets = frozenset({"security", "owners"})
    assert not approvals_satisfied(2, sets, [frozenset({"security"}), frozenset({"security"})])
    assert approvals_satisfied(2, sets, [frozenset({"security"}), frozenset({"owners", "x"})])
    assert not approvals_satisfied(2, frozenset(), [frozenset({"leads"})])
    assert approvals_satisfied(1, frozenset(), [frozenset({"leads"})])


def test_business_hours_window_in_the_bundle_timezone() -> None:
    decision = ask("contractors")
    assert decision.outcome == "require_approval"
    assert decision.window_end_at is not None
    assert decision.window_end_at.astimezone(UTC) == datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
    evening = ask("contractors", at=datetime(2026, 11, 26, 17, 30, tzinfo=UTC))
    assert evening.outcome == "deny"
    assert "business hours 09:00-17:00 (Europe/Berlin)" in evening.reasons[0]


def test_weekday_window_forbid_with_message() -> None:
    decision = ask("contractors", at=SATURDAY_10)
    assert decision.outcome == "deny"
    assert decision.policy_ids == ("no-weekends-for-contractors",)
    assert decision.reasons == ("contractors: weekdays only",)


def test_recent_history_feeds_policy() -> None:
    assert ask("engineering", history=History(denials_last_24h=2)).outcome == "require_approval"
    decision = ask("engineering", history=History(denials_last_24h=3))
    assert decision.policy_ids == ("cool-down",)


@pytest.mark.parametrize(
    ("level", "reason", "policy_id"),
    [
        (LevelInfo("ro", timedelta(hours=8), min_reason_length=20), "too short", "workflow:db/ro:min_reason_length"),
        (
            LevelInfo("ro", timedelta(hours=8), reason_pattern=r"(INC|CHG)-\d+"),
            "just looking",
            "workflow:db/ro:reason_pattern",
        ),
    ],
)
def test_mandatory_justification(level: LevelInfo, reason: str, policy_id: str) -> None:
    decision = ask("engineering", "oncall", reason=reason, level=level)
    assert decision.outcome == "deny"
    assert decision.policy_ids == (policy_id,)
    good = ask("engineering", "oncall", reason="see INC-42 for details", level=level)
    assert good.outcome == "auto_approve"


def test_break_glass_is_its_own_action() -> None:
    assert ask("sre", action="break_glass").outcome == "auto_approve"
    decision = ask("sre", action="break_glass", ttl=timedelta(hours=4))
    assert decision.break_glass
    assert decision.ttl == timedelta(hours=1)
    assert ask("engineering", action="break_glass").outcome == "deny"
    assert ask("sre").outcome == "deny"  # break-glass rights are not request rights


def test_scheduled_start_in_the_past_is_refused() -> None:
    decision = ask("engineering", starts_at=THURSDAY_10 - timedelta(hours=1))
    assert decision.outcome == "deny"


def approval(
    approver: Subject, requester: Subject, *, any_of: set[str], all_of: set[str] | None = None
) -> ApprovalDecision:
    return may_approve(
        ApprovalInput(
            bundle=BUNDLE,
            requester=requester,
            approver=approver,
            resource=DB,
            level=RO,
            approver_groups=frozenset(any_of),
            approver_all_groups=frozenset(all_of or set()),
            at=THURSDAY_10,
        )
    )


def test_nobody_approves_their_own_request_whatever_the_policy_says() -> None:
    alice = who("engineering", "leads", sub="alice")
    verdict = approval(alice, alice, any_of={"leads"})
    assert not verdict.allowed
    assert verdict.reason == "nobody approves their own request"


def test_approver_sharing_the_requesters_groups_may_approve() -> None:
    verdict = approval(who("engineering", "leads", sub="bob"), who("engineering", sub="alice"), any_of={"leads"})
    assert verdict.allowed
    assert verdict.counts_for == {"leads"}


def test_approver_outside_the_sets_or_forbidden_by_policy() -> None:
    alice = who("engineering", sub="alice")
    assert not approval(who("engineering", sub="bob"), alice, any_of={"leads"}).allowed
    verdict = approval(who("leads", "interns", sub="bob"), alice, any_of={"leads"})
    assert not verdict.allowed
    assert verdict.reason == "interns do not approve"


def test_same_subject_at_another_issuer_is_another_person() -> None:
    alice = who("engineering", "leads", sub="alice")
    other = Subject("https://other-idp", "alice", "alice", frozenset({"leads"}))
    assert approval(other, alice, any_of={"leads"}).allowed
