"""Time to access: from POST /v1/requests to a working login as the granted role, over real HTTP.

One sample is: send an auto-approved request (httpx keep-alive client -> uvicorn on loopback -> token check,
policy, ledger, commit, provisioning the role, setting its password, the response), then log in with the
returned credential (psycopg, scram-sha-256 as the server's hba demands for amber_grantees) and run
`SELECT 1`. The clock stops when `SELECT 1` returns.

The baseline, measured in the same run and interleaved with the samples: a plain psycopg login + `SELECT 1`
as a pre-created password role in the same group, i.e. what logging in costs without amber.

Targets (issue): p50 <= 50 ms, p99 <= 150 ms.

    .venv/bin/python bench/time_to_access.py [--n 200] [--state sqlite|postgres|both] [--warmup 5]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from _common import (
    GRANTEE_GROUP,
    LEVEL,
    PG_HOST,
    PG_PORT,
    RESOURCE,
    Served,
    describe,
    drop_roles,
    pg_admin,
    require_grantee_group,
    serve_amber,
    summary_ms,
    today,
)

TARGET_P50_MS = 50.0
TARGET_P99_MS = 150.0


def create_baseline_role(target_db: str) -> tuple[str, str]:
    """A password role in the grantee group (so hba makes it use scram-sha-256), able to connect."""
    name = f"amber_bench_base_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    with pg_admin(target_db) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(GRANTEE_GROUP)
            )
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(target_db), sql.Identifier(name))
        )
    return name, f"postgresql://{name}:{password}@{PG_HOST}:{PG_PORT}/{target_db}"


def password_is_required(role: str, target_db: str) -> bool:
    try:
        with psycopg.connect(f"postgresql://{role}@{PG_HOST}:{PG_PORT}/{target_db}", connect_timeout=5):
            return False
    except psycopg.OperationalError:
        return True


def login(url: str) -> None:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1").fetchone()
        if row != (1,):
            raise RuntimeError(f"SELECT 1 returned {row!r}")


def timed_login(url: str) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT 1").fetchone()
        return time.perf_counter() - started


def timed_access(client: httpx.Client) -> tuple[float, float]:
    """(seconds until the HTTP response, seconds until SELECT 1 returned as the granted role)."""
    started = time.perf_counter()
    response = client.post(
        "/v1/requests",
        json={"resource": RESOURCE, "level": LEVEL, "reason": "bench: time to access", "duration": "30m"},
    )
    answered = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/requests answered {response.status_code}: {response.text}")
    body = response.json()
    credential = body.get("credential")
    if body.get("status") != "approved" or not credential:
        raise RuntimeError(f"the request was not auto-approved with a credential: {body}")
    with psycopg.connect(credential["url"], autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT 1").fetchone()
        done = time.perf_counter()
    return answered - started, done - started


def provision_totals(amber: Served) -> tuple[float, float]:
    """(seconds, calls) amber's own histogram has recorded for provisioning a role and setting its password."""
    registry = amber.rt.metrics.registry
    labels = {"kind": "postgres"}
    total = registry.get_sample_value("amber_provision_seconds_sum", labels) or 0.0
    count = registry.get_sample_value("amber_provision_seconds_count", labels) or 0.0
    return total, count


def run_store(state: str, n: int, warmup: int) -> dict[str, Any]:
    print(f"\n== state store: {state} ==")
    with (
        tempfile.TemporaryDirectory(prefix="amber-bench-") as tmp,
        serve_amber(state, Path(tmp)) as amber,
    ):
        base_role, base_url = create_baseline_role(amber.target_db)
        try:
            if not password_is_required(base_role, amber.target_db):
                print(
                    f"bench: WARNING: {GRANTEE_GROUP} members can log in without a password here; "
                    "run scripts/services.sh (the figures below then do not include scram)"
                )
            headers = {"authorization": f"Bearer {amber.token('bench-alice', 'engineering', 'oncall')}"}
            with httpx.Client(base_url=amber.url, headers=headers, timeout=10.0) as client:
                for _ in range(warmup):  # first connections, imports, caches: not measured
                    timed_access(client)
                    login(base_url)
                provision_before = provision_totals(amber)
                baseline: list[float] = []
                http: list[float] = []
                total: list[float] = []
                started = time.monotonic()
                for _ in range(n):  # interleaved, so drift on the machine hits both series alike
                    baseline.append(timed_login(base_url))
                    answered, done = timed_access(client)
                    http.append(answered)
                    total.append(done)
                elapsed = time.monotonic() - started
                provision_after = provision_totals(amber)
        finally:
            drop_roles([base_role], amber.target_db)
    access = summary_ms(total)
    http_stats = summary_ms(http)
    login_stats = summary_ms([t - h for t, h in zip(total, http, strict=True)])
    base = summary_ms(baseline)
    ratio = round(access["p50_ms"] / base["p50_ms"], 2)
    calls = provision_after[1] - provision_before[1]
    provision_mean_ms = round((provision_after[0] - provision_before[0]) / calls * 1000, 2) if calls else None
    print(describe("request -> login + SELECT 1", access))
    print(describe("  of which the HTTP request", http_stats))
    print(f"  of which provisioning role + password (amber's own metric, mean of {calls:g}): {provision_mean_ms} ms")
    print(describe("  of which the login + SELECT 1", login_stats))
    print(describe("baseline: login + SELECT 1", base))
    print(f"ratio of medians (access / baseline login): {ratio}x")
    ok_p50 = access["p50_ms"] <= TARGET_P50_MS
    ok_p99 = access["p99_ms"] <= TARGET_P99_MS
    print(
        f"targets: p50 <= {TARGET_P50_MS:g} ms {'met' if ok_p50 else 'MISSED'}; "
        f"p99 <= {TARGET_P99_MS:g} ms {'met' if ok_p99 else 'MISSED'}   ({n} samples in {elapsed:.1f} s)"
    )
    return {
        "state": state,
        "n": n,
        "p50_ms": access["p50_ms"],
        "p90_ms": access["p90_ms"],
        "p99_ms": access["p99_ms"],
        "max_ms": access["max_ms"],
        "http_p50_ms": http_stats["p50_ms"],
        "http_p99_ms": http_stats["p99_ms"],
        "provision_mean_ms": provision_mean_ms,
        "login_after_grant_p50_ms": login_stats["p50_ms"],
        "baseline_p50_ms": base["p50_ms"],
        "baseline_p90_ms": base["p90_ms"],
        "baseline_p99_ms": base["p99_ms"],
        "baseline_max_ms": base["max_ms"],
        "ratio_p50": ratio,
        "target_p50_met": ok_p50,
        "target_p99_met": ok_p99,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="measured samples per state store (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured samples first (default 5)")
    parser.add_argument("--state", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 5000 or not 0 <= args.warmup <= 100:
        parser.error("--n must be 1..5000 and --warmup 0..100")
    require_grantee_group()
    stores = ["sqlite", "postgres"] if args.state == "both" else [args.state]
    print(f"amber time-to-access benchmark, {args.n} samples per store after {args.warmup} warm-up")
    results = {state: run_store(state, args.n, args.warmup) for state in stores}
    figures: dict[str, Any] = {"bench": "time_to_access", "date": today(), "n": args.n}
    if len(stores) == 1:
        figures.update(results[stores[0]])
    else:
        figures["stores"] = results
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
