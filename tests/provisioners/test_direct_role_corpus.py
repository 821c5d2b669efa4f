"""The direct-role corpus: after `harden`, nothing a grant role runs directly as itself changes the target.

A hostile target (tests/provisioners/hostile.py), a grant role provisioned as amber does, and every statement of
tests/provisioners/direct_role_corpus.py run in the role's own password session with its read-only default
switched off. Around every statement the test takes a fingerprint of the target (table contents, catalog rows,
ACLs, sequences, large objects, other roles and their settings, prepared transactions, statistics resets, server
configuration files, other sessions, files on the server) and of the role's own rows (its pg_authid row,
settings, default privileges, grants to it, memberships).

- Before `harden` the same corpus changes the target through each hostile path (so the test can fail).
- After `harden` the target fingerprint never changes; every statement that still succeeds is one the corpus
  declares harmless or self-only, and a self-only one changes nothing but the role's own rows.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql

from amber.provisioners.postgres import PostgresProvisioner

from .conftest import GRANTEE_GROUP, TargetDb, admin_connect
from .direct_role_corpus import CORPUS, Attempt
from .hostile import LARGE_OBJECT, Hostile, make_hostile

pytestmark = pytest.mark.postgres

PASSWORD = "amb_pg_test_" + secrets.token_hex(12)
_Conn = psycopg.Connection[tuple[object, ...]]

# Per-database catalogs whose rows any created, altered or dropped object shows up in (pg_default_acl is
# compared row by row below: the role's own rows are its own).
_CATALOG_COUNTS = (
    "pg_attrdef",
    "pg_attribute",
    "pg_cast",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_depend",
    "pg_description",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_index",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject_metadata",
    "pg_opclass",
    "pg_policy",
    "pg_publication",
    "pg_rewrite",
    "pg_seclabel",
    "pg_sequence",
    "pg_statistic_ext",
    "pg_trigger",
    "pg_type",
    "pg_user_mapping",
)
# (catalog, acl column, object id expression): ACL entries naming the grant role are its own ("self").
_ACLS = (
    ("pg_class", "relacl", "oid"),
    ("pg_proc", "proacl", "oid"),
    ("pg_namespace", "nspacl", "oid"),
    ("pg_type", "typacl", "oid"),
    ("pg_foreign_server", "srvacl", "oid"),
    ("pg_foreign_data_wrapper", "fdwacl", "oid"),
    ("pg_largeobject_metadata", "lomacl", "oid"),
    ("pg_language", "lanacl", "oid"),
    ("pg_attribute", "attacl", "attrelid::text || '.' || attnum"),
)


@dataclass
class Outcome:
    attempt: Attempt
    error: str | None  # SQLSTATE and message, or None when it succeeded
    target_changed: list[str] = field(default_factory=list)
    self_changed: list[str] = field(default_factory=list)


class Fingerprint:
    """Reads the target's state through a superuser session on the target database."""

    def __init__(self, target: TargetDb, role: str, hostile: Hostile, file: str, names: dict[str, str]) -> None:
        self._conn = target.admin()
        self._role = role
        self._hostile = hostile
        self._file = file
        self._names = names
        self._held: list[int] = [int(self._scalar("SELECT pg_backend_pid()"))]

    def hold(self, pid: int) -> None:
        """A session that must survive the corpus (pg_terminate_backend of others must fail)."""
        self._held.append(pid)

    def close(self) -> None:
        self._conn.close()

    def _scalar(self, query: str | sql.Composable, params: list[object] | None = None) -> object:
        row = self._conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def target(self) -> dict[str, object]:
        out: dict[str, object] = {}
        relations = self._conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in relations:
            out[f"rows of {schema}.{table}"] = self._conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {} x"
                ).format(sql.Identifier(str(schema), str(table)))
            ).fetchone()
        for schema, sequence in self._conn.execute(
            "SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2"
        ).fetchall():
            out[f"sequence {schema}.{sequence}"] = self._conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(str(schema), str(sequence)))
            ).fetchone()
        out["relations"] = self._scalar(
            "SELECT md5(string_agg(concat_ws(' ', oid, relname, relnamespace, relkind, relowner), ','"
            " ORDER BY oid)) FROM pg_class"
        )
        out["routines"] = self._scalar(
            "SELECT md5(string_agg(concat_ws(' ', oid, proname, proowner, prosecdef, md5(prosrc)), ','"
            " ORDER BY oid)) FROM pg_proc"
        )
        out["schemas"] = self._scalar(
            "SELECT string_agg(concat_ws(' ', nspname, nspowner), ',' ORDER BY nspname) FROM pg_namespace"
        )
        counts = self._conn.execute(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(
                    sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(catalog)) for catalog in _CATALOG_COUNTS
                )
            )
        ).fetchone()
        assert counts is not None
        out.update({f"count {catalog}": n for catalog, n in zip(_CATALOG_COUNTS, counts, strict=True)})
        out["default privileges of others"] = self._scalar(
            "SELECT string_agg(concat_ws(' ', defaclrole, defaclnamespace, defaclobjtype, defaclacl), ','"
            " ORDER BY oid) FROM pg_default_acl WHERE defaclrole <> %s::regrole",
            [self._role],
        )
        for catalog, column, key in _ACLS:
            out[f"acl {catalog}"] = self._scalar(
                sql.SQL(
                    "SELECT md5(coalesce(string_agg(e, ',' ORDER BY e), '')) FROM (SELECT concat_ws(' ', {key},"
                    " a.grantor, a.grantee, a.privilege_type, a.is_grantable) AS e FROM {catalog} o"
                    " CROSS JOIN aclexplode(o.{column}) a WHERE a.grantee <> %s::regrole) entries"
                ).format(key=sql.SQL(key), catalog=sql.Identifier(catalog), column=sql.Identifier(column)),
                [self._role],
            )
        out["database"] = self._conn.execute(
            "SELECT datdba, datconnlimit, datallowconn, datacl::text FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
        out["settings of others"] = self._conn.execute(
            "SELECT string_agg(concat_ws(' ', setdatabase, setrole, setconfig), ',' ORDER BY setdatabase, setrole)"
            " FROM pg_db_role_setting WHERE setrole <> %s::regrole AND (setdatabase = (SELECT oid FROM pg_database"
            " WHERE datname = current_database()) OR setrole IN (%s::regrole, %s::regrole, 'postgres'::regrole))",
            [self._role, self._hostile.writer, GRANTEE_GROUP],
        ).fetchone()
        out["other roles"] = self._conn.execute(
            "SELECT string_agg(concat_ws(' ', rolname, rolsuper, rolcanlogin, rolvaliduntil,"
            " rolconnlimit, md5(coalesce(rolpassword, ''))), ',' ORDER BY rolname) FROM pg_authid"
            " WHERE rolname IN (%s, %s, 'postgres')",
            [self._hostile.writer, GRANTEE_GROUP],
        ).fetchone()
        out["memberships of others"] = self._scalar(
            "SELECT string_agg(concat_ws(' ', roleid, member), ',' ORDER BY roleid, member) FROM pg_auth_members"
            " WHERE member IN (%s::regrole, %s::regrole)",
            [self._hostile.writer, GRANTEE_GROUP],
        )
        out["new roles and databases"] = self._conn.execute(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN (%(role)s, 'corpus_renamed')),"
            " (SELECT count(*) FROM pg_database WHERE datname = %(db)s)",
            {"role": self._names["new_role"], "db": self._names["new_db"]},
        ).fetchone()
        out["large objects"] = self._conn.execute(
            "SELECT count(*), md5(coalesce(string_agg(concat_ws(' ', loid, pageno, md5(data)), ','"
            " ORDER BY loid, pageno), '')) FROM pg_largeobject"
        ).fetchone()
        out["prepared transactions"] = self._scalar(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        )
        out["statistics reset"] = self._scalar(
            "SELECT stats_reset::text FROM pg_stat_database WHERE datname = current_database()"
        )
        out["server configuration files"] = self._scalar(
            "SELECT md5(coalesce(string_agg(concat_ws(' ', sourcefile, sourceline, name, setting), ','"
            " ORDER BY sourcefile, sourceline), '')) FROM pg_file_settings"
        )
        out["replication slots"] = self._scalar("SELECT count(*) FROM pg_replication_slots")
        out["held sessions alive"] = self._scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [self._held]
        )
        out["file on the server"] = os.path.exists(self._file)
        return out

    def own(self) -> dict[str, object]:
        """The grant role's own rows: what PostgreSQL lets every role change about itself."""
        return {
            "role row": self._conn.execute(
                "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,"
                " rolbypassrls, rolconnlimit, rolvaliduntil, md5(coalesce(rolpassword, ''))"
                " FROM pg_authid WHERE oid = %s::regrole",
                [self._role],
            ).fetchone(),
            "settings": self._conn.execute(
                "SELECT string_agg(concat_ws(' ', setdatabase, setconfig), ',' ORDER BY setdatabase)"
                " FROM pg_db_role_setting WHERE setrole = %s::regrole",
                [self._role],
            ).fetchone(),
            "default privileges": self._scalar(
                "SELECT string_agg(concat_ws(' ', defaclnamespace, defaclobjtype, defaclacl), ',' ORDER BY oid)"
                " FROM pg_default_acl WHERE defaclrole = %s::regrole",
                [self._role],
            ),
            "grants to it": self._scalar(
                "SELECT count(*) FROM pg_shdepend WHERE refobjid = %s::regrole AND deptype = 'a'", [self._role]
            ),
            "memberships": self._scalar(
                "SELECT string_agg(roleid::regrole::text, ',' ORDER BY roleid::regrole::text) FROM pg_auth_members"
                " WHERE member = %s::regrole",
                [self._role],
            ),
            "comment": self._scalar("SELECT shobj_description(%s::regrole, 'pg_authid')", [self._role]),
        }


def _changed(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@dataclass
class Run:
    target: TargetDb
    hostile: Hostile
    provisioner: PostgresProvisioner
    role: str
    names: dict[str, str]
    file: str

    def statement(self, attempt: Attempt) -> sql.Composed:
        t = self.target
        dsn = "host={} port={} dbname={} user={}"
        return sql.SQL(attempt.statement).format(  # type: ignore[arg-type]  # a test constant, not user input
            role=sql.Identifier(self.role),
            group=sql.Identifier(GRANTEE_GROUP),
            writer=sql.Identifier(self.hostile.writer),
            db=sql.Identifier(t.name),
            new_role=sql.Identifier(self.names["new_role"]),
            new_db=sql.Identifier(self.names["new_db"]),
            file=sql.Literal(self.file),
            program=sql.Literal(f"touch {self.file}"),
            lo=sql.Literal(LARGE_OBJECT),
            dsn_superuser=sql.Literal(dsn.format(t.host, t.port, t.name, "postgres")),
            dsn_writer=sql.Literal(
                dsn.format(t.host, t.port, t.name, self.hostile.writer) + f" password={self.hostile.writer_password}"
            ),
            dsn_self=sql.Literal(dsn.format(t.host, t.port, t.name, self.role) + f" password={PASSWORD}"),
        )

    def corpus(self) -> list[Outcome]:
        """Every attempt in one session as the grant role (reopened if an attempt ends it)."""
        fingerprint = Fingerprint(self.target, self.role, self.hostile, self.file, self.names)
        writer = self.target.connect_as(self.hostile.writer, self.hostile.writer_password)
        fingerprint.hold(int(writer.info.backend_pid))
        conn: _Conn | None = None
        outcomes = []
        try:
            for attempt in CORPUS:
                if conn is None or conn.closed or conn.broken:
                    conn = self.target.connect_as(self.role, PASSWORD)
                conn.execute("SET default_transaction_read_only = off")
                target_before, own_before = fingerprint.target(), fingerprint.own()
                error = None
                try:
                    conn.execute(self.statement(attempt))
                except psycopg.Error as exc:
                    error = f"{exc.sqlstate} {exc.diag.message_primary or exc}"
                if not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                outcomes.append(
                    Outcome(
                        attempt,
                        error,
                        _changed(target_before, fingerprint.target()),
                        _changed(own_before, fingerprint.own()),
                    )
                )
        finally:
            if conn is not None:
                conn.close()
            writer.close()
            fingerprint.close()
        return outcomes


@pytest.fixture
def run(target_db: TargetDb, provisioner: PostgresProvisioner) -> Iterator[Run]:
    hostile = make_hostile(target_db)
    spec = target_db.spec()
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    names = {"new_role": f"amber_corpus_{secrets.token_hex(5)}", "new_db": f"amber_t_corpus_{secrets.token_hex(5)}"}
    target_db.roles.append(names["new_role"])
    # Where COPY TO / PROGRAM would write as the server's OS user (same machine): it must never appear.
    file = os.path.join(tempfile.gettempdir(), f"amber_corpus_{secrets.token_hex(6)}")
    try:
        yield Run(target_db, hostile, provisioner, spec.role_name, names, file)
    finally:
        if os.path.exists(file):
            os.unlink(file)
        with admin_connect("postgres") as server:
            server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names["new_db"])))
            for slot in server.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name = 'corpus_slot'"):
                server.execute("SELECT pg_drop_replication_slot(%s)", [slot[0]])
            for (gid,) in server.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = %s", [target_db.name]
            ).fetchall():
                server.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def _report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        state = "succeeded" if o.error is None else f"refused ({o.error[:70]})"
        changes = f" target: {', '.join(o.target_changed)}" if o.target_changed else ""
        own = f" own rows: {', '.join(o.self_changed)}" if o.self_changed else ""
        lines.append(f"{o.attempt.key:32} {state}{changes}{own}")
    return "\n".join(lines)


# The hostile paths the corpus must write through before harden, so the test can fail.
WRITES_BEFORE_HARDEN = {
    "secdef_function",
    "secdef_procedure",
    "pg_stat_reset",
    "dblink_server",
    "dblink_exec_superuser",
    "dblink_known_password",
    "create_server",
    "user_mapping_self",
    "fdw_foreign_table",
    "fdw_insert",
    "fdw_import",
    "create_table_public",
    "create_function_public",
    "create_type_public",
    "lo_create",
    "lo_creat",
    "lo_truncate_other",
    "lo_from_bytea",
    "lo_put_other",
    "lowrite_other",
    "lo_unlink_other",
    "nextval",
    "temp_table",
    "temp_view",
    "temp_function",
}


def test_the_corpus_is_big_enough_and_keys_are_unique() -> None:
    assert len(CORPUS) >= 60
    assert len({a.key for a in CORPUS}) == len(CORPUS)
    assert not [a.key for a in CORPUS if a.harmless and a.self_only]


def test_before_harden_the_corpus_writes_through_every_hostile_path(run: Run) -> None:
    outcomes = run.corpus()
    wrote = {o.attempt.key for o in outcomes if o.target_changed}
    missing = WRITES_BEFORE_HARDEN - wrote
    assert not missing, f"these did not write before harden: {sorted(missing)}\n{_report(outcomes)}"
    by_key = {o.attempt.key: o for o in outcomes}
    assert "rows of app.orders" in by_key["secdef_function"].target_changed
    assert "rows of app.orders" in by_key["dblink_exec_superuser"].target_changed
    assert "rows of app.orders" in by_key["dblink_known_password"].target_changed
    assert "rows of app.orders" in by_key["fdw_insert"].target_changed
    assert "large objects" in by_key["lo_unlink_other"].target_changed


def test_after_harden_nothing_the_role_runs_directly_changes_the_target(run: Run) -> None:
    run.provisioner.harden()
    findings = [f for f in run.provisioner.check() if not f.code.startswith(("expiry-", "pgaudit-"))]  # "ok"
    assert {f.severity for f in findings} == {"warning"}  # the PUBLIC user mappings stay

    outcomes = run.corpus()
    report = _report(outcomes)
    changed = [o.attempt.key for o in outcomes if o.target_changed]
    assert not changed, f"changed the target after harden: {changed}\n{report}"

    succeeded = {o.attempt.key for o in outcomes if o.error is None}
    tolerated = {a.key for a in CORPUS if a.harmless or a.self_only}
    assert succeeded == tolerated, (
        f"unexpected: {sorted(succeeded - tolerated)}, refused: {sorted(tolerated - succeeded)}\n{report}"
    )
    for o in outcomes:
        if not o.attempt.self_only:
            assert not o.self_changed, f"{o.attempt.key} changed the role's own rows: {o.self_changed}"
    own = {o.attempt.key: o.self_changed for o in outcomes if o.attempt.self_only}
    assert own["alter_role_self_read_only"] == ["settings"]
    assert own["alter_default_privileges_self"] == ["default privileges"]
    assert own["drop_owned_by_self"] == ["default privileges"]  # run by itself, it cannot revoke others' grants
    assert own["alter_role_self_password"] == ["role row"]

    # What the role changed about itself is reported, and harden puts amber's settings back.
    codes = {f.code: f for f in run.provisioner.check()}
    assert "default_transaction_read_only=off" in codes["role-self-settings"].message
    run.provisioner.harden()
    (left,) = [f for f in run.provisioner.check() if f.code == "role-self-settings"]
    assert left.fix is None
    assert "statement_timeout=0" in left.message
    assert "revoke the grant and issue a new one" in left.message
