"""Revocation lag: many grants expire at the same instant; how soon are their live sessions gone?

Set-up (amber served over real HTTP, its real worker thread running, worker_interval_s = 0.1):
- amber's clock is frozen at T0 while `--n` grants are requested (auto-approved, duration 10m), so every
  grant gets the same `expires_at`; as many of them as the server's connection budget allows get a live
  psycopg session as the granted role, each in its own thread running `SELECT pg_sleep(0.5)` in a loop;
- then the clock is switched to run at wall-clock rate such that `now() == expires_at` exactly at a known
  wall instant t0 (1 s later). From t0 on, the worker finds the grants due, expires them in one
  transaction and revokes them in one batch (NOLOGIN, terminate backends, drop roles).

Measured, from t0: for each session, when its client saw the connection end (the error raised by the
blocked query); from a monitor polling every 10 ms, when each role lost LOGIN and when each role was gone,
and when each session's backend left pg_stat_activity; the whole batch (t0 -> last role dropped).
Target (issue): session revocation p99 <= 1 s.

The server configuration is never changed: with max_connections = 100 not all 200 sessions fit, so
all `--n` grants expire together but only `sessions` of them carry a live session; the output says so.

    .venv/bin/python bench/revocation.py [--n 200] [--state sqlite|postgres|both] [--headroom 20]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select

from _common import (
    LEVEL,
    RESOURCE,
    Served,
    connection_budget,
    describe,
    pg_admin,
    require_grantee_group,
    serve_amber,
    summary_ms,
    today,
)
from amber.core.clock import as_utc
from amber.grants.models import Grant

TARGET_P99_MS = 1000.0
LEAD_S = 1.0  # from switching the clock to live until the grants expire
DEADLINE_S = 30.0  # after t0, give up waiting
POLL_S = 0.01
SLEEP_SQL = "SELECT pg_sleep(0.5)"


class SwitchClock:
    """Frozen at `frozen_at` until `go_live`; from then on it runs at wall-clock (monotonic) rate."""

    def __init__(self, frozen_at: datetime) -> None:
        self._frozen_at = frozen_at
        self._live: tuple[datetime, float] | None = None

    def now(self) -> datetime:
        live = self._live
        if live is None:
            return self._frozen_at
        at, mono = live
        return at + timedelta(seconds=time.monotonic() - mono)

    def go_live(self, instant_at: datetime, lead_s: float) -> float:
        """Run live so that now() == instant_at in `lead_s` seconds; return that moment (time.monotonic)."""
        mono = time.monotonic()
        self._live = (instant_at - timedelta(seconds=lead_s), mono)
        return mono + lead_s


class SessionThread(threading.Thread):
    """Keeps one granted role's session busy and records when the server ends it."""

    def __init__(self, role: str, conn: psycopg.Connection[Any], stop: threading.Event, deadline: float) -> None:
        super().__init__(name=f"session-{role}", daemon=True)
        self.role = role
        self.conn = conn
        self.stop = stop
        self.deadline = deadline
        self.ended_at: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                self.conn.execute(SLEEP_SQL)
        except psycopg.Error as exc:
            self.ended_at = time.monotonic()
            self.error = exc.sqlstate or type(exc).__name__
        finally:
            self.conn.close()


class Monitor(threading.Thread):
    """Polls the server (as postgres) for each role's LOGIN attribute, existence and backends."""

    def __init__(self, roles: list[str], session_roles: list[str], deadline: float) -> None:
        super().__init__(name="revocation-monitor", daemon=True)
        self.roles = roles
        self.session_roles = session_roles
        self.deadline = deadline
        self.stop = threading.Event()
        self.nologin_at: dict[str, float] = {}
        self.dropped_at: dict[str, float] = {}
        self.backend_gone_at: dict[str, float] = {}
        self.polls = 0

    def run(self) -> None:
        with pg_admin() as conn:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                rows = conn.execute(
                    "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (self.roles,)
                ).fetchall()
                backends = {
                    row[0]
                    for row in conn.execute(
                        "SELECT usename FROM pg_stat_activity WHERE usename = ANY(%s)", (self.session_roles,)
                    ).fetchall()
                }
                now = time.monotonic()
                self.polls += 1
                can_login = dict(rows)
                for role in self.roles:
                    if role not in can_login:
                        self.dropped_at.setdefault(role, now)
                        self.nologin_at.setdefault(role, now)
                    elif not can_login[role]:
                        self.nologin_at.setdefault(role, now)
                for role in self.session_roles:
                    if role not in backends:
                        self.backend_gone_at.setdefault(role, now)
                if len(self.dropped_at) == len(self.roles):
                    return
                time.sleep(POLL_S)


def request_grants(amber: Served, n: int) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {amber.token('bench-bob', 'engineering', 'oncall')}"}
    grants = []
    with httpx.Client(base_url=amber.url, headers=headers, timeout=10.0) as client:
        for _ in range(n):
            response = client.post(
                "/v1/requests",
                json={"resource": RESOURCE, "level": LEVEL, "reason": "bench: revocation", "duration": "10m"},
            )
            if response.status_code != 201:
                raise RuntimeError(f"POST /v1/requests answered {response.status_code}: {response.text}")
            body = response.json()
            if body.get("status") != "approved" or not body.get("credential"):
                raise RuntimeError(f"the request was not auto-approved with a credential: {body}")
            grants.append(
                {
                    "role": body["grant"]["role"],
                    "url": body["credential"]["url"],
                    "expires_at": body["grant"]["expires_at"],
                }
            )
    return grants


def lags(instants: dict[str, float] | list[float], t0: float) -> list[float]:
    values = instants.values() if isinstance(instants, dict) else instants
    return [max(0.0, at - t0) for at in values]


def open_sessions(grants: list[dict[str, Any]], want: int, stop: threading.Event) -> list[SessionThread]:
    """Log in as the first `want` grants' roles; stop early (and say so) if the server refuses a connection."""
    sessions: list[SessionThread] = []
    deadline = time.monotonic() + 120
    try:
        for grant in grants[:want]:
            try:
                conn = psycopg.connect(grant["url"], autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as exc:  # e.g. someone else took the last connections
                reason = str(exc).strip().splitlines()[-1]
                print(f"NOTE: the server refused session {len(sessions) + 1}, going on with {len(sessions)}: {reason}")
                break
            sessions.append(SessionThread(grant["role"], conn, stop, deadline))
    except BaseException:
        for session in sessions:
            session.conn.close()
        raise
    for session in sessions:
        session.start()
    return sessions


@dataclass
class Observed:
    t0: float
    expiry_at: datetime
    monitor: Monitor
    statuses: dict[str, int]
    deprovisioned: list[datetime]
    login_after: str


def observe(amber: Served, clock: SwitchClock, grants: list[dict[str, Any]], sessions: list[SessionThread]) -> Observed:
    """Let the grants expire at a known instant t0 and watch what the worker does."""
    with amber.rt.uow() as db:
        (expiry_at,) = {as_utc(at) for at in db.scalars(select(Grant.expires_at))}
    monitor = Monitor([g["role"] for g in grants], [s.role for s in sessions], time.monotonic() + LEAD_S + DEADLINE_S)
    monitor.start()
    t0 = clock.go_live(expiry_at, LEAD_S)
    give_up = t0 + DEADLINE_S
    while time.monotonic() < give_up:
        if not monitor.is_alive() and all(s.ended_at is not None for s in sessions):
            break
        time.sleep(0.05)
    monitor.stop.set()
    monitor.join(5)
    while True:  # amber records deprovisioned_at in its own transaction after the last role is dropped
        with amber.rt.uow() as db:
            rows = list(db.execute(select(Grant.status, Grant.deprovisioned_at)))
        if all(at is not None for _, at in rows) or time.monotonic() >= give_up:
            break
        time.sleep(0.05)
    statuses: dict[str, int] = {}
    for status, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    login_after = "refused"
    try:
        with psycopg.connect(grants[-1]["url"], connect_timeout=5):
            login_after = "ACCEPTED"
    except psycopg.OperationalError:
        pass
    deprovisioned = [as_utc(at) for _, at in rows if at is not None]
    return Observed(t0, expiry_at, monitor, statuses, deprovisioned, login_after)


def run_store(state: str, n: int, headroom: int) -> dict[str, Any]:
    print(f"\n== state store: {state} ==")
    budget = connection_budget()
    fits = budget.available(headroom)
    print(
        f"server: max_connections={budget.max_connections}, superuser_reserved={budget.superuser_reserved}, "
        f"client backends in use={budget.in_use}; keeping {headroom} spare -> room for {fits} sessions"
    )
    if fits < n:
        print(f"NOTE: {n} sessions do not fit: all {n} grants expire together, {fits} of them with a live session")
    clock = SwitchClock(datetime.now(UTC).replace(microsecond=0))
    sessions: list[SessionThread] = []
    stop = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="amber-bench-") as tmp,
        serve_amber(state, Path(tmp), clock=clock, connection_limit=1, statement_timeout="30s") as amber,
    ):
        try:
            started = time.monotonic()
            grants = request_grants(amber, n)
            expiries = {g["expires_at"] for g in grants}
            if len(expiries) != 1:
                raise RuntimeError(f"the grants do not share one expiry: {sorted(expiries)[:3]}...")
            print(f"requested {n} grants in {time.monotonic() - started:.1f} s, all expiring at {expiries.pop()}")
            sessions = open_sessions(grants, min(n, fits), stop)
            print(f"{len(sessions)} sessions logged in as their grant's role, each running {SLEEP_SQL!r} in a loop")
            seen = observe(amber, clock, grants, sessions)
        finally:
            stop.set()
            for session in sessions:
                session.join(2)
    return report(state, n, budget.max_connections, sessions, seen)


def report(state: str, n: int, max_connections: int, sessions: list[SessionThread], seen: Observed) -> dict[str, Any]:
    t0, monitor = seen.t0, seen.monitor
    ended = [s.ended_at for s in sessions if s.ended_at is not None]
    early = [at for at in ended if at < t0]
    session_lag = summary_ms(lags(ended, t0))
    backend_lag = summary_ms(lags(monitor.backend_gone_at, t0))
    nologin_lag = summary_ms(lags(monitor.nologin_at, t0))
    dropped_lag = summary_ms(lags(monitor.dropped_at, t0))
    dropped = lags(monitor.dropped_at, t0)
    batch_ms = round(max(dropped) * 1000, 1) if len(dropped) == n else None
    amber_batch_ms = (
        round((max(seen.deprovisioned) - seen.expiry_at).total_seconds() * 1000, 1)
        if len(seen.deprovisioned) == n
        else None
    )
    errors: dict[str, int] = {}
    for session in sessions:
        if session.ended_at is not None:
            errors[session.error or "?"] = errors.get(session.error or "?", 0) + 1
    print(
        f"after t0: {len(ended)}/{len(sessions)} sessions ended (SQLSTATEs {errors}), {len(early)} before t0;"
        f" {len(dropped)}/{n} roles dropped; grant states {seen.statuses};"
        f" a login with an expired grant's password was {seen.login_after}"
    )
    print(describe("session ended (client sees it)", session_lag))
    print(describe("backend gone (pg_stat_activity)", backend_lag))
    print(describe("role lost LOGIN", nologin_lag))
    print(describe("role dropped", dropped_lag))
    print(
        f"whole batch of {n}, t0 -> last role dropped: {batch_ms} ms (amber's own record, t0 -> last "
        f"deprovisioned_at: {amber_batch_ms} ms); monitor polled {monitor.polls} times"
    )
    ok = bool(sessions) and len(ended) == len(sessions) and not early and session_lag["p99_ms"] <= TARGET_P99_MS
    print(f"target: session revocation p99 <= {TARGET_P99_MS:g} ms {'met' if ok else 'MISSED'}")
    return {
        "state": state,
        "grants": n,
        "sessions": len(sessions),
        "sessions_ended": len(ended),
        "sessions_ended_before_t0": len(early),
        "max_connections": max_connections,
        "p50_ms": session_lag["p50_ms"],
        "p99_ms": session_lag["p99_ms"],
        "max_ms": session_lag["max_ms"],
        "backend_gone_p99_ms": backend_lag["p99_ms"],
        "nologin_p99_ms": nologin_lag["p99_ms"],
        "role_dropped_p50_ms": dropped_lag["p50_ms"],
        "role_dropped_p99_ms": dropped_lag["p99_ms"],
        "roles_dropped": len(dropped),
        "batch_ms": batch_ms,
        "amber_batch_ms": amber_batch_ms,
        "login_after_expiry": seen.login_after,
        "target_p99_met": ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="grants that expire together (default 200)")
    parser.add_argument("--state", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--headroom", type=int, default=20, help="connections left free for amber and others (default 20)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 500 or args.headroom < 0:
        parser.error("--n must be 1..500 (amber expires up to 500 grants per tick) and --headroom >= 0")
    require_grantee_group()
    stores = ["sqlite", "postgres"] if args.state == "both" else [args.state]
    print(f"amber revocation benchmark: {args.n} grants expiring at one instant, worker interval 0.1 s")
    results = {state: run_store(state, args.n, args.headroom) for state in stores}
    figures: dict[str, Any] = {"bench": "revocation", "date": today(), "n": args.n}
    if len(stores) == 1:
        figures.update(results[stores[0]])
    else:
        figures["stores"] = results
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
