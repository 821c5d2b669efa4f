"""Which session settings a gateway client may change, and to what (decision 0011 gives the reason for each).

Pure: a parsed `SET` / `RESET` / `set_config(...)` / `LOCK` and the session's `SessionRules` in, a refusal
(`Refused`) or an allowed outcome out. The invariant it protects: nothing a session changes can make it less
restricted than it was at login. A session may make itself *more* restricted (read only, a shorter timeout, a
narrower search_path), change how results look or how the planner plans, and return settings to their login
values (`RESET`, `DEFAULT`), which are the grant role's defaults amber's provisioner set (read only, the level's
statement timeout) plus what the gateway pins in the upstream startup packet.

Timeouts above the level's limit (0 = none), which pg_dump sends, are not refused: the statement is replaced by
one amber writes itself, setting the level's limit, and the client is told so in a notice (`Rewrite`).
What this does NOT check: the values of presentation and planner settings (PostgreSQL validates them and
none can write or widen access), and which relations an unqualified LOCK names (search_path resolves it, and
it is itself limited here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pglast import ast
from pglast.enums import VariableSetKind

from amber.gateway.pgwire import encodings

# SQLSTATEs: 25006 read_only_sql_transaction, 42501 insufficient_privilege.
READ_ONLY = "25006"
PRIVILEGE = "42501"

# Any value: presentation, planner choices, or settings that only make the session stricter.
FREE = frozenset(
    {
        # how results look
        "application_name",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "client_min_messages",
        "bytea_output",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "xmlbinary",
        "xmloption",
        "quote_all_identifiers",
        "timezone_abbreviations",
        "default_text_search_config",
        # transactions that stay read only
        "transaction_isolation",
        "default_transaction_isolation",
        "transaction_deferrable",
        "default_transaction_deferrable",
        # what pg_dump sets, each only narrowing what a read sees or how it scans
        "synchronize_seqscans",
        "row_security",
        "restrict_nonsystem_relation_kind",
        "idle_session_timeout",
        # the planner
        "jit",
        "jit_above_cost",
        "jit_inline_above_cost",
        "jit_optimize_above_cost",
        "jit_expressions",
        "jit_tuple_deforming",
        "default_statistics_target",
        "recursive_worktable_factor",
        "parallel_leader_participation",
        "plan_cache_mode",
        "random_page_cost",
        "seq_page_cost",
        "cpu_tuple_cost",
        "cpu_index_tuple_cost",
        "cpu_operator_cost",
        "parallel_setup_cost",
        "parallel_tuple_cost",
        "min_parallel_table_scan_size",
        "min_parallel_index_scan_size",
        "max_parallel_workers_per_gather",
        "effective_cache_size",
        "effective_io_concurrency",
        "cursor_tuple_fraction",
        "constraint_exclusion",
        "from_collapse_limit",
        "join_collapse_limit",
        "geqo",
        "geqo_threshold",
        "geqo_effort",
        "geqo_pool_size",
        "geqo_generations",
        "geqo_selection_bias",
        "geqo_seed",
        "enable_async_append",
        "enable_bitmapscan",
        "enable_gathermerge",
        "enable_group_by_reordering",
        "enable_hashagg",
        "enable_hashjoin",
        "enable_incremental_sort",
        "enable_indexonlyscan",
        "enable_indexscan",
        "enable_material",
        "enable_memoize",
        "enable_mergejoin",
        "enable_nestloop",
        "enable_parallel_append",
        "enable_parallel_hash",
        "enable_partition_pruning",
        "enable_partitionwise_aggregate",
        "enable_partitionwise_join",
        "enable_presorted_aggregate",
        "enable_seqscan",
        "enable_sort",
        "enable_tidscan",
    }
)
# Settings the gateway relies on for reading statements exactly as the server does; pinned at login.
PINNED = frozenset({"standard_conforming_strings", "backslash_quote", "escape_string_warning"})
# Who the session is: never changed (SET ROLE / SET SESSION AUTHORIZATION).
IDENTITY = frozenset({"role", "session_authorization"})
READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
# Timeouts bounded by the level: which limit each is held to.
TIMEOUTS = {
    "statement_timeout": "statement",
    "lock_timeout": "statement",
    "idle_in_transaction_session_timeout": "idle",
}
WORK_MEM_MAX_KB = 256 * 1024
# search_path entries every level may name, besides its own schemas (and `public` only if it is one of them).
ALWAYS_ON_PATH = frozenset({"pg_catalog", "$user", ""})
ACCESS_SHARE = 1  # LockStmt.mode of IN ACCESS SHARE MODE (PostgreSQL's AccessShareLock)

_TRUE_SPELLINGS = frozenset({"on", "true", "yes", "1", "t", "tr", "tru", "y", "ye"})
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_MEMORY_UNITS_KB = {"B": 1 / 1024, "kB": 1.0, "MB": 1024.0, "GB": 1024.0**2, "TB": 1024.0**3}
_NUMBER = r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*"


class Refused(Exception):
    def __init__(self, rule: str, message: str, sqlstate: str = READ_ONLY) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class SessionRules:
    """What the judge knows about one session: its level's schemas and limits, and its login's encoding.

    Part of every verdict cache key: two sessions with different rules never share a verdict.
    """

    schemas: tuple[str, ...] = ()
    statement_timeout_ms: int = 30_000
    idle_in_transaction_timeout_ms: int = 60_000
    client_encoding: str = "UTF8"

    def limit_ms(self, setting: str) -> int:
        return self.idle_in_transaction_timeout_ms if TIMEOUTS[setting] == "idle" else self.statement_timeout_ms


@dataclass(frozen=True)
class Rewrite:
    """The statement amber sends instead of the client's, and the notice that tells the client why."""

    sql: str
    notice: str


def check_set(node: ast.VariableSetStmt, rules: SessionRules) -> Rewrite | None:
    """Judge SET / RESET / SET TRANSACTION / SET SESSION CHARACTERISTICS; a Rewrite when amber clamps a timeout."""
    name = (node.name or "").lower()
    kind = node.kind
    if kind == VariableSetKind.VAR_RESET_ALL:
        return None  # every setting returns to its login value (the role's defaults, the pinned settings)
    if kind == VariableSetKind.VAR_SET_MULTI:
        check_transaction_options(name, node.args or ())
        return None
    if kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
        _check_reset(name)
        return None
    if kind != VariableSetKind.VAR_SET_VALUE:
        if name in FREE:
            return None
        raise Refused("setting", f"SET {name} FROM CURRENT is not allowed", PRIVILEGE)
    values = [_const_text(arg) for arg in node.args or ()]
    return _check_value(name, values, rules, is_local=bool(node.is_local), spelled="SET")


def check_set_config(call: ast.FuncCall, rules: SessionRules, settings_row: str | None = None) -> bool:
    """True if `call` is `set_config(name, value, is_local)` with a literal name and an allowed value (raises
    Refused for any other setting or value); False if it is not a call of set_config at all. `settings_row`:
    the one pg_settings row the query reads, whose `name` column may stand for the literal (pg_dump's
    `SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = '...'`).

    NOTE: a timeout above the level's limit is refused here, not clamped: amber cannot rewrite an expression.
    """
    parts = [part.sval for part in call.funcname or ()]  # unquoted names arrive lower-cased; quoted ones differ
    if parts[-1] != "set_config" or parts[:-1] not in ([], ["pg_catalog"]):
        return False
    args = call.args or ()
    setting = _literal_name(args[0], settings_row) if len(args) == 3 else None
    if setting is None:
        raise Refused("setting", "set_config needs three arguments and the setting's name as a literal", PRIVILEGE)
    if setting in FREE:
        return True  # any value (an expression in it is judged like any other)
    value = _const_text(args[1])
    if setting == "search_path" and value is not None:
        entries = split_identifiers(value)
        if entries is None:
            raise Refused("search-path", f"amber could not read the search_path {value!r}", PRIVILEGE)
        _check_search_path(entries, rules)
        return True
    rewrite = _check_value(setting, [value], rules, is_local=False, spelled="set_config")
    if rewrite is not None:
        raise Refused(
            "timeout",
            f"set_config cannot lift {setting} above this level's limit ({rules.limit_ms(setting)} ms); "
            f"use SET {setting}, which amber holds at the limit",
            PRIVILEGE,
        )
    return True


def _literal_name(node: Any, settings_row: str | None) -> str | None:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval).lower()
    if settings_row is not None and isinstance(node, ast.ColumnRef):
        fields = [getattr(f, "sval", None) for f in node.fields or ()]
        if fields == ["name"]:
            return settings_row.lower()
    return None


def settings_row(node: ast.SelectStmt) -> str | None:
    """The setting name of `... FROM [pg_catalog.]pg_settings WHERE name = '<literal>'` (one table, that exact
    condition), whose `name` column can then only be that setting; None for any other query."""
    tables = node.fromClause or ()
    where = node.whereClause
    if len(tables) != 1 or not isinstance(tables[0], ast.RangeVar) or not isinstance(where, ast.A_Expr):
        return None
    table = tables[0]
    if table.relname != "pg_settings" or table.schemaname not in (None, "pg_catalog"):
        return None
    operator = [getattr(part, "sval", None) for part in where.name or ()]
    left, right = where.lexpr, where.rexpr
    if where.kind != 0 or operator != ["="] or not isinstance(left, ast.ColumnRef):
        return None
    if [getattr(f, "sval", None) for f in left.fields or ()] != ["name"]:
        return None
    if isinstance(right, ast.A_Const) and isinstance(right.val, ast.String):
        return str(right.val.sval)
    return None


def check_lock(node: ast.LockStmt, rules: SessionRules) -> None:
    """LOCK ... IN ACCESS SHARE MODE (what pg_dump takes: it only keeps a table from being dropped or altered
    while it is read) of tables in the level's schemas; any stronger mode blocks other sessions' writes."""
    if node.mode != ACCESS_SHARE:
        raise Refused(
            "lock",
            "only LOCK ... IN ACCESS SHARE MODE is allowed (LOCK without a mode takes ACCESS EXCLUSIVE); "
            "amber grants read-only access",
            PRIVILEGE,
        )
    for relation in node.relations or ():
        schema = relation.schemaname
        if schema is not None and schema not in rules.schemas:
            raise Refused("lock", f"LOCK of {schema}.{relation.relname}: schema {schema} is outside this level")


def split_identifiers(text: str) -> list[str] | None:
    """A comma-separated identifier list as PostgreSQL's SplitIdentifierString reads it (unquoted names folded to
    lower case, double quotes keep case and `""` is a quote); None if it does not parse."""
    entries: list[str] = []
    rest = text.strip()
    if not rest:
        return []
    while True:
        if rest.startswith('"'):
            match = re.match(r'"((?:[^"]|"")*)"', rest)
            if match is None:
                return None
            entries.append(match.group(1).replace('""', '"'))
            rest = rest[match.end() :].lstrip()
        else:
            match = re.match(r'[^\s,"]+', rest)
            if match is None:
                return None
            entries.append(match.group(0).lower())
            rest = rest[match.end() :].lstrip()
        if not rest:
            return entries
        if not rest.startswith(","):
            return None
        rest = rest[1:].lstrip()


def duration_ms(text: str) -> float | None:
    """A time setting's value in milliseconds (PostgreSQL's units; no unit means ms), or None if unreadable."""
    match = re.fullmatch(_NUMBER, text)
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2) or "ms"
    factor = _TIME_UNITS_MS.get(unit)
    return None if factor is None else number * factor


def memory_kb(text: str) -> float | None:
    """A memory setting's value in kB (PostgreSQL's units; no unit means kB), or None if unreadable."""
    match = re.fullmatch(_NUMBER, text)
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2) or "kB"
    factor = _MEMORY_UNITS_KB.get(unit)
    return None if factor is None else number * factor


def surely_on(text: str | None) -> bool:
    """Whether PostgreSQL reads this boolean as true (anything it might read as false, or reject, is not)."""
    return text is not None and text.strip().lower() in _TRUE_SPELLINGS


def _check_value(
    name: str, values: list[str | None], rules: SessionRules, *, is_local: bool, spelled: str
) -> Rewrite | None:
    if name in FREE:
        return None
    single = values[0] if len(values) == 1 else None
    if name in READ_ONLY_SETTINGS:
        if not surely_on(single):
            raise Refused("read-write", f"{name} can only be turned on; amber grants read-only access")
        return None
    if name in TIMEOUTS:
        return _check_timeout(name, single, rules, is_local=is_local)
    if name == "search_path":
        if spelled == "SET" and all(v is not None for v in values):
            _check_search_path([v for v in values if v is not None], rules)
            return None
        raise Refused("search-path", "amber could not read this search_path", PRIVILEGE)
    if name == "work_mem":
        kb = memory_kb(single) if single is not None else None
        if kb is None or kb > WORK_MEM_MAX_KB:
            raise Refused("setting", f"work_mem may be set up to {WORK_MEM_MAX_KB // 1024}MB through amber", PRIVILEGE)
        return None
    if name == "client_encoding":
        if single is None or not same_encoding(single, rules.client_encoding):
            raise Refused(
                "encoding",
                f"client_encoding is fixed at login ({rules.client_encoding}) on amber's gateway; "
                "reconnect with the encoding you need",
                PRIVILEGE,
            )
        return None
    _refuse_setting(name)
    return None


def _check_reset(name: str) -> None:
    """RESET / SET ... TO DEFAULT: back to the login value, which for every setting below is no less strict."""
    if name in FREE or name in TIMEOUTS or name in ("search_path", "work_mem", "default_transaction_read_only"):
        return
    _refuse_setting(name)


def _refuse_setting(name: str) -> None:
    if name in PINNED or name == "client_encoding":
        raise Refused(
            "pinned-setting",
            f"{name} is pinned by amber's gateway (the gateway must read statements exactly as the database does)",
            PRIVILEGE,
        )
    if name in IDENTITY:
        raise Refused("identity", f"{name} cannot change on amber's gateway: the session is the grant's own role")
    if name == "transaction_read_only":
        raise Refused("read-write", "transaction_read_only can only be turned on; amber grants read-only access")
    raise Refused("setting", f"setting {name or 'this'} is not allowed through amber's gateway", PRIVILEGE)


def _check_timeout(name: str, value: str | None, rules: SessionRules, *, is_local: bool) -> Rewrite | None:
    milliseconds = duration_ms(value) if value is not None else None
    if milliseconds is None or milliseconds < 0:
        raise Refused("timeout", f"amber could not read {value!r} as a value of {name}", PRIVILEGE)
    limit = rules.limit_ms(name)
    if 1 <= milliseconds <= limit:
        return None
    scope = "SET LOCAL" if is_local else "SET"
    return Rewrite(
        f"{scope} {name} = '{int(limit)}ms'",
        f"amber keeps this level's limit: {name} is {int(limit)}ms (asked for {value}; 0 means none)",
    )


def _check_search_path(entries: list[str], rules: SessionRules) -> None:
    allowed = ALWAYS_ON_PATH | set(rules.schemas)
    outside = [entry for entry in entries if entry not in allowed]
    if outside:
        raise Refused(
            "search-path",
            f"search_path may name only this level's schemas ({', '.join(rules.schemas) or 'none'}), pg_catalog "
            f'and "$user"; not {", ".join(repr(entry) for entry in outside)}',
            PRIVILEGE,
        )


def check_transaction_options(name: str, options: Any) -> None:
    """SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION / BEGIN (name "transaction") options: read
    only, any isolation, deferrable; and SET TRANSACTION SNAPSHOT (importing another read-only transaction's
    snapshot, as parallel pg_dump does)."""
    if name == "transaction snapshot":
        return
    if name not in ("transaction", "session characteristics"):
        raise Refused("setting", f"SET {name} is not allowed through amber's gateway", PRIVILEGE)
    for option in options:
        if not isinstance(option, ast.DefElem):
            raise Refused("setting", "amber could not read this transaction option", PRIVILEGE)
        if option.defname == "transaction_read_only" and not _integer_true(option.arg):
            raise Refused("read-write", "a READ WRITE transaction is not allowed; amber grants read-only access")
        if option.defname not in ("transaction_read_only", "transaction_isolation", "transaction_deferrable"):
            raise Refused("setting", f"transaction option {option.defname} is not allowed", PRIVILEGE)


_ISOLATION_LEVELS = {
    "serializable": "SERIALIZABLE",
    "repeatable read": "REPEATABLE READ",
    "read committed": "READ COMMITTED",
    "read uncommitted": "READ UNCOMMITTED",
}


def begin_read_only(options: Any) -> Rewrite | None:
    """For BEGIN / START TRANSACTION: None if its options are allowed as they are; a Rewrite to the same BEGIN
    with READ ONLY when it asks for READ WRITE. Drivers ask for READ WRITE on their own (psycopg and psycopg2
    after `read_only = False`, which SQLAlchemy sets whenever it returns a `postgresql_readonly` connection to its
    pool); the transaction amber starts instead is read only, so nothing becomes less restricted. The text is
    built from a fixed vocabulary only (never from the client's words)."""
    wanted = list(options or ())
    read_write = any(
        isinstance(o, ast.DefElem) and o.defname == "transaction_read_only" and not _integer_true(o.arg) for o in wanted
    )
    if not read_write:
        check_transaction_options("transaction", wanted)
        return None
    parts = ["READ ONLY"]
    for option in wanted:
        name = getattr(option, "defname", None)
        value = getattr(getattr(option, "arg", None), "val", None)
        if name == "transaction_isolation" and isinstance(value, ast.String) and value.sval in _ISOLATION_LEVELS:
            parts.append(f"ISOLATION LEVEL {_ISOLATION_LEVELS[value.sval]}")
        elif name == "transaction_deferrable" and isinstance(value, ast.Integer):
            parts.append("DEFERRABLE" if value.ival == 1 else "NOT DEFERRABLE")
        elif name != "transaction_read_only":
            raise Refused("setting", f"transaction option {name} is not allowed", PRIVILEGE)
    return Rewrite(
        f"BEGIN {', '.join(parts)}",
        "amber keeps this transaction read only (asked for READ WRITE); amber grants read-only access",
    )


def _integer_true(arg: Any) -> bool:
    """The grammar writes READ ONLY as the integer constant 1 and READ WRITE as 0."""
    value = getattr(arg, "val", None)
    return isinstance(value, ast.Integer) and value.ival == 1


def _const_text(node: Any) -> str | None:
    """The text of a literal SET value as PostgreSQL hands it to the setting (None for anything else)."""
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    value = node.val
    if isinstance(value, ast.String):
        return str(value.sval)
    if isinstance(value, ast.Integer):
        return str(value.ival)
    if isinstance(value, ast.Float):
        return str(value.fval)
    if isinstance(value, ast.Boolean):
        return "on" if value.boolval else "off"
    return None


def same_encoding(a: str, b: str) -> bool:
    """Whether two spellings name the same allowed client encoding (pgwire/encodings.py: LATIN1 = ISO_8859_1)."""
    canonical = encodings.canonical(a)
    return canonical is not None and canonical == encodings.canonical(b)
