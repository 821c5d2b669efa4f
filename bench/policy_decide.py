"""Benchmark: one Cedar policy decision, including assembling the entities, on one core.

Setup: 200 users, 50 groups, 100 resources (2 levels each), 20 policies (permits with approval sets,
auto-approval, forbids on time and history, break-glass, approve rules). Each sample is one full
`policy.decide` call for a random (user, resource, level), exactly as `AccessRequestService.submit` makes it:
build the context and the requester's entity, add it to the resource's entities (parsed once per bundle and
cached, as in amber; the warm-up fills that cache), and ask Cedar with schema validation. The baseline,
measured in the same run, is building and serializing the whole entity set in Python without Cedar.

Prints median, p99 and decisions per second, then one JSON line. Usage:
    .venv/bin/python bench/policy_decide.py [--n 20000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from amber.policy import History, LevelInfo, PolicyInput, ResourceInfo, Subject, WorkflowSettings, compile_bundle
from amber.policy.engine import decide, entities


def policies(groups: list[str], resources: list[str]) -> str:
    out = []
    for i in range(12):
        group, resource = groups[i], resources[i * 7 % len(resources)]
        out.append(
            f'@id("team-{i}")\n@approvals("1")\n@approvers("{groups[i + 12]}, owners")\n'
            f'permit (principal in Amber::Group::"{group}", action == Amber::Action::"request", '
            f'resource in Amber::Resource::"{resource}");'
        )
    for i in range(3):
        out.append(
            f'@id("oncall-{i}")\n@auto_approve\n@max_ttl("4h")\n'
            f'permit (principal in Amber::Group::"{groups[30 + i]}", action == Amber::Action::"request", '
            f"resource) when {{ principal.oncall && resource.max_ttl_s <= 28800 }};"
        )
    out.append(
        '@id("env-staging")\n@auto_approve\npermit (principal, action == Amber::Action::"request", resource) '
        'when { resource in Amber::Resource::"res-0" || context.ttl_s <= 600 };'
    )
    out.append(
        '@id("nights")\n@message("no nights")\nforbid (principal, action == Amber::Action::"request", resource) '
        "when { context.hour < 5 } unless { principal.oncall };"
    )
    out.append(
        '@id("cool-down")\n@message("slow down")\nforbid (principal, action == Amber::Action::"request", '
        "resource) when { context.denials_last_24h >= 3 };"
    )
    out.append(
        '@id("break-glass")\n@max_ttl("1h")\npermit (principal in Amber::Group::"g-40", '
        'action == Amber::Action::"break_glass", resource);'
    )
    out.append('@id("approve")\npermit (principal, action == Amber::Action::"approve", resource);')
    return "\n\n".join(out)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rng = random.Random(args.seed)
    groups = [f"g-{i}" for i in range(50)]
    resource_names = [f"res-{i}" for i in range(100)]
    bundle = compile_bundle({"bench.cedar": policies(groups, resource_names)}, WorkflowSettings())
    users = [
        Subject(
            "https://idp",
            f"u{i}",
            f"user{i}",
            frozenset(rng.sample(groups, rng.randint(1, 6))),
            oncall=rng.random() < 0.1,
        )
        for i in range(200)
    ]
    resources = [
        ResourceInfo(
            name,
            "postgres",
            rng.choice(["production", "staging"]),
            frozenset(rng.sample(["pii", "tier-1", "eu"], 2)),
            frozenset(rng.sample(groups, 2)),
        )
        for name in resource_names
    ]
    levels = [LevelInfo("read-only", timedelta(hours=8), 3), LevelInfo("analytics", timedelta(hours=2), 3)]
    at = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    inputs = [
        PolicyInput(
            bundle=bundle,
            requester=rng.choice(users),
            resource=rng.choice(resources),
            level=rng.choice(levels),
            requested_ttl=timedelta(minutes=rng.choice([5, 30, 120, 600])),
            reason="INC-1 investigating",
            at=at,
            history=History(denials_last_24h=rng.randint(0, 3)),
        )
        for _ in range(args.n)
    ]
    for inp in inputs[:500]:  # warm-up
        decide(inp)

    baseline = []
    for inp in inputs:
        t0 = time.perf_counter()
        json.dumps(entities(inp.resource, inp.level.name, inp.level.max_ttl, inp.requester))
        baseline.append(time.perf_counter() - t0)
    samples = []
    outcomes: dict[str, int] = {}
    start = time.perf_counter()
    for inp in inputs:
        t0 = time.perf_counter()
        decision = decide(inp)
        samples.append(time.perf_counter() - t0)
        outcomes[decision.outcome] = outcomes.get(decision.outcome, 0) + 1
    total = time.perf_counter() - start

    figures = {
        "bench": "policy_decide",
        "n": args.n,
        "users": 200,
        "groups": 50,
        "resources": 100,
        "policies": len(bundle.statements),
        "p50_ms": round(statistics.median(samples) * 1000, 4),
        "p99_ms": round(pct(samples, 0.99) * 1000, 4),
        "max_ms": round(max(samples) * 1000, 4),
        "decisions_per_s": round(args.n / total),
        "baseline_entities_p50_ms": round(statistics.median(baseline) * 1000, 4),
        "entities_share_of_p50": round(statistics.median(baseline) / statistics.median(samples), 3),
        "outcomes": outcomes,
    }
    print(f"policy bundle: {len(bundle.statements)} policies; {args.n} decisions on one core")
    print(f"decide p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms")
    print(f"throughput {figures['decisions_per_s']} decisions/s (target >= 5,000; p99 target <= 1 ms)")
    print(
        f"entity assembly alone p50 {figures['baseline_entities_p50_ms']} ms "
        f"({figures['entities_share_of_p50']:.0%} of a decision); outcomes {outcomes}"
    )
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
