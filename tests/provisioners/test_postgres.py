"""PostgresProvisioner against the real local PostgreSQL: what a granted role can and cannot do, and when."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors, sql

from amber.provisioners.base import ConnectionInfo, GrantSpec, Provisioner, ProvisionerError, RevokeSpec
from amber.provisioners.postgres import (
    HbaRule,
    PostgresProvisioner,
    hba_findings,
    scram_sha256_verifier,
)

from .conftest import GRANTEE_GROUP, OWNER_TAG, TargetDb

pytestmark = pytest.mark.postgres

PASSWORD = "amb_pg_test_" + secrets.token_hex(12)

# Every way a granted role might try to change data or schema. Each must fail with 42501 (insufficient
# privilege) once the role has switched its read-only default off: privileges, not settings, stop it.
WRITES = [
    "INSERT INTO app.orders VALUES (3, 'plum')",
    "UPDATE app.orders SET item = 'fig'",
    "DELETE FROM app.orders",
    "TRUNCATE app.orders",
    "UPDATE app.order_items SET item = 'fig'",
    "SELECT * FROM app.orders FOR UPDATE",
    "CREATE TABLE app.mine (a int)",
    "CREATE TABLE mine (a int)",
    "CREATE VIEW public.mine AS SELECT 1 AS a",
    "CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA mine",
    "ALTER TABLE app.orders ADD COLUMN extra int",
    "COMMENT ON TABLE app.orders IS 'mine'",
    "SELECT nextval('app.order_ids')",
    "SELECT setval('app.order_ids', 42)",
    "INSERT INTO public.notes VALUES ('mine')",
]


def _provision_with_password(
    provisioner: PostgresProvisioner, target_db: TargetDb, expires_in: timedelta = timedelta(hours=1)
) -> str:
    spec = target_db.spec(expires_in=expires_in)
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    return spec.role_name


def _orders(target_db: TargetDb) -> list[tuple[object, ...]]:
    with target_db.admin() as conn:
        return conn.execute("SELECT id, item FROM app.orders ORDER BY id").fetchall()


def test_is_a_provisioner(provisioner: PostgresProvisioner) -> None:
    checked: Provisioner = provisioner
    assert checked.kind == "postgres"


def test_role_logs_in_with_its_password_and_reads_only_the_granted_schema(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    spec = target_db.spec()
    info = provisioner.provision(spec)
    assert info == ConnectionInfo("127.0.0.1", 5432, target_db.name, spec.role_name)
    provisioner.set_password(spec, PASSWORD)

    with target_db.connect_as(spec.role_name, PASSWORD) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (spec.role_name,)
        assert conn.execute("SELECT id, item FROM app.orders ORDER BY id").fetchall() == [
            (1, "apple"),
            (2, "pear"),
        ]
        assert conn.execute("SELECT count(*) FROM app.order_items").fetchone() == (2,)
        # Sequences can be read (pg_dump --data-only needs it), never advanced or set.
        assert conn.execute("SELECT last_value, is_called FROM app.order_ids").fetchone() == (1, False)
        assert conn.execute(
            "SELECT has_sequence_privilege('app.order_ids', 'USAGE'), has_sequence_privilege('app.order_ids', 'UPDATE')"
        ).fetchone() == (False, False)
        with pytest.raises(errors.InsufficientPrivilege, match="order_ids"):
            conn.execute("SELECT nextval('app.order_ids')")
        with pytest.raises(errors.InsufficientPrivilege, match="schema vault"):
            conn.execute("SELECT * FROM vault.keys")
        with pytest.raises(errors.InsufficientPrivilege, match="notes"):
            conn.execute("SELECT * FROM public.notes")

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        target_db.connect_as(spec.role_name, PASSWORD + "x")
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        target_db.connect_as(spec.role_name, None)


def test_password_is_sent_as_a_scram_verifier(provisioner: PostgresProvisioner, target_db: TargetDb) -> None:
    spec = target_db.spec()
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    with target_db.admin() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [spec.role_name]).fetchone()
    assert row is not None
    stored = str(row[0])
    assert PASSWORD not in stored
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+", stored)


def test_scram_verifier_matches_what_postgresql_computes(target_db: TargetDb) -> None:
    role = target_db.new_role_name()
    with target_db.admin() as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchone()
    assert row is not None
    server_side = str(row[0])
    salt = base64.b64decode(server_side.split("$")[1].split(":")[1])
    assert scram_sha256_verifier(PASSWORD, salt=salt) == server_side


@pytest.mark.parametrize("password", ["", "pässword", "nul\x00byte"])
def test_unusable_passwords_are_refused_without_echoing_them(password: str) -> None:
    with pytest.raises(ProvisionerError) as caught:
        scram_sha256_verifier(password)
    assert not password or password not in caught.value.message


@pytest.mark.parametrize(
    "escape",
    [
        "none",
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "BEGIN READ WRITE",
        "ALTER ROLE self SET default_transaction_read_only = off, then reconnect",
    ],
)
def test_every_write_fails_by_privilege(provisioner: PostgresProvisioner, target_db: TargetDb, escape: str) -> None:
    role = _provision_with_password(provisioner, target_db)
    before = _orders(target_db)
    conn = target_db.connect_as(role, PASSWORD)
    try:
        if escape.startswith("ALTER ROLE"):
            conn.execute("SET default_transaction_read_only = off")
            # PostgreSQL lets any role change its own defaults: the setting is a convenience, not a control.
            conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = off").format(sql.Identifier(role)))
            conn.close()
            conn = target_db.connect_as(role, PASSWORD)
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        elif escape.startswith("SET"):
            conn.execute(escape)
        for statement in WRITES:
            if escape == "BEGIN READ WRITE":
                conn.execute("BEGIN READ WRITE")
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement)
            if escape == "none":
                assert caught.value.sqlstate in {"25006", "42501"}, statement
            else:
                assert caught.value.sqlstate == "42501", (statement, caught.value.sqlstate)
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert _orders(target_db) == before
    with target_db.admin() as admin:
        assert admin.execute("SELECT last_value, is_called FROM app.order_ids").fetchone() == (1, False)


def test_role_cannot_change_its_own_validity_limit_or_comment(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    role = _provision_with_password(provisioner, target_db)
    with target_db.connect_as(role, PASSWORD) as conn:
        conn.execute("SET default_transaction_read_only = off")
        ident = sql.Identifier(role)
        for statement in (
            sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(ident),
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(ident),
            sql.SQL("ALTER ROLE {} SUPERUSER").format(ident),
            # Rewriting its comment would make revoke leave the role alone.
            sql.SQL("COMMENT ON ROLE {} IS 'amber grant grt_other owner x'").format(ident),
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        # Members may SET ROLE to the grantee group (PostgreSQL 15), which is why check() wants it empty.
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(GRANTEE_GROUP)))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM app.orders")
        conn.execute("RESET ROLE")
    (ours,) = [r for r in provisioner.inspect() if r.role_name == role]
    assert ours.grant_id is not None
    with target_db.admin() as conn:
        row = conn.execute("SELECT rolvaliduntil, rolconnlimit FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    assert row is not None
    assert row[0] < datetime.now(UTC) + timedelta(hours=2)
    assert row[1] == 3


def test_unhardened_database_lets_a_role_write_temp_tables_and_large_objects_and_harden_stops_it(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    role = _provision_with_password(provisioner, target_db)
    with target_db.connect_as(role, PASSWORD) as conn:
        # Large objects are written even in a read-only transaction.
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        conn.execute("SELECT lo_from_bytea(0, 'x')")
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("CREATE TEMP TABLE scratch (a int)")

    applied = provisioner.harden()
    assert f'REVOKE TEMPORARY ON DATABASE "{target_db.name}" FROM PUBLIC' in applied
    assert 'REVOKE EXECUTE ON FUNCTION "pg_catalog"."lo_from_bytea"(oid, bytea) FROM PUBLIC' in applied

    with target_db.connect_as(role, PASSWORD) as conn:
        conn.execute("SET default_transaction_read_only = off")
        for statement in (
            "CREATE TEMP TABLE scratch (a int)",
            "SELECT lo_from_bytea(0, 'x')",
            "SELECT lo_create(0)",
            "SELECT lo_creat(-1)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)

    # The large object it made before harden is still its own: reported, and dropped only by revoke.
    # The other databases of the shared test server stay reachable: a warning about the server, not this database.
    # What amber does about expiry and recording (pg_cron, pgaudit: test_postgres_cron.py) is reported as "ok".
    (owned,) = [
        f
        for f in provisioner.check()
        if f.code != "other-databases-reachable" and not f.code.startswith(("expiry-", "pgaudit-"))
    ]
    assert (owned.code, owned.fix) == ("grant-role-owns", None)
    assert owned.message.startswith(f"role {role} owns large object ")
    assert provisioner.harden() == []


def test_check_on_an_unhardened_database_without_a_grantee_group(target_db: TargetDb) -> None:
    with PostgresProvisioner(target_db.admin_dsn) as provisioner:
        findings = provisioner.check()
    by_code: dict[str, list[str | None]] = {}
    for finding in findings:
        by_code.setdefault(finding.code, []).append(finding.fix)
    assert by_code["public-temporary-on-database"] == [f'REVOKE TEMPORARY ON DATABASE "{target_db.name}" FROM PUBLIC']
    lo_fixes = by_code["public-large-object-write"]
    for function in ("lo_from_bytea", "lo_create", "lowrite", "lo_put", "lo_unlink"):
        assert any(f'"pg_catalog"."{function}"(' in str(fix) for fix in lo_fixes), function
    assert "no-grantee-group" in by_code
    hba = [f for f in findings if f.code == "hba-passwordless"]
    assert hba, findings
    assert all(f.severity == "danger" and "VALID UNTIL" in f.message for f in hba)
    assert any("host all +amber_grantees 127.0.0.1/32 scram-sha-256" in str(f.fix) for f in hba)
    assert all("file edit" in str(f.fix) for f in hba)
    # Only what amber does about expiry and recording (pg_cron, pgaudit: test_postgres_cron.py) may be "ok" here.
    assert all(f.severity in {"danger", "warning"} for f in findings if not f.code.startswith(("expiry-", "pgaudit-")))


def test_check_does_not_flag_hba_when_the_grantee_group_must_use_passwords(
    provisioner: PostgresProvisioner,
) -> None:
    codes = {f.code for f in provisioner.check()}
    assert "public-temporary-on-database" in codes
    assert not {code for code in codes if code.startswith("hba-")}


def test_check_flags_public_write_privileges_and_harden_revokes_them(
    target_db: TargetDb, provisioner: PostgresProvisioner
) -> None:
    with target_db.admin() as conn:
        conn.execute(
            "GRANT CREATE ON SCHEMA app TO PUBLIC; GRANT INSERT, DELETE ON app.orders TO PUBLIC;"
            " GRANT UPDATE (item) ON app.orders TO PUBLIC; GRANT USAGE ON SEQUENCE app.order_ids TO PUBLIC;"
            " GRANT UPDATE ON vault.keys TO PUBLIC;"
            " ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT INSERT, TRUNCATE ON TABLES TO PUBLIC"
        )
    fixes = {f.fix for f in provisioner.check() if f.severity == "danger"}
    assert 'REVOKE CREATE ON SCHEMA "app" FROM PUBLIC' in fixes
    assert 'REVOKE DELETE, INSERT, UPDATE ON TABLE "app"."orders" FROM PUBLIC' in fixes
    assert 'REVOKE USAGE ON SEQUENCE "app"."order_ids" FROM PUBLIC' in fixes
    assert 'REVOKE UPDATE ON TABLE "vault"."keys" FROM PUBLIC' in fixes
    default_fix = 'ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "app" REVOKE INSERT, TRUNCATE ON TABLES'
    assert f"{default_fix} FROM PUBLIC" in fixes

    provisioner.harden()
    codes = {f.code for f in provisioner.check() if not f.code.startswith(("expiry-", "pgaudit-"))}
    assert codes == {"other-databases-reachable"}  # the test server's other databases
    with target_db.admin() as conn:
        assert conn.execute(
            "SELECT has_table_privilege('public', 'app.orders', 'INSERT'),"
            " has_column_privilege('public', 'app.orders', 'item', 'UPDATE'),"
            " has_schema_privilege('public', 'app', 'CREATE')"
        ).fetchone() == (False, False, False)
        conn.execute("CREATE TABLE app.later (a int)")
        assert conn.execute("SELECT has_table_privilege('public', 'app.later', 'INSERT')").fetchone() == (False,)


def test_check_flags_a_grantee_group_that_holds_privileges(target_db: TargetDb) -> None:
    group = target_db.new_role_name()  # a private group, so the shared amber_grantees is never changed
    with target_db.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB").format(sql.Identifier(group)))
        conn.execute(sql.SQL("GRANT INSERT ON vault.keys TO {}").format(sql.Identifier(group)))
        conn.execute(sql.SQL("GRANT pg_write_all_data TO {}").format(sql.Identifier(group)))
    with PostgresProvisioner(target_db.admin_dsn, grantee_group=group) as provisioner:
        codes = {f.code: f for f in provisioner.check()}
        assert codes["grantee-group-attributes"].severity == "danger"
        assert codes["grantee-group-member"].fix == f'REVOKE "pg_write_all_data" FROM "{group}"'
        assert "vault.keys" in codes["grantee-group-privileges"].message
        provisioner.harden()
        assert not {f.code for f in provisioner.check()} & {
            "grantee-group-attributes",
            "grantee-group-member",
            "grantee-group-privileges",
        }


def test_hba_rules_behind_a_narrow_password_rule_are_still_reachable() -> None:
    def rule(line: int, kind: str, users: str, address: str | None, mask: str | None, method: str) -> HbaRule:
        return HbaRule(line, kind, ("all",), (users,), address, mask, method)

    rules = [
        rule(1, "local", "+amber_grantees", None, None, "scram-sha-256"),
        rule(2, "host", "+amber_grantees", "127.0.0.1", "255.255.255.255", "scram-sha-256"),
        rule(3, "local", "all", None, None, "peer"),  # covered by line 1
        rule(4, "host", "all", "127.0.0.1", "255.255.255.255", "trust"),  # covered by line 2
        rule(5, "hostssl", "all", "10.0.0.0", "255.0.0.0", "trust"),  # reachable from 10/8
        rule(6, "host", "amber_g_abc", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "trust"),
        rule(7, "host", "app", "0.0.0.0", "0.0.0.0", "trust"),  # not an amber role
        rule(8, "host", "all", "0.0.0.0", "0.0.0.0", "ldap"),
        rule(9, "host", "all", "0.0.0.0", "0.0.0.0", "reject"),
    ]
    findings = hba_findings(rules, database="shop", grantee_group="amber_grantees")
    assert [(f.severity, f.message.split(" (")[0]) for f in findings] == [
        ("danger", "pg_hba.conf line 5"),
        ("danger", "pg_hba.conf line 6"),
        ("warning", "pg_hba.conf line 8"),
    ]
    assert "hostssl all +amber_grantees 10.0.0.0/8 scram-sha-256" in str(findings[0].fix)
    assert "::1/128" in str(findings[1].fix)
    without_group = hba_findings(rules, database="shop", grantee_group=None)
    assert [f.message.split(" (")[0] for f in without_group if f.severity == "danger"] == [
        "pg_hba.conf line 3",
        "pg_hba.conf line 4",
        "pg_hba.conf line 5",
        "pg_hba.conf line 6",
    ]


def test_login_is_refused_after_valid_until(provisioner: PostgresProvisioner, target_db: TargetDb) -> None:
    role = _provision_with_password(provisioner, target_db, expires_in=timedelta(seconds=-1))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        target_db.connect_as(role, PASSWORD)


def test_role_settings_and_limits_are_applied(provisioner: PostgresProvisioner, target_db: TargetDb) -> None:
    spec = target_db.spec(statement_timeout=timedelta(milliseconds=300), connection_limit=2)
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    with target_db.admin() as conn:
        row = conn.execute(
            "SELECT rolconnlimit, rolvaliduntil, rolconfig, rolinherit, rolsuper, rolcreaterole, rolcreatedb,"
            " rolreplication, rolbypassrls, shobj_description(oid, 'pg_authid'),"
            " pg_has_role(oid, %s, 'MEMBER')"
            " FROM pg_roles WHERE rolname = %s",
            [GRANTEE_GROUP, spec.role_name],
        ).fetchone()
        settings = conn.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE r.rolname = %s AND s.setdatabase = 0",
            [spec.role_name],
        ).fetchone()
    assert row is not None
    assert settings is not None
    limit, valid_until, config, *flags, comment, in_group = row
    assert limit == 2
    assert abs(valid_until - spec.expires_at) < timedelta(milliseconds=1)
    assert (
        set(config)
        == set(settings[0])
        == {
            "default_transaction_read_only=on",
            "statement_timeout=300ms",
            "idle_in_transaction_session_timeout=60s",
            "pgaudit.log=all",  # scripts/services.sh loads pgaudit (test_postgres_cron.py)
            "pgaudit.log_parameter=on",
        }
    )
    assert flags == [False, False, False, False, False, False]
    assert comment == f"amber grant {spec.grant_id} owner {OWNER_TAG}"
    assert in_group is True

    first = target_db.connect_as(spec.role_name, PASSWORD)
    second = target_db.connect_as(spec.role_name, PASSWORD)
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            target_db.connect_as(spec.role_name, PASSWORD)
        with pytest.raises(errors.QueryCanceled):
            first.execute("SELECT pg_sleep(2)")
    finally:
        first.close()
        second.close()


def test_provision_is_idempotent_and_brings_the_role_up_to_date(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    spec = target_db.spec(connection_limit=3)
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    again = target_db.spec(
        role_name=spec.role_name, grant_id=spec.grant_id, connection_limit=5, expires_in=timedelta(hours=2)
    )
    assert provisioner.provision(again) == provisioner.provision(again)
    with target_db.admin() as conn:
        row = conn.execute(
            "SELECT rolconnlimit, rolvaliduntil FROM pg_roles WHERE rolname = %s", [spec.role_name]
        ).fetchone()
    assert row is not None
    assert row[0] == 5
    assert abs(row[1] - again.expires_at) < timedelta(milliseconds=1)
    with target_db.connect_as(spec.role_name, PASSWORD) as conn:  # the password survives re-provisioning
        assert conn.execute("SELECT count(*) FROM app.orders").fetchone() == (2,)


@pytest.mark.parametrize("comment", [None, "amber grant grt_someone_else owner inst_test", "owned by the dba"])
def test_provision_never_adopts_a_foreign_role(
    provisioner: PostgresProvisioner, target_db: TargetDb, comment: str | None
) -> None:
    role = target_db.new_role_name()
    with target_db.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 7").format(sql.Identifier(role)))
        if comment is not None:
            conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(role), sql.Literal(comment)))
    spec = target_db.spec(role_name=role)
    with pytest.raises(ProvisionerError, match="refusing to adopt"):
        provisioner.provision(spec)
    with pytest.raises(ProvisionerError, match="refusing to set its password"):
        provisioner.set_password(spec, PASSWORD)
    with pytest.raises(ProvisionerError, match="left alone"):
        provisioner.revoke([RevokeSpec(spec.grant_id, role)])
    with target_db.admin() as conn:
        row = conn.execute(
            "SELECT r.rolconnlimit, r.rolcanlogin, r.rolconfig, shobj_description(r.oid, 'pg_authid'),"
            " (SELECT a.rolpassword IS NULL FROM pg_authid a WHERE a.oid = r.oid),"
            " has_schema_privilege(r.oid, 'app', 'USAGE'),"
            " pg_has_role(r.oid, %s, 'MEMBER'),"
            " EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a"
            "  WHERE d.datname = current_database() AND a.grantee = r.oid)"
            " FROM pg_roles r WHERE r.rolname = %s",
            [GRANTEE_GROUP, role],
        ).fetchone()
    assert row == (7, True, None, comment, True, False, False, False)


def test_revoke_ends_live_sessions_and_drops_the_role(provisioner: PostgresProvisioner, target_db: TargetDb) -> None:
    spec = target_db.spec()
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    session = target_db.connect_as(spec.role_name, PASSWORD)
    try:
        assert session.execute("SELECT 1").fetchone() == (1,)
        provisioner.revoke([RevokeSpec(spec.grant_id, spec.role_name)])
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()
    with target_db.admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [spec.role_name]).fetchone() is None
    with pytest.raises(psycopg.OperationalError):
        target_db.connect_as(spec.role_name, PASSWORD)

    provisioner.revoke([RevokeSpec(spec.grant_id, spec.role_name)])  # again: nothing left to do
    provisioner.revoke([RevokeSpec("grt_never", target_db.new_role_name())])  # never provisioned
    provisioner.revoke([])
    assert spec.role_name not in {r.role_name for r in provisioner.inspect()}


def test_revoke_finishes_the_batch_before_reporting_a_foreign_role(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    first, second = target_db.spec(), target_db.spec()
    provisioner.provision(first)
    provisioner.provision(second)
    foreign = target_db.new_role_name()
    with target_db.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(foreign)))
    with pytest.raises(ProvisionerError) as caught:
        provisioner.revoke(
            [
                RevokeSpec(first.grant_id, first.role_name),
                RevokeSpec("grt_foreign", foreign),
                RevokeSpec(second.grant_id, second.role_name),
                RevokeSpec("grt_x", "postgres"),
            ]
        )
    assert foreign in caught.value.message
    assert "'postgres' is not an amber role name" in caught.value.message
    with target_db.admin() as conn:
        left = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)",
            [[first.role_name, second.role_name, foreign, "postgres"]],
        ).fetchall()
    assert sorted(left) == sorted([(foreign, True), ("postgres", True)])


def test_inspect_lists_amber_roles_with_their_grant_and_sessions(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    spec = target_db.spec()
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    foreign = target_db.new_role_name()
    with target_db.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(foreign)))
    with target_db.connect_as(spec.role_name, PASSWORD):
        roles = {r.role_name: r for r in provisioner.inspect()}
    ours = roles[spec.role_name]
    assert (ours.grant_id, ours.owner_tag, ours.can_login, ours.session_count) == (
        spec.grant_id,
        OWNER_TAG,
        True,
        1,
    )
    assert (roles[foreign].grant_id, roles[foreign].owner_tag, roles[foreign].can_login) == (
        None,
        None,
        False,
    )
    assert all(name.startswith("amber_g_") for name in roles)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role_name": "app_owner"}, "not an amber role name"),
        ({"role_name": "amber_g_Robert'); DROP TABLE x;--"}, "not an amber role name"),
        ({"schemas": ("pg_catalog",)}, "system schema"),
        ({"schemas": ("information_schema",)}, "system schema"),
        ({"statement_timeout": timedelta(0)}, "statement_timeout"),
        ({"connection_limit": -1}, "connection_limit"),
        ({"grant_id": "grt with space"}, "grant id"),
        ({"expires_at": datetime(2030, 1, 1)}, "timezone-aware"),  # noqa: DTZ001 (the point of the test)
    ],
)
def test_provision_refuses_specs_it_cannot_make_safe(
    provisioner: PostgresProvisioner, target_db: TargetDb, change: dict[str, object], message: str
) -> None:
    spec = target_db.spec()
    bad = type(spec)(**{**spec.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(ProvisionerError, match=message):
        provisioner.provision(bad)
    with target_db.admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [bad.role_name]).fetchone() is None


def test_schema_that_does_not_exist_fails_without_leaving_a_role(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    spec = target_db.spec(schemas=("app", "nope"))
    with pytest.raises(ProvisionerError, match=r"3F000 schema \"nope\" does not exist"):
        provisioner.provision(spec)
    assert spec.role_name not in {r.role_name for r in provisioner.inspect()}


def test_errors_name_the_target_but_never_the_dsn_or_password() -> None:
    secret = "s3cret-" + secrets.token_hex(8)
    dsn = f"postgresql://postgres:{secret}@127.0.0.1:1/shop?connect_timeout=2"
    provisioner = PostgresProvisioner(dsn)
    assert secret not in repr(provisioner)
    with pytest.raises(ProvisionerError) as caught:
        provisioner.inspect()
    assert "PostgreSQL at 127.0.0.1:1/shop" in caught.value.message
    assert secret not in caught.value.message
    assert dsn not in caught.value.message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__

    with pytest.raises(ProvisionerError) as invalid:
        PostgresProvisioner(f"host=x password={secret} nonsense")
    assert secret not in invalid.value.message
    with pytest.raises(ProvisionerError, match="must name the target database"):
        PostgresProvisioner("postgresql://postgres@127.0.0.1:5432")


def test_a_broken_admin_connection_is_reopened_transparently(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    assert provisioner.inspect() is not None
    with target_db.admin() as conn:
        # NOTE: pg_terminate_backend in the select list, never in WHERE: the planner may evaluate it first.
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'amber-provisioner' AND datname = current_database()"
        ).fetchall()
    assert killed == [(True,)]
    spec = target_db.spec()
    provisioner.provision(spec)
    assert spec.role_name in {r.role_name for r in provisioner.inspect()}


def _masked_spec(target_db: TargetDb, *masked: tuple[str, str, str]) -> GrantSpec:
    spec = target_db.spec()
    return type(spec)(**{**spec.__dict__, "masked_columns": masked})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("masked", "message"),
    [
        (
            (("app", "orders", "nope"),),
            r'masked table "app"."orders" has no column "nope" \(its columns: "id", "item"\)',
        ),
        ((("app", "orders", "Item"),), r'has no column "Item"'),  # quoted in the catalog: case-sensitive
        ((("app", "nope", "item"),), r'masked table "app"."nope" does not exist'),
        ((("App", "orders", "item"),), r'masked table "App"."orders" does not exist'),
    ],
)
def test_masking_what_does_not_exist_fails_closed_without_leaving_a_role(
    provisioner: PostgresProvisioner, target_db: TargetDb, masked: tuple[tuple[str, str, str], ...], message: str
) -> None:
    spec = _masked_spec(target_db, *masked)
    with pytest.raises(ProvisionerError, match=message):
        provisioner.provision(spec)
    assert spec.role_name not in {r.role_name for r in provisioner.inspect()}


def test_masked_columns_are_matched_exactly_and_the_rest_stay_readable(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    with target_db.admin() as conn:
        conn.execute('CREATE TABLE app.people (id int, "Email" text, email text)')
        conn.execute("INSERT INTO app.people VALUES (1, 'Upper@x', 'lower@x')")
    spec = _masked_spec(target_db, ("app", "people", "Email"))
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    with target_db.connect_as(spec.role_name, PASSWORD) as conn:
        assert conn.execute("SELECT id, email FROM app.people").fetchall() == [(1, "lower@x")]
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute('SELECT "Email" FROM app.people')


def test_a_masked_table_with_unmasked_partitions_fails_closed(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    with target_db.admin() as conn:
        conn.execute("CREATE TABLE app.events (id int, secret text) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE app.events_1 PARTITION OF app.events FOR VALUES FROM (0) TO (100)")
    with pytest.raises(ProvisionerError, match=r'partitions the level does not mask \("app"."events_1"\)'):
        provisioner.provision(_masked_spec(target_db, ("app", "events", "secret")))
    spec = _masked_spec(target_db, ("app", "events", "secret"), ("app", "events_1", "secret"))
    provisioner.provision(spec)


def test_views_that_read_a_masked_column_are_not_readable_and_the_others_are(
    provisioner: PostgresProvisioner, target_db: TargetDb
) -> None:
    with target_db.admin() as conn:
        conn.execute("CREATE VIEW app.order_ids_only AS SELECT id FROM app.orders")
        conn.execute("CREATE VIEW app.items_again AS SELECT i.item AS thing FROM app.order_items i")  # view of view
        conn.execute("CREATE MATERIALIZED VIEW app.items_kept AS SELECT upper(item) AS u FROM app.orders")
    spec = _masked_spec(target_db, ("app", "orders", "item"))
    provisioner.provision(spec)
    provisioner.set_password(spec, PASSWORD)
    with target_db.connect_as(spec.role_name, PASSWORD) as conn:
        assert conn.execute("SELECT count(*) FROM app.order_ids_only").fetchone() == (2,)
        for view in ("app.order_items", "app.items_again", "app.items_kept"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {view}")  # type: ignore[arg-type] - test constants
    provisioner.provision(spec)  # idempotent: the second run revokes the same again
