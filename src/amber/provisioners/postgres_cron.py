"""The database-side expiry cut for PostgreSQL targets: a pg_cron job per grant that ends the grant's sessions at
its expiry, whether or not amber is running (docs/decisions/0018-expiry-cut-in-the-database.md).

It owns, in the database pg_cron keeps its jobs in (`cron.database_name`, `postgres` by default):
- one job per provisioned grant, named `amber-cut:<role name>:<grant id>`, owned by amber's admin role, scheduled
  (in UTC) for the minute that holds the grant's expiry. The job sleeps until the expiry, then, if the role is
  still amber's role for that grant (name *and* comment), sets it NOLOGIN and terminates every backend it has;
- nothing else: no table, no function; the job's command says everything it does (`SELECT command FROM cron.job`).

The invariant it protects: a session of a grant's role ends within a minute of the grant's expiry even while
amber (API, worker, gateway) is stopped. `VALID UNTIL` already refuses new password logins at expiry; this job
ends the sessions that were open and blocks logins that do not use a password (`trust`, certificates), which
`VALID UNTIL` does not cover.

Where pg_cron is not loaded, or amber's admin role cannot use it, nothing is scheduled: `check` says so plainly
(a direct session can then outlive its expiry until amber's worker runs again). A pg_cron that amber *can* use
but that refuses a job is a provisioning error (fail closed; the worker retries).

All SQL is built with `psycopg.sql`; the job's command is rendered by the driver and passed to
`cron.schedule` as a bound parameter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from amber.provisioners.base import Finding, GrantSpec, ProvisionerError

_T = TypeVar("_T")
_Conn = psycopg.Connection[TupleRow]

JOB_PREFIX = "amber-cut:"
# How early before the expiry the job may wake and still wait for it (pg_cron fires a little after the minute
# starts; anything earlier is a cron date coming round again in an earlier year, and the job does nothing).
_WAIT_WINDOW = timedelta(seconds=70)
# A job registered less than this before its minute starts may miss it: it goes to the next minute instead.
_REGISTER_MARGIN = timedelta(seconds=5)
_PROBE_TTL_S = 60.0
_DO_TAG = "$amber_cut$"
_DEFAULT_CRON_DATABASE = "postgres"
_ADMIN_STATEMENT_TIMEOUT = "30s"
_ADMIN_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class CronStatus:
    """Whether amber can schedule expiry cuts on this server, and if not, why (safe to show)."""

    database: str | None  # cron.database_name, or None when pg_cron is not loaded
    usable: bool
    reason: str
    version: str | None = None


def read_cron_database(conn: _Conn) -> tuple[str | None, bool]:
    """(`cron.database_name` or None when pg_cron is not loaded, whether the setting could be read at all).

    The setting is superuser-only (or pg_read_all_settings) even with missing_ok.
    """
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None, False
    return (str(row[0]) if row and row[0] else None), True


def job_name(role_name: str, grant_id: str) -> str:
    """`amber-cut:<role>:<grant id>`: role names hold no colon, so the grant id is everything after the second."""
    return f"{JOB_PREFIX}{role_name}:{grant_id}"


def parse_job_name(name: str) -> tuple[str, str] | None:
    """(role name, grant id) from an amber cut job's name, or None when it is not one."""
    if not name.startswith(JOB_PREFIX):
        return None
    role, sep, grant_id = name[len(JOB_PREFIX) :].partition(":")
    return (role, grant_id) if sep and role and grant_id else None


def schedule_for(expires_at: datetime, db_now: datetime) -> str:
    """The cron schedule (pg_cron 1.4 reads it in UTC) of the minute that holds `expires_at`.

    The minute is the one the expiry falls in (the job then waits for the exact instant), or the next one when
    that minute starts too soon after `db_now` for pg_cron to see the job in time (the job then cuts at once).
    """
    at = expires_at.astimezone(UTC)
    minute = at.replace(second=0, microsecond=0)
    if minute <= db_now.astimezone(UTC) + _REGISTER_MARGIN:
        minute = max(minute, db_now.astimezone(UTC).replace(second=0, microsecond=0)) + timedelta(minutes=1)
    return f"{minute.minute} {minute.hour} {minute.day} {minute.month} *"


def cut_command(role_name: str, role_comment: str, expires_at: datetime, context: _Conn) -> str:
    """The job's command: wait for the expiry, then block the role's logins and end its sessions.

    - Runs only within `_WAIT_WINDOW` of the expiry: a cron date recurs every year, and an expiry more than a
      year ahead matches an earlier year's date first.
    - Touches the role only if its name and comment still say it is amber's role for this grant.
    - `statement_timeout` is switched off for this one command: the wait may take up to a minute.
    - NOLOGIN comes first; if the job's user may not alter the role, the sessions are still ended.
    - Terminates in a loop (bounded, ~5 s) until no backend of the role is left: a login that passed its checks
      just before NOLOGIN shows up a moment later. pg_stat_activity is a per-transaction snapshot, hence the clear.
    Does NOT cut a role whose comment changed (a role's comment needs CREATEROLE; the role itself cannot).
    """
    role = sql.Literal(role_name)
    body = sql.SQL(
        "DECLARE expires_at constant timestamptz := {expires};\n"
        "BEGIN\n"
        "  IF expires_at - clock_timestamp() > {window}::interval THEN RETURN; END IF;\n"
        "  PERFORM pg_catalog.pg_sleep_until(expires_at);\n"
        "  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {role}\n"
        "      AND pg_catalog.shobj_description(oid, 'pg_authid') = {comment}) THEN RETURN; END IF;\n"
        "  BEGIN\n"
        "    ALTER ROLE {ident} NOLOGIN;\n"
        "  EXCEPTION WHEN insufficient_privilege THEN\n"
        "    RAISE WARNING 'amber cut: cannot set % NOLOGIN: %', {role}, SQLERRM;\n"
        "  END;\n"
        "  FOR attempt IN 1..50 LOOP\n"
        "    PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = {role};\n"
        "    PERFORM pg_catalog.pg_stat_clear_snapshot();\n"
        "    EXIT WHEN NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE usename = {role});\n"
        "    PERFORM pg_catalog.pg_sleep(0.1);\n"
        "  END LOOP;\n"
        "END"
    ).format(
        expires=sql.Literal(expires_at.astimezone(UTC).isoformat()),
        window=sql.Literal(f"{int(_WAIT_WINDOW.total_seconds())} seconds"),
        role=role,
        comment=sql.Literal(role_comment),
        ident=sql.Identifier(role_name),
    )
    text = body.as_string(context)
    # Dollar-quoted for a readable cron.job; a standard literal if the body ever held the tag (from a grant id).
    quoted = f"{_DO_TAG}\n{text}\n{_DO_TAG}" if _DO_TAG not in text else sql.Literal(text).as_string(context)
    return f"SET statement_timeout = 0; DO {quoted}"


class ExpiryCuts:
    """Schedules, removes and sweeps the cut jobs of one provisioner, over its own connection to pg_cron's database.

    `database_name` runs `read_cron_database` on the target through the provisioner's connection. `safe_error`
    turns a driver error into a ProvisionerError that names the target but no DSN or password. Calls are
    serialised by a lock.
    """

    def __init__(
        self,
        admin_dsn: str,
        *,
        where: str,
        target_database: str,
        database_name: Callable[[], tuple[str | None, bool]],
        safe_error: Callable[[psycopg.Error], ProvisionerError],
        connect_timeout_s: int,
    ) -> None:
        self._admin_dsn = admin_dsn
        self._where = where
        self._target_database = target_database
        self._database_name = database_name
        self._safe_error = safe_error
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        self._conn_db: str | None = None
        self._status: tuple[float, CronStatus] | None = None

    # --- what the provisioner calls -----------------------------------------------------------------------

    def status(self, *, fresh: bool = False) -> CronStatus:
        """Whether pg_cron is usable by amber's admin role here; probed at most once a minute unless `fresh`."""
        cached = self._status
        if not fresh and cached is not None and time.monotonic() - cached[0] < _PROBE_TTL_S:
            return cached[1]
        status = self._probe()
        self._status = (time.monotonic(), status)
        return status

    def schedule(self, spec: GrantSpec, role_comment: str) -> bool:
        """Register (or update) the grant's cut job; False when pg_cron is not usable here (nothing scheduled).

        Idempotent: pg_cron keeps one job per (name, user) and `cron.schedule` with a known name updates it.
        Call it after the role is committed: `sweep` relies on a job never existing before its role.
        """
        status = self.status()
        if not status.usable or status.database is None:
            return False

        def action(conn: _Conn) -> None:
            _schedule(conn, spec.role_name, spec.grant_id, role_comment, spec.expires_at)

        try:
            self._run(status.database, action)
        except ProvisionerError:
            self._status = None  # probe again next time: the failure may be a pg_cron that went away
            raise
        return True

    def unschedule(self, names: Iterable[str]) -> list[str]:
        """Remove these cut jobs of amber's admin role; missing ones are fine. Returns the names removed."""
        wanted = sorted(set(names))
        status = self.status()
        if not wanted or not status.usable or status.database is None:
            return []

        def action(conn: _Conn) -> list[str]:
            return _unschedule(conn, wanted)

        return self._run(status.database, action)

    def sweep(self, owner_tag: str, parse_comment: Callable[[str | None], tuple[str, str] | None]) -> list[str]:
        """Remove cut jobs that have nothing left to cut: their role is gone, or no longer amber's for that grant.

        Reads the jobs first and the roles second: a job is registered only after its role is committed, so a
        job seen here whose role is not seen afterwards really lost its role (no race with a provision). A job
        whose role still exists is left alone even if its grant ended: the reconciler revokes that role, and
        revoking removes the job.

        Then puts back the job of every role of installation `owner_tag` on the target database that can still
        log in before its `VALID UNTIL` and has none (removed by hand, or provisioned before cuts existed), from
        the role's own name, comment and `VALID UNTIL`; a provision running meanwhile schedules the same job
        (same name: one job).
        Returns the names removed and, prefixed `restored `, the names put back.
        """
        status = self.status()
        if not status.usable or status.database is None:
            return []

        def action(conn: _Conn) -> list[str]:
            names = [
                str(name)
                for (name,) in conn.execute(
                    "SELECT jobname FROM cron.job WHERE username = current_user AND starts_with(jobname, %s)",
                    [JOB_PREFIX],
                ).fetchall()
            ]
            parsed = {name: parse_job_name(name) for name in names}
            roles = {p[0] for p in parsed.values() if p is not None}
            comments: dict[str, str | None] = dict(
                conn.execute(
                    "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = ANY(%s)",
                    [sorted(roles)],
                ).fetchall()
            )
            orphans = []
            for name, job in parsed.items():
                if job is None:
                    orphans.append(name)
                    continue
                role, grant_id = job
                owner = parse_comment(comments[role]) if role in comments else None
                if owner is None or owner[0] != grant_id:
                    orphans.append(name)
            removed = _unschedule(conn, sorted(orphans)) if orphans else []
            restored = []
            for role, comment, valid_until in _uncovered(conn, self._target_database):
                owner = parse_comment(comment)
                if owner is not None and owner[1] == owner_tag:
                    _schedule(conn, role, owner[0], str(comment), valid_until)
                    restored.append(f"restored {job_name(role, owner[0])}")
            return removed + restored

        return self._run(status.database, action)

    def findings(self) -> list[Finding]:
        """`resource check`: whether expiry holds in the database while amber is down, and recent job failures."""
        status = self.status(fresh=True)
        if not status.usable or status.database is None:
            return [
                Finding(
                    "expiry-cut-unavailable",
                    "warning",
                    f"{status.reason}: a direct session can outlive its grant's expiry while amber is down (it is "
                    "cut when amber's worker runs again; new password logins are still refused by VALID UNTIL)",
                    _how_to_enable(status),
                )
            ]

        def failures(conn: _Conn) -> list[tuple[str, str, datetime]]:
            rows = conn.execute(
                "SELECT j.jobname, coalesce(d.return_message, ''), d.start_time FROM cron.job_run_details d"
                " JOIN cron.job j ON j.jobid = d.jobid WHERE j.username = current_user"
                " AND starts_with(j.jobname, %s) AND d.status = 'failed'"
                " AND d.start_time > now() - interval '7 days' ORDER BY d.start_time DESC LIMIT 5",
                [JOB_PREFIX],
            ).fetchall()
            return [(str(n), str(m), t) for n, m, t in rows]

        found = [
            Finding(
                "expiry-cut-pg-cron",
                "ok",
                f"pg_cron {status.version} in database {status.database}: {status.reason}; each grant's sessions "
                "are ended within a minute of its expiry by a job in the database, even while amber is down",
            )
        ]

        def uncovered(conn: _Conn) -> list[str]:
            return [name for name, comment, _ in _uncovered(conn, self._target_database) if _is_amber_comment(comment)]

        try:
            failed = self._run(status.database, failures)
            missing = self._run(status.database, uncovered)
        except ProvisionerError as exc:
            return [*found, Finding("expiry-cut-unchecked", "warning", f"cannot read pg_cron's jobs: {exc}")]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            found.append(
                Finding(
                    "expiry-cut-missing",
                    "warning",
                    f"amber roles with no cut job in pg_cron: {shown}; their sessions are not ended at expiry while "
                    "amber is down (provisioned before amber scheduled cuts, or the job was removed by hand)",
                    "amber's reconciler puts a missing job back for its own installation's roles (every 30 s while "
                    "amber runs); roles of another installation: that installation's reconciler",
                )
            )
        for name, message, started in failed:
            found.append(
                Finding(
                    "expiry-cut-job-failed",
                    "danger",
                    f"pg_cron job {name} failed at {started.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z: "
                    f"{message.strip()[:200]}; pg_cron logs in to cron.host as amber's admin role to run it, and "
                    "pg_hba.conf must let it (or the server's OS user needs a .pgpass)",
                )
            )
        return found

    def close(self) -> None:
        with self._lock:
            self._discard()

    # --- internals ----------------------------------------------------------------------------------------

    def _probe(self) -> CronStatus:
        try:
            database, readable = self._database_name()
        except ProvisionerError as exc:
            return CronStatus(None, usable=False, reason=f"cannot tell whether pg_cron is loaded ({exc.message})")
        if not readable:
            # pg_cron refuses CREATE EXTENSION anywhere but cron.database_name: finding it in `postgres` (the
            # default) tells where its jobs live even to a role that may not read the setting.
            database = _DEFAULT_CRON_DATABASE
        elif not database:
            return CronStatus(None, usable=False, reason="pg_cron is not loaded on this server")

        def action(conn: _Conn) -> CronStatus:
            row = conn.execute(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'),"
                " current_user, r.rolsuper, r.rolcreaterole, pg_has_role('pg_signal_backend', 'USAGE')"
                " FROM pg_roles r WHERE r.rolname = current_user"
            ).fetchone()
            if row is None:  # pragma: no cover - current_user always has a pg_roles row
                return CronStatus(database, usable=False, reason="amber's admin role is not in pg_roles")
            version, user, superuser, createrole, signal = row
            superuser_jobs = None
            if superuser:  # the setting is superuser-only to read
                jobs_row = conn.execute("SELECT current_setting('cron.enable_superuser_jobs', true)").fetchone()
                superuser_jobs = jobs_row[0] if jobs_row else None
            if version is None and not readable:
                return CronStatus(
                    None,
                    usable=False,
                    reason=f"pg_cron is not in database {database}, and amber's admin role {user} may not read "
                    "cron.database_name (GRANT pg_read_all_settings) to look elsewhere",
                )
            if version is None:
                return CronStatus(database, usable=False, reason=f"pg_cron is loaded but not created in {database}")
            usage = conn.execute(
                "SELECT has_schema_privilege('cron', 'USAGE')"
                " AND has_function_privilege('cron.schedule(text, text, text)', 'EXECUTE')"
                " AND has_function_privilege('cron.unschedule(bigint)', 'EXECUTE')"
            ).fetchone()
            if not (usage and usage[0]):
                return CronStatus(
                    database,
                    usable=False,
                    reason=f"amber's admin role {user} may not use schema cron in {database}",
                    version=str(version),
                )
            if superuser and superuser_jobs == "off":
                return CronStatus(
                    database,
                    usable=False,
                    reason=f"amber's admin role {user} is a superuser and cron.enable_superuser_jobs is off",
                    version=str(version),
                )
            if not superuser and not (createrole and signal):
                return CronStatus(
                    database,
                    usable=False,
                    reason=f"amber's admin role {user} needs CREATEROLE and membership of pg_signal_backend "
                    "for its job to block a role and end its sessions",
                    version=str(version),
                )
            return CronStatus(
                database, usable=True, reason=f"jobs run as {user} in database {database}", version=str(version)
            )

        try:
            return self._run(database, action)
        except ProvisionerError as exc:
            reason = f"cannot use pg_cron in database {database} ({exc.message})"
            return CronStatus(database, usable=False, reason=reason)

    def _run(self, database: str, action: Callable[[_Conn], _T]) -> _T:
        """Run `action` on the connection to `database`, reopened once when it turns out to be broken."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None and self._conn_db == database and not self._conn.broken
                try:
                    return action(self._connection(database))
                except psycopg.Error as exc:
                    conn = self._conn
                    lost = conn is None or conn.closed or conn.broken
                    if lost:
                        self._discard()
                    if attempt == 1 and reused and lost and isinstance(exc, psycopg.OperationalError):
                        continue
                    raise self._safe_error(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, database: str) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and self._conn_db == database:
            return conn
        self._discard()
        conn = psycopg.connect(
            make_conninfo(self._admin_dsn, dbname=database),
            autocommit=True,
            connect_timeout=self._connect_timeout_s,
            application_name="amber-provisioner-cron",
        )
        try:
            conn.execute(
                sql.SQL("SET statement_timeout = {}; SET lock_timeout = {}").format(
                    sql.Literal(_ADMIN_STATEMENT_TIMEOUT), sql.Literal(_ADMIN_LOCK_TIMEOUT)
                )
            )
        except psycopg.Error:
            conn.close()
            raise
        self._conn, self._conn_db = conn, database
        return conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._conn_db = None, None


def _schedule(conn: _Conn, role_name: str, grant_id: str, role_comment: str, expires_at: datetime) -> None:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    db_now = row[0] if row else datetime.now(UTC)
    command = cut_command(role_name, role_comment, expires_at, conn)
    conn.execute(
        "SELECT cron.schedule(%s, %s, %s)", [job_name(role_name, grant_id), schedule_for(expires_at, db_now), command]
    ).fetchone()


def _uncovered(conn: _Conn, target_database: str) -> list[tuple[str, str | None, datetime]]:
    """(role, comment, VALID UNTIL) of amber roles granted CONNECT on `target_database` that can still log in
    before their VALID UNTIL and have no cut job of the current user."""
    rows = conn.execute(
        "SELECT r.rolname, shobj_description(r.oid, 'pg_authid'), r.rolvaliduntil FROM pg_roles r"
        " WHERE starts_with(r.rolname, 'amber_g_') AND r.rolcanlogin AND r.rolvaliduntil > now()"
        " AND EXISTS (SELECT FROM pg_database d, aclexplode(d.datacl) a"
        "  WHERE d.datname = %s AND a.grantee = r.oid AND a.privilege_type = 'CONNECT')"
        " AND NOT EXISTS (SELECT FROM cron.job j WHERE j.username = current_user"
        "  AND starts_with(j.jobname, %s || r.rolname || ':'))"
        " ORDER BY 1",
        [target_database, JOB_PREFIX],
    ).fetchall()
    return [(str(name), comment, valid_until) for name, comment, valid_until in rows]


def _is_amber_comment(comment: str | None) -> bool:
    return bool(comment) and str(comment).startswith("amber grant ") and " owner " in str(comment)


def _how_to_enable(status: CronStatus) -> str:
    if status.database is None:
        return (
            "install pg_cron (Debian: postgresql-<major>-cron), add it to shared_preload_libraries (a restart), "
            "then CREATE EXTENSION pg_cron in database postgres"
        )
    if status.version is None:
        return f"CREATE EXTENSION pg_cron (in database {status.database})"
    return (
        f"in database {status.database}: GRANT USAGE ON SCHEMA cron TO <amber's admin role>; the role also needs "
        "CREATEROLE and pg_signal_backend (or to be a superuser with cron.enable_superuser_jobs on)"
    )


def _unschedule(conn: _Conn, names: Sequence[str]) -> list[str]:
    """Unschedule amber's admin role's jobs of these names; the CTE picks the jobs before any is removed."""
    rows = conn.execute(
        "WITH mine AS MATERIALIZED (SELECT jobid, jobname FROM cron.job"
        " WHERE username = current_user AND jobname = ANY(%s))"
        " SELECT jobname FROM mine WHERE cron.unschedule(jobid) ORDER BY jobname",
        [list(names)],
    ).fetchall()
    return [str(name) for (name,) in rows]
