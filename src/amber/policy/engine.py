"""Policy v0: decide on a request and on an approver. Pure functions of their inputs.

Invariants: the default is deny; nobody approves their own request, whatever the rules say; a granted
TTL never exceeds the level's max TTL. The full engine (Cedar) replaces the inside of these functions,
not their signatures.
"""

from __future__ import annotations

from amber.policy.model import ApprovalDecision, ApprovalInput, Decision, PolicyInput


def decide(inp: PolicyInput) -> Decision:
    rules = inp.rules
    base = f"{inp.resource}/{inp.level}"
    groups = inp.requester.groups
    if rules.requesters is not None and not (groups & rules.requesters):
        allowed = ", ".join(sorted(rules.requesters)) or "nobody"
        return Decision(
            outcome="deny",
            reasons=(f"{inp.requester.name} is not in a group that may request {base} (allowed: {allowed})",),
            policy_ids=(f"{base}#requesters",),
            policy_hash=inp.policy_hash,
        )
    if len(inp.reason.strip()) < rules.min_reason_length:
        return Decision(
            outcome="deny",
            reasons=(f"a reason of at least {rules.min_reason_length} characters is required for {base}",),
            policy_ids=(f"{base}#reason",),
            policy_hash=inp.policy_hash,
        )
    if inp.requested_ttl.total_seconds() <= 0:
        return Decision(
            outcome="deny",
            reasons=("the requested duration must be positive",),
            policy_ids=(f"{base}#ttl",),
            policy_hash=inp.policy_hash,
        )
    ttl = min(inp.requested_ttl, rules.max_ttl)
    reasons: list[str] = []
    policy_ids: list[str] = []
    if ttl < inp.requested_ttl:
        reasons.append(f"duration shortened to the level's maximum of {rules.max_ttl}")
        policy_ids.append(f"{base}#max_ttl")
    if groups & rules.auto_approve:
        via = ", ".join(sorted(groups & rules.auto_approve))
        return Decision(
            outcome="auto_approve",
            reasons=(*reasons, f"auto-approved: member of {via}"),
            policy_ids=(*policy_ids, f"{base}#auto_approve"),
            policy_hash=inp.policy_hash,
            ttl=ttl,
        )
    if rules.approvals_required == 0:
        return Decision(
            outcome="auto_approve",
            reasons=(*reasons, "auto-approved: the level requires no approval"),
            policy_ids=(*policy_ids, f"{base}#approvals"),
            policy_hash=inp.policy_hash,
            ttl=ttl,
        )
    approver_groups = set(rules.approver_groups)
    if rules.owners_approve:
        approver_groups |= inp.resource_owners
    return Decision(
        outcome="require_approval",
        reasons=(
            *reasons,
            f"needs {rules.approvals_required} approval(s) from {', '.join(sorted(approver_groups))}",
        ),
        policy_ids=(*policy_ids, f"{base}#approvals"),
        policy_hash=inp.policy_hash,
        ttl=ttl,
        approvals_required=rules.approvals_required,
        approver_groups=tuple(sorted(approver_groups)),
    )


def may_approve(inp: ApprovalInput) -> ApprovalDecision:
    """May this person approve (or deny) this request? Checked against their groups *now*."""
    if inp.approver.key == inp.request.requester.key:
        return ApprovalDecision(False, "nobody approves their own request")
    shared = inp.approver.groups & inp.approver_groups
    if not shared:
        allowed = ", ".join(sorted(inp.approver_groups)) or "nobody"
        return ApprovalDecision(False, f"{inp.approver.name} is not in an approver group ({allowed})")
    return ApprovalDecision(True, f"member of {', '.join(sorted(shared))}")
