"""Decisions, made by Cedar. Pure functions of their inputs (the compiled bundle is an input).

Invariants:
- Default deny: no satisfied `permit` means deny; any satisfied `forbid` means deny, with its @message.
- Nobody approves their own request, whatever the policies say (checked before Cedar is asked).
- A granted TTL never exceeds the level's max TTL nor any satisfied policy's @max_ttl.
- Among several satisfied permits the most permissive decides the workflow: @auto_approve if any, otherwise
  the one needing the fewest approvals (ties: the first by policy id).
- Justification rules (minimum length, ticket pattern) are checked before Cedar and deny with their own id.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import cedarpy

from amber.core.durations import format_duration, parse_duration
from amber.policy.bundle import PolicyBundle, Statement, parse_hours
from amber.policy.model import (
    ApprovalDecision,
    ApprovalInput,
    Decision,
    LevelInfo,
    PolicyInput,
    ResourceInfo,
    Subject,
)

NS = "Amber"


def _uid(kind: str, ident: str) -> dict[str, str]:
    return {"type": f"{NS}::{kind}", "id": ident}


def _ref(kind: str, ident: str) -> dict[str, dict[str, str]]:
    return {"__entity": _uid(kind, ident)}


def _user(subject: Subject) -> dict[str, Any]:
    return {
        "uid": _uid("User", user_id(subject)),
        "attrs": {"iss": subject.issuer, "sub": subject.subject, "name": subject.name, "oncall": subject.oncall},
        "parents": [_uid("Group", g) for g in sorted(subject.groups)],
    }


def user_id(subject: Subject) -> str:
    return f"{subject.issuer}#{subject.subject}"


def entities(resource: ResourceInfo, level_name: str, max_ttl: timedelta, *people: Subject) -> list[dict[str, Any]]:
    """The whole entity set of one decision, as Cedar JSON (used by tools and benchmarks)."""
    return _base_entities(resource, level_name, max_ttl) + _people(people)


def _base_entities(resource: ResourceInfo, level_name: str, max_ttl: timedelta) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"uid": _uid("Group", g), "attrs": {}, "parents": []} for g in sorted(resource.owners)]
    out.append(
        {
            "uid": _uid("Resource", resource.name),
            "attrs": {
                "kind": resource.kind,
                "environment": resource.environment,
                "tags": sorted(resource.tags),
                "owners": [_ref("Group", g) for g in sorted(resource.owners)],
            },
            "parents": [],
        }
    )
    out.append(
        {
            "uid": _uid("Level", f"{resource.name}/{level_name}"),
            "attrs": {"name": level_name, "max_ttl_s": int(max_ttl.total_seconds())},
            "parents": [_uid("Resource", resource.name)],
        }
    )
    return out


def _people(people: tuple[Subject, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for person in people:
        if user_id(person) not in seen:
            seen.add(user_id(person))
            out.append(_user(person))
    return out


_BASE_CACHE_MAX = 4096


def _entity_handle(
    bundle: PolicyBundle, resource: ResourceInfo, level: str, max_ttl: timedelta, people: tuple[Subject, ...]
) -> Any:
    """The resource's entities parsed once per bundle and cached; each decision parses only its people."""
    key = (resource, level, max_ttl)
    cache = bundle.entity_cache
    base = cache.get(key)
    if base is None:
        if len(cache) >= _BASE_CACHE_MAX:
            cache.clear()
        base = cedarpy.Entities.from_json_str(json.dumps(_base_entities(resource, level, max_ttl)))
        cache[key] = base
    return base.with_added_json_str(json.dumps(_people(people)))


def local_time(bundle: PolicyBundle, at: datetime) -> datetime:
    return at.astimezone(ZoneInfo(bundle.settings.timezone))


def _ask(
    bundle: PolicyBundle,
    principal: Subject,
    action: str,
    *,
    inp_resource: ResourceInfo,
    level: str,
    max_ttl: timedelta,
    context: dict[str, Any],
    others: tuple[Subject, ...] = (),
) -> tuple[bool, list[Statement], list[str]]:
    request = {
        "principal": _uid("User", user_id(principal)),
        "action": _uid("Action", action),
        "resource": _uid("Level", f"{inp_resource.name}/{level}"),
        "context": context,
    }
    ents = _entity_handle(bundle, inp_resource, level, max_ttl, (principal, *others))
    result = cedarpy.is_authorized(request, bundle.policy_set, ents, schema=bundle.schema)
    statements = [bundle.statement(cedar_id) for cedar_id in result.diagnostics.reasons]
    return result.allowed, statements, list(result.diagnostics.errors)


def request_context(inp: PolicyInput) -> dict[str, Any]:
    local = local_time(inp.bundle, inp.at)
    starts_in = max(0, int((inp.starts_at - inp.at).total_seconds())) if inp.starts_at else 0
    return {
        "ttl_s": int(inp.requested_ttl.total_seconds()),
        "starts_in_s": starts_in,
        "reason": inp.reason,
        "reason_length": len(inp.reason.strip()),
        "hour": local.hour,
        "minute": local.minute,
        "weekday": local.weekday(),
        "requests_last_24h": inp.history.requests_last_24h,
        "denials_last_24h": inp.history.denials_last_24h,
        "active_grants": inp.history.active_grants,
    }


def _deny(inp: PolicyInput, reasons: list[str], ids: list[str]) -> Decision:
    return Decision(outcome="deny", reasons=tuple(reasons), policy_ids=tuple(ids), policy_hash=inp.bundle.hash)


def justification_problem(resource: str, level: LevelInfo, reason: str) -> tuple[str, str] | None:
    """What is wrong with a reason under the level's justification rules, as (message, rule id), or None.

    The service refuses such a request as invalid input before deciding (it never becomes a denial that
    counts in the requester's history); `decide` still denies on it for callers that skip that check."""
    base = f"{resource}/{level.name}"
    reason = reason.strip()
    if len(reason) < level.min_reason_length:
        return (
            f"a reason of at least {level.min_reason_length} characters is required for {base}",
            f"workflow:{base}:min_reason_length",
        )
    if level.reason_pattern and not re.search(level.reason_pattern, reason):
        return (
            f"the reason must reference a ticket matching {level.reason_pattern!r} for {base}",
            f"workflow:{base}:reason_pattern",
        )
    return None


def decide(inp: PolicyInput) -> Decision:
    base = f"{inp.resource.name}/{inp.level.name}"
    problem = justification_problem(inp.resource.name, inp.level, inp.reason)
    if problem is not None:
        return _deny(inp, [problem[0]], [problem[1]])
    if inp.requested_ttl <= timedelta(0):
        return _deny(inp, ["the requested duration must be positive"], ["workflow:ttl"])
    if inp.starts_at is not None and inp.starts_at < inp.at - timedelta(minutes=1):
        return _deny(inp, ["the requested start is in the past"], ["workflow:start"])
    context = request_context(inp)
    allowed, statements, errors = _ask(
        inp.bundle,
        inp.requester,
        inp.action,
        inp_resource=inp.resource,
        level=inp.level.name,
        max_ttl=inp.level.max_ttl,
        context=context,
    )
    if errors:
        # An evaluation error in a policy makes Cedar skip it; amber treats the whole decision as deny.
        return _deny(inp, [f"policy evaluation failed, denying: {'; '.join(errors)}"], ["engine:error"])
    if not allowed:
        forbids = [s for s in statements if s.effect == "forbid"]
        if not forbids:
            verb = "break glass on" if inp.action == "break_glass" else "request"
            return _deny(inp, [f"no policy permits {inp.requester.name} to {verb} {base}"], ["default:deny"])
        return _deny(inp, [s.message or f"forbidden by {s.id}" for s in forbids], [s.id for s in forbids])
    return _approve(inp, statements)


def _approve(inp: PolicyInput, permits: list[Statement]) -> Decision:
    permits = sorted(permits, key=lambda s: s.id)
    auto = [s for s in permits if "auto_approve" in s.annotations or inp.action == "break_glass"]
    chosen = auto[0] if auto else min(permits, key=lambda s: int(s.annotations.get("approvals", "1")))
    reasons: list[str] = []
    ttl, limit = _granted_ttl(inp, chosen)
    if ttl < inp.requested_ttl:
        reasons.append(f"duration shortened to {format_duration(ttl)} ({limit})")
    window_end = None
    if "business_hours" in chosen.annotations:
        start_min, end_min = parse_hours(chosen.annotations["business_hours"])
        local = local_time(inp.bundle, inp.starts_at or inp.at)
        minute = local.hour * 60 + local.minute
        if not start_min <= minute < end_min:
            return _deny(
                inp,
                [
                    f"{chosen.id}: access is only granted during business hours "
                    f"{chosen.annotations['business_hours']} ({inp.bundle.settings.timezone})"
                ],
                [chosen.id],
            )
        window_end = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=end_min)
        reasons.append(f"access ends with business hours at {window_end.strftime('%H:%M')}")
    message = chosen.message
    common = {
        "policy_hash": inp.bundle.hash,
        "ttl": ttl,
        "single_use": "single_use" in chosen.annotations,
        "window_end_at": window_end,
        "break_glass": inp.action == "break_glass",
    }
    if chosen in auto:
        what = "break-glass access granted" if inp.action == "break_glass" else "auto-approved"
        reasons.append(f"{what} by {chosen.id}" + (f": {message}" if message else ""))
        return Decision(outcome="auto_approve", reasons=tuple(reasons), policy_ids=(chosen.id,), **common)  # type: ignore[arg-type]
    approvers = _groups(chosen.annotations.get("approvers", ""), inp.resource)
    approvers_all = _groups(chosen.annotations.get("approvers_all", ""), inp.resource)
    k = int(chosen.annotations.get("approvals", "1"))
    k = max(k, len(approvers_all))
    who = ", ".join(sorted(approvers | approvers_all)) or "nobody"
    text = f"needs {k} approval(s) from {who}"
    if approvers_all:
        text += f" including one from each of {', '.join(sorted(approvers_all))}"
    reasons.append(f"{text} ({chosen.id}" + (f": {message})" if message else ")"))
    return Decision(
        outcome="require_approval",
        reasons=tuple(reasons),
        policy_ids=(chosen.id,),
        approvals_required=k,
        approver_groups=tuple(sorted(approvers | approvers_all)),
        approver_all_groups=tuple(sorted(approvers_all)),
        **common,  # type: ignore[arg-type]
    )


def _granted_ttl(inp: PolicyInput, chosen: Statement) -> tuple[timedelta, str]:
    """The TTL granted (the request within every limit) and which limit binds, named for the requester."""
    base = f"{inp.resource.name}/{inp.level.name}"
    limits = [(inp.level.max_ttl, f"the maximum of {base} is {format_duration(inp.level.max_ttl)}")]
    if "max_ttl" in chosen.annotations:
        cap = parse_duration(chosen.annotations["max_ttl"])
        limits.append((cap, f"policy {chosen.id} allows at most {format_duration(cap)}"))
    limit, name = min(limits, key=lambda item: item[0])
    return min(inp.requested_ttl, limit), name


def _groups(value: str, resource: ResourceInfo) -> frozenset[str]:
    out: set[str] = set()
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item == "owners":
            out |= resource.owners
        else:
            out.add(item)
    return frozenset(out)


def may_approve(inp: ApprovalInput) -> ApprovalDecision:
    """May this person approve (or deny) this request now? Their groups now; the current bundle's policies."""
    if inp.approver.key == inp.requester.key:
        return ApprovalDecision(False, "nobody approves their own request")
    sets = inp.approver_groups | inp.approver_all_groups
    counts_for = inp.approver.groups & sets
    if not counts_for:
        names = ", ".join(sorted(sets)) or "nobody"
        return ApprovalDecision(False, f"{inp.approver.name} is not in an approver group ({names})")
    local = local_time(inp.bundle, inp.at)
    context: dict[str, Any] = {
        "requester": _ref("User", user_id(inp.requester)),
        "requester_groups": [_ref("Group", g) for g in sorted(inp.requester.groups)],
        "shares_group_with_requester": bool(inp.approver.groups & inp.requester.groups),
        "is_owner": bool(inp.approver.groups & inp.resource.owners),
        "hour": local.hour,
        "weekday": local.weekday(),
    }
    allowed, statements, errors = _ask(
        inp.bundle,
        inp.approver,
        "approve",
        inp_resource=inp.resource,
        level=inp.level.name,
        max_ttl=inp.level.max_ttl,
        context=context,
        others=(inp.requester,),
    )
    ids = tuple(s.id for s in statements)
    if errors:
        return ApprovalDecision(False, f"policy evaluation failed, refusing: {'; '.join(errors)}", ids)
    if not allowed:
        forbids = [s for s in statements if s.effect == "forbid"]
        if forbids:
            return ApprovalDecision(False, "; ".join(s.message or f"forbidden by {s.id}" for s in forbids), ids)
        return ApprovalDecision(False, f"no policy permits {inp.approver.name} to approve this request", ids)
    return ApprovalDecision(
        True, f"member of {', '.join(sorted(counts_for))} ({', '.join(ids)})", ids, frozenset(counts_for)
    )
