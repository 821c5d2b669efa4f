"""Judging SQL with PostgreSQL's own parser (pglast). Fail closed: only what is known to be a read passes.

`judge(sql, schema)` splits a Query string into statements and returns one Verdict per statement. A string with
any refused part is refused whole. What is allowed:
- SELECT / TABLE / VALUES without INTO or locking clauses, whose CTEs and subqueries contain no write, and
  whose every function (including those behind operators and views) is immutable or stable in `pg_proc`, or on
  a short list of harmless volatile ones (random, clock_timestamp, ...);
- SHOW; EXPLAIN (with ANALYZE only of an allowed statement); transaction control that cannot start a
  read-write transaction; cursors over allowed queries, FETCH, CLOSE; COPY ... TO STDOUT of an allowed query or
  a table; PREPARE of an allowed query, EXECUTE of a statement prepared that way, DEALLOCATE;
- SET / RESET of a short allow-list of presentation settings, and SET TRANSACTION ISOLATION LEVEL / READ ONLY.
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
from pglast.enums import TransactionStmtKind, VariableSetKind

# SQLSTATEs: 25006 read_only_sql_transaction, 42501 insufficient_privilege, 42601 syntax_error.
READ_ONLY = "25006"
PRIVILEGE = "42501"
SYNTAX = "42601"

HARMLESS_VOLATILE = frozenset(
    {
        "random",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "pg_sleep",
        "txid_current_if_assigned",
        "pg_backend_pid",
    }
)
# Marked STABLE in pg_proc, yet they assign a transaction id (a write to the WAL and the commit log).
SIDE_EFFECTS_DESPITE_LABEL = frozenset({"txid_current", "pg_current_xact_id"})
SETTABLE = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "client_min_messages",
        "bytea_output",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "transaction_isolation",
        "jit",  # a planner choice; asyncpg turns it off around its type introspection
    }
)
MAX_VIEW_DEPTH = 8
# Client encodings the gateway may let a session use: those in which every byte below 0x80 is the ASCII
# character, so the quotes, backslashes and semicolons amber's parser sees (it reads the text as UTF-8) are
# the ones PostgreSQL sees. The client-only encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004)
# have multibyte characters whose second byte can be a backslash or a quote: a statement could then hide
# another from amber. Names as PostgreSQL compares them: lower case, letters and digits only.
SAFE_CLIENT_ENCODINGS = frozenset(
    {
        "utf8",
        "unicode",
        "sqlascii",
        *(f"latin{n}" for n in range(1, 11)),
        *(f"iso8859{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)),
        "eucjp",
        "euccn",
        "euckr",
        "euctw",
        "eucjis2004",
        "koi8",
        "koi8r",
        "koi8u",
        "muleinternal",
        "alt",
        "win",
        "win866",
        "win874",
        "windows866",
        "windows874",
        *(f"win{n}" for n in range(1250, 1259)),
        *(f"windows{n}" for n in range(1250, 1259)),
        "tcvn",
        "tcvn5712",
        "vscii",
        "abc",
    }
)


def safe_client_encoding(name: str) -> bool:
    """Whether a client encoding keeps the statement's syntax where amber's parser sees it (see above)."""
    return "".join(ch for ch in name.lower() if ch.isalnum()) in SAFE_CLIENT_ENCODINGS


Masked = dict[str, frozenset[str]]  # "schema.table" -> masked column names


class SchemaInfo(Protocol):
    """What the judge needs to know about the upstream database (looked up and cached by the server)."""

    def function_volatility(self, schema: str | None, name: str) -> frozenset[str]:
        """Volatility letters (i, s, v) of every function with this name; empty if there is none."""
        ...

    def operator_volatility(self, name: str) -> frozenset[str]: ...

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """The SQL of a view (None for a table or an unknown relation)."""
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
        )


@dataclass
class _Scan:
    schema: SchemaInfo
    prepared: frozenset[str]
    tables: list[str] = field(default_factory=list)
    depth: int = 0
    masked: Masked = field(default_factory=dict)
    literal_dependent: bool = False  # the verdict read a literal's value (see Verdict.literal_dependent)


class Refused(Exception):
    def __init__(self, rule: str, message: str, sqlstate: str = READ_ONLY) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.sqlstate = sqlstate


def judge(
    sql: str, schema: SchemaInfo, *, prepared: frozenset[str] = frozenset(), masked: Masked | None = None
) -> list[Verdict]:
    """Judge every statement in `sql`. An unparsable string is one refused verdict."""
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
        verdicts.append(_judge_one(raw.stmt, text.strip(), schema, prepared, masked or {}))
    return verdicts


def _fingerprint(text: str) -> str:
    try:
        return str(pglast.fingerprint(text))
    except Exception:  # noqa: BLE001 - a fingerprint is informational; never fail a verdict on it
        return ""


def _judge_one(node: ast.Node, text: str, schema: SchemaInfo, prepared: frozenset[str], masked: Masked) -> Verdict:
    scan = _Scan(schema, prepared, masked=masked)
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
            False, text, kind, refusal.rule, refusal.message, refusal.sqlstate, tuple(scan.tables), _fingerprint(text)
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
    elif isinstance(node, ast.TransactionStmt):
        _check_transaction(node)
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
            scan.tables.append(_relname(node.relation))
            if _masked_columns(node.relation, scan):
                raise Refused(
                    "masked",
                    f"COPY of {_relname(node.relation)} would include masked columns; "
                    "COPY a query naming the columns you need",
                    PRIVILEGE,
                )
    elif isinstance(node, ast.VariableSetStmt):
        _check_set(node)
    elif isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
        raise Refused("write", f"{_verb(node)} writes data; amber grants read-only access")
    else:
        raise Refused("not-a-read", f"{_verb(node)} is not a read; amber grants read-only access", PRIVILEGE)


def _check_query(node: ast.SelectStmt, scan: _Scan) -> None:
    if node.intoClause is not None:
        raise Refused("select-into", "SELECT INTO creates a table; amber grants read-only access")
    if node.lockingClause:
        raise Refused("locking", "SELECT ... FOR UPDATE/SHARE takes row locks; amber grants read-only access")
    if scan.masked:
        _check_masked(node, scan)
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
            if _is_harmless_set_config(child):
                scan.literal_dependent = True
            else:
                _check_function(child.funcname, scan)
        elif isinstance(child, ast.A_Expr) and child.name:
            _check_operator(child.name, scan)
        elif isinstance(child, ast.RangeVar):
            _check_relation(child, scan)
        elif isinstance(child, ast.RangeFunction | ast.RangeTableFunc):
            continue


def _masked_columns(relation: ast.RangeVar, scan: _Scan) -> frozenset[str]:
    name = str(relation.relname)
    if relation.schemaname:
        return scan.masked.get(f"{relation.schemaname}.{name}", frozenset())
    hidden: set[str] = set()
    for table, columns in scan.masked.items():
        if table.split(".", 1)[1] == name:
            hidden |= columns
    return frozenset(hidden)


def _check_masked(node: ast.SelectStmt, scan: _Scan) -> None:
    """Refuse any reference to a masked column, `*` over a masked table, or a whole-row reference to one.

    Conservative by name: a column named like a masked one is refused even when it belongs to another table.
    """
    hidden: set[str] = set()
    masked_names: set[str] = set()
    for child in _walk(node):
        if isinstance(child, ast.RangeVar):
            columns = _masked_columns(child, scan)
            if columns:
                hidden |= columns
                masked_names.add(str(child.relname))
                if child.alias is not None:
                    masked_names.add(str(child.alias.aliasname))
    if not hidden:
        return
    for child in _walk(node):
        if not isinstance(child, ast.ColumnRef):
            continue
        fields = list(child.fields or ())
        last = fields[-1] if fields else None
        if isinstance(last, ast.A_Star):
            raise Refused(
                "masked",
                f"`*` would include masked columns ({', '.join(sorted(hidden))}); name the columns you need",
                PRIVILEGE,
            )
        name = getattr(last, "sval", None)
        if name in hidden:
            raise Refused("masked", f"column {name} is masked for this access level", PRIVILEGE)
        if len(fields) == 1 and name in masked_names:
            raise Refused("masked", f"{name} as a whole row would include masked columns", PRIVILEGE)


def _is_harmless_set_config(call: ast.FuncCall) -> bool:
    """`set_config('<setting>', value, is_local)` of a setting `SET` may change too (SETTABLE), named literally.

    Drivers use it (asyncpg: `set_config('jit', 'off', false)`). Any other setting, or a name that is not a
    string literal, goes through the volatility check and is refused.
    """
    parts = [part.sval for part in call.funcname or ()]  # unquoted names arrive lower-cased; quoted ones differ
    args = call.args or ()
    if parts[-1] != "set_config" or parts[:-1] not in ([], ["pg_catalog"]) or len(args) != 3:
        return False
    name, value = args[0], args[1]
    if not (isinstance(name, ast.A_Const) and isinstance(name.val, ast.String)):
        return False
    setting = str(name.val.sval).lower()
    if setting == "client_encoding":  # the value matters too (SAFE_CLIENT_ENCODINGS)
        literal = isinstance(value, ast.A_Const) and isinstance(value.val, ast.String)
        return literal and safe_client_encoding(str(value.val.sval))
    return setting in SETTABLE


def _check_function(funcname: Any, scan: _Scan) -> None:
    parts = [part.sval for part in funcname]
    name = parts[-1].lower()
    schema = parts[-2].lower() if len(parts) > 1 else None
    if name in SIDE_EFFECTS_DESPITE_LABEL:
        raise Refused("side-effect-function", f"function {'.'.join(parts)} assigns a transaction id (a write)")
    volatility = scan.schema.function_volatility(schema, name)
    if not volatility:
        raise Refused(
            "function", f"function {'.'.join(parts)} is unknown here; amber allows only functions it can look up"
        )
    if "v" in volatility and not (name in HARMLESS_VOLATILE and schema in (None, "pg_catalog")):
        raise Refused(
            "volatile-function",
            f"function {'.'.join(parts)} is volatile (it may have side effects); "
            "amber allows only immutable and stable functions",
        )


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
    sub = _Scan(scan.schema, scan.prepared, [], scan.depth + 1, scan.masked)
    for raw in inner:
        try:
            _check(raw.stmt, sub)
        except Refused as refusal:
            raise Refused(refusal.rule, f"view {_relname(node)}: {refusal.message}", refusal.sqlstate) from None


def _check_transaction(node: ast.TransactionStmt) -> None:
    kind = node.kind
    if kind in (
        TransactionStmtKind.TRANS_STMT_PREPARE,
        TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
        TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
    ):
        raise Refused("two-phase", "two-phase commit writes state; amber grants read-only access")
    for option in node.options or ():
        if option.defname == "transaction_read_only" and not _truthy(option.arg):
            raise Refused("read-write", "a READ WRITE transaction is not allowed; amber grants read-only access")


def _check_set(node: ast.VariableSetStmt) -> None:
    name = (node.name or "").lower()
    if node.kind == VariableSetKind.VAR_SET_MULTI and name == "transaction":
        for option in node.args or ():
            if option.defname == "transaction_read_only" and not _truthy(option.arg):
                raise Refused("read-write", "SET TRANSACTION READ WRITE is not allowed")
        return
    if node.kind == VariableSetKind.VAR_RESET_ALL:
        raise Refused("setting", "RESET ALL is not allowed (it would reset settings amber relies on)")
    if name not in SETTABLE:
        raise Refused(
            "setting", f"setting {name or 'this'} is not allowed; allowed: {', '.join(sorted(SETTABLE))}", PRIVILEGE
        )
    if name == "client_encoding" and node.kind == VariableSetKind.VAR_SET_VALUE:  # SET client_encoding, SET NAMES
        values = [getattr(getattr(arg, "val", None), "sval", None) for arg in node.args or ()]
        if not values or not all(isinstance(v, str) and safe_client_encoding(v) for v in values):
            raise Refused(
                "encoding",
                f"client encoding {', '.join(str(v) for v in values)} is not allowed through amber's gateway "
                "(its multibyte characters can hide quotes from the parser); use UTF8",
                PRIVILEGE,
            )


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
