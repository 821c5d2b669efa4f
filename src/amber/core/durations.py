"""Parsing and printing of human durations such as `30m`, `8h`, `1h30m`, `90s`, `2d`.

Invariant: `parse_duration` either returns a positive timedelta of at most MAX_DURATION or raises ValueError
with a readable message; no input (huge numbers, booleans, NaN, a thousand digits) makes it raise anything else.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Far beyond any access (a level allows at most MAX_LEVEL_TTL), far below where datetime arithmetic overflows.
MAX_DURATION = timedelta(days=3650)
# The longest max_ttl an access level may declare, so the longest access anyone can ask for.
MAX_LEVEL_TTL = timedelta(days=7)
MAX_TEXT = 64  # characters of duration text read at all


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse `1h30m`-style text (or plain seconds). Raises ValueError with a readable message."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")  # noqa: TRY004 - validators turn ValueError into messages
    if isinstance(text, int | float):
        return _seconds(text, text)
    if len(text) > MAX_TEXT:
        raise ValueError(f"not a duration: {text[:MAX_TEXT]!r}... is too long (use forms like 15m, 8h, 2d)")
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned.isdigit():
        return _seconds(int(cleaned), text)
    pos = 0
    total = 0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise ValueError(f"not a duration: {text!r} (use forms like 30s, 15m, 8h, 1h30m, 2d)")
    return _seconds(total, text)


def _seconds(value: int | float, shown: object) -> timedelta:
    if not math.isfinite(value):
        raise ValueError(f"not a duration: {shown!r}")
    if value <= 0:
        raise ValueError(f"duration must be positive, got {shown!r}")
    if value > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {shown!r} is too long (at most {format_duration(MAX_DURATION)})")
    return timedelta(seconds=value)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
