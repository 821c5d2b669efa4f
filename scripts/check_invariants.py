"""Small lint for amber's own invariants, the ones ruff and import-linter cannot express.

1. Only `amber.ledger` constructs ledger rows (`LedgerEntry(`) or names the table in SQL it runs.
2. Services never commit: `.commit()` appears only in core/db.py (the unit of work).
3. No SQL is built from f-strings or %-formatting passed straight to `execute` (migrations excepted,
   which format only constant identifiers).
4. The ledger's rows are never updated or deleted by amber's code.
5. Text for people is printed only through amber.cli.text (control characters from users shown escaped).
Exit 1 with `file:line: rule` for each violation.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "amber"

RULES: list[tuple[str, re.Pattern[str], set[str]]] = [
    ("only amber.ledger creates ledger rows", re.compile(r"\bLedgerEntry\("), {"ledger"}),
    ("services never commit; the unit of work does", re.compile(r"\.commit\(\)"), {"core/db.py"}),
    ("no SQL from f-strings: use parameters or psycopg.sql", re.compile(r"execute\(\s*f[\"']"), {"migrations"}),
    ("no SQL from %-formatting", re.compile(r"execute\([^)]*[\"']\s*%\s*\("), set()),
    (
        "the ledger is append-only",
        re.compile(r"(update|delete)\s*\(\s*LedgerEntry|UPDATE\s+ledger_entries|DELETE\s+FROM\s+ledger_entries", re.I),
        {"migrations"},
    ),
    ("print through amber.cli.text.echo (it escapes control characters)", re.compile(r"\bprint\("), {"cli/text.py"}),
]


def allowed(path: Path, exceptions: set[str]) -> bool:
    relative = path.relative_to(SRC).as_posix()
    return any(relative == e or relative.startswith(e.rstrip("/") + "/") for e in exceptions)


def main() -> int:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for name, pattern, exceptions in RULES:
            if allowed(path, exceptions):
                continue
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(SRC.parent.parent)}:{line}: {name}")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"invariants: OK ({len(RULES)} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
