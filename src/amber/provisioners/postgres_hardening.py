"""What else on a PostgreSQL target lets a granted role change state, beyond PUBLIC's table and database grants.

`PostgresProvisioner.check()` calls `plan()` here; each result is a Finding and (when SQL can fix it) the
exact `psycopg.sql` statement `harden()` runs, whose rendering is the Finding's `fix`. This module owns:
- SECURITY DEFINER routines that PUBLIC, or a role a granted role is or may become, can execute, in every
  schema;
- built-in and extension routines that PostgreSQL or the extension ships without EXECUTE for PUBLIC
  (`pg_init_privs`: pg_read_file, dblink_connect_u, ...) and that somebody granted since;
- dblink and postgres_fdw: their routines executable by those roles, USAGE on foreign-data wrappers and
  foreign servers, user mappings for PUBLIC;
- write privileges those roles hold on relations in the system schemas;
- roles granted directly to amber's roles, objects amber's roles own, and amber's roles whose own settings
  were changed (`ALTER ROLE <self> SET ...`, which PostgreSQL lets every role do);
- `lo_compat_privileges` and `max_prepared_transactions`;
- other databases of the server that granted roles may connect to (harden changes only this one).

"amber's roles" here are the `amber_g_*` roles that hold a privilege on this database (provision grants
CONNECT): roles are cluster-wide, and those of other databases are their own targets' business. "Roles a
granted role is or may become" (`reach`): PUBLIC, the grantee group, amber's roles, and every role any of
them is a member of, transitively. amber's roles are NOINHERIT, so they use a parent's
privileges only after `SET ROLE`, which PostgreSQL 15 allows every member.

What is excluded, and why: nothing by schema. Stock PostgreSQL 15 ships no SECURITY DEFINER routine (the initdb
objects in pg_catalog and information_schema have `prosecdef` false), so one found there was put there by
somebody and is reported like any other (extensions ship some: dblink's dblink_connect_u for superusers,
pgaudit's event-trigger functions for PUBLIC; reported the same way). Built-in routines PostgreSQL grants to
PUBLIC by default are not reported: the server ships them as safe for any role (each checks its caller itself,
e.g. pg_terminate_backend only signals the caller's own role's sessions); the exceptions that write are the
large-object functions (the provisioner's own check) and session-only effects documented in docs/threat-model.md
(advisory locks, NOTIFY, set_config, txid_current).

Does NOT look inside the server's other databases (it only says which a granted role can log in to), at
routines' bodies (an invoker's-rights routine can do only what its caller may), at event triggers, or at the
password a role gave itself (PostgreSQL cannot tell it from the one amber set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from amber.provisioners.base import ROLE_PREFIX, Finding

_Conn = psycopg.Connection[TupleRow]
Plan = list[tuple[Finding, sql.Composed | None]]

# Extensions whose routines open connections to other servers (or this one, as another role) and run SQL
# there, outside the caller's own read-only session.
_CONNECTING_EXTENSIONS = ("dblink", "postgres_fdw")
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
_RELATION_WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER")
_SHOWN = 6  # routines named in one message before "and N more"


@dataclass(frozen=True)
class ExpectedSettings:
    """The role settings `provision` gives every amber role (name -> value as pg_db_role_setting shows it).

    `statement_timeout` differs per level, so only its presence and a non-zero value are expected.
    """

    fixed: dict[str, str]
    per_level: tuple[str, ...] = ("statement_timeout",)
    # Settings amber may add that a role cannot set itself (superuser-only: pgaudit's), so never reported.
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Routine:
    oid: int
    schema: str
    name: str
    arguments: str  # PostgreSQL's own rendering (pg_get_function_identity_arguments): quoted by the server
    is_procedure: bool
    owner: str
    owner_is_superuser: bool
    grantees: tuple[str, ...]  # "" for PUBLIC
    is_trigger: bool = False  # returns trigger or event_trigger

    def signature(self) -> sql.Composed:
        # NOTE: `arguments` comes from the server's catalog rendering, which quotes names and types itself;
        # it is never text from a user of amber.
        return sql.SQL("{}({})").format(sql.Identifier(self.schema, self.name), sql.SQL(self.arguments))

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}({self.arguments})"


def plan(
    conn: _Conn,
    *,
    database: str,
    grantee_group: str | None,
    expected: ExpectedSettings,
    covered_catalog_functions: Sequence[str] = (),
) -> Plan:
    """Every finding of this module, in a stable order, each with its SQL fix (or None when SQL cannot fix it).

    `covered_catalog_functions` are pg_catalog routines the caller already reports for PUBLIC (the
    large-object writers); they are reported here only when a role other than PUBLIC holds them.
    """
    ours = _amber_roles(conn)
    reach = _reach(conn, grantee_group, ours)
    out: Plan = []
    out += _security_definer(conn, reach)
    out += _shipped_restricted(conn, reach, covered_catalog_functions)
    out += _connecting_extensions(conn, reach)
    out += _foreign_data(conn, reach)
    out += _system_relation_writes(conn, reach)
    out += _grant_role_memberships(conn, grantee_group, ours)
    out += _grant_role_owned(conn, ours)
    out += _self_settings(conn, database, expected, ours)
    out += _server_settings(conn, database)
    out += _other_databases(conn, reach, grantee_group)
    return out


# --- who a granted role is or may become -------------------------------------------------------------------


def _amber_roles(conn: _Conn) -> list[str]:
    """`amber_g_*` roles holding a privilege on this database (provision grants them CONNECT)."""
    rows = conn.execute(
        "SELECT DISTINCT r.rolname FROM pg_database d CROSS JOIN aclexplode(d.datacl) a"
        " JOIN pg_roles r ON r.oid = a.grantee"
        " WHERE d.datname = current_database() AND starts_with(r.rolname, %s) ORDER BY 1",
        [ROLE_PREFIX],
    ).fetchall()
    return [str(name) for (name,) in rows]


def _reach(conn: _Conn, grantee_group: str | None, ours: Sequence[str]) -> dict[int, str]:
    """oid -> name of PUBLIC (0, named "") and every role a granted role is or may become by SET ROLE."""
    rows = conn.execute(
        "WITH RECURSIVE start(oid) AS ("
        " SELECT oid FROM pg_roles WHERE rolname = %(group)s OR rolname = ANY(%(ours)s)"
        "), reach(oid) AS ("
        " SELECT oid FROM start UNION SELECT m.roleid FROM pg_auth_members m JOIN reach r ON m.member = r.oid"
        ") SELECT r.oid, r.rolname FROM reach JOIN pg_roles r USING (oid) ORDER BY 2",
        {"group": grantee_group or "", "ours": list(ours)},
    ).fetchall()
    reach = {0: ""}
    reach.update({int(oid): str(name) for oid, name in rows})
    return reach


def _grantee_list(grantees: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("PUBLIC") if g == "" else sql.Identifier(g) for g in sorted(set(grantees)))


def _who(grantees: Sequence[str]) -> str:
    names = sorted({"PUBLIC" if g == "" else g for g in grantees})
    return ", ".join(names)


def _routines(conn: _Conn, reach: dict[int, str], condition: str, params: dict[str, object]) -> list[_Routine]:
    """Routines matching `condition` (SQL on pg_proc `p`, pg_namespace `n`; a constant of this module) that a
    role in `reach` may execute."""
    rows = conn.execute(
        "SELECT p.oid, n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind = 'p',"
        " o.rolname, o.rolsuper, array_agg(DISTINCT a.grantee ORDER BY a.grantee),"
        " p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_roles o ON o.oid = p.proowner,"
        " aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
        f" WHERE ({condition}) AND a.privilege_type = 'EXECUTE' AND a.grantee = ANY(%(reach)s::oid[])"
        " AND a.grantee <> p.proowner"
        " GROUP BY 1, 2, 3, 4, 5, 6, 7, 9 ORDER BY 2, 3, 4",
        {**params, "reach": list(reach)},
    ).fetchall()
    return [
        _Routine(
            oid=int(oid),
            schema=str(schema),
            name=str(name),
            arguments=str(arguments),
            is_procedure=bool(is_procedure),
            owner=str(owner),
            owner_is_superuser=bool(superuser),
            grantees=tuple(reach[int(g)] for g in grantees),
            is_trigger=bool(is_trigger),
        )
        for oid, schema, name, arguments, is_procedure, owner, superuser, grantees, is_trigger in rows
    ]


def _revoke_execute(routines: Sequence[_Routine]) -> sql.Composed:
    """One REVOKE for routines of one kind, from every grantee in `reach` that holds one of them."""
    keyword = sql.SQL("PROCEDURE" if routines[0].is_procedure else "FUNCTION")
    grantees = [g for routine in routines for g in routine.grantees]
    return sql.SQL("REVOKE EXECUTE ON {} {} FROM {}").format(
        keyword, sql.SQL(", ").join(r.signature() for r in routines), _grantee_list(grantees)
    )


def _usage_evidence(conn: _Conn, oids: Sequence[int]) -> dict[int, list[str]]:
    """What shows the application may rely on a routine: objects that call it, and calls counted so far.

    Does NOT see calls from application code (only `track_functions` counts them, when it is on) or from
    other routines' bodies.
    """
    evidence: dict[int, list[str]] = {oid: [] for oid in oids}
    for oid, what in conn.execute(
        "SELECT d.refobjid, pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d"
        " WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = ANY(%s::oid[]) AND d.deptype = 'n'"
        " ORDER BY 1, 2",
        [list(oids)],
    ).fetchall():
        evidence[int(oid)].append(f"used by {what}")
    for oid, calls in conn.execute(
        "SELECT funcid, calls FROM pg_stat_user_functions WHERE funcid = ANY(%s::oid[]) AND calls > 0",
        [list(oids)],
    ).fetchall():
        evidence[int(oid)].append(f"called {calls} times since statistics were reset")
    return evidence


def _in_use_note(routine_sig: str, keyword: str, evidence: list[str]) -> str:
    if not evidence:
        return ""
    return (
        f"; CAUTION, the application may rely on it ({'; '.join(evidence)}): after harden, "
        f"GRANT EXECUTE ON {keyword} {routine_sig} TO the application's roles by name"
    )


def _summary(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:_SHOWN])
    return shown if len(labels) <= _SHOWN else f"{shown} and {len(labels) - _SHOWN} more"


# --- the checks -------------------------------------------------------------------------------------------


def _security_definer(conn: _Conn, reach: dict[int, str]) -> Plan:
    out: Plan = []
    routines = _routines(conn, reach, "p.prosecdef", {})
    evidence = _usage_evidence(conn, [r.oid for r in routines])
    powers = _owner_powers(conn, sorted({r.owner for r in routines if not r.owner_is_superuser}))
    for routine in routines:
        fix = _revoke_execute([routine])
        keyword = "PROCEDURE" if routine.is_procedure else "FUNCTION"
        power = "a superuser" if routine.owner_is_superuser else powers.get(routine.owner, "")
        owner = f"{routine.owner} ({power})" if power else routine.owner
        message = (
            f"{_who(routine.grantees)} may execute SECURITY DEFINER {keyword.lower()} {routine.label}, which runs "
            f"as its owner {owner} with everything that role may do (write, connect elsewhere with dblink), "
            "whatever the caller's own privileges or read-only session"
            + (
                "; it returns a trigger type but can still be called directly (C functions such as pgaudit's "
                "do not refuse); firing its trigger does not check EXECUTE, so the fix stops only direct calls"
                if routine.is_trigger
                else ""
            )
            + _in_use_note(routine.signature().as_string(conn), keyword, evidence[routine.oid])
        )
        out.append((Finding("security-definer-executable", "danger", message, fix.as_string(conn)), fix))
    return out


def _owner_powers(conn: _Conn, owners: Sequence[str]) -> dict[str, str]:
    """What makes each (non-superuser) owner able to write here, in words; owners with none found are absent.

    Does NOT follow role memberships other than pg_write_all_data, nor look at other databases.
    """
    powers: dict[str, str] = {}
    for owner, owned, granted, write_all in conn.execute(
        "SELECT r.rolname,"
        " (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p', 'S', 'm', 'f')),"
        " EXISTS (SELECT 1 FROM pg_class c CROSS JOIN aclexplode(c.relacl) a WHERE a.grantee = r.oid"
        "  AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),"
        " pg_has_role(r.oid, 'pg_write_all_data', 'USAGE')"
        " FROM pg_roles r WHERE r.rolname = ANY(%s)",
        [list(owners)],
    ).fetchall():
        reasons = []
        if owned:
            reasons.append(f"owns {owned} tables or sequences here")
        if granted:
            reasons.append("holds write privileges on tables here")
        if write_all:
            reasons.append("a member of pg_write_all_data")
        if reasons:
            powers[str(owner)] = ", ".join(reasons)
    return powers


def _shipped_restricted(conn: _Conn, reach: dict[int, str], covered: Sequence[str]) -> Plan:
    """Routines shipped without EXECUTE for PUBLIC (pg_init_privs) that PUBLIC or a reachable role now holds."""
    out: Plan = []
    routines = _routines(
        conn,
        reach,
        "NOT p.prosecdef AND EXISTS (SELECT 1 FROM pg_init_privs i WHERE i.classoid = 'pg_proc'::regclass"
        " AND i.objoid = p.oid AND i.objsubid = 0 AND NOT EXISTS (SELECT 1 FROM aclexplode(i.initprivs) x"
        "  WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE'))",
        {},
    )
    for routine in routines:
        if routine.schema == "pg_catalog" and routine.name in covered and routine.grantees == ("",):
            continue  # the provisioner's large-object check reports PUBLIC's EXECUTE on these
        fix = _revoke_execute([routine])
        message = (
            f"{_who(routine.grantees)} may execute {routine.label}, which PostgreSQL or its extension ships "
            "for superusers or chosen roles only (it reads or writes server files, opens connections without a "
            "password, or changes server state); somebody granted it"
        )
        out.append((Finding("restricted-routine-granted", "danger", message, fix.as_string(conn)), fix))
    return out


def _connecting_extensions(conn: _Conn, reach: dict[int, str]) -> Plan:
    out: Plan = []
    for extension in _CONNECTING_EXTENSIONS:
        routines = _routines(
            conn,
            reach,
            "EXISTS (SELECT 1 FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid"
            " WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'"
            " AND d.refclassid = 'pg_extension'::regclass AND e.extname = %(extension)s)"
            " AND NOT p.prosecdef",
            {"extension": extension},
        )
        if not routines:
            continue
        evidence = _usage_evidence(conn, [r.oid for r in routines])
        used = [f"{r.name}: {'; '.join(evidence[r.oid])}" for r in routines if evidence[r.oid]]
        fix = _revoke_execute(routines)
        grantees = [g for r in routines for g in r.grantees]
        message = (
            f"{_who(grantees)} may execute {len(routines)} functions of extension {extension} "
            f"({_summary([r.name for r in routines])}): a granted role can connect to this or another server "
            "as a role whose password it knows, or through a foreign server's user mapping, and write there "
            "outside its own read-only session. The fix revokes them all (the server calls wrapper handlers "
            "and validators without checking EXECUTE)"
        )
        if used:
            message += (
                f"; CAUTION, the application may rely on them ({'; '.join(used)}): after harden, grant EXECUTE "
                "on what it calls to its roles by name"
            )
        out.append((Finding(f"{extension.replace('_', '-')}-executable", "danger", message, fix.as_string(conn)), fix))
    return out


def _foreign_data(conn: _Conn, reach: dict[int, str]) -> Plan:
    out: Plan = []
    reach_oids = list(reach)
    for wrapper, grantees in conn.execute(
        "SELECT w.fdwname, array_agg(DISTINCT a.grantee ORDER BY a.grantee) FROM pg_foreign_data_wrapper w,"
        " aclexplode(coalesce(w.fdwacl, acldefault('F', w.fdwowner))) a"
        " WHERE a.privilege_type = 'USAGE' AND a.grantee = ANY(%s::oid[]) AND a.grantee <> w.fdwowner"
        " GROUP BY 1 ORDER BY 1",
        [reach_oids],
    ).fetchall():
        names = [reach[int(g)] for g in grantees]
        fix = sql.SQL("REVOKE USAGE ON FOREIGN DATA WRAPPER {} FROM {}").format(
            sql.Identifier(wrapper), _grantee_list(names)
        )
        message = (
            f"{_who(names)} may use foreign-data wrapper {wrapper}: a granted role can create a foreign server "
            "and a user mapping for itself pointing anywhere, and connect out through it"
        )
        out.append((Finding("fdw-usage", "danger", message, fix.as_string(conn)), fix))

    public_mappings = {
        str(server): str(user or "?")
        for server, user in conn.execute(
            # pg_user_mappings (the view), not pg_user_mapping: only superusers may read the catalog, and the view
            # shows the options to whoever owns the server (else NULL: the user is then named "?").
            "SELECT m.srvname, (SELECT split_part(o, '=', 2) FROM unnest(m.umoptions) o WHERE o LIKE 'user=%%')"
            " FROM pg_user_mappings m WHERE m.umuser = 0"
        ).fetchall()
    }
    usable: set[str] = set()
    for server, wrapper, grantees in conn.execute(
        "SELECT s.srvname, w.fdwname, array_agg(DISTINCT a.grantee ORDER BY a.grantee)"
        " FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw,"
        " aclexplode(coalesce(s.srvacl, acldefault('S', s.srvowner))) a"
        " WHERE a.privilege_type = 'USAGE' AND a.grantee = ANY(%s::oid[]) AND a.grantee <> s.srvowner"
        " GROUP BY 1, 2 ORDER BY 1",
        [reach_oids],
    ).fetchall():
        usable.add(str(server))
        names = [reach[int(g)] for g in grantees]
        fix = sql.SQL("REVOKE USAGE ON FOREIGN SERVER {} FROM {}").format(sql.Identifier(server), _grantee_list(names))
        mapping = (
            f"; a user mapping for PUBLIC logs every such role in as {public_mappings[server]}"
            if server in public_mappings
            else "; a role may create a user mapping for itself"
        )
        message = (
            f"{_who(names)} may use foreign server {server} (wrapper {wrapper}): a granted role can reach it "
            f"with dblink or foreign tables{mapping}"
        )
        out.append((Finding("foreign-server-usage", "danger", message, fix.as_string(conn)), fix))
    for server, user in sorted(public_mappings.items()):
        if server in usable:
            continue
        message = (
            f"foreign server {server} has a user mapping for PUBLIC (as {user}): no granted role may use the "
            "server now, but any role later given USAGE on it connects with those credentials; prefer one "
            "mapping per application role, then DROP USER MAPPING FOR PUBLIC SERVER ..."
        )
        out.append((Finding("public-user-mapping", "warning", message, None), None))
    return out


def _system_relation_writes(conn: _Conn, reach: dict[int, str]) -> Plan:
    """Write privileges on relations in pg_catalog / information_schema held by PUBLIC or reachable roles.

    The provisioner's own check covers PUBLIC in the other schemas; the grantee group's privileges anywhere
    are its grantee-group check's.
    """
    out: Plan = []
    # Privileges initdb shipped (pg_init_privs) are the server's design, e.g. PUBLIC's UPDATE on the
    # pg_settings view, which is SET by another name; only what somebody granted since is reported.
    for schema, relation, privileges, grantees in conn.execute(
        "SELECT n.nspname, c.relname, array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type),"
        " array_agg(DISTINCT a.grantee ORDER BY a.grantee)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
        " LEFT JOIN pg_init_privs i ON i.classoid = 'pg_class'::regclass AND i.objoid = c.oid AND i.objsubid = 0"
        " WHERE n.nspname = ANY(%s) AND a.grantee = ANY(%s::oid[]) AND a.grantee <> c.relowner"
        " AND a.privilege_type = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(i.initprivs, acldefault('r', c.relowner))) x"
        "  WHERE x.grantee = a.grantee AND x.privilege_type = a.privilege_type)"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        [list(_SYSTEM_SCHEMAS), list(reach), list(_RELATION_WRITE_PRIVILEGES)],
    ).fetchall():
        names = [reach[int(g)] for g in grantees]
        kept = [p for p in _RELATION_WRITE_PRIVILEGES if p in privileges]
        fix = sql.SQL("REVOKE {} ON TABLE {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in kept), sql.Identifier(schema, relation), _grantee_list(names)
        )
        message = f"{_who(names)} holds {', '.join(kept)} on system catalog {schema}.{relation}"
        out.append((Finding("system-catalog-write", "danger", message, fix.as_string(conn)), fix))
    return out


def _grant_role_memberships(conn: _Conn, grantee_group: str | None, ours: Sequence[str]) -> Plan:
    """Roles granted to an amber role directly, other than the grantee group (amber grants nothing else)."""
    out: Plan = []
    for member, parent in conn.execute(
        "SELECT m.rolname, r.rolname FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member"
        " JOIN pg_roles r ON r.oid = a.roleid WHERE m.rolname = ANY(%s) AND r.rolname <> %s ORDER BY 1, 2",
        [list(ours), grantee_group or ""],
    ).fetchall():
        fix = sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(parent), sql.Identifier(member))
        message = (
            f"role {member} is a member of {parent}, which amber never grants: it can SET ROLE {parent} and use "
            "that role's privileges"
        )
        out.append((Finding("grant-role-member", "danger", message, fix.as_string(conn)), fix))
    return out


def _grant_role_owned(conn: _Conn, ours: Sequence[str]) -> Plan:
    """Objects in this database owned by an amber role: it made them while something let it create.

    The owner of an object may write it whatever amber granted, so `harden` revoking CREATE later does not
    help. No SQL fix: REASSIGN OWNED would hand the objects (a SECURITY DEFINER function among them, say) to
    a more powerful role; revoking the grant runs DROP OWNED BY.
    """
    out: Plan = []
    for role, objects in conn.execute(
        "SELECT r.rolname, array_agg(o.type || ' ' || o.identity ORDER BY o.type, o.identity)"
        " FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid"
        " CROSS JOIN pg_identify_object(d.classid, d.objid, d.objsubid) o"
        " WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype = 'o' AND r.rolname = ANY(%s)"
        " AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY 1 ORDER BY 1",
        [list(ours)],
    ).fetchall():
        message = (
            f"role {role} owns {_summary(list(objects))} in this database and may write them whatever amber "
            "granted; revoke the grant (revoke drops what the role owns) and review what it made"
        )
        out.append((Finding("grant-role-owns", "danger", message, None), None))
    return out


def _self_settings(conn: _Conn, database: str, expected: ExpectedSettings, ours: Sequence[str]) -> Plan:
    """amber roles whose settings differ from what provision set: they used ALTER ROLE <self> SET.

    PostgreSQL lets every role change its own user-level settings and no event trigger fires for ALTER ROLE,
    so this is found after the fact. The settings are conveniences (privileges are the boundary, and the
    gateway pins its own); the fix puts amber's values back. A per-level setting (statement_timeout) is
    reported only when removed or 0: its expected value is the level's, which this module does not know.
    """
    out: Plan = []
    rows = conn.execute(
        "SELECT r.rolname, coalesce(d.datname, ''), s.setconfig FROM pg_db_role_setting s"
        " JOIN pg_roles r ON r.oid = s.setrole LEFT JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE r.rolname = ANY(%s) AND (s.setdatabase = 0 OR d.datname = %s) ORDER BY 1, 2",
        [list(ours), database],
    ).fetchall()
    roles_seen: dict[str, dict[str, str]] = {}
    for role, in_database, config in rows:
        settings = {}
        for item in config or ():
            name, _, value = str(item).partition("=")
            settings[name] = value
        if in_database:
            fix = sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(
                sql.Identifier(role), sql.Identifier(in_database)
            )
            message = (
                f"role {role} set its own defaults in database {in_database} "
                f"({_settings_text(settings)}), which override amber's"
            )
            out.append((Finding("role-self-settings", "danger", message, fix.as_string(conn)), fix))
        else:
            roles_seen[str(role)] = settings
    for role in ours:
        settings = roles_seen.get(role, {})
        statements: list[sql.Composable] = []
        changed: list[str] = []
        for name, value in expected.fixed.items():
            if settings.get(name) != value:
                changed.append(f"{name}={settings.get(name, '(unset)')}")
                statements.append(
                    sql.SQL("ALTER ROLE {} SET {} = {}").format(
                        sql.Identifier(role), sql.Identifier(name), sql.Literal(value)
                    )
                )
        for name in expected.per_level:
            if settings.get(name) in (None, "0"):
                changed.append(f"{name}={settings.get(name, '(unset)')}")
        extra = sorted(set(settings) - set(expected.fixed) - set(expected.per_level) - set(expected.optional))
        for name in extra:
            changed.append(f"{name}={settings[name]}")
            statements.append(sql.SQL("ALTER ROLE {} RESET {}").format(sql.Identifier(role), sql.Identifier(name)))
        if not changed:
            continue
        restore = sql.SQL("; ").join(statements) if statements else None
        message = f"role {role} changed its own settings ({', '.join(changed)}) with ALTER ROLE ... SET"
        if any(name in expected.per_level for name in (c.partition("=")[0] for c in changed)):
            message += "; its statement timeout is per level: revoke the grant and issue a new one to restore it"
        shown = restore.as_string(conn) if restore else None
        out.append((Finding("role-self-settings", "danger", message, shown), restore))
    return out


def _settings_text(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _server_settings(conn: _Conn, database: str) -> Plan:
    out: Plan = []
    # The database's own setting wins over the server's for new sessions (a role cannot set this one).
    row = conn.execute(
        "SELECT coalesce((SELECT split_part(c, '=', 2) FROM pg_db_role_setting s CROSS JOIN unnest(s.setconfig) c"
        "  WHERE s.setrole = 0 AND split_part(c, '=', 1) = 'lo_compat_privileges'"
        "  AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())),"
        " current_setting('lo_compat_privileges')), current_setting('max_prepared_transactions')"
    ).fetchone()
    lo_compat, prepared = (str(row[0]), int(row[1])) if row else ("off", 0)
    if lo_compat == "on":
        fix = sql.SQL("ALTER DATABASE {} SET lo_compat_privileges = off").format(sql.Identifier(database))
        message = (
            "lo_compat_privileges is on: large objects are readable and writable by every role that may call "
            "the large-object functions, whoever owns them"
        )
        out.append((Finding("lo-compat-privileges", "danger", message, fix.as_string(conn)), fix))
    if prepared > 0:
        severity: Literal["warning"] = "warning"
        message = (
            f"max_prepared_transactions is {prepared}: a granted role can PREPARE TRANSACTION, leaving locks "
            "that outlive its session and amber's revoke (which ends sessions) until an admin runs "
            "ROLLBACK PREPARED"
        )
        fix_text = "set max_prepared_transactions = 0 in postgresql.conf (a restart) unless the application uses 2PC"
        out.append((Finding("prepared-transactions", severity, message, fix_text), None))
    return out


def _other_databases(conn: _Conn, reach: dict[int, str], grantee_group: str | None) -> Plan:
    """Other databases a granted role may log in to, where none of this database's hardening applies.

    PUBLIC holds CONNECT (and TEMP, and EXECUTE on the large-object functions) in every new database, so a
    read-only grant role can log in to `postgres` or `template1` and write large objects there; in template1
    they are copied into every database created later. A database is left out when pg_hba.conf's first rule
    for the grantee group and that database (by name or `all`) is `reject`; addresses are NOT compared, and
    when the rules cannot be read (not a superuser) every database with CONNECT counts.
    """
    rows = conn.execute(
        "SELECT d.datname FROM pg_database d"
        " CROSS JOIN aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a"
        " WHERE d.datallowconn AND d.datname <> current_database() AND a.privilege_type = 'CONNECT'"
        " AND a.grantee = ANY(%s::oid[]) GROUP BY 1 ORDER BY 1",
        [list(reach)],
    ).fetchall()
    # template1 first: what is written there is copied into every database created later.
    names = sorted((str(name) for (name,) in rows), key=lambda name: (name != "template1", name))
    rejected = _hba_rejected(conn, grantee_group, names)
    reachable = [name for name in names if name not in rejected]
    if not reachable:
        return []
    group = grantee_group or "amber_grantees"
    message = (
        f"granted roles may log in to {len(reachable)} other database(s) on this server ({_summary(reachable)}), "
        "where PUBLIC holds CONNECT and harden changed nothing: there they keep what PUBLIC may do (by default "
        "temporary tables and writing large objects"
        + (
            "; a large object written in template1 is copied into every database created later"
            if "template1" in reachable
            else ""
        )
        + ")"
    )
    fix = (
        f"in pg_hba.conf admit +{group} only to the target databases and add a `reject` rule for +{group} and "
        "all databases after those (a file edit, then SELECT pg_reload_conf()); or REVOKE CONNECT ON DATABASE "
        "... FROM PUBLIC there and grant it back to the roles that use it"
    )
    return [(Finding("other-databases-reachable", "warning", message, fix), None)]


def _hba_rejected(conn: _Conn, grantee_group: str | None, databases: Sequence[str]) -> set[str]:
    """Databases where, for local and for network connections alike, the first pg_hba.conf rule for the
    grantee group (or all users) is `reject`, or no rule matches."""
    try:
        rules = conn.execute(
            "SELECT type, database, user_name, auth_method FROM pg_hba_file_rules"
            " WHERE error IS NULL ORDER BY line_number"
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return set()
    users = {"all"} | ({f"+{grantee_group}"} if grantee_group else set())
    rejected: set[str] = set()
    for database in databases:
        admitted = False
        for local in (True, False):
            for kind, rule_databases, rule_users, method in rules:
                if (kind == "local") != local:
                    continue
                if users & set(rule_users or ()) and {"all", database} & set(rule_databases or ()):
                    admitted = admitted or method != "reject"
                    break
        if not admitted:
            rejected.add(database)
    return rejected
