"""What a read-only grant role might try DIRECTLY (its own password, no gateway) to change state on a target.

Each `Attempt` is one statement (a `psycopg.sql.SQL` template; the placeholders are filled with
`sql.Identifier`/`sql.Literal` by the test) run in the grant role's own session after it switched its read-only
default off. After `amber resource harden` every attempt must leave the target unchanged; the ones that still
succeed say why (`harmless`), and the ones that change only the role's own catalog rows say which (`self_only`,
residual risk documented in docs/threat-model.md and decision 0015).

Placeholders: {role} {group} {writer} {db} {new_role} {new_db} (identifiers); {file} {program} {lo}
{dsn_superuser} {dsn_writer} {dsn_self} (literals). Attempts run in order, in one session (a few depend on an
earlier one: the foreign table, the dblink connection); self-changing ones come last, the password change last
of all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    key: str
    statement: str
    harmless: str | None = None  # why it may still succeed after harden without changing state
    self_only: str | None = None  # it changes only the role's own catalog rows: which


CORPUS: tuple[Attempt, ...] = (
    # --- plain writes through amber's own grants -------------------------------------------------------------
    Attempt("insert", "INSERT INTO app.orders VALUES (100, 'corpus')"),
    Attempt("update", "UPDATE app.orders SET item = 'corpus'"),
    Attempt("delete", "DELETE FROM app.orders"),
    Attempt("truncate", "TRUNCATE app.orders"),
    Attempt(
        "merge",
        "MERGE INTO app.orders o USING (SELECT 1 AS id) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET item = 'merged'",
    ),
    Attempt("insert_public_table", "INSERT INTO public.notes VALUES ('corpus')"),
    Attempt("update_through_view", "UPDATE app.order_items SET item = 'corpus'"),
    Attempt("cte_delete", "WITH d AS (DELETE FROM app.orders RETURNING *) SELECT count(*) FROM d"),
    Attempt("explain_analyze_delete", "EXPLAIN ANALYZE DELETE FROM app.orders"),
    Attempt("do_block_insert", "DO $$ BEGIN INSERT INTO app.orders VALUES (101, 'do'); END $$"),
    Attempt("copy_from_file", "COPY app.orders FROM '/etc/hostname'"),
    Attempt("select_into", "SELECT * INTO public.corpus_into FROM app.orders"),
    Attempt("select_for_update", "SELECT * FROM app.orders FOR UPDATE"),
    Attempt("select_for_share", "SELECT * FROM app.orders FOR SHARE"),
    Attempt("select_for_key_share", "SELECT * FROM app.orders FOR KEY SHARE"),
    Attempt("lock_exclusive", "BEGIN; LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE; COMMIT"),
    # --- DDL ---------------------------------------------------------------------------------------------------
    Attempt("create_table_public", "CREATE TABLE public.corpus_t (a int)"),
    Attempt("create_table_app", "CREATE TABLE app.corpus_t (a int)"),
    Attempt("create_view_public", "CREATE VIEW public.corpus_v AS SELECT 1 AS a"),
    Attempt("create_function_public", "CREATE FUNCTION public.corpus_f() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    Attempt("create_type_public", "CREATE TYPE public.corpus_type AS (a int)"),
    Attempt("create_schema", "CREATE SCHEMA corpus_s"),
    Attempt("alter_table", "ALTER TABLE app.orders ADD COLUMN corpus int"),
    Attempt("drop_table", "DROP TABLE app.orders"),
    Attempt("create_index", "CREATE INDEX corpus_i ON app.orders (item)"),
    Attempt("comment_table", "COMMENT ON TABLE app.orders IS 'corpus'"),
    Attempt(
        "create_trigger",
        "CREATE TRIGGER corpus_tr BEFORE INSERT ON app.orders EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    ),
    Attempt("create_rule", "CREATE RULE corpus_r AS ON INSERT TO app.orders DO INSTEAD NOTHING"),
    Attempt("create_policy", "CREATE POLICY corpus_p ON app.orders USING (false)"),
    Attempt("enable_rls", "ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY"),
    Attempt("cluster", "CLUSTER app.orders USING orders_pkey"),
    Attempt("reindex", "REINDEX TABLE app.orders"),
    Attempt("create_statistics", "CREATE STATISTICS corpus_st ON id, item FROM app.orders"),
    Attempt("create_extension", "CREATE EXTENSION hstore"),
    Attempt("create_publication", "CREATE PUBLICATION corpus_pub FOR TABLE app.orders"),
    Attempt(
        "create_event_trigger", "CREATE EVENT TRIGGER corpus_et ON ddl_command_start EXECUTE FUNCTION pg_catalog.now()"
    ),
    Attempt("security_label", "SECURITY LABEL ON TABLE app.orders IS 'corpus'"),
    Attempt("create_database", "CREATE DATABASE {new_db}"),
    Attempt("create_role", "CREATE ROLE {new_role}"),
    Attempt("alter_database", "ALTER DATABASE {db} SET work_mem = '1GB'"),
    Attempt("alter_database_owner", "ALTER DATABASE {db} OWNER TO {role}"),
    Attempt("alter_system", "ALTER SYSTEM SET work_mem = '1GB'"),
    Attempt("analyze_not_owner", "ANALYZE app.orders", harmless="skipped with a warning: only the owner may analyze"),
    Attempt("vacuum_not_owner", "VACUUM app.orders", harmless="skipped with a warning: only the owner may vacuum"),
    # --- SECURITY DEFINER routines -----------------------------------------------------------------------------
    Attempt("secdef_function", "SELECT public.add_order(102, 'security definer')"),
    Attempt("secdef_procedure", "CALL public.log_note('security definer')"),
    Attempt("secdef_other_schema", "SELECT vault.rotate()"),
    Attempt("pg_stat_reset", "SELECT pg_stat_reset()"),
    # --- dblink and postgres_fdw -------------------------------------------------------------------------------
    Attempt(
        "dblink_server", "SELECT dblink_exec('dblink_loop', 'INSERT INTO app.orders VALUES (103, ''dblink server'')')"
    ),
    Attempt("dblink_read", "SELECT * FROM dblink('dblink_loop', 'SELECT 1') AS t(a int)"),
    Attempt("dblink_connect_u", "SELECT dblink_connect_u('corpus_su', {dsn_superuser})"),
    Attempt(
        "dblink_exec_superuser", "SELECT dblink_exec('corpus_su', 'INSERT INTO app.orders VALUES (104, ''superuser'')')"
    ),
    Attempt(
        "dblink_no_password", "SELECT dblink_exec({dsn_superuser}, 'INSERT INTO app.orders VALUES (105, ''trust'')')"
    ),
    Attempt(
        "dblink_known_password", "SELECT dblink_exec({dsn_writer}, 'INSERT INTO app.orders VALUES (106, ''writer'')')"
    ),
    Attempt("dblink_self", "SELECT dblink_exec({dsn_self}, 'INSERT INTO app.orders VALUES (107, ''self'')')"),
    Attempt("create_server", "CREATE SERVER corpus_srv FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1')"),
    Attempt(
        "fdw_foreign_table",
        "CREATE FOREIGN TABLE public.corpus_ft (id int, item text) SERVER pg_loop"
        " OPTIONS (schema_name 'app', table_name 'orders')",
    ),
    Attempt("fdw_insert", "INSERT INTO public.corpus_ft VALUES (108, 'postgres_fdw')"),
    Attempt("fdw_import", "IMPORT FOREIGN SCHEMA app FROM SERVER pg_loop INTO public"),
    Attempt("user_mapping_self", "CREATE USER MAPPING FOR CURRENT_USER SERVER pg_loop OPTIONS (user 'postgres')"),
    # --- server files and programs -----------------------------------------------------------------------------
    Attempt("copy_to_file", "COPY (SELECT 1) TO {file}"),
    Attempt("copy_to_program", "COPY (SELECT 1) TO PROGRAM {program}"),
    Attempt("read_file", "SELECT pg_read_file('/etc/hostname')"),
    Attempt("ls_dir", "SELECT pg_ls_dir('.')"),
    Attempt("lo_import", "SELECT lo_import('/etc/hostname')"),
    Attempt("lo_export", "SELECT lo_export({lo}, {file})"),
    # --- large objects -----------------------------------------------------------------------------------------
    Attempt("lo_create", "SELECT lo_create(0)"),
    Attempt("lo_creat", "SELECT lo_creat(-1)"),
    Attempt("lo_from_bytea", "SELECT lo_from_bytea(0, 'corpus')"),
    Attempt("lo_put_other", "SELECT lo_put({lo}, 0, 'corpus')"),
    Attempt("lowrite_other", "BEGIN; SELECT lowrite(lo_open({lo}, 131072), 'lowrite'); COMMIT"),
    Attempt("lo_truncate_other", "BEGIN; SELECT lo_truncate(lo_open({lo}, 131072), 0); COMMIT"),
    Attempt("lo_unlink_other", "SELECT lo_unlink({lo})"),
    # --- sequences ---------------------------------------------------------------------------------------------
    Attempt("nextval", "SELECT nextval('app.order_ids')"),
    Attempt("setval", "SELECT setval('app.order_ids', 42)"),
    Attempt("alter_sequence", "ALTER SEQUENCE app.order_ids RESTART"),
    # --- temporary objects -------------------------------------------------------------------------------------
    Attempt("temp_table", "CREATE TEMP TABLE corpus_tmp (a int)"),
    Attempt("temp_table_as", "CREATE TEMP TABLE corpus_tmp_as AS SELECT * FROM app.orders"),
    Attempt("temp_view", "CREATE TEMP VIEW corpus_tmp_v AS SELECT 1 AS a"),
    Attempt("temp_function", "CREATE FUNCTION pg_temp.corpus_tf() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    # --- roles and sessions ------------------------------------------------------------------------------------
    Attempt("set_role_superuser", "SET ROLE postgres"),
    Attempt("set_session_authorization", "SET SESSION AUTHORIZATION postgres"),
    Attempt("set_role_writer", "SET ROLE {writer}"),
    Attempt(
        "set_role_group",
        "SET ROLE {group}; RESET ROLE",
        harmless="the grantee group holds no privilege (check reports one that does); session only",
    ),
    Attempt("alter_role_valid_until", "ALTER ROLE {role} VALID UNTIL 'infinity'"),
    Attempt("alter_role_superuser", "ALTER ROLE {role} SUPERUSER"),
    Attempt("alter_role_connection_limit", "ALTER ROLE {role} CONNECTION LIMIT -1"),
    Attempt("alter_role_rename", "ALTER ROLE {role} RENAME TO corpus_renamed"),
    Attempt("alter_other_role_password", "ALTER ROLE {writer} PASSWORD 'corpus'"),
    Attempt("comment_on_role", "COMMENT ON ROLE {role} IS 'amber grant grt_other owner other'"),
    Attempt("grant_group_to_self", "GRANT {group} TO {role}"),
    Attempt("grant_write_all_to_self", "GRANT pg_write_all_data TO {role}"),
    Attempt("grant_vault_to_self", "GRANT SELECT ON vault.keys TO {role}"),
    Attempt(
        "grant_without_option",
        "GRANT SELECT ON app.orders TO PUBLIC",
        harmless="no grant option: PostgreSQL warns 'no privileges were granted' and changes nothing",
    ),
    Attempt(
        "revoke_without_option",
        "REVOKE SELECT ON app.orders FROM PUBLIC",
        harmless="not the grantor: PostgreSQL warns 'no privileges could be revoked' and changes nothing",
    ),
    Attempt(
        "alter_default_privileges_other", "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT INSERT ON TABLES TO PUBLIC"
    ),
    Attempt(
        "terminate_others",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    ),
    Attempt(
        "cancel_others",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    ),
    Attempt("reload_conf", "SELECT pg_reload_conf()"),
    Attempt("checkpoint", "CHECKPOINT"),
    Attempt("switch_wal", "SELECT pg_switch_wal()"),
    Attempt("replication_slot", "SELECT pg_create_logical_replication_slot('corpus_slot', 'pgoutput')"),
    Attempt("prepare_transaction", "BEGIN; SELECT 1; PREPARE TRANSACTION 'corpus'"),
    Attempt("set_replication_role", "SET session_replication_role = replica"),
    Attempt("load_library", "LOAD 'auto_explain'"),
    # --- session-only effects that remain ------------------------------------------------------------------------
    Attempt("read", "SELECT count(*) FROM app.orders", harmless="a read of what the level grants"),
    Attempt(
        "lock_access_share",
        "BEGIN; LOCK TABLE app.orders IN ACCESS SHARE MODE; COMMIT",
        harmless="the lock every SELECT takes, released at commit",
    ),
    Attempt(
        "advisory_lock",
        "SELECT pg_advisory_lock(4242); SELECT pg_advisory_unlock(4242)",
        harmless="a session lock, gone with the session (it can disturb an application using the same key)",
    ),
    Attempt(
        "advisory_xact_lock", "SELECT pg_advisory_xact_lock(4243)", harmless="released at the end of the transaction"
    ),
    Attempt("listen", "LISTEN corpus", harmless="session only"),
    Attempt(
        "notify",
        "NOTIFY corpus, 'from a read-only role'",
        harmless="no stored state (an application that acts on this channel would see it)",
    ),
    Attempt("pg_notify", "SELECT pg_notify('corpus', 'x')", harmless="as NOTIFY"),
    Attempt("set_config", "SELECT set_config('work_mem', '64MB', false)", harmless="the session's own setting"),
    Attempt("txid_current", "SELECT txid_current()", harmless="assigns a transaction id; no data changes"),
    # --- the role's own catalog rows (PostgreSQL allows every role these) -----------------------------------------
    Attempt("alter_role_self_pgaudit", "ALTER ROLE {role} SET pgaudit.log = 'none'"),
    Attempt("alter_role_self_preload", "ALTER ROLE {role} SET session_preload_libraries = 'auto_explain'"),
    Attempt(
        "alter_default_privileges_self",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
        self_only="a pg_default_acl row for objects the role creates (it can create none); revoke drops it",
    ),
    Attempt(
        "alter_role_self_read_only",
        "ALTER ROLE {role} SET default_transaction_read_only = off",
        self_only="its own setting: check reports it, harden restores it; privileges still refuse writes",
    ),
    Attempt(
        "alter_role_self_timeout",
        "ALTER ROLE {role} SET statement_timeout = 0",
        self_only="its own setting: check reports it (revoke and re-issue restores the level's value)",
    ),
    Attempt(
        "alter_role_self_in_database",
        "ALTER ROLE {role} IN DATABASE {db} SET work_mem = '1GB'",
        self_only="its own per-database setting: check reports it, harden resets it",
    ),
    Attempt(
        "drop_owned_by_self",
        "DROP OWNED BY {role}",
        self_only="drops what it owns (nothing, after harden) and its own default privileges; grants others made stay",
    ),
    Attempt(
        "alter_role_self_password",
        "ALTER ROLE {role} PASSWORD 'chosen-by-the-role'",
        self_only="its own password (PostgreSQL always allows it); valid only until VALID UNTIL or revoke",
    ),
)
