"""`check` finds what a hostile target leaves a read-only role to write with, and `harden` fixes exactly that.

Against the real local PostgreSQL: a throwaway database made hostile (tests/provisioners/hostile.py), a grant
role provisioned the way amber does, and logins as that role with its own password.
"""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg import errors, sql

from amber.provisioners.base import Finding
from amber.provisioners.postgres import PostgresProvisioner

from .conftest import TargetDb, admin_connect
from .hostile import make_hostile

pytestmark = pytest.mark.postgres

PASSWORD = "amb_pg_test_" + secrets.token_hex(12)


def _by_code(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for finding in findings:
        out.setdefault(finding.code, []).append(finding)
    return out


def _role(provisioner: PostgresProvisioner, target_db: TargetDb) -> str:
    spec = target_db.spec()
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    return spec.role_name


def test_check_reports_each_hostile_path_with_the_exact_fix_and_harden_applies_exactly_those(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    make_hostile(target_db)
    role = _role(provisioner, target_db)
    findings = provisioner.check()
    codes = _by_code(findings)

    definer = {f.fix: f for f in codes["security-definer-executable"]}
    add_order = definer['REVOKE EXECUTE ON FUNCTION "public"."add_order"(id integer, item text) FROM PUBLIC']
    assert "postgres (a superuser)" in add_order.message
    assert add_order.severity == "danger"
    assert 'REVOKE EXECUTE ON PROCEDURE "public"."log_note"(IN n text) FROM PUBLIC' in definer
    # Every schema, not only the level's: vault is not granted, its function is reported all the same.
    assert 'REVOKE EXECUTE ON FUNCTION "vault"."rotate"() FROM PUBLIC' in definer

    # dblink_connect_u is SECURITY DEFINER (it connects as the server's OS user, without a password).
    assert 'REVOKE EXECUTE ON FUNCTION "public"."dblink_connect_u"(text) FROM PUBLIC' in definer
    assert 'REVOKE EXECUTE ON FUNCTION "public"."dblink_connect_u"(text, text) FROM PUBLIC' in definer

    (restricted,) = codes["restricted-routine-granted"]
    assert restricted.fix == 'REVOKE EXECUTE ON FUNCTION "pg_catalog"."pg_stat_reset"() FROM PUBLIC'
    assert "somebody granted it" in restricted.message

    (dblink,) = codes["dblink-executable"]
    assert dblink.fix is not None
    assert dblink.fix.startswith('REVOKE EXECUTE ON FUNCTION "public"."dblink"(text)')
    assert '"public"."dblink_exec"(text, text)' in dblink.fix
    assert dblink.fix.endswith(" FROM PUBLIC")
    (fdw_functions,) = codes["postgres-fdw-executable"]
    assert '"public"."postgres_fdw_handler"()' in str(fdw_functions.fix)

    assert [f.fix for f in codes["fdw-usage"]] == ['REVOKE USAGE ON FOREIGN DATA WRAPPER "postgres_fdw" FROM PUBLIC']
    servers = {f.fix: f for f in codes["foreign-server-usage"]}
    dblink_loop = servers['REVOKE USAGE ON FOREIGN SERVER "dblink_loop" FROM PUBLIC']
    assert "user mapping for PUBLIC logs every such role in as amber_hw_" in dblink_loop.message
    assert 'REVOKE USAGE ON FOREIGN SERVER "pg_loop" FROM PUBLIC' in servers
    assert "public-user-mapping" not in codes  # reported once the servers are no longer usable

    assert [f.fix for f in codes["lo-compat-privileges"]] == [
        f'ALTER DATABASE "{target_db.name}" SET lo_compat_privileges = off'
    ]
    assert 'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC' in {f.fix for f in codes["public-create-on-schema"]}
    assert "role-self-settings" not in codes

    # Fixes that are file edits or server settings are shown as advice, never applied.
    advice = {"other-databases-reachable", "prepared-transactions"}
    shown = [f.fix for f in findings if f.fix is not None and not f.code.startswith("hba-") and f.code not in advice]
    applied = provisioner.harden()
    assert applied == shown  # exactly the statements check showed, in its order

    # What amber does about expiry and recording (pg_cron, pgaudit: test_postgres_cron.py) is reported as "ok".
    after = _by_code([f for f in provisioner.check() if not f.code.startswith(("expiry-", "pgaudit-"))])
    assert {f.severity for fs in after.values() for f in fs} == {"warning"}
    assert set(after) == {"public-user-mapping", "other-databases-reachable"}
    assert {f.fix for f in after["public-user-mapping"]} == {None}
    assert provisioner.harden() == []  # idempotent: nothing left to apply

    with target_db.connect_as(role, PASSWORD) as conn:
        conn.execute("SET default_transaction_read_only = off")
        for statement in (
            "SELECT public.add_order(9, 'x')",
            "CALL public.log_note('x')",
            "SELECT dblink_exec('dblink_loop', 'INSERT INTO app.orders VALUES (9, ''x'')')",
            "SELECT dblink_connect_u('host=127.0.0.1')",
            "CREATE SERVER mine FOREIGN DATA WRAPPER postgres_fdw",
            "CREATE TABLE public.mine (a int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)


def test_check_cautions_when_the_application_may_rely_on_a_security_definer_function(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    with target_db.admin() as conn:
        conn.execute(
            "CREATE FUNCTION public.stamp() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user';"
            "CREATE VIEW public.stamped AS SELECT public.stamp() AS who"
        )
    (finding,) = _by_code(provisioner.check())["security-definer-executable"]
    assert finding.fix == 'REVOKE EXECUTE ON FUNCTION "public"."stamp"() FROM PUBLIC'
    assert "CAUTION, the application may rely on it (used by rule _RETURN on view stamped)" in finding.message
    assert 'GRANT EXECUTE ON FUNCTION "public"."stamp"() TO the application\'s roles by name' in finding.message


def test_security_definer_functions_granted_to_the_grantee_groups_parents_are_reported(target_db: TargetDb) -> None:
    group = target_db.new_role_name()  # a private grantee group: the shared amber_grantees is never changed
    parent = f"amber_hp_{secrets.token_hex(5)}"
    owner = f"amber_hq_{secrets.token_hex(5)}"  # not a superuser, but it owns a table: it can write
    target_db.roles.extend([parent, owner])
    g, p, o = sql.Identifier(group), sql.Identifier(parent), sql.Identifier(owner)
    with target_db.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN; CREATE ROLE {} NOLOGIN IN ROLE {}").format(p, g, p))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(o))
        conn.execute(
            "CREATE FUNCTION public.wipe() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM public.notes';"
            "REVOKE EXECUTE ON FUNCTION public.wipe() FROM PUBLIC"
        )
        conn.execute(
            sql.SQL("ALTER TABLE public.notes OWNER TO {0}; ALTER FUNCTION public.wipe() OWNER TO {0}").format(o)
        )
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.wipe() TO {}").format(p))
    with PostgresProvisioner(target_db.admin_dsn, grantee_group=group) as provisioner:
        (finding,) = _by_code(provisioner.check())["security-definer-executable"]
        assert finding.fix == f'REVOKE EXECUTE ON FUNCTION "public"."wipe"() FROM "{parent}"'
        assert finding.message.startswith(
            f"{parent} may execute SECURITY DEFINER function public.wipe(), which runs as its owner {owner} "
            "(owns 1 tables or sequences here)"
        )
        provisioner.harden()
        assert "security-definer-executable" not in _by_code(provisioner.check())


def test_a_role_that_changed_its_own_settings_is_reported_and_harden_puts_them_back(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    role = _role(provisioner, target_db)
    ident = sql.Identifier(role)
    with target_db.connect_as(role, PASSWORD) as conn:
        # PostgreSQL lets every role do this to itself; no privilege or event trigger stops it.
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = off").format(ident))
        conn.execute(sql.SQL("ALTER ROLE {} SET work_mem = '1GB'").format(ident))
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = public").format(
                ident, sql.Identifier(target_db.name)
            )
        )
        with pytest.raises(errors.InsufficientPrivilege):  # superuser-only settings stay out of reach
            conn.execute(sql.SQL("ALTER ROLE {} SET pgaudit.log = 'none'").format(ident))
    findings = _by_code(provisioner.check())["role-self-settings"]
    assert [f.fix for f in findings] == [
        f'ALTER ROLE "{role}" IN DATABASE "{target_db.name}" RESET ALL',
        f'ALTER ROLE "{role}" SET "default_transaction_read_only" = \'on\'; ALTER ROLE "{role}" RESET "work_mem"',
    ]
    assert "default_transaction_read_only=off, work_mem=1GB" in findings[1].message
    provisioner.harden()
    assert "role-self-settings" not in _by_code(provisioner.check())
    with target_db.connect_as(role, PASSWORD) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW work_mem").fetchone() != ("1GB",)


def test_a_role_granted_to_an_amber_role_directly_is_reported_and_revoked(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    role = _role(provisioner, target_db)
    with target_db.admin() as conn:
        conn.execute(sql.SQL("GRANT pg_read_server_files TO {}").format(sql.Identifier(role)))
    (finding,) = _by_code(provisioner.check())["grant-role-member"]
    assert finding.fix == f'REVOKE "pg_read_server_files" FROM "{role}"'
    provisioner.harden()
    assert "grant-role-member" not in _by_code(provisioner.check())
    with target_db.connect_as(role, PASSWORD) as conn, pytest.raises(psycopg.Error):
        conn.execute("SET ROLE pg_read_server_files")


def test_write_privileges_on_a_system_catalog_are_reported(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    with target_db.admin() as conn:
        conn.execute("GRANT UPDATE ON pg_catalog.pg_description TO PUBLIC")
    (finding,) = _by_code(provisioner.check())["system-catalog-write"]
    assert finding.fix == 'REVOKE UPDATE ON TABLE "pg_catalog"."pg_description" FROM PUBLIC'
    provisioner.harden()
    assert "system-catalog-write" not in _by_code(provisioner.check())


def test_objects_a_grant_role_made_before_harden_are_reported_without_a_fix(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    role = _role(provisioner, target_db)
    with target_db.admin() as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    with target_db.connect_as(role, PASSWORD) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("CREATE TABLE public.mine (a int)")
    provisioner.harden()  # takes CREATE away, but the role still owns (and may write) what it made
    (finding,) = _by_code(provisioner.check())["grant-role-owns"]
    assert finding.fix is None
    assert finding.message.startswith(f"role {role} owns table public.mine in this database")
    with target_db.connect_as(role, PASSWORD) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("INSERT INTO public.mine VALUES (1)")


def test_pgaudits_event_trigger_functions_are_reported_and_revoking_them_keeps_ddl_working(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    owner = f"amber_ho_{secrets.token_hex(5)}"
    target_db.roles.append(owner)
    with target_db.admin() as conn:
        conn.execute("CREATE EXTENSION pgaudit")  # loaded by scripts/services.sh
        conn.execute(
            sql.SQL("CREATE ROLE {0} NOLOGIN; GRANT USAGE, CREATE ON SCHEMA app TO {0}").format(sql.Identifier(owner))
        )
    findings = _by_code(provisioner.check())["security-definer-executable"]
    assert {f.fix for f in findings} == {
        'REVOKE EXECUTE ON FUNCTION "public"."pgaudit_ddl_command_end"() FROM PUBLIC',
        'REVOKE EXECUTE ON FUNCTION "public"."pgaudit_sql_drop"() FROM PUBLIC',
    }
    assert all("the fix stops only direct calls" in f.message for f in findings)
    provisioner.harden()
    with target_db.admin() as conn:
        # Event triggers call their functions without checking EXECUTE: DDL by a role without it still works.
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        conn.execute("CREATE TABLE app.after_harden (a int); DROP TABLE app.after_harden")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT public.pgaudit_ddl_command_end()")


def test_other_databases_a_granted_role_may_log_in_to_are_reported(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    role = _role(provisioner, target_db)
    other = f"amber_t_{secrets.token_hex(6)}"
    with admin_connect("postgres") as server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    try:
        provisioner.harden()
        (finding,) = _by_code(provisioner.check())["other-databases-reachable"]
        assert finding.severity == "warning"
        assert finding.message.startswith("granted roles may log in to ")
        assert "(template1, " in finding.message  # first: it is copied into every database created later
        assert "copied into every database created later" in finding.message
        assert str(finding.fix).startswith("in pg_hba.conf admit +amber_grantees only to the target databases")
        # What the warning is about: harden ran here, not there, so the read-only role writes in the other one.
        with psycopg.connect(
            host=target_db.host, port=target_db.port, dbname=other, user=role, password=PASSWORD, autocommit=True
        ) as conn:
            (oid,) = conn.execute("SELECT lo_from_bytea(0, 'written by a read-only grant')").fetchone() or (None,)
            assert oid is not None
    finally:
        with admin_connect("postgres") as server:
            server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
