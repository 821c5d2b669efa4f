"""Time. Code asks an injected Clock; tests move a FrozenClock instead of sleeping.

Every instant is a UTC-aware datetime named `*_at`; every duration a timedelta named `*_ttl`.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to. Thread-safe, for tests and benchmarks."""

    def __init__(self, start_at: datetime | None = None) -> None:
        self._now = start_at or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start instant")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = at


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every instant amber stores is UTC, so re-attach it."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
