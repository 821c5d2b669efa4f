"""The expiry cut in the database (pg_cron) and pgaudit for grant roles, against the real local PostgreSQL.

scripts/services.sh loads pg_cron (jobs in database `postgres`) and pgaudit. pg_cron fires only at minute
boundaries in real time, so these tests run a job's stored command themselves, as pg_cron would: as the job's
user, in the job's database, sent as one simple query. bench/expiry_while_down.py waits for pg_cron itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from amber.provisioners.base import ProvisionerError, RevokeSpec
from amber.provisioners.postgres import PostgresProvisioner
from amber.provisioners.postgres_cron import (
    ExpiryCuts,
    job_name,
    parse_job_name,
    read_cron_database,
    schedule_for,
)

from .conftest import OWNER_TAG, SERVER_URL, TargetDb, admin_connect

pytestmark = pytest.mark.postgres

PASSWORD = "amb_pg_test_" + secrets.token_hex(12)
PG_LOG = Path(os.environ.get("AMBER_TEST_PG_LOG", "/var/log/postgresql/postgresql-15-main.log"))


def _cron_db() -> str:
    with admin_connect("postgres") as conn:
        row = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()
    if not row or not row[0]:
        pytest.fail("pg_cron is not loaded in the local PostgreSQL (run `bash scripts/services.sh`)")
    return str(row[0])


def _jobs(role: str) -> list[tuple[str, str, str, str, str, bool]]:
    """(jobname, schedule, command, database, username, active) of the cut jobs of `role`, any owner."""
    with admin_connect(_cron_db()) as conn:
        rows = conn.execute(
            "SELECT jobname, schedule, command, database, username, active FROM cron.job"
            " WHERE starts_with(jobname, %s) ORDER BY jobname",
            [f"amber-cut:{role}:"],
        ).fetchall()
    return [(str(a), str(b), str(c), str(d), str(e), bool(f)) for a, b, c, d, e, f in rows]


def _run_like_pg_cron(role: str) -> float:
    """Run the role's cut job's stored command as pg_cron does; return the database's clock when it finished."""
    ((_, _, command, database, username, _),) = _jobs(role)
    with psycopg.connect(SERVER_URL, dbname=database, user=username, autocommit=True, connect_timeout=5) as conn:
        conn.execute(command)  # no parameters: one simple query, like pg_cron's PQsendQuery
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
    assert row is not None
    return float(row[0])


def _can_login(target_db: TargetDb, role: str) -> bool:
    with target_db.admin() as conn:
        row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    return bool(row and row[0])


def test_provision_schedules_the_cut_for_the_minute_of_expiry(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    spec = target_db.spec(expires_in=timedelta(hours=2))
    provisioner.provision(spec)

    ((name, schedule, command, database, username, active),) = _jobs(spec.role_name)
    at = spec.expires_at.astimezone(UTC)
    assert name == job_name(spec.role_name, spec.grant_id) == f"amber-cut:{spec.role_name}:{spec.grant_id}"
    assert schedule == f"{at.minute} {at.hour} {at.day} {at.month} *"
    assert (database, username, active) == (_cron_db(), "postgres", True)
    assert command.startswith("SET statement_timeout = 0; DO $amber_cut$")
    assert f'ALTER ROLE "{spec.role_name}" NOLOGIN' in command
    assert f"'amber grant {spec.grant_id} owner {spec.owner_tag}'" in command
    assert f"'{at.isoformat()}'" in command

    # Provisioning again (idempotent) keeps one job, brought up to date with the new expiry.
    later = target_db.spec(role_name=spec.role_name, grant_id=spec.grant_id, expires_in=timedelta(hours=5))
    provisioner.provision(later)
    ((_, schedule, command, _, _, _),) = _jobs(spec.role_name)
    at = later.expires_at.astimezone(UTC)
    assert schedule == f"{at.minute} {at.hour} {at.day} {at.month} *"
    assert f"'{at.isoformat()}'" in command


def test_an_expiry_too_close_for_its_own_minute_goes_to_the_next_one() -> None:
    now = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert schedule_for(now + timedelta(seconds=20), now) == "0 0 1 1 *"  # 23:59 has begun: next minute
    assert schedule_for(now - timedelta(seconds=90), now) == "0 0 1 1 *"  # already past: at once
    assert schedule_for(now + timedelta(minutes=3), now) == "2 0 1 1 *"  # 00:02:30 -> the 00:02 minute
    assert parse_job_name("amber-cut:amber_g_ab:grt:with:colons") == ("amber_g_ab", "grt:with:colons")
    assert parse_job_name("amber-cut:amber_g_ab") is None
    assert parse_job_name("someone-else") is None


def test_revoke_removes_the_cut_job(provisioner: PostgresProvisioner, target_db: TargetDb) -> None:
    kept, revoked = target_db.spec(), target_db.spec()
    provisioner.provision(kept)
    provisioner.provision(revoked)
    assert _jobs(revoked.role_name)

    provisioner.revoke([RevokeSpec(revoked.grant_id, revoked.role_name)])
    assert _jobs(revoked.role_name) == []
    assert len(_jobs(kept.role_name)) == 1
    provisioner.revoke([RevokeSpec(revoked.grant_id, revoked.role_name)])  # idempotent


def test_sweep_removes_the_jobs_of_roles_that_are_gone(provisioner: PostgresProvisioner, target_db: TargetDb) -> None:
    live, dropped = target_db.spec(), target_db.spec()
    provisioner.provision(live)
    provisioner.provision(dropped)
    with target_db.admin() as conn:  # e.g. an operator dropped it, or amber died between drop and unschedule
        conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(dropped.role_name)))

    assert provisioner.sweep(OWNER_TAG) == [job_name(dropped.role_name, dropped.grant_id)]
    assert _jobs(dropped.role_name) == []
    assert len(_jobs(live.role_name)) == 1
    assert provisioner.sweep(OWNER_TAG) == []


def test_sweep_puts_back_a_job_removed_by_hand_for_its_own_installations_roles_only(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    ours = target_db.spec(expires_in=timedelta(hours=3))
    theirs = dataclasses.replace(target_db.spec(), owner_tag="another_installation")
    provisioner.provision(ours)
    provisioner.provision(theirs)
    (original,) = _jobs(ours.role_name)
    with admin_connect(_cron_db()) as conn:  # a superuser of the target removes both jobs by hand
        for spec in (ours, theirs):
            conn.execute("SELECT cron.unschedule(%s)", [job_name(spec.role_name, spec.grant_id)])

    assert provisioner.sweep(OWNER_TAG) == [f"restored {job_name(ours.role_name, ours.grant_id)}"]
    assert _jobs(ours.role_name) == [original]  # the same schedule and command, from the role's own VALID UNTIL
    assert _jobs(theirs.role_name) == []  # another installation's reconciler restores its own
    assert provisioner.sweep(OWNER_TAG) == []


def test_the_cut_ends_a_live_session_at_expiry_and_refuses_new_logins(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    # NOTE: the database's clock cannot be injected: the grant expires ~2 s from now in real time, and the job's
    # command (run now, as pg_cron would) waits in the database until then. That wait is the test's only sleep.
    spec = target_db.spec(expires_in=timedelta(seconds=2))
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    session = target_db.connect_as(spec.role_name, PASSWORD)
    try:
        assert session.execute("SELECT count(*) FROM app.orders").fetchone() == (2,)
        finished = _run_like_pg_cron(spec.role_name)
        assert spec.expires_at.timestamp() <= finished < spec.expires_at.timestamp() + 2
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()
    assert not _can_login(target_db, spec.role_name)
    with pytest.raises(psycopg.OperationalError):
        target_db.connect_as(spec.role_name, PASSWORD)


def test_the_cut_does_nothing_long_before_expiry_or_to_a_role_that_is_not_the_grants(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    # A cron date comes round every year: a job that fires a year early must leave the grant alone.
    early = target_db.spec(expires_in=timedelta(hours=2))
    provisioner.provision(early)
    provisioner.set_password(early, PASSWORD)
    with target_db.connect_as(early.role_name, PASSWORD) as session:
        _run_like_pg_cron(early.role_name)
        assert session.execute("SELECT 1").fetchone() == (1,)
    assert _can_login(target_db, early.role_name)

    # A job whose role now carries another grant's comment leaves that role alone.
    other = target_db.spec(expires_in=timedelta(seconds=-5))
    provisioner.provision(other)
    with target_db.admin() as conn:
        conn.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(other.role_name), sql.Literal(f"amber grant grt_someone_else owner {other.owner_tag}")
            )
        )
    _run_like_pg_cron(other.role_name)
    assert _can_login(target_db, other.role_name)


def test_check_reports_that_expiry_holds_in_the_database_and_roles_whose_job_is_gone(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    covered, stripped = target_db.spec(), target_db.spec()
    provisioner.provision(covered)
    provisioner.provision(stripped)
    codes = {f.code: f for f in provisioner.check()}
    assert codes["expiry-cut-pg-cron"].severity == "ok"
    assert f"in database {_cron_db()}" in codes["expiry-cut-pg-cron"].message
    assert codes["pgaudit-per-role"].severity == "ok"
    assert "expiry-cut-missing" not in codes

    with admin_connect(_cron_db()) as conn:  # a superuser of the target removes one job by hand
        conn.execute("SELECT cron.unschedule(%s)", [job_name(stripped.role_name, stripped.grant_id)])
    (missing,) = [f for f in provisioner.check() if f.code == "expiry-cut-missing"]
    assert missing.severity == "warning"
    assert stripped.role_name in missing.message
    assert covered.role_name not in missing.message


@pytest.fixture
def weak_admin(target_db: TargetDb) -> Iterator[str]:
    """A non-superuser admin role with CREATEROLE, and nothing on schema cron yet."""
    name = f"amber_t_admin_{secrets.token_hex(4)}"
    with admin_connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin_connect(_cron_db()) as conn:
            conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA cron FROM {}").format(sql.Identifier(name)))
        with admin_connect("postgres") as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_check_says_plainly_when_expiry_does_not_hold_while_amber_is_down(target_db: TargetDb, weak_admin: str) -> None:
    dsn = psycopg.conninfo.make_conninfo(target_db.admin_dsn, user=weak_admin)

    def cron_database() -> tuple[str | None, bool]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return read_cron_database(conn)

    def finding() -> tuple[str, str]:
        # What PostgresProvisioner.check() adds (the rest of check needs more than this admin may read).
        cuts = ExpiryCuts(
            dsn,
            where="test",
            target_database=target_db.name,
            database_name=cron_database,
            safe_error=lambda exc: ProvisionerError(str(exc)),
            connect_timeout_s=5,
        )
        try:
            (found,) = cuts.findings()
        finally:
            cuts.close()
        return found.code, found.message

    code, message = finding()
    assert code == "expiry-cut-unavailable"
    assert f"{weak_admin} may not use schema cron" in message
    assert "a direct session can outlive its grant's expiry while amber is down" in message

    with admin_connect(_cron_db()) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(sql.Identifier(weak_admin)))
    code, message = finding()
    assert code == "expiry-cut-unavailable"
    assert "needs CREATEROLE and membership of pg_signal_backend" in message

    with admin_connect("postgres") as conn:
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(weak_admin)))
    code, message = finding()
    assert code == "expiry-cut-pg-cron"
    assert f"jobs run as {weak_admin}" in message


def test_check_runs_whole_for_an_admin_that_is_not_a_superuser(target_db: TargetDb, weak_admin: str) -> None:
    """`resource check` reads only what a CREATEROLE admin may read (pg_user_mappings, not pg_user_mapping)."""
    dsn = psycopg.conninfo.make_conninfo(target_db.admin_dsn, user=weak_admin)
    with PostgresProvisioner(dsn) as provisioner:
        codes = {f.code for f in provisioner.check()}
    assert "expiry-cut-unavailable" in codes


def test_provisioning_without_a_usable_pg_cron_still_works_and_schedules_nothing(
    target_db: TargetDb, weak_admin: str
) -> None:
    spec = target_db.spec(schemas=())  # this admin may grant nothing on the target's schemas; not the point here
    dsn = psycopg.conninfo.make_conninfo(target_db.admin_dsn, user=weak_admin)
    with PostgresProvisioner(dsn) as provisioner:
        provisioner.provision(spec)
    assert _can_login(target_db, spec.role_name)
    assert _jobs(spec.role_name) == []


def test_pgaudit_records_a_direct_sessions_statements_and_the_role_cannot_stop_it(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    spec = target_db.spec()
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    marker = f"amber_audit_{secrets.token_hex(6)}"
    with target_db.connect_as(spec.role_name, PASSWORD) as session:
        session.execute("SET default_transaction_read_only = off")  # any role may; privileges are the boundary
        for attempt in ("SET pgaudit.log = 'none'", f"ALTER ROLE {spec.role_name} SET pgaudit.log = 'none'"):
            with pytest.raises(errors.InsufficientPrivilege):
                session.execute(attempt)
        session.execute(sql.SQL("SELECT item AS {} FROM app.orders WHERE id = %s").format(sql.Identifier(marker)), [2])
    with pytest.raises(psycopg.OperationalError, match="permission denied to set parameter"):
        psycopg.connect(
            host=target_db.host,
            port=target_db.port,
            dbname=target_db.name,
            user=spec.role_name,
            password=PASSWORD,
            options="-c pgaudit.log=none",
            connect_timeout=5,
        )

    # The server writes its log asynchronously to the file: give it a moment (bounded).
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline and not lines:
        try:
            text = PG_LOG.read_text(errors="replace")
        except OSError as exc:
            pytest.fail(f"cannot read the PostgreSQL log {PG_LOG} (set AMBER_TEST_PG_LOG): {exc}")
        lines = [line for line in text.splitlines() if marker in line and "AUDIT: SESSION" in line]
        if not lines:
            time.sleep(0.05)
    assert lines, f"no pgaudit line for {marker} in {PG_LOG}"
    # e.g. `... amber_g_x@amber_t_y LOG:  AUDIT: SESSION,2,1,READ,SELECT,,,"SELECT item AS ""amber_audit_z"" ...",2`
    assert f"{spec.role_name}@{target_db.name} " in lines[0]
    assert re.search(rf'AUDIT: SESSION,\d+,\d+,READ,SELECT,,,"SELECT item AS ""{marker}"" FROM app.orders', lines[0])
    assert lines[0].endswith('WHERE id = $1",2')  # pgaudit.log_parameter: the bound value is recorded too
