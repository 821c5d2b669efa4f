"""Expiry holds while amber is down: the database ends a direct session at its grant's expiry (pg_cron).

pg_cron fires at minute boundaries in real time; these tests run the grant's job's stored command themselves, as
pg_cron would (as the job's user, in the job's database, one simple query). bench/expiry_while_down.py waits for
pg_cron itself and measures how long after expiry the session died.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select

from amber import audit
from amber.grants import Grant
from tests.conftest import Amber, build_runtime, connect_as, drop_cut_jobs, pg_admin

pytestmark = pytest.mark.postgres


def _jobs(role: str) -> list[tuple[str, str, str, str]]:
    """(schedule, command, database, username) of the role's cut jobs (pg_cron keeps them in `postgres`)."""
    with pg_admin() as conn:
        rows = conn.execute(
            "SELECT schedule, command, database, username FROM cron.job WHERE starts_with(jobname, %s)",
            (f"amber-cut:{role}:",),
        ).fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def _run_like_pg_cron(role: str) -> datetime:
    """Run the role's cut job as pg_cron does; return the database's clock when it finished."""
    ((_, command, database, username),) = _jobs(role)
    with psycopg.connect(
        f"postgresql://127.0.0.1:5432/{database}", user=username, autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(command)  # no parameters: one simple query, like pg_cron's PQsendQuery
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    finished: datetime = row[0]
    return finished


def _schedule_of(expires_at: datetime) -> str:
    at = expires_at.astimezone(UTC)
    return f"{at.minute} {at.hour} {at.day} {at.month} *"


def test_a_direct_session_is_cut_by_the_database_while_amber_is_down(
    amber: Amber, state_url: str, catalog_path: Path, tmp_path: Path
) -> None:
    # NOTE: the database's clock cannot be injected. amber's clock is set so that a 1-minute grant expires ~3 s
    # from now in real time; the job's command (run at once, as pg_cron would) waits in the database until then.
    amber.clock.set(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=57))
    body = amber.request("alice", "engineering", "oncall", duration="1m")
    role, grant_id = body["grant"]["role"], body["grant"]["id"]
    expires_at = datetime.fromisoformat(body["grant"]["expires_at"])
    try:
        ((schedule, _, _, _),) = _jobs(role)
        assert schedule in {_schedule_of(expires_at), _schedule_of(expires_at + timedelta(minutes=1))}
        session = connect_as(body["credential"]["url"])
        assert session.execute("SELECT count(*) FROM public.customers").fetchone() == (10,)

        amber.rt.close()  # amber is down: no API, no worker, no gateway
        finished = _run_like_pg_cron(role)

        assert expires_at <= finished < expires_at + timedelta(seconds=2)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        session.close()
        with pytest.raises(psycopg.OperationalError):
            connect_as(body["credential"]["url"])
        with pg_admin() as conn:
            assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone() == (False,)

        # amber comes back: the worker expires the grant, drops the role and removes its job.
        amber.clock.set(datetime.now(UTC))
        restarted = build_runtime(state_url, catalog_path, tmp_path, amber.clock)
        try:
            restarted.worker.startup()
            with restarted.uow() as db:
                grant = db.scalar(select(Grant).where(Grant.id == grant_id))
                assert grant is not None
                assert (grant.status, grant.deprovisioned_at is not None) == ("expired", True)
                assert audit.verify(db).ok
        finally:
            restarted.close()
        assert not amber.role_exists(role)
        assert _jobs(role) == []
    finally:
        drop_cut_jobs([role])


def test_a_grant_that_starts_later_gets_its_cut_when_it_starts(amber: Amber) -> None:
    start = amber.clock.now() + timedelta(minutes=10)
    response = amber.api.post(
        "/v1/requests",
        headers=amber.headers("alice", "engineering", "oncall"),
        json={
            "resource": "orders-db",
            "level": "read-only",
            "reason": "the 10:00 migration",
            "duration": "30m",
            "start": start.isoformat(),
        },
    )
    assert response.status_code == 201, response.text
    grant: dict[str, Any] = response.json()["grant"]
    assert grant["status"] == "issued"
    try:
        amber.tick()
        assert _jobs(grant["role"]) == []  # nothing on the target before the start

        amber.clock.set(start)
        amber.tick()
        activated = amber.api.get(f"/v1/grants/{grant['id']}", headers=amber.headers("alice", "engineering")).json()
        assert activated["status"] == "active"
        ((schedule, command, _, _),) = _jobs(grant["role"])
        expires_at = datetime.fromisoformat(activated["expires_at"])
        assert expires_at == start + timedelta(minutes=30)
        assert schedule == _schedule_of(expires_at)
        assert f"'{expires_at.astimezone(UTC).isoformat()}'" in command
    finally:
        drop_cut_jobs([grant["role"]])


def test_revoke_and_reconcile_remove_cut_jobs(amber: Amber) -> None:
    revoked = amber.request("alice", "engineering", "oncall")["grant"]
    orphaned = amber.request("bob", "engineering", "oncall")["grant"]
    live = amber.request("carol", "engineering", "oncall")["grant"]
    roles = [revoked["role"], orphaned["role"], live["role"]]
    try:
        assert all(len(_jobs(role)) == 1 for role in roles)

        response = amber.api.post(
            f"/v1/grants/{revoked['id']}/revoke",
            headers=amber.headers("alice", "engineering"),
            json={"reason": "done"},
        )
        assert response.status_code == 200, response.text
        assert _jobs(revoked["role"]) == []

        # An operator drops a role by hand (or amber died between dropping it and removing its job).
        with pg_admin(amber.target_db) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(orphaned["role"])))
        assert len(_jobs(orphaned["role"])) == 1
        # ...and one removes a live grant's job by hand.
        (live_job,) = _jobs(live["role"])
        with pg_admin() as conn:
            conn.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE starts_with(jobname, %s)",
                (f"amber-cut:{live['role']}:",),
            )
        amber.tick()  # reconciles: the orphan's job goes, the live grant's job comes back as it was
        assert _jobs(orphaned["role"]) == []
        assert _jobs(live["role"]) == [live_job]
    finally:
        drop_cut_jobs(roles)
