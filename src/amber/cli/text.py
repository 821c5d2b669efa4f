"""What the CLI prints for people: every character that could steer a terminal is shown escaped.

Invariant: statement text, reasons, names and messages reach the terminal with their control characters
visible (`\\x1b`, `\\x9b`, `\\u202e`), never acting: C0 and C1 controls (ESC, CSI, BEL, CR, backspace, ...), DEL,
and the bidirectional overrides and isolates that reorder what a line seems to say. `escape` is for one field
(a table cell: newlines and tabs escaped too, so a value cannot fake a row); `echo` prints a whole text amber
composed, keeping its own newlines. JSON output needs neither (json.dumps escapes them all). What this does NOT
do: escape backslashes, so a value that contains the characters `\\x1b` looks like an escaped ESC.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

_BIDI = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_FIELD = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_UNSAFE_TEXT = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI}]")  # keeps \n (0x0a)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(value: object) -> str:
    """One value for a table cell or a line: every control and bidi character escaped, newlines too."""
    return _UNSAFE_FIELD.sub(_visible, str(value))


def escape_text(text: str) -> str:
    """A text amber composed of several lines: controls escaped, its newlines kept."""
    return _UNSAFE_TEXT.sub(_visible, text)


def echo(text: object = "", *, end: str = "\n", file: TextIO | None = None) -> None:
    """Print for people (the only way the CLI prints, see scripts/check_invariants.py)."""
    print(escape_text(str(text)), end=end, file=file or sys.stdout)
