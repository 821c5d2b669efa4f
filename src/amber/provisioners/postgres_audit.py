"""pgaudit for PostgreSQL targets: every statement of a grant's role is written to the server's log.

It owns the per-role pgaudit settings amber gives each grant role where pgaudit is loaded (docs/decisions/
0019-pgaudit-per-grant-role.md): `pgaudit.log = 'all'` and `pgaudit.log_parameter = on`, set with
`ALTER ROLE ... SET` in the same transaction that creates the role.

The invariant it protects: a direct session (one that does not pass amber's gateway, which records it itself)
leaves a server-side record of what it ran, which the grant's role cannot switch off: both settings are
superuser-only (context `superuser`), so the role can neither `SET` them in its session nor `ALTER ROLE` itself,
nor pass them as connection options.

What this does NOT do: read the server log back into amber's ledger, or protect the log from the server's
administrators; where the log goes and who may read it is the server's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from amber.provisioners.base import Finding

_Conn = psycopg.Connection[TupleRow]

AUDIT_SETTINGS: tuple[tuple[str, str], ...] = (("pgaudit.log", "all"), ("pgaudit.log_parameter", "on"))


@dataclass(frozen=True)
class AuditStatus:
    loaded: bool  # pgaudit's settings exist in this server (the library is loaded)
    can_set: bool  # amber's admin role may set them per role (a superuser, or GRANT SET ON PARAMETER)


def audit_status(conn: _Conn) -> AuditStatus:
    """Whether pgaudit is loaded here, and whether amber's admin role may set its settings on a role.

    pg_settings lists a custom setting only once its library defined it (placeholders are hidden).
    """
    row = conn.execute(
        "SELECT count(*) = %s FROM pg_settings WHERE name = ANY(%s) AND context = 'superuser'",
        [len(AUDIT_SETTINGS), [name for name, _ in AUDIT_SETTINGS]],
    ).fetchone()
    if not (row and row[0]):
        return AuditStatus(loaded=False, can_set=False)
    allowed = conn.execute(
        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        " OR bool_and(has_parameter_privilege(name, 'SET')) FROM unnest(%s::text[]) AS name",
        [[name for name, _ in AUDIT_SETTINGS]],
    ).fetchone()
    return AuditStatus(loaded=True, can_set=bool(allowed and allowed[0]))


def audit_statements(conn: _Conn, role_name: str) -> list[sql.Composable]:
    """The `ALTER ROLE ... SET` statements for `role_name` when amber can set them, else none."""
    status = audit_status(conn)
    if not (status.loaded and status.can_set):
        return []
    # NOTE: setting names come from the constant AUDIT_SETTINGS only, never from input.
    return [
        sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role_name), sql.SQL(name), sql.Literal(value))
        for name, value in AUDIT_SETTINGS
    ]


def audit_findings(conn: _Conn) -> list[Finding]:
    """`resource check`: whether direct sessions are recorded in the server log."""
    status = audit_status(conn)
    if not status.loaded:
        return [
            Finding(
                "pgaudit-unavailable",
                "warning",
                "pgaudit is not loaded: what a direct session reads is recorded nowhere (amber's ledger holds the "
                "grant and its sessions' start, not their statements); use a gateway level, or load pgaudit",
                "install pgaudit (Debian: postgresql-<major>-pgaudit) and add it to shared_preload_libraries "
                "(a restart); amber then sets pgaudit.log per grant role",
            )
        ]
    if not status.can_set:
        return [
            Finding(
                "pgaudit-not-settable",
                "warning",
                "pgaudit is loaded but amber's admin role may not set pgaudit.log on grant roles, so direct sessions "
                "are not recorded",
                "GRANT SET ON PARAMETER pgaudit.log, pgaudit.log_parameter TO <amber's admin role>",
            )
        ]
    return [
        Finding(
            "pgaudit-per-role",
            "ok",
            "pgaudit is loaded: every grant role gets pgaudit.log = 'all' (which it cannot turn off), so direct "
            "sessions' statements are written to the server log",
        )
    ]
