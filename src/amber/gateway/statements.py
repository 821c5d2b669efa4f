"""Judging SQL with PostgreSQL's own parser (pglast). Fail closed: only what is known to be a read passes.

`judge(sql, schema)` splits a Query string into statements and returns one Verdict per statement. A string with
any refused part is refused whole. What is allowed:
- SELECT / TABLE / VALUES without INTO or locking clauses, whose CTEs and subqueries contain no write, and
  whose every function (including those behind operators and views) is immutable or stable in `pg_proc`, or on
  a short list of harmless volatile ones in pg_catalog (random, clock_timestamp, the size and replication
  status functions, pg_lock_status, pg_partition_tree, pg_advisory_unlock_all, ...; HARMLESS_VOLATILE);
  pg_catalog's functions that run SQL given as text (query_to_xml, ts_stat, ...) when that text is a literal
  SELECT this judge allows; never the functions that serialize whole tables, schemas or databases
  (table_to_xml, ...); and, over masked tables, nothing that reaches a masked column (`_check_masked`, 0012);
- SHOW; EXPLAIN (with ANALYZE only of an allowed statement); transaction control that cannot start a
  read-write transaction (BEGIN READ ONLY, any isolation level; BEGIN ... READ WRITE is rewritten to READ ONLY,
  sent alone); SET TRANSACTION SNAPSHOT; cursors over allowed queries, FETCH, CLOSE
  (ALL); COPY ... TO STDOUT of an allowed query or a table; PREPARE of an allowed query, EXECUTE of a statement
  prepared that way, DEALLOCATE;
- SET / RESET / set_config of the settings session_settings.py allows (presentation, planner, read only on,
  timeouts up to the level's limit, search_path inside the level, work_mem up to 256MB), SET TRANSACTION /
  SESSION CHARACTERISTICS that stay read only, RESET ALL, DISCARD, UNLISTEN, and LOCK ... IN ACCESS SHARE MODE
  of tables in the level's schemas. A timeout above the level's limit (0 = none) is rewritten to the limit
  (sent alone; Verdict.rewrite and .notice). Decision 0011 gives the reason for each.
Everything else is refused with the rule that refused it. What this does NOT check: anything that happens
inside functions the upstream marks immutable or stable (a mislabelled function is the upstream's bug; the
database role's privileges are the boundary there), and type input functions of casts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pglast
from pglast import ast
from pglast.enums import TransactionStmtKind

from amber.gateway.pgwire import encodings
from amber.gateway.session_settings import (
    PRIVILEGE,
    READ_ONLY,
    Refused,
    Rewrite,
    SessionRules,
    begin_read_only,
    check_lock,
    check_set,
    check_set_config,
    check_transaction_options,
    settings_row,
)

SYNTAX = "42601"  # syntax_error; READ_ONLY (25006) and PRIVILEGE (42501) come from session_settings

# Labelled VOLATILE in pg_proc, yet they only read (or, pg_advisory_unlock_all, release the session's own locks,
# which it cannot take through amber). Allowed only as pg_catalog's: see `_check_function`.
HARMLESS_VOLATILE = frozenset(
    {
        "random",  # a random number
        "clock_timestamp",  # the time
        "timeofday",
        "gen_random_uuid",
        "pg_sleep",  # waits, bounded by statement_timeout
        "pg_sleep_for",
        "pg_sleep_until",
        "txid_current_if_assigned",  # reads the transaction id, never assigns one
        "pg_backend_pid",
        "current_query",  # the session's own statement text
        "pg_relation_size",  # sizes of files on disk
        "pg_total_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_database_size",
        "pg_tablespace_size",
        "pg_is_in_recovery",  # replication status
        "pg_last_xact_replay_timestamp",
        "pg_last_wal_receive_lsn",
        "pg_last_wal_replay_lsn",
        "pg_is_wal_replay_paused",
        "pg_get_wal_replay_pause_state",
        "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn",
        "pg_current_wal_flush_lsn",
        "pg_lock_status",  # behind the pg_locks view
        "pg_blocking_pids",
        "pg_safe_snapshot_blocking_pids",
        "pg_partition_tree",  # reads the partition hierarchy (psql \d+)
        "pg_partition_ancestors",
        "pg_sequence_last_value",  # behind the pg_sequences view (NULL without SELECT on the sequence)
        "pg_jit_available",
        "pg_collation_actual_version",
        "pg_database_collation_actual_version",
        "pg_advisory_unlock_all",  # asyncpg's connection reset; releases only the session's own locks
        "pg_export_snapshot",  # names this transaction's snapshot for parallel pg_dump's workers (memory only)
        "pg_prepared_xact",  # behind pg_prepared_xacts: lists prepared transactions
        "pg_control_checkpoint",  # pg_controldata's figures (PostgreSQL grants them to pg_monitor only)
        "pg_control_system",
        "pg_control_init",
        "pg_control_recovery",
        "pg_notification_queue_usage",
        "pg_last_committed_xact",  # commit timestamps and transaction status: reads of the commit log
        "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin",
        "pg_xact_status",
        "txid_status",
        "pg_stat_have_stats",  # statistics counters, behind pg_stat_xact_* and pg_stat_recovery_prefetch
        "pg_stat_get_recovery_prefetch",
        "pg_stat_get_xact_blocks_fetched",
        "pg_stat_get_xact_blocks_hit",
        "pg_stat_get_xact_function_calls",
        "pg_stat_get_xact_function_self_time",
        "pg_stat_get_xact_function_total_time",
        "pg_stat_get_xact_numscans",
        "pg_stat_get_xact_tuples_deleted",
        "pg_stat_get_xact_tuples_fetched",
        "pg_stat_get_xact_tuples_hot_updated",
        "pg_stat_get_xact_tuples_inserted",
        "pg_stat_get_xact_tuples_returned",
        "pg_stat_get_xact_tuples_updated",
    }
)
# Marked STABLE in pg_proc, yet they assign a transaction id (a write to the WAL and the commit log).
SIDE_EFFECTS_DESPITE_LABEL = frozenset({"txid_current", "pg_current_xact_id"})
MAX_VIEW_DEPTH = 8


def safe_client_encoding(name: str) -> bool:
    """Whether the gateway lets a session use this client encoding (pgwire/encodings.py says which and why)."""
    return encodings.canonical(name) is not None


Masked = dict[tuple[str, str], frozenset[str]]  # (schema, table) -> masked columns, as PostgreSQL names them
MaskedItems = tuple[tuple[tuple[str, str], frozenset[str]], ...]  # the same, hashable (a cache key)

# Functions that serialize a whole table, schema or database: the relation or schema is resolved at run time
# (search_path, any expression) and every column comes out. Refused; query_to_xml with a query naming the
# columns does the same job and is judged.
WHOLE_OBJECT_SERIALIZERS = frozenset(
    f"{scope}_to_{form}"
    for scope in ("table", "schema", "database")
    for form in ("xml", "xmlschema", "xml_and_xmlschema")
)
# Functions that read an open cursor by name (any cursor, also one a function opened): refused, FETCH instead.
CURSOR_READERS = frozenset({"cursor_to_xml", "cursor_to_xmlschema"})
# Functions that run SQL given as text, and the position of that text among their arguments (by argument
# count where it differs). The text must be a literal; it is judged like a statement and must be a SELECT.
QUERY_TEXT_ARGUMENT: dict[str, dict[int, int]] = {
    "query_to_xml": {4: 0},
    "query_to_xmlschema": {4: 0},
    "query_to_xml_and_xmlschema": {4: 0},
    "ts_stat": {1: 0, 2: 0},
    "ts_rewrite": {2: 1},  # ts_rewrite(tsquery, 'SELECT target, substitute FROM ...')
    "crosstab": {1: 0, 2: 0, 3: 0},  # tablefunc: crosstab(source_sql [, category_sql | N])
}
# Of those, pg_catalog's own: labelled volatile only because the query could be anything, which the judge checked.
PG_CATALOG_QUERY_TEXT = frozenset(
    {"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat", "ts_rewrite"}
)
CROSSTAB_CATEGORY_QUERY = 1  # crosstab(source_sql, category_sql): the second text is a query too
# Functions that build and run SQL from names or reach another server: refused outright.
RUNS_SQL_REFUSED = frozenset(
    {
        "connectby",
        "crosstab2",
        "crosstab3",
        "crosstab4",
        "dblink",
        "dblink_exec",
        "dblink_open",
        "dblink_fetch",
        "dblink_send_query",
        "dblink_get_result",
    }
)


class SchemaInfo(Protocol):
    """What the judge needs to know about the upstream database (looked up and cached by the server)."""

    def function_volatility(self, schema: str | None, name: str) -> frozenset[str]:
        """Volatility letters (i, s, v) of every function with this name; empty if there is none."""
        ...

    def operator_volatility(self, name: str) -> frozenset[str]: ...

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """The SQL of a view or materialized view (None for a table or an unknown relation). A materialized
        view's definition is judged like a view's: its rows came from that query (masked columns included)."""
        ...

    def table_columns(self, schema: str, name: str) -> frozenset[str]:
        """The columns of a table (empty if there is no such table)."""
        ...


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    sql: str
    kind: str
    rule: str = "read"
    message: str = ""
    sqlstate: str = READ_ONLY
    tables: tuple[str, ...] = ()
    fingerprint: str = ""
    prepares: str | None = None  # PREPARE name AS ...: the name, so EXECUTE name can be allowed later
    executes: str | None = None  # EXECUTE name
    # Allowed because of a literal's value (`set_config('jit', ...)`): never reuse it for another text of the
    # same shape, whose literal may name something else.
    literal_dependent: bool = False
    # What amber sends instead (a timeout above the level's limit, held at the limit), and the notice saying so.
    rewrite: str | None = None
    notice: str = ""

    def with_sql(self, sql: str) -> Verdict:
        """The same verdict for another text of the same shape (faster than dataclasses.replace)."""
        return Verdict(
            self.allowed,
            sql,
            self.kind,
            self.rule,
            self.message,
            self.sqlstate,
            self.tables,
            self.fingerprint,
            self.prepares,
            self.executes,
            self.literal_dependent,
            self.rewrite,
            self.notice,
        )


@dataclass
class _Scan:
    schema: SchemaInfo
    prepared: frozenset[str]
    tables: list[str] = field(default_factory=list)
    depth: int = 0
    masked: Masked = field(default_factory=dict)
    literal_dependent: bool = False  # the verdict read a literal's value (see Verdict.literal_dependent)
    rules: SessionRules = field(default_factory=SessionRules)
    rewrite: Rewrite | None = None
    settings_row: str | None = None  # see session_settings.settings_row


def judge(
    sql: str,
    schema: SchemaInfo,
    *,
    prepared: frozenset[str] = frozenset(),
    masked: Masked | None = None,
    rules: SessionRules | None = None,
) -> list[Verdict]:
    """Judge every statement in `sql`. An unparsable string is one refused verdict. A statement amber rewrites
    (a timeout held at the level's limit, BEGIN READ WRITE kept read only) must come alone: in a string of
    several it is refused."""
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        return [Verdict(False, sql, "unparsable", "parse", f"amber could not parse this statement: {exc}", SYNTAX)]
    if not statements:
        return [Verdict(True, sql, "empty")]
    verdicts = []
    for raw in statements:
        start = raw.stmt_location or 0
        text = sql[start : start + raw.stmt_len] if raw.stmt_len else sql[start:]
        if raw.stmt is None:
            continue
        verdicts.append(_judge_one(raw.stmt, text.strip(), schema, prepared, masked or {}, rules or SessionRules()))
    if len(verdicts) > 1 and any(v.rewrite for v in verdicts):
        return [_alone(v) if v.rewrite else v for v in verdicts]
    return verdicts


def _alone(verdict: Verdict) -> Verdict:
    return Verdict(
        False,
        verdict.sql,
        verdict.kind,
        "alone",
        "amber sends its own safe version of this statement (a timeout held at the level's limit, a transaction "
        "kept read only) only when it comes alone, not in a string of several statements",
        PRIVILEGE,
        fingerprint=verdict.fingerprint,
    )


def _fingerprint(text: str) -> str:
    try:
        return str(pglast.fingerprint(text))
    except Exception:  # noqa: BLE001 - a fingerprint is informational; never fail a verdict on it
        return ""


def _judge_one(  # noqa: PLR0917 - one statement and everything it is judged against
    node: ast.Node, text: str, schema: SchemaInfo, prepared: frozenset[str], masked: Masked, rules: SessionRules
) -> Verdict:
    scan = _Scan(schema, prepared, masked=masked, rules=rules)
    kind = type(node).__name__
    prepares = executes = None
    try:
        if isinstance(node, ast.PrepareStmt):
            _check(node.query, scan)
            prepares = node.name
        elif isinstance(node, ast.ExecuteStmt):
            _check_execute(node, scan)
            executes = node.name
        else:
            _check(node, scan)
    except Refused as refusal:
        return Verdict(
            False,
            text,
            kind,
            refusal.rule,
            refusal.message,
            refusal.sqlstate,
            tuple(scan.tables),
            _fingerprint(text),
            literal_dependent=scan.literal_dependent,
        )
    return Verdict(
        True,
        text,
        kind,
        "read",
        "",
        READ_ONLY,
        tuple(dict.fromkeys(scan.tables)),
        _fingerprint(text),
        prepares,
        executes,
        scan.literal_dependent,
        scan.rewrite.sql if scan.rewrite else None,
        scan.rewrite.notice if scan.rewrite else "",
    )


def _check_execute(node: ast.ExecuteStmt, scan: _Scan) -> None:
    """EXECUTE of a statement amber allowed, with arguments that are themselves judged (they are expressions:
    `EXECUTE p(set_config(...))` would otherwise run whatever they call)."""
    if node.name not in scan.prepared:
        raise Refused(
            "prepared",
            f"EXECUTE {node.name}: only statements prepared through amber and allowed can be executed",
        )
    for param in node.params or ():
        _check_expressions(param, scan)


def _check(node: Any, scan: _Scan) -> None:
    if isinstance(node, ast.SelectStmt):
        _check_query(node, scan)
    elif isinstance(node, ast.VariableShowStmt):
        return
    elif isinstance(node, ast.ExplainStmt):
        analyze = any(option.defname == "analyze" and _truthy(option.arg) for option in node.options or ())
        if isinstance(node.query, ast.ExecuteStmt):
            _check_execute(node.query, scan)  # EXPLAIN EXECUTE evaluates the arguments even without ANALYZE
        elif analyze:
            _check(node.query, scan)
        elif scan.masked and isinstance(node.query, ast.SelectStmt):
            _check_masked(node.query, scan)  # a plan shows a masked column's filters and the rows they match
    elif isinstance(node, ast.TransactionStmt):
        scan.rewrite = _check_transaction(node)
    elif isinstance(node, ast.DiscardStmt | ast.UnlistenStmt):
        return  # the session's own plans, temporary objects, sequence caches and (absent) listens
    elif isinstance(node, ast.LockStmt):
        check_lock(node, scan.rules)
        scan.tables.extend(_relname(relation) for relation in node.relations or ())
    elif isinstance(node, ast.DeclareCursorStmt):
        _check(node.query, scan)
    elif isinstance(node, ast.FetchStmt | ast.ClosePortalStmt | ast.DeallocateStmt):
        return
    elif isinstance(node, ast.CopyStmt):
        if node.is_from or node.filename is not None or node.is_program:
            raise Refused("copy", "only COPY ... TO STDOUT is allowed")
        if node.query is not None:
            _check(node.query, scan)
        elif node.relation is not None:
            _check_copy_relation(node.relation, node.attlist, scan)
    elif isinstance(node, ast.VariableSetStmt):
        scan.rewrite = check_set(node, scan.rules)
    elif isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
        raise Refused("write", f"{_verb(node)} writes data; amber grants read-only access")
    else:
        raise Refused("not-a-read", f"{_verb(node)} is not a read; amber grants read-only access", PRIVILEGE)


def _check_copy_relation(relation: ast.RangeVar, attlist: Any, scan: _Scan) -> None:
    """COPY table [(columns)] TO STDOUT: every column unless a list names them; none may be masked."""
    _check_relation(relation, scan)
    masked = _masked_columns(relation, scan)
    if not masked:
        return
    if not attlist:
        raise Refused(
            "masked",
            f"COPY of {_relname(relation)} would include masked columns ({', '.join(sorted(masked))}); "
            "name the columns you need",
            PRIVILEGE,
        )
    for column in attlist:
        if column.sval in masked:
            raise Refused("masked", f"column {column.sval} is masked for this access level", PRIVILEGE)


def _check_query(node: ast.SelectStmt, scan: _Scan) -> None:
    if node.intoClause is not None:
        raise Refused("select-into", "SELECT INTO creates a table; amber grants read-only access")
    if node.lockingClause:
        raise Refused("locking", "SELECT ... FOR UPDATE/SHARE takes row locks; amber grants read-only access")
    if scan.masked:
        _check_masked(node, scan)
    # NOTE: only for a query without subqueries, where every `name` column is pg_settings' of that one row.
    row = settings_row(node)
    flat = row is not None and not node.withClause
    if flat:
        flat = not any(isinstance(c, ast.SubLink | ast.RangeSubselect) for c in _walk(node))
    scan.settings_row = row if flat else None
    _check_expressions(node, scan)


def _check_expressions(node: Any, scan: _Scan) -> None:
    """Every nested query, function, operator and relation under `node` (a query or an expression)."""
    for child in _walk(node):
        if isinstance(child, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
            raise Refused("nested-write", f"a nested {_verb(child)} writes data (writable CTE?)")
        if isinstance(child, ast.SelectStmt) and child is not node:
            if child.intoClause is not None or child.lockingClause:
                raise Refused("locking", "a nested SELECT takes locks or creates a table")
        elif isinstance(child, ast.FuncCall):
            if _is_set_config(child, scan):
                scan.literal_dependent = True
            elif not _check_sql_running(child, scan):
                _check_function(child.funcname, scan)
        elif isinstance(child, ast.A_Expr) and child.name:
            _check_operator(child.name, scan)
        elif isinstance(child, ast.RangeVar):
            _check_relation(child, scan)
        elif isinstance(child, ast.RangeFunction | ast.RangeTableFunc):
            continue


def _masked_tables(relation: ast.RangeVar, scan: _Scan) -> list[tuple[str, str]]:
    """The masked tables a relation may name: exactly, or by table name alone in any schema when unqualified
    (search_path is the session's; stricter, never looser). Names compare as pglast gives them: unquoted ones
    already folded to lower case, quoted ones exact, as the catalog's are (PostgresLevel.masks)."""
    name = str(relation.relname)
    if relation.schemaname:
        key = (str(relation.schemaname), name)
        return [key] if key in scan.masked else []
    return [key for key in scan.masked if key[1] == name]


def _masked_columns(relation: ast.RangeVar, scan: _Scan) -> frozenset[str]:
    return frozenset(column for key in _masked_tables(relation, scan) for column in scan.masked[key])


@dataclass
class _MaskedUse:
    """What one statement reaches of masked tables."""

    hidden: set[str] = field(default_factory=set)  # masked column names
    rows: set[str] = field(default_factory=set)  # names and aliases that stand for a masked table's rows
    visible: set[str] = field(default_factory=set)  # the other columns of those tables


def _masked_use(node: Any, scan: _Scan) -> _MaskedUse:
    use = _MaskedUse()
    for child in _walk(node):
        if not isinstance(child, ast.RangeVar):
            continue
        for key in _masked_tables(child, scan):
            use.hidden |= scan.masked[key]
            use.rows.add(str(child.relname))
            use.visible |= scan.schema.table_columns(*key) - scan.masked[key]
            if child.alias is not None:
                use.rows.add(str(child.alias.aliasname))
                if child.alias.colnames:
                    raise Refused(
                        "masked",
                        f"column aliases on {_relname(child)} rename masked columns; alias them in the select list",
                        PRIVILEGE,
                    )
    use.visible -= use.hidden  # a column masked in one table is refused in every table of the statement
    if use.hidden:
        _join_aliases(node, use)
    return use


def _join_aliases(node: Any, use: _MaskedUse) -> None:
    """`(customers c JOIN orders o ON ...) AS j`: `j` stands for a row of every column of the join, the masked
    ones included, and `AS j(a, b, ...)` renames them. Conservative: every join alias in the statement."""
    for child in _walk(node):
        if isinstance(child, ast.JoinExpr) and child.alias is not None:
            use.rows.add(str(child.alias.aliasname))
            if child.alias.colnames:
                raise Refused(
                    "masked", "column aliases on a join rename masked columns; alias them in the select list", PRIVILEGE
                )


def _check_masked(node: ast.SelectStmt, scan: _Scan) -> None:
    """Refuse every way a statement over a masked table can reach a masked column.

    Conservative by name: a column named like a masked one is refused even when it belongs to another table;
    `*` anywhere in a statement that reads a masked table is refused; a masked table's row (its name or alias
    as a value: `SELECT c`, `to_json(c)`, `c::text`, `ROW(c.*)`, row comparisons) is refused; so is
    `c.f` where f is not one of its other columns (PostgreSQL reads `c.text` as `text(c)`, the whole row);
    NATURAL joins and USING on a masked column compare it. What this does NOT check: functions that read
    the table themselves (the database's column grants refuse them), and types named like the table
    (`null::customers` carries no data).
    """
    use = _masked_use(node, scan)
    if not use.hidden:
        return
    for child in _walk(node):
        if isinstance(child, ast.A_Indirection):
            _check_indirection(child, use)
        elif isinstance(child, ast.JoinExpr):
            _check_join(child, use)
        elif isinstance(child, ast.ColumnRef):
            _check_column_ref(child, use)


def _check_indirection(node: ast.A_Indirection, use: _MaskedUse) -> None:
    """`(c).*` and `(x).name`. `(c).id` is refused with its whole-row `c` (PostgreSQL, too, checks every column
    of a whole-row reference, whatever field is taken from it)."""
    for item in node.indirection or ():
        if isinstance(item, ast.A_Star):
            raise Refused("masked", f"`.*` would include masked columns ({', '.join(sorted(use.hidden))})", PRIVILEGE)
        if isinstance(item, ast.String) and item.sval in use.hidden:
            raise Refused("masked", f"column {item.sval} is masked for this access level", PRIVILEGE)


def _check_join(node: ast.JoinExpr, use: _MaskedUse) -> None:
    if node.isNatural:
        raise Refused(
            "masked", "NATURAL joins compare every common column, masked ones too; join ON named columns", PRIVILEGE
        )
    for item in node.usingClause or ():
        if getattr(item, "sval", None) in use.hidden:
            raise Refused("masked", f"column {item.sval} is masked for this access level (USING)", PRIVILEGE)


def _check_column_ref(node: ast.ColumnRef, use: _MaskedUse) -> None:
    fields = list(node.fields or ())
    last = fields[-1] if fields else None
    if isinstance(last, ast.A_Star):
        raise Refused(
            "masked",
            f"`*` would include masked columns ({', '.join(sorted(use.hidden))}); name the columns you need",
            PRIVILEGE,
        )
    name = getattr(last, "sval", None)
    if name in use.hidden:
        raise Refused("masked", f"column {name} is masked for this access level", PRIVILEGE)
    if len(fields) == 1 and name in use.rows:
        raise Refused("masked", f"{name} as a whole row would include masked columns", PRIVILEGE)
    qualifier = getattr(fields[-2], "sval", None) if len(fields) > 1 else None
    if qualifier in use.rows and name not in use.visible:
        raise Refused(
            "masked",
            f"{qualifier}.{name} is not a visible column of a masked table (PostgreSQL would read it as "
            f"{name}({qualifier}), the whole row)",
            PRIVILEGE,
        )


def _is_set_config(call: ast.FuncCall, scan: _Scan) -> bool:
    """Whether `call` is an allowed `set_config(...)` (session_settings.check_set_config; it raises Refused for a
    setting or value it does not allow). An unqualified name must not also name a function in a schema the
    session's search_path can reach (`_shadowed`)."""
    if not check_set_config(call, scan.rules, scan.settings_row):
        return False
    if len(call.funcname or ()) == 1 and _shadowed("set_config", scan):
        raise Refused("function", "set_config is also defined outside pg_catalog here; call pg_catalog.set_config")
    return True


def _shadowed(name: str, scan: _Scan) -> bool:
    """Whether a function of this name exists in a schema an unqualified call could resolve to besides
    pg_catalog: the level's schemas (search_path may name them, and put pg_catalog after them) and public."""
    return any(scan.schema.function_volatility(s, name) for s in {*scan.rules.schemas, "public"} - {"pg_catalog"})


def _check_sql_running(call: ast.FuncCall, scan: _Scan) -> bool:
    """Functions that serialize whole objects or run SQL given as text. Refuses what cannot be judged (by name,
    in any schema); for a query text function, judges the literal text with this same judge (masking included).
    True: pg_catalog's own query text function, whose volatility label then says nothing the judge did not
    check. False: the function's own volatility is still to be checked (not such a function; tablefunc's
    crosstab; or a function of that name in another schema, which search_path might pick first)."""
    parts = [str(part.sval) for part in call.funcname or ()]
    name, shown = parts[-1], ".".join(parts)
    schema = parts[-2] if len(parts) > 1 else None
    if name in WHOLE_OBJECT_SERIALIZERS:
        raise Refused(
            "serializer",
            f"{shown} serializes a whole table, schema or database (every column, objects found at run time); "
            "use query_to_xml('SELECT <the columns you need> FROM ...', ...) instead",
            PRIVILEGE,
        )
    if name in CURSOR_READERS:
        raise Refused("serializer", f"{shown} reads a cursor by name; FETCH from your cursor instead", PRIVILEGE)
    if name in RUNS_SQL_REFUSED:
        raise Refused("query-text", f"{shown} builds or runs SQL amber cannot judge", PRIVILEGE)
    positions = QUERY_TEXT_ARGUMENT.get(name)
    if positions is None:
        return False
    args = list(call.args or ())
    if call.agg_star or call.func_variadic or any(isinstance(arg, ast.NamedArgExpr) for arg in args):
        raise Refused("query-text", f"{shown}: call it with plain positional arguments", PRIVILEGE)
    index = positions.get(len(args))
    if index is None:  # another form, taking no query text (ts_rewrite(tsquery, tsquery, tsquery)): as usual
        return False
    texts = [args[index]]
    if name == "crosstab" and len(args) == 2 and not _integer_literal(args[CROSSTAB_CATEGORY_QUERY]):
        texts.append(args[CROSSTAB_CATEGORY_QUERY])  # crosstab(source_sql, category_sql), not (source_sql, N)
    for text in texts:
        _judge_query_text(shown, text, scan)
    if name not in PG_CATALOG_QUERY_TEXT:
        return False
    return schema == "pg_catalog" or (schema is None and not _shadowed(name, scan))


def _judge_query_text(function: str, arg: Any, scan: _Scan) -> None:
    literal = _string_literal(arg)
    if literal is None:
        raise Refused("query-text", f"{function} runs SQL given as text: amber judges it only as a literal string")
    scan.literal_dependent = True  # the verdict depends on the literal: never reuse it for another text
    if scan.depth >= MAX_VIEW_DEPTH:
        raise Refused("query-text", f"{function}: query texts nest too deeply to check")
    try:
        inner = pglast.parse_sql(literal)
    except pglast.parser.ParseError as exc:
        raise Refused("query-text", f"{function}: amber could not parse its query text: {exc}", SYNTAX) from None
    sub = _Scan(scan.schema, scan.prepared, scan.tables, scan.depth + 1, scan.masked, rules=scan.rules)
    for raw in inner:
        if not isinstance(raw.stmt, ast.SelectStmt):
            raise Refused("query-text", f"{function}: its query text may only be a SELECT")
        try:
            _check(raw.stmt, sub)
        except Refused as refusal:
            raise Refused(refusal.rule, f"{function}'s query: {refusal.message}", refusal.sqlstate) from None


def _integer_literal(node: Any) -> bool:
    return isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer)


def _string_literal(node: Any) -> str | None:
    """The text of a string constant, also behind casts (`'...'::text`); None for anything else."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval)
    return None


def _check_function(funcname: Any, scan: _Scan) -> None:
    # NOTE: names exactly as pglast gives them (unquoted ones already folded): PostgreSQL calls `"SHOUT"()`, not
    # `shout()`, so lower-casing here would judge another function than the one that runs.
    parts = [part.sval for part in funcname]
    name = parts[-1]
    schema = parts[-2] if len(parts) > 1 else None
    if name in SIDE_EFFECTS_DESPITE_LABEL:
        raise Refused("side-effect-function", f"function {'.'.join(parts)} assigns a transaction id (a write)")
    volatility = scan.schema.function_volatility(schema, name)
    if not volatility:
        raise Refused(
            "function", f"function {'.'.join(parts)} is unknown here; amber allows only functions it can look up"
        )
    if "x" in volatility:  # schema_info.SETS_PINNED: its own SET clause changes how the server reads text
        raise Refused(
            "pinned-setting",
            f"function {'.'.join(parts)} sets standard_conforming_strings, client_encoding, backslash_quote or "
            "escape_string_warning while it runs; amber's gateway keeps those pinned",
            PRIVILEGE,
        )
    if "v" in volatility and not _harmless_volatile(name, schema, scan):
        raise Refused(
            "volatile-function",
            f"function {'.'.join(parts)} is volatile (it may have side effects); "
            "amber allows only immutable and stable functions",
        )


def _harmless_volatile(name: str, schema: str | None, scan: _Scan) -> bool:
    """pg_catalog's own function of a HARMLESS_VOLATILE name: qualified so, or unqualified and not also defined
    where search_path could find another function of that name first."""
    if name not in HARMLESS_VOLATILE:
        return False
    return schema == "pg_catalog" or (schema is None and not _shadowed(name, scan))


def _check_operator(names: Any, scan: _Scan) -> None:
    name = names[-1].sval if names else ""
    volatility = scan.schema.operator_volatility(name)
    if "v" in volatility:
        raise Refused("volatile-operator", f"operator {name} runs a volatile function")


def _check_relation(node: ast.RangeVar, scan: _Scan) -> None:
    scan.tables.append(_relname(node))
    definition = scan.schema.view_definition(node.schemaname, str(node.relname))
    if definition is None:
        return
    if scan.depth >= MAX_VIEW_DEPTH:
        raise Refused("view-depth", f"view {_relname(node)} nests views too deeply to check")
    try:
        inner = pglast.parse_sql(definition)
    except pglast.parser.ParseError:
        raise Refused("view", f"view {_relname(node)} could not be checked") from None
    sub = _Scan(scan.schema, scan.prepared, [], scan.depth + 1, scan.masked, rules=scan.rules)
    for raw in inner:
        try:
            _check(raw.stmt, sub)
        except Refused as refusal:
            raise Refused(refusal.rule, f"view {_relname(node)}: {refusal.message}", refusal.sqlstate) from None


def _check_transaction(node: ast.TransactionStmt) -> Rewrite | None:
    kind = node.kind
    if kind in (
        TransactionStmtKind.TRANS_STMT_PREPARE,
        TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
        TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
    ):
        raise Refused("two-phase", "two-phase commit writes state; amber grants read-only access")
    if kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
        return begin_read_only(node.options)
    check_transaction_options("transaction", node.options or ())
    return None


def _truthy(arg: Any) -> bool:
    if arg is None:
        return True
    value = getattr(arg, "val", arg)
    for attr in ("ival", "boolval", "sval"):
        inner = getattr(value, attr, None)
        if inner is not None:
            if isinstance(inner, str):
                return inner.lower() in ("true", "on", "1", "yes")
            return bool(getattr(inner, "boolval", inner))
    return True


def _walk(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list | tuple):
            stack.extend(current)
            continue
        if not isinstance(current, ast.Node):
            continue
        yield current
        for slot in current:
            value = getattr(current, slot, None)
            if isinstance(value, ast.Node | list | tuple):
                stack.append(value)


def _relname(node: ast.RangeVar) -> str:
    return f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname)


def _verb(node: Any) -> str:
    name = type(node).__name__.removesuffix("Stmt")
    return {"Insert": "INSERT", "Update": "UPDATE", "Delete": "DELETE", "Merge": "MERGE"}.get(name, name)
