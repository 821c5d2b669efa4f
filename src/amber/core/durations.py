"""Parsing and printing of human durations such as `30m`, `8h`, `1h30m`, `90s`, `2d`."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse `1h30m`-style text (or plain seconds). Raises ValueError with a readable message."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")  # noqa: TRY004 - validators turn ValueError into messages
    if isinstance(text, int | float):
        if text <= 0:
            raise ValueError(f"duration must be positive, got {text!r}")
        return timedelta(seconds=text)
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned.isdigit():
        return parse_duration(int(cleaned))
    pos = 0
    total = 0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise ValueError(f"not a duration: {text!r} (use forms like 30s, 15m, 8h, 1h30m, 2d)")
    if total <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return timedelta(seconds=total)


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
