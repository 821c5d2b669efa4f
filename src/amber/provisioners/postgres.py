"""The PostgreSQL provisioner: one login role per grant, able only to read, and gone when the grant ends.

It owns, on one target database (the database the admin DSN names):
- the per-grant roles `amber_g_<short id>`, recognised by name *and* by their comment
  `amber grant <grant id> owner <owner tag>`; a role without that comment is never altered, adopted or
  dropped;
- the privileges those roles hold: CONNECT on the database, USAGE on the level's schemas, SELECT on the
  tables in them, and nothing else;
- the read-only checks `check()` runs on the target, and the fixes `harden()` applies;
- through postgres_cron.py, a pg_cron job per grant that ends its sessions at expiry while amber is down, and
  through postgres_audit.py, the pgaudit settings that record a grant role's statements in the server log.

The invariant it protects: a granted role can never write, by privileges and not only by session settings
(`default_transaction_read_only` is a convenience the role can switch off itself; PostgreSQL lets any role
`ALTER ROLE <self> SET ...`), and it cannot log in after its `VALID UNTIL` or after `revoke`.

All SQL is built with `psycopg.sql` (identifiers and literals quoted by the driver). Error messages name
the target as host:port/db and carry the SQLSTATE and PostgreSQL's primary message; never the admin DSN,
a password or a password verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Literal, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from amber.provisioners import postgres_hardening
from amber.provisioners.base import (
    ROLE_PREFIX,
    ConnectionInfo,
    Finding,
    GrantSpec,
    ManagedRole,
    ProvisionerError,
    RevokeSpec,
)
from amber.provisioners.postgres_audit import AUDIT_SETTINGS, audit_findings, audit_statements
from amber.provisioners.postgres_cron import ExpiryCuts, job_name, read_cron_database

_T = TypeVar("_T")
_Conn = psycopg.Connection[TupleRow]

# NOTE: a role name is also written into pg_hba.conf suggestions and shown in the UI; keep it boring.
_ROLE_NAME_RE = re.compile(rf"\A{ROLE_PREFIX}[a-z0-9_]{{1,{63 - len(ROLE_PREFIX)}}}\Z")
_TAG_RE = re.compile(r"\A[\x21-\x7e]{1,200}\Z")  # grant ids and owner tags: printable ASCII, no spaces
_COMMENT_RE = re.compile(r"\Aamber grant (\S+) owner (\S+)\Z")

# The role's idle_in_transaction_session_timeout (the gateway holds SETs of it to this too).
IDLE_IN_TRANSACTION_TIMEOUT = timedelta(seconds=60)
_ADMIN_STATEMENT_TIMEOUT = "30s"
_ADMIN_LOCK_TIMEOUT = "5s"
_SESSION_END_WAIT_S = 2.0
_SESSION_POLL_S = 0.01

_SCRAM_ITERATIONS = 4096
_SCRAM_SALT_BYTES = 16

# Large-object functions that create, change or delete data. PostgreSQL 15 lets them run even inside a
# read-only transaction, and grants EXECUTE on most of them to PUBLIC. lo_open is here because it opens for
# writing too (reading stays possible with lo_get).
_LO_WRITE_FUNCTIONS = (
    "lo_creat",
    "lo_create",
    "lo_export",
    "lo_from_bytea",
    "lo_import",
    "lo_open",
    "lo_put",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "lowrite",
)
_TABLE_WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER")
_SEQUENCE_WRITE_PRIVILEGES = ("USAGE", "UPDATE")
# The role settings provision sets, as pg_db_role_setting shows them; `check` reports a role that changed them.
_EXPECTED_SETTINGS = postgres_hardening.ExpectedSettings(
    fixed={
        "default_transaction_read_only": "on",
        "idle_in_transaction_session_timeout": f"{int(IDLE_IN_TRANSACTION_TIMEOUT.total_seconds())}s",
    },
    optional=tuple(name for name, _ in AUDIT_SETTINGS),
)
_DATABASE_WRITE_PRIVILEGES = ("CREATE", "TEMPORARY")
_PASSWORDLESS_METHODS = frozenset({"trust", "peer", "ident"})
_PASSWORD_METHODS = frozenset({"scram-sha-256", "md5", "password"})
_HBA_TYPES = frozenset({"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"})

# SQL condition on pg_namespace `n`: a user schema (PostgreSQL reserves the pg_ prefix for its own).
_NON_SYSTEM_SCHEMA = "n.nspname <> 'information_schema' AND NOT starts_with(n.nspname, 'pg_')"


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / RFC 7677).

    Sending the verifier instead of the password keeps the password out of server logs and statistics.
    Does NOT apply SASLprep: PostgreSQL uses an ASCII password as-is, so non-ASCII passwords are refused
    rather than risk a verifier that does not match what the server computes at login.
    """
    if not password or not password.isascii() or "\x00" in password:
        raise ProvisionerError("a role password must be non-empty ASCII without NUL characters")
    salt = salt if salt is not None else secrets.token_bytes(_SCRAM_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_comment(grant_id: str, owner_tag: str) -> str:
    """The comment that marks a role as amber's grant `grant_id`, made by installation `owner_tag`."""
    return f"amber grant {grant_id} owner {owner_tag}"


def parse_role_comment(comment: str | None) -> tuple[str, str] | None:
    """(grant id, owner tag) from a role comment, or None when the comment is not amber's."""
    match = _COMMENT_RE.match(comment or "")
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class HbaRule:
    """One valid line of pg_hba.conf, as the `pg_hba_file_rules` view shows it."""

    line_number: int
    type: str
    databases: tuple[str, ...]
    users: tuple[str, ...]
    address: str | None
    netmask: str | None
    auth_method: str


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class _Statements:
    """What `provision` runs: `create` or `update` (role missing or already amber's), then `common`."""

    create: list[sql.Composable]
    update: list[sql.Composable]
    common: list[sql.Composable]


class PostgresProvisioner:
    """Provisions per-grant read-only roles on one PostgreSQL database through one admin connection.

    The connection is opened on first use, kept, guarded by a lock (calls are serialised) and reopened once,
    transparently, when it turns out to be broken. Every operation is idempotent, so the retry is safe.
    `connect_timeout_s` is rounded up to whole seconds, at least 2 (libpq's unit and minimum).
    """

    kind = "postgres"

    def __init__(self, admin_dsn: str, *, grantee_group: str | None = None, connect_timeout_s: float = 5.0) -> None:
        try:
            params = conninfo_to_dict(admin_dsn)
        except psycopg.Error:
            # The driver's message may quote part of the DSN, which may hold a password.
            raise ProvisionerError("the PostgreSQL admin DSN is not a valid libpq connection string") from None
        dbname = str(params.get("dbname") or "")
        if not dbname:
            raise ProvisionerError("the PostgreSQL admin DSN must name the target database (dbname)")
        host = str(params.get("host") or params.get("hostaddr") or "127.0.0.1").split(",")[0] or "127.0.0.1"
        try:
            port = int(str(params.get("port") or "5432").split(",")[0] or "5432")
        except ValueError:
            raise ProvisionerError("the PostgreSQL admin DSN has a port that is not a number") from None
        if grantee_group is not None and not grantee_group:
            raise ProvisionerError("grantee_group must be a role name or None")
        if connect_timeout_s <= 0:
            raise ProvisionerError("connect_timeout_s must be positive")
        self._admin_dsn = admin_dsn
        self._admin_password = str(params.get("password") or "")
        self._host = host
        self._port = port
        self._dbname = dbname
        self._where = f"{host}:{port}/{dbname}"
        self._grantee_group = grantee_group
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        # The expiry cut in the database (pg_cron), over its own connection: postgres_cron.py.
        self._cuts = ExpiryCuts(
            admin_dsn,
            where=self._where,
            target_database=dbname,
            database_name=self._cron_database,
            safe_error=lambda exc: self._safe_error(exc, ()),
            connect_timeout_s=max(2, math.ceil(connect_timeout_s)),
        )

    def __repr__(self) -> str:
        return f"PostgresProvisioner({self._where!r}, grantee_group={self._grantee_group!r})"

    # --- the Provisioner protocol -------------------------------------------------------------------------

    def provision(self, spec: GrantSpec) -> ConnectionInfo:
        """Create the grant's role, or bring amber's own role for this grant up to date, in one transaction.

        The role gets LOGIN with no password, CONNECT on this database, USAGE and SELECT on the spec's
        schemas, read-only/timeout defaults and `VALID UNTIL spec.expires_at`; then (after the commit) its
        expiry cut is scheduled in pg_cron where amber can use it. Does NOT check that the schemas
        hold only what the level means to expose, nor revoke privileges on schemas a previous call listed (a
        grant's level is immutable). Tables created after this call are not readable by the role.
        """
        statements = self._provision_statements(spec)
        comment = role_comment(spec.grant_id, spec.owner_tag)

        def action(conn: _Conn) -> None:
            for attempt in (1, 2):
                try:
                    with conn.transaction():
                        existing = self._role_comment(conn, spec.role_name)
                        if existing is None:
                            head = statements.create
                        elif existing[0] == comment:
                            head = statements.update
                        else:
                            raise ProvisionerError(
                                f"PostgreSQL at {self._where}: role {spec.role_name} already exists and is "
                                f"not amber's role for grant {spec.grant_id}; refusing to adopt it"
                            )
                        audit = audit_statements(conn, spec.role_name)  # pgaudit: postgres_audit.py
                        conn.execute(sql.SQL("; ").join([*head, *statements.common, *audit]))
                        if spec.masked_columns:
                            self._mask_columns(conn, spec)
                except psycopg.errors.DuplicateObject:
                    # Another process created the role between our look-up and CREATE ROLE: look again.
                    if attempt == 2:
                        raise
                else:
                    return

        self._run(action)
        # After the role is committed (ExpiryCuts.sweep relies on that order).
        self._cuts.schedule(spec, comment)
        return ConnectionInfo(host=self._host, port=self._port, database=self._dbname, user=spec.role_name)

    def set_password(self, spec: GrantSpec, password: str) -> None:
        """Set the role's password, sent as a SCRAM-SHA-256 verifier computed here.

        Refuses a role that is missing or not amber's role for this grant. Does NOT check the password's
        strength (amber generates it) and does NOT keep the role from changing its own password later
        (PostgreSQL allows any role that); `VALID UNTIL` and `revoke` bound what that can achieve.
        """
        _check_role_name(spec.role_name)
        verifier = scram_sha256_verifier(password)
        statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(spec.role_name), sql.Literal(verifier))
        comment = role_comment(spec.grant_id, spec.owner_tag)

        def action(conn: _Conn) -> None:
            with conn.transaction():
                existing = self._role_comment(conn, spec.role_name)
                if existing is None:
                    raise ProvisionerError(
                        f"PostgreSQL at {self._where}: role {spec.role_name} does not exist; provision it first"
                    )
                if existing[0] != comment:
                    raise ProvisionerError(
                        f"PostgreSQL at {self._where}: role {spec.role_name} is not amber's role for grant "
                        f"{spec.grant_id}; refusing to set its password"
                    )
                conn.execute(statement)

        self._run(action, scrub=(password, verifier))

    def revoke(self, specs: Sequence[RevokeSpec]) -> None:
        """Take access away from many grants: NOLOGIN for all, end their sessions, then drop each role.

        Missing roles are skipped (revoke is idempotent). A role whose comment does not name the expected
        grant id, or whose name is not an amber role name, is left untouched and reported in a
        ProvisionerError raised after the others are done. A role whose sessions do not end within ~2 s is not
        dropped (it stays NOLOGIN) and is reported, so the caller retries. Does NOT check the owner tag
        (RevokeSpec carries none): the grant id in the comment is what makes the role this grant's.
        """
        problems: list[str] = []
        wanted: dict[str, str] = {}
        ambiguous: set[str] = set()
        for spec in specs:
            if not _ROLE_NAME_RE.match(spec.role_name):
                problems.append(f"{spec.role_name!r} is not an amber role name; left alone")
            elif wanted.setdefault(spec.role_name, spec.grant_id) != spec.grant_id:
                ambiguous.add(spec.role_name)
        for name in sorted(ambiguous):
            del wanted[name]
            problems.append(f"role {name} was named for two different grants; left alone")

        def block_logins(conn: _Conn) -> list[str]:
            ours: list[str] = []
            with conn.transaction():
                rows = conn.execute(
                    "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles"
                    " WHERE rolname = ANY(%s) ORDER BY rolname",
                    [list(wanted)],
                ).fetchall()
                for name, comment in rows:
                    parsed = parse_role_comment(comment)
                    if parsed is None or parsed[0] != wanted[name]:
                        problems.append(f"role {name} is not amber's role for grant {wanted[name]}; left alone")
                    else:
                        ours.append(name)
                if ours:
                    conn.execute(
                        sql.SQL("; ").join(
                            sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(name)) for name in ours
                        )
                    )
            return ours

        ours = self._run(block_logins) if wanted else []
        lingering = self._end_sessions(ours)
        for name in ours:
            if name in lingering:
                problems.append(f"sessions of role {name} did not end within {_SESSION_END_WAIT_S:g} s; not dropped")
                continue
            drop = sql.SQL("DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}").format(sql.Identifier(name))

            def drop_role(conn: _Conn, drop: sql.Composed = drop) -> None:
                with conn.transaction():
                    conn.execute(drop)

            try:
                self._run(drop_role)
            except ProvisionerError as exc:
                problems.append(exc.message)
                lingering.add(name)
        # The cut jobs of roles that are gone now (or were already); a lingering role keeps its job as a backstop.
        gone = [job_name(name, grant_id) for name, grant_id in wanted.items() if name not in lingering]
        try:
            self._cuts.unschedule(gone)
        except ProvisionerError as exc:
            problems.append(f"cut jobs not removed: {exc.message}")
        if problems:
            raise ProvisionerError(f"PostgreSQL at {self._where}: revoke incomplete: " + "; ".join(problems))

    def inspect(self) -> list[ManagedRole]:
        """Every role named `amber_g_*` on the cluster, whoever made it, with what its comment claims.

        Does NOT filter by owner tag or by database: roles are cluster-wide; the reconciler decides.
        """

        def action(conn: _Conn) -> list[ManagedRole]:
            rows = conn.execute(
                "SELECT r.rolname, shobj_description(r.oid, 'pg_authid'), r.rolcanlogin,"
                " (SELECT count(*) FROM pg_stat_activity a WHERE a.usesysid = r.oid)"
                " FROM pg_roles r WHERE starts_with(r.rolname, %s) ORDER BY r.rolname",
                [ROLE_PREFIX],
            ).fetchall()
            roles = []
            for name, comment, can_login, sessions in rows:
                parsed = parse_role_comment(comment)
                roles.append(
                    ManagedRole(
                        role_name=name,
                        grant_id=parsed[0] if parsed else None,
                        owner_tag=parsed[1] if parsed else None,
                        can_login=bool(can_login),
                        session_count=int(sessions),
                    )
                )
            return roles

        return self._run(action)

    def check(self) -> list[Finding]:
        """Report what on this database would let a granted role write, or log in without a password.

        Looks at PUBLIC's privileges (database TEMP/CREATE, large-object write functions, CREATE on schemas,
        write privileges on tables and sequences, now and by default for new ones), at the grantee group,
        at what `postgres_hardening` owns (SECURITY DEFINER routines, restricted routines granted since,
        dblink/postgres_fdw, foreign servers, amber roles' memberships and self-set settings,
        lo_compat_privileges, prepared transactions) and at pg_hba.conf as the server reads it from disk.
        Does NOT look at event triggers, other databases on the cluster, or the pg_ident.conf map behind
        `ident`/`peer` rules.
        """

        def action(conn: _Conn) -> list[Finding]:
            findings = [finding for finding, _ in self._plan(conn)]
            findings += self._check_hba(conn)
            return findings or [Finding(code="all-clear", severity="ok", message="nothing found to fix")]

        findings = self._run(action)
        # Expiry while amber is down (pg_cron) and recording of direct sessions (pgaudit): never SQL fixes.
        return findings + self._cuts.findings() + self._run(audit_findings)

    def sweep(self, owner_tag: str) -> list[str]:
        """Remove cut jobs of dropped roles; put back the missing cut jobs of `owner_tag`'s live roles."""
        return self._cuts.sweep(owner_tag, parse_role_comment)

    def harden(self) -> list[str]:
        """Apply, in one transaction, every SQL fix `check` proposes; return the statements applied.

        pg_hba.conf fixes are file edits and are NOT applied. Revoking TEMPORARY from PUBLIC also takes it
        from application roles that relied on PUBLIC; grant it back to them by name.
        """

        def action(conn: _Conn) -> list[str]:
            with conn.transaction():
                statements = [fix for _, fix in self._plan(conn) if fix is not None]
                for statement in statements:
                    conn.execute(statement)
                return [statement.as_string(conn) for statement in statements]

        return self._run(action)

    def close(self) -> None:
        self._cuts.close()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PostgresProvisioner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- provisioning helpers -----------------------------------------------------------------------------

    def _provision_statements(self, spec: GrantSpec) -> _Statements:
        """Validate the spec (fail closed on anything odd) and build the statements `provision` runs."""
        _check_role_name(spec.role_name)
        for label, value in (("grant id", spec.grant_id), ("owner tag", spec.owner_tag)):
            if not _TAG_RE.match(value):
                raise ProvisionerError(f"the {label} {value!r} is not printable ASCII without spaces")
        if spec.expires_at.tzinfo is None:
            raise ProvisionerError("expires_at must be timezone-aware")
        if isinstance(spec.connection_limit, bool) or spec.connection_limit < 1:
            raise ProvisionerError("connection_limit must be a positive integer")
        timeout_ms = int(spec.statement_timeout / timedelta(milliseconds=1))
        if timeout_ms < 1:
            raise ProvisionerError("statement_timeout must be at least 1 ms (0 would disable it)")
        for schema in spec.schemas:
            if not schema or schema == "information_schema" or schema.startswith("pg_"):
                raise ProvisionerError(f"schema {schema!r} is a system schema and cannot be granted")

        role = sql.Identifier(spec.role_name)
        attributes = sql.SQL(
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
            " CONNECTION LIMIT {} VALID UNTIL {}"
        ).format(
            sql.Literal(int(spec.connection_limit)),
            sql.Literal(spec.expires_at.astimezone(UTC).isoformat()),
        )
        create = sql.SQL("CREATE ROLE {} {} PASSWORD NULL").format(role, attributes)
        update: list[sql.Composable] = [sql.SQL("ALTER ROLE {} {}").format(role, attributes)]
        if self._grantee_group is not None:
            group = sql.Identifier(self._grantee_group)
            create = sql.SQL("{} IN ROLE {}").format(create, group)
            update.append(sql.SQL("GRANT {} TO {}").format(group, role))
        common: list[sql.Composable] = [
            sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(role_comment(spec.grant_id, spec.owner_tag))),
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role),
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(role, sql.Literal(f"{timeout_ms}ms")),
            sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
                role, sql.Literal(f"{int(IDLE_IN_TRANSACTION_TIMEOUT.total_seconds())}s")
            ),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(self._dbname), role),
        ]
        for schema in dict.fromkeys(spec.schemas):
            common.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
            common.append(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema), role))
            # SELECT on a sequence reads it (last_value, is_called: what pg_dump --data-only needs), never
            # nextval or setval (those need USAGE or UPDATE, which amber never grants).
            common.append(
                sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(sql.Identifier(schema), role)
            )
        return _Statements(create=[create], update=update, common=common)

    def _mask_columns(self, conn: _Conn, spec: GrantSpec) -> None:
        """Replace table-wide SELECT by SELECT on every column but the masked ones (inside provision's transaction).

        Names are exact (the catalog resolved quoting and case). A masked table or column that does not exist, or
        a masked table with inheritance children or partitions the level does not mask as well (they hold the
        same column, readable by their own name), is an error and the whole provision rolls back: fail closed,
        never a grant of every column because the catalog names something that is not there.
        """
        role = sql.Identifier(spec.role_name)
        tables: dict[tuple[str, str], set[str]] = {}
        for schema, table, column in spec.masked_columns:
            tables.setdefault((schema, table), set()).add(column)
        for (schema, table), masked in tables.items():
            where = f"PostgreSQL at {self._where}: masked table {_quote_ident(schema)}.{_quote_ident(table)}"
            rows = conn.execute(
                "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                [schema, table],
            ).fetchall()
            if not rows:
                raise ProvisionerError(f"{where} does not exist (or has no columns)")
            columns = [str(row[0]) for row in rows]
            missing = sorted(masked - set(columns))
            if missing:
                raise ProvisionerError(
                    f"{where} has no column {', '.join(_quote_ident(c) for c in missing)} "
                    f"(its columns: {', '.join(_quote_ident(c) for c in columns)}); names are case-sensitive "
                    'when quoted in the catalog ("Email")'
                )
            self._refuse_unmasked_children(conn, schema, table, tables, where)
            relation = sql.Identifier(schema, table)
            conn.execute(sql.SQL("REVOKE SELECT ON {} FROM {}").format(relation, role))
            visible = [column for column in columns if column not in masked]
            if visible:
                conn.execute(
                    sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                        sql.SQL(", ").join(sql.Identifier(c) for c in visible), relation, role
                    )
                )
            for view_schema, view in self._views_over(conn, schema, table, masked):
                if view_schema in spec.schemas:
                    conn.execute(sql.SQL("REVOKE SELECT ON {} FROM {}").format(sql.Identifier(view_schema, view), role))

    @staticmethod
    def _views_over(conn: _Conn, schema: str, table: str, masked: set[str]) -> list[tuple[str, str]]:
        """Views and materialized views that read a masked column, directly or through other such views.

        A view reads its tables with its owner's privileges, so the column grants above do not stop a view
        that selects a masked column. Found by the column dependencies PostgreSQL records for views. What this
        does NOT find: a view that uses the table's whole row (`SELECT c FROM t c`, `to_json(c)`), which
        PostgreSQL records as a dependency on the table, like every view over it; amber's gateway refuses those
        by reading the view's definition.
        """
        rows = conn.execute(
            "WITH RECURSIVE hidden(relid, attnum) AS ("
            " SELECT c.oid, a.attnum FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attname = ANY(%s)"
            "), views(oid) AS ("
            " SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
            " JOIN hidden h ON d.refobjid = h.relid AND d.refobjsubid = h.attnum"
            " WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass"
            " AND r.ev_class <> d.refobjid"
            " UNION"
            " SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
            " JOIN views v ON d.refobjid = v.oid"
            " WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass"
            " AND r.ev_class <> d.refobjid"
            ") SELECT n.nspname, c.relname FROM views JOIN pg_class c ON c.oid = views.oid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2",
            [schema, table, sorted(masked)],
        ).fetchall()
        return [(str(s), str(t)) for s, t in rows]

    @staticmethod
    def _refuse_unmasked_children(
        conn: _Conn, schema: str, table: str, tables: dict[tuple[str, str], set[str]], where: str
    ) -> None:
        children = conn.execute(
            "WITH RECURSIVE tree(oid) AS (SELECT i.inhrelid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
            "UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid) "
            "SELECT n.nspname, c.relname FROM tree JOIN pg_class c ON c.oid = tree.oid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2",
            [schema, table],
        ).fetchall()
        unmasked = [f"{_quote_ident(s)}.{_quote_ident(t)}" for s, t in children if (s, t) not in tables]
        if unmasked:
            raise ProvisionerError(
                f"{where} has inheritance children or partitions the level does not mask "
                f"({', '.join(unmasked)}); they hold the same columns: mask them too"
            )

    @staticmethod
    def _role_comment(conn: _Conn, role_name: str) -> tuple[str | None] | None:
        """None when the role does not exist, else a 1-tuple with its comment (which may be None)."""
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", [role_name]
        ).fetchone()
        return None if row is None else (row[0],)

    def _end_sessions(self, roles: list[str]) -> set[str]:
        """Terminate every backend of `roles` and wait (bounded) until they are gone; return roles still live.

        Polls outside any transaction: pg_stat_activity is a per-transaction snapshot.
        """
        if not roles:
            return set()
        signalled: set[int] = set()

        def terminate(conn: _Conn) -> None:
            rows = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", [roles]
            ).fetchall()
            signalled.update(int(pid) for pid, _ in rows)

        def live(conn: _Conn) -> list[tuple[int, str]]:
            rows = conn.execute("SELECT pid, usename FROM pg_stat_activity WHERE usename = ANY(%s)", [roles]).fetchall()
            return [(int(pid), str(name)) for pid, name in rows]

        self._run(terminate)
        deadline = time.monotonic() + _SESSION_END_WAIT_S
        while signalled:
            remaining = self._run(live)
            if not remaining:
                return set()
            if any(pid not in signalled for pid, _ in remaining):
                # A login that passed the LOGIN check just before NOLOGIN committed: end it too.
                self._run(terminate)
            if time.monotonic() >= deadline:
                return {name for _, name in remaining}
            time.sleep(_SESSION_POLL_S)
        return set()

    # --- checks -------------------------------------------------------------------------------------------

    def _plan(self, conn: _Conn) -> list[tuple[Finding, sql.Composed | None]]:
        """Findings that have (or lack) an SQL fix, each with the fix as a statement `harden` can run."""
        plan: list[tuple[Finding, sql.Composed | None]] = []

        def add(code: str, severity: Literal["danger", "warning"], message: str, fix: sql.Composed | None) -> None:
            plan.append((Finding(code, severity, message, fix.as_string(conn) if fix else None), fix))

        database = sql.Identifier(self._dbname)
        for (privilege,) in conn.execute(
            "SELECT a.privilege_type FROM pg_database d,"
            " aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a"
            " WHERE d.datname = current_database() AND a.grantee = 0 AND a.privilege_type = ANY(%s)"
            " ORDER BY 1",
            [list(_DATABASE_WRITE_PRIVILEGES)],
        ).fetchall():
            what = "temporary tables" if privilege == "TEMPORARY" else "schemas"
            add(
                f"public-{privilege.lower()}-on-database",
                "danger",
                f"PUBLIC may create {what} in database {self._dbname}, so every granted role can write there "
                "(after switching off default_transaction_read_only, which any role may do); grant "
                f"{privilege} back by name to roles that need it",
                sql.SQL("REVOKE {} ON DATABASE {} FROM PUBLIC").format(sql.SQL(_keyword(privilege)), database),
            )

        for name, arguments in conn.execute(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p"
            " WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY(%s)"
            " AND EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
            "  WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')"
            " ORDER BY 1, 2",
            [list(_LO_WRITE_FUNCTIONS)],
        ).fetchall():
            # NOTE: the argument list is PostgreSQL's own rendering of a pg_catalog function's signature
            # (found by a fixed allow-list of names), not user input; sql.SQL keeps it readable.
            add(
                "public-large-object-write",
                "danger",
                f"PUBLIC may execute pg_catalog.{name}({arguments}), which writes large objects even in a "
                "read-only transaction",
                sql.SQL("REVOKE EXECUTE ON FUNCTION {}.{}({}) FROM PUBLIC").format(
                    sql.Identifier("pg_catalog"), sql.Identifier(name), sql.SQL(arguments)
                ),
            )

        for (schema,) in conn.execute(
            "SELECT n.nspname FROM pg_namespace n"
            f" WHERE {_NON_SYSTEM_SCHEMA}"
            " AND EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a"
            "  WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')"
            " ORDER BY 1"
        ).fetchall():
            add(
                "public-create-on-schema",
                "danger",
                f"PUBLIC may create objects in schema {schema}",
                sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(schema)),
            )

        for schema, relation, is_sequence, privileges in self._public_relation_writes(conn):
            kind = "SEQUENCE" if is_sequence else "TABLE"
            add(
                "public-write-on-sequence" if is_sequence else "public-write-on-table",
                "danger",
                f"PUBLIC holds {', '.join(privileges)} on {kind.lower()} {schema}.{relation}",
                sql.SQL("REVOKE {} ON {} {} FROM PUBLIC").format(
                    sql.SQL(", ").join(sql.SQL(_keyword(p)) for p in privileges),
                    sql.SQL(kind),
                    sql.Identifier(schema, relation),
                ),
            )

        for owner, schema, is_sequence, privileges in self._public_default_writes(conn):
            kind = "SEQUENCES" if is_sequence else "TABLES"
            scope = sql.SQL(" IN SCHEMA {}").format(sql.Identifier(schema)) if schema else sql.SQL("")
            add(
                "public-default-write",
                "danger",
                f"tables or sequences {owner} creates{f' in schema {schema}' if schema else ''} will give "
                f"PUBLIC {', '.join(privileges)} (ALTER DEFAULT PRIVILEGES)",
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} REVOKE {} ON {} FROM PUBLIC").format(
                    sql.Identifier(owner),
                    scope,
                    sql.SQL(", ").join(sql.SQL(_keyword(p)) for p in privileges),
                    sql.SQL(kind),
                ),
            )

        for finding, fix in self._check_grantee_group(conn):
            plan.append((finding, fix))
        plan += postgres_hardening.plan(
            conn,
            database=self._dbname,
            grantee_group=self._grantee_group,
            expected=_EXPECTED_SETTINGS,
            covered_catalog_functions=_LO_WRITE_FUNCTIONS,
        )
        return plan

    @staticmethod
    def _public_relation_writes(conn: _Conn) -> list[tuple[str, str, bool, list[str]]]:
        """(schema, relation, is sequence, privileges) where PUBLIC can write, at table or column level."""
        rows = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind = 'S', a.privilege_type"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
            " aclexplode(coalesce(c.relacl,"
            "  acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))) a"
            f" WHERE {_NON_SYSTEM_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND a.grantee = 0"
            " AND ((c.relkind = 'S' AND a.privilege_type = ANY(%(seq)s))"
            "  OR (c.relkind <> 'S' AND a.privilege_type = ANY(%(tab)s)))"
            " UNION"
            " SELECT n.nspname, c.relname, false, a.privilege_type"
            " FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a"
            f" WHERE {_NON_SYSTEM_SCHEMA} AND att.attacl IS NOT NULL AND NOT att.attisdropped"
            " AND a.grantee = 0 AND a.privilege_type = ANY(%(tab)s)"
            " ORDER BY 1, 2, 4",
            {"seq": list(_SEQUENCE_WRITE_PRIVILEGES), "tab": list(_TABLE_WRITE_PRIVILEGES)},
        ).fetchall()
        grouped: dict[tuple[str, str, bool], list[str]] = {}
        for schema, relation, is_sequence, privilege in rows:
            privileges = grouped.setdefault((schema, relation, bool(is_sequence)), [])
            if privilege not in privileges:
                privileges.append(privilege)
        return [(s, r, q, p) for (s, r, q), p in grouped.items()]

    @staticmethod
    def _public_default_writes(conn: _Conn) -> list[tuple[str, str | None, bool, list[str]]]:
        """(owner, schema or None, is sequence, privileges) of default privileges that give PUBLIC a write."""
        rows = conn.execute(
            "SELECT r.rolname, n.nspname, d.defaclobjtype = 'S', a.privilege_type"
            " FROM pg_default_acl d JOIN pg_roles r ON r.oid = d.defaclrole"
            " LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a"
            " WHERE a.grantee = 0"
            " AND ((d.defaclobjtype = 'S' AND a.privilege_type = ANY(%(seq)s))"
            "  OR (d.defaclobjtype = 'r' AND a.privilege_type = ANY(%(tab)s)))"
            " ORDER BY 1, 2 NULLS FIRST, 3, 4",
            {"seq": list(_SEQUENCE_WRITE_PRIVILEGES), "tab": list(_TABLE_WRITE_PRIVILEGES)},
        ).fetchall()
        grouped: dict[tuple[str, str | None, bool], list[str]] = {}
        for owner, schema, is_sequence, privilege in rows:
            grouped.setdefault((owner, schema, bool(is_sequence)), []).append(privilege)
        return [(o, s, q, p) for (o, s, q), p in grouped.items()]

    def _check_grantee_group(self, conn: _Conn) -> list[tuple[Finding, sql.Composed | None]]:
        group_name = self._grantee_group
        if group_name is None:
            return [
                (
                    Finding(
                        "no-grantee-group",
                        "warning",
                        "no grantee group is configured, so pg_hba.conf cannot require passwords of amber's "
                        "roles alone (a +group rule); configure one, e.g. amber_grantees",
                    ),
                    None,
                )
            ]
        group = sql.Identifier(group_name)
        found: list[tuple[Finding, sql.Composed | None]] = []

        def add(code: str, message: str, fix: sql.Composed | None) -> None:
            found.append((Finding(code, "danger", message, fix.as_string(conn) if fix else None), fix))

        row = conn.execute(
            "SELECT oid, rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls"
            " FROM pg_roles WHERE rolname = %s",
            [group_name],
        ).fetchone()
        if row is None:
            add(
                "grantee-group-missing",
                f"the grantee group {group_name} does not exist; provisioning will fail",
                sql.SQL("CREATE ROLE {} NOLOGIN").format(group),
            )
            return found
        group_oid, powerful = row
        if powerful:
            add(
                "grantee-group-attributes",
                f"the grantee group {group_name} has SUPERUSER, CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS",
                sql.SQL("ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(group),
            )
        for (parent,) in conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = %s ORDER BY 1",
            [group_oid],
        ).fetchall():
            add(
                "grantee-group-member",
                f"the grantee group {group_name} is a member of {parent}; granted roles can SET ROLE to it",
                sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(parent), group),
            )
        held = conn.execute(
            "SELECT d.deptype, pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_shdepend d"
            " WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = %s AND d.deptype IN ('a', 'o')"
            " AND d.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
            " ORDER BY 1, 2",
            [group_oid],
        ).fetchall()
        owned = [what for deptype, what in held if deptype == "o"]
        granted = [what for deptype, what in held if deptype == "a"]
        if owned:
            add(
                "grantee-group-owns",
                f"the grantee group {group_name} owns {_summary(owned)}; reassign them to another owner "
                "(REASSIGN OWNED BY ... TO ...)",
                None,
            )
        if granted:
            add(
                "grantee-group-privileges",
                f"the grantee group {group_name} holds privileges on {_summary(granted)}",
                None if owned else sql.SQL("DROP OWNED BY {}").format(group),
            )
        return found

    def _check_hba(self, conn: _Conn) -> list[Finding]:
        """Findings about pg_hba.conf (as on disk): rules that let an amber role in without its password."""
        try:
            rows = conn.execute(
                "SELECT line_number, type, database, user_name, address, netmask, auth_method"
                " FROM pg_hba_file_rules WHERE error IS NULL ORDER BY line_number"
            ).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            return [
                Finding(
                    "hba-unchecked",
                    "warning",
                    "pg_hba.conf could not be checked: reading pg_hba_file_rules needs a superuser",
                )
            ]
        rules = [
            HbaRule(
                int(line),
                str(kind),
                tuple(databases or ()),
                tuple(users or ()),
                address,
                netmask,
                str(method),
            )
            for line, kind, databases, users, address, netmask, method in rows
        ]
        if not rules:
            return [Finding("hba-unchecked", "warning", "pg_hba.conf rules are not visible on this server")]
        return hba_findings(rules, database=self._dbname, grantee_group=self._grantee_group)

    def _cron_database(self) -> tuple[str | None, bool]:
        return self._run(read_cron_database)

    # --- the admin connection -----------------------------------------------------------------------------

    def _run(self, action: Callable[[_Conn], _T], *, scrub: Sequence[str] = ()) -> _T:
        """Run `action` on the admin connection under the lock; retry once on a connection found broken."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None and not self._conn.closed and not self._conn.broken
                try:
                    return action(self._connection())
                except psycopg.Error as exc:
                    conn = self._conn
                    lost = conn is None or conn.closed or conn.broken
                    if lost:
                        self._discard()
                    if attempt == 1 and reused and lost and isinstance(exc, psycopg.OperationalError):
                        continue
                    raise self._safe_error(exc, scrub) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        conn = psycopg.connect(
            self._admin_dsn,
            autocommit=True,
            connect_timeout=max(2, math.ceil(self._connect_timeout_s)),
            application_name="amber-provisioner",
        )
        try:
            # Fail rather than hang on a lock held by someone else; these are the admin session's own limits.
            conn.execute(
                sql.SQL("SET statement_timeout = {}; SET lock_timeout = {}").format(
                    sql.Literal(_ADMIN_STATEMENT_TIMEOUT), sql.Literal(_ADMIN_LOCK_TIMEOUT)
                )
            )
        except psycopg.Error:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _safe_error(self, exc: psycopg.Error, scrub: Sequence[str]) -> ProvisionerError:
        """A ProvisionerError that names the target and the SQLSTATE but no DSN, password or verifier."""
        primary = exc.diag.message_primary if exc.sqlstate else None
        if exc.sqlstate and primary:
            detail = f"{exc.sqlstate} {primary}"
        elif isinstance(exc, psycopg.OperationalError):
            first_line = (str(exc).strip().splitlines() or [""])[0]
            detail = f"connection failed or was lost: {first_line}"
        else:
            detail = type(exc).__name__
        for secret in (*scrub, self._admin_dsn, self._admin_password):
            if secret:
                detail = detail.replace(secret, "***")
        return ProvisionerError(f"PostgreSQL at {self._where}: {detail[:300]}")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_role_name(role_name: str) -> None:
    if not _ROLE_NAME_RE.match(role_name):
        raise ProvisionerError(
            f"{role_name!r} is not an amber role name ({ROLE_PREFIX} followed by lowercase letters, digits and _)"
        )


def _keyword(privilege: str) -> str:
    """A privilege name from aclexplode as a SQL keyword, only from the fixed lists above."""
    allowed = {*_TABLE_WRITE_PRIVILEGES, *_SEQUENCE_WRITE_PRIVILEGES, *_DATABASE_WRITE_PRIVILEGES}
    if privilege not in allowed:
        raise ProvisionerError(f"unexpected privilege {privilege!r}")
    return privilege


def _summary(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _hba_network(rule: HbaRule) -> _Network | str | None:
    """The rule's address as a network, the string 'all', a symbolic name (samehost, a hostname), or None."""
    if rule.address is None:
        return None
    if rule.address == "all":
        return "all"
    try:
        address = ipaddress.ip_address(rule.address)
        if rule.netmask is None:
            return ipaddress.ip_network(address)
        prefix = bin(int(ipaddress.ip_address(rule.netmask))).count("1")
        return ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    except ValueError:
        return rule.address


def _hba_address(rule: HbaRule) -> str:
    network = _hba_network(rule)
    return str(network) if network is not None else "all"


def _hba_covers(before: HbaRule, rule: HbaRule) -> bool:
    """True if every connection `rule` could match is already matched by the earlier rule `before`.

    Assumes `before` matches every amber role and this database. Does NOT resolve hostnames or
    samehost/samenet: those cover only an identical entry.
    """
    if before.type == "local" or rule.type == "local":
        return before.type == rule.type
    if before.type not in ("host", rule.type):
        return False
    outer, inner = _hba_network(before), _hba_network(rule)
    if outer == "all":
        return True
    if isinstance(outer, str | None) or isinstance(inner, str | None):
        return outer == inner
    if outer.version != inner.version:
        return False
    return inner.subnet_of(outer)  # type: ignore[arg-type]


def hba_findings(rules: Sequence[HbaRule], *, database: str, grantee_group: str | None) -> list[Finding]:
    """Rules (in file order) that an amber role connecting to `database` can reach without its password.

    A rule is reachable unless an earlier rule matching every amber role (`all` or `+grantee_group`) and this
    database covers its connection type and address range. `trust`, `peer` and `ident` are dangers; other
    methods that ignore VALID UNTIL (cert, ldap, gss, ...) are warnings; password methods and reject are fine.
    Does NOT read included files' names, resolve hostnames, or consider other databases.
    """
    findings: list[Finding] = []
    earlier: list[HbaRule] = []
    for rule in rules:
        if rule.type not in _HBA_TYPES:
            continue
        users = _hba_user_match(rule.users, grantee_group)
        if users == "none" or not ({"all", database} & set(rule.databases)):
            continue
        if not any(_hba_covers(before, rule) for before in earlier):
            finding = _hba_finding(rule, grantee_group)
            if finding is not None:
                findings.append(finding)
        if users == "all":
            earlier.append(rule)
    return findings


def _hba_user_match(users: Iterable[str], grantee_group: str | None) -> Literal["all", "some", "none"]:
    names = set(users)
    if "all" in names or (grantee_group is not None and f"+{grantee_group}" in names):
        return "all"
    # A role named by itself, or (PostgreSQL 16+) a regular expression that might match one.
    if any(name.startswith((ROLE_PREFIX, "/")) for name in names):
        return "some"
    return "none"


def _hba_finding(rule: HbaRule, grantee_group: str | None) -> Finding | None:
    method = rule.auth_method
    if method in _PASSWORD_METHODS or method == "reject":
        return None
    group = grantee_group or "amber_grantees"
    group_token = f"+{group}" if re.fullmatch(r"[a-z0-9_]+", group) else f'"+{group}"'
    if rule.type == "local":
        line = f"local all {group_token} scram-sha-256"
    else:
        line = f"{rule.type} all {group_token} {_hba_address(rule)} scram-sha-256"
    fix = f"edit pg_hba.conf (a file edit, then SELECT pg_reload_conf()): add ahead of line {rule.line_number}: {line}"
    if grantee_group is None:
        fix = f"configure grantee_group (CREATE ROLE {group} NOLOGIN), then {fix}"
    where = f"pg_hba.conf line {rule.line_number} ({rule.type}, {method})"
    if method in _PASSWORDLESS_METHODS:
        return Finding(
            "hba-passwordless",
            "danger",
            f"{where}: granted roles can log in without a password; VALID UNTIL is only enforced on password logins",
            fix,
        )
    return Finding(
        "hba-not-password",
        "warning",
        f"{where}: granted roles authenticate with {method}, not with the password amber sets, and VALID "
        "UNTIL is not enforced for it",
        fix,
    )
