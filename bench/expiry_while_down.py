"""Expiry while amber is down: pg_cron itself ends direct sessions at their grant's expiry, in real time.

Set-up: amber (API in-process, no worker, no gateway; SQLite state) issues `--n` direct grants whose expiries
are spread over the minute after the next minute boundary (1 s, 15 s, 30 s, 45 s, ... past it), plus one grant
provisioned too late for its own minute (it expires ~8 s after provisioning, in a minute pg_cron has already
started, so its job goes to the next minute). Each grant gets a live psycopg session running
`SELECT pg_sleep(0.5)` in a loop. Then amber is stopped (its runtime closed, nothing of it runs) and the benchmark waits
for pg_cron (minute granularity, database `postgres`) to run each grant's `amber-cut:*` job.

Measured per grant: when its session's client saw the connection end, minus the grant's expiry (the lag);
when pg_cron started the job (cron.job_run_details), minus the start of its minute; whether a new login with
the grant's password is refused afterwards. The run takes up to about two minutes of wall time.

    .venv/bin/python bench/expiry_while_down.py [--n 4]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from _common import (
    CATALOG,
    GRANTEE_GROUP,
    LEVEL,
    POLICIES,
    RESOURCE,
    TARGET_ENV,
    TARGET_SQL,
    admin_url,
    create_database,
    drop_database,
    drop_roles,
    pg_admin,
    require_grantee_group,
    roles_tagged,
)
from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.clock import FrozenClock
from amber.core.settings import Settings

DURATION = timedelta(minutes=10)
SPREAD_S = (1, 15, 30, 45, 55, 10, 25, 40)  # seconds past the minute boundary, one grant each
LATE_OFFSET_S = 8.0


class Session(threading.Thread):
    """One live direct session of a grant's role, blocked in a long query until the server ends it."""

    def __init__(self, kind: str, role: str, url: str, expires_at: datetime) -> None:
        super().__init__(name=f"session-{role}", daemon=True)
        self.kind, self.role, self.url, self.expires_at = kind, role, url, expires_at
        self.ended_at: float | None = None
        self.error: str | None = None
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=5)

    def run(self) -> None:
        try:
            while True:  # short queries: the level's statement_timeout must not end the session for the server
                self.conn.execute("SELECT pg_sleep(0.5)")
        except psycopg.OperationalError as exc:
            self.ended_at = time.time()
            self.error = (str(exc).strip().splitlines() or [""])[0][:120]
        finally:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()


def next_minute(after: datetime, margin_s: float = 6.0) -> datetime:
    boundary = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return boundary if (boundary - after).total_seconds() > margin_s else boundary + timedelta(minutes=1)


def request_at(api: TestClient, clock: FrozenClock, rt: Runtime, expires_at: datetime) -> dict[str, Any]:
    clock.set(expires_at - DURATION)
    assert rt.dev_issuer is not None
    token = rt.dev_issuer.mint("bench-bob", ["engineering", "oncall"])  # issued at amber's (moved) clock
    response = api.post(
        "/v1/requests",
        headers={"authorization": f"Bearer {token}"},
        json={"resource": RESOURCE, "level": LEVEL, "reason": "bench: expiry while down", "duration": "10m"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/requests answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    if not body.get("credential"):
        raise RuntimeError(f"the request was not auto-approved with a credential: {body}")
    return body


def job_runs(roles: list[str]) -> dict[str, tuple[datetime, datetime, str]]:
    """role -> (start, end, status) of its cut job's latest run."""
    with pg_admin() as conn:
        rows = conn.execute(
            "SELECT split_part(j.jobname, ':', 2), d.start_time, d.end_time, d.status"
            " FROM cron.job j JOIN cron.job_run_details d ON d.jobid = j.jobid"
            " WHERE starts_with(j.jobname, 'amber-cut:') AND split_part(j.jobname, ':', 2) = ANY(%s)"
            " ORDER BY d.start_time",
            (roles,),
        ).fetchall()
    return {str(role): (start, end, str(status)) for role, start, end, status in rows}


def cleanup_jobs(roles: list[str]) -> None:
    """amber is down, so its jobs (and their run history) are still there: remove them."""
    mine = (
        "SELECT jobid FROM cron.job WHERE starts_with(jobname, 'amber-cut:') AND split_part(jobname, ':', 2) = ANY(%s)"
    )
    with pg_admin() as conn:
        conn.execute(f"DELETE FROM cron.job_run_details WHERE jobid IN ({mine})", (roles,))
        conn.execute(f"WITH mine AS MATERIALIZED ({mine}) SELECT cron.unschedule(jobid) FROM mine", (roles,))


def issue(n: int, workdir: Path, sessions: list[Session]) -> str:
    """Start amber, issue the grants with a live session each (appended to `sessions`), stop amber.

    Returns amber's installation id (its roles carry it).
    """
    (workdir / "policies").mkdir()
    (workdir / "policies" / "bench.cedar").write_text(POLICIES.replace("{{", "{").replace("}}", "}"))
    catalog = workdir / "amber.yaml"
    catalog.write_text(
        textwrap.dedent(CATALOG).format(
            resource=RESOURCE,
            env=TARGET_ENV,
            group=GRANTEE_GROUP,
            level=LEVEL,
            statement_timeout="30s",
            connection_limit=2,
        )
    )
    clock = FrozenClock(datetime.now(UTC))
    settings = Settings(
        env="test",
        state_dir=workdir / "state",
        database_url=f"sqlite:///{workdir / 'state' / 'amber.db'}",
        catalog=catalog,
        public_url="http://amber.bench",
        log_level="WARNING",
    )
    rt = Runtime.build(settings, clock=clock)
    try:
        boundary = next_minute(datetime.now(UTC))
        with TestClient(create_app(rt, run_worker=False)) as api:
            for i in range(n):
                body = request_at(api, clock, rt, boundary + timedelta(seconds=SPREAD_S[i]))
                sessions.append(Session("spread", body["grant"]["role"], body["credential"]["url"], _expiry(body)))
            late_at = (datetime.now(UTC) + timedelta(seconds=LATE_OFFSET_S)).replace(microsecond=0)
            # Its minute starts within 5 s (or has begun): like schedule_for, its job goes to the next minute.
            if late_at.replace(second=0) <= datetime.now(UTC) + timedelta(seconds=5):
                body = request_at(api, clock, rt, late_at)
                sessions.append(Session("late", body["grant"]["role"], body["credential"]["url"], _expiry(body)))
        return rt.installation_id
    finally:
        rt.close()  # amber is down: no API, no worker, no gateway from here on


def _expiry(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(body["grant"]["expires_at"])


def watch(sessions: list[Session]) -> int:
    """Wait (bounded) for pg_cron to end every session; return how many new logins are refused afterwards."""
    for session in sessions:
        session.start()
    print(f"amber stopped at {datetime.now(UTC):%H:%M:%S.%f}Z with {len(sessions)} live direct sessions")
    for session in sessions:
        print(f"  {session.role}: expires {session.expires_at:%H:%M:%S.%f}Z ({session.kind})")
    last = max(s.expires_at for s in sessions)
    deadline = time.time() + max(0.0, (last - datetime.now(UTC)).total_seconds()) + 75
    for session in sessions:
        session.join(max(0.0, deadline - time.time()))
    refused = 0
    for session in sessions:
        try:
            psycopg.connect(session.url, connect_timeout=5).close()
        except psycopg.OperationalError:
            refused += 1
    return refused


def run(n: int) -> dict[str, Any]:
    require_grantee_group()
    target_db = create_database("amber_bench_target")
    sessions: list[Session] = []
    installation = ""
    try:
        with pg_admin(target_db) as conn:
            conn.execute(TARGET_SQL)
        os.environ[TARGET_ENV] = admin_url(target_db)
        with tempfile.TemporaryDirectory(prefix="amber-bench-") as tmp:
            installation = issue(n, Path(tmp), sessions)
        refused = watch(sessions)
        runs = job_runs([s.role for s in sessions])
    finally:
        roles = [s.role for s in sessions]
        cleanup_jobs(roles)
        drop_roles(sorted(set(roles) | set(roles_tagged(installation) if installation else [])), target_db)
        drop_database(target_db)
    return report(sessions, runs, refused)


def report(sessions: list[Session], runs: dict[str, tuple[datetime, datetime, str]], refused: int) -> dict[str, Any]:
    rows = []
    for session in sessions:
        run_at = runs.get(session.role)
        lag = None if session.ended_at is None else round(session.ended_at - session.expires_at.timestamp(), 3)
        into = (
            None
            if run_at is None
            else round((run_at[0] - run_at[0].replace(second=0, microsecond=0)).total_seconds(), 3)
        )
        rows.append(
            {
                "role": session.role,
                "kind": session.kind,
                "expires_at": session.expires_at.isoformat(),
                "lag_s": lag,
                "job_started_after_minute_s": into,
                "job_status": run_at[2] if run_at else None,
                "client_saw": session.error,
            }
        )
        print(
            f"{session.role} ({session.kind}): session ended {lag} s after expiry; pg_cron started the job {into} s "
            f"into its minute ({rows[-1]['job_status']}); client saw: {session.error}"
        )
    spread = [r["lag_s"] for r in rows if r["kind"] == "spread" and r["lag_s"] is not None]
    late = [r["lag_s"] for r in rows if r["kind"] == "late" and r["lag_s"] is not None]
    summary = {
        "benchmark": "expiry_while_down",
        "date": datetime.now(UTC).date().isoformat(),
        "sessions": len(sessions),
        "cut": sum(1 for s in sessions if s.ended_at is not None),
        "logins_refused_after": refused,
        "spread_lag_s_max": max(spread) if spread else None,
        "spread_lag_s_min": min(spread) if spread else None,
        "late_lag_s": late[0] if late else None,
        "grants": rows,
    }
    print(
        f"cut {summary['cut']}/{len(sessions)} sessions with amber down; lag after expiry: "
        f"{summary['spread_lag_s_min']}..{summary['spread_lag_s_max']} s (grants provisioned ahead of their minute), "
        f"{summary['late_lag_s']} s (provisioned inside its expiry's minute); {refused} logins refused afterwards"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=4, help="grants expiring across one minute (1..8)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= len(SPREAD_S):
        parser.error(f"--n must be between 1 and {len(SPREAD_S)}")
    summary = run(args.n)
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["cut"] == summary["sessions"] else 1


if __name__ == "__main__":
    sys.exit(main())
