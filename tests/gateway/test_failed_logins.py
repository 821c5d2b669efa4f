"""The failed-login limits, on an injected monotonic clock: per source and per grant, each on its own."""

from __future__ import annotations

from amber.gateway.server import FailedLogins


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_blocked_after_limit_failures_for_the_window() -> None:
    ticks = Ticks()
    limits = FailedLogins(limit=3, window_s=60, now=ticks)
    for _ in range(2):
        limits.failed("grt_a")
    assert not limits.blocked("grt_a")
    limits.failed("grt_a")
    assert limits.blocked("grt_a")
    assert not limits.blocked("grt_b")
    ticks.now += 61
    assert not limits.blocked("grt_a")


def test_many_sources_guessing_one_grant_are_stopped_by_the_grant_limit() -> None:
    ticks = Ticks()
    per_source = FailedLogins(limit=5, now=ticks)
    per_grant = FailedLogins(limit=10, now=ticks)
    for attempt in range(10):
        source = f"10.0.0.{attempt}"  # one try from each of ten addresses
        assert not per_source.blocked(source)
        assert not per_grant.blocked("grt_target")
        per_source.failed(source)
        per_grant.failed("grt_target")
    assert per_grant.blocked("grt_target")
    assert not per_source.blocked("10.0.0.99")
    assert not per_grant.blocked("grt_other")


def test_made_up_keys_cannot_grow_it_without_bound() -> None:
    ticks = Ticks()
    limits = FailedLogins(limit=2, max_keys=100, now=ticks)
    for index in range(1000):
        limits.failed(f"grt_{index}")
        limits.failed(f"grt_{index}")
    assert len(limits._failures) <= 100
    assert limits.blocked("grt_999")  # the newest are kept
    for _ in range(50):
        limits.failed("grt_busy")
    assert len(limits._failures["grt_busy"]) == 2
