"""Durations, secrets and canonical JSON."""

from __future__ import annotations

from datetime import timedelta

import pytest

from amber.core.crypto import canonical_json, constant_time_equal, new_secret, secret_checksum_ok
from amber.core.durations import MAX_DURATION, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("15m", 900), ("8h", 28800), ("1h30m", 5400), ("2d", 172800), (" 90 ", 90), (45, 45)],
)
def test_parse_duration(text: str | int, expected: int) -> None:
    assert parse_duration(text) == timedelta(seconds=expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1x",
        "h",
        "-5m",
        "0s",
        "1h 2",
        0,
        -1,
        True,
        False,
        float("nan"),
        float("inf"),
        1e308,
        10**30,
        "99999999999999999999d",
        "9" * 5000,
        "3651d",
    ],
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)  # type: ignore[arg-type]


def test_parse_duration_takes_up_to_its_ceiling() -> None:
    assert parse_duration("3650d") == MAX_DURATION


def test_format_duration_round_trips() -> None:
    assert format_duration(timedelta(seconds=5400)) == "1h30m"
    assert parse_duration(format_duration(timedelta(days=1, seconds=61))) == timedelta(days=1, seconds=61)


def test_secrets_are_prefixed_checksummed_and_unique() -> None:
    first, second = new_secret("pg"), new_secret("pg")
    assert first != second
    assert first.startswith("amb_pg_")
    assert secret_checksum_ok(first)
    assert not secret_checksum_ok(first[:-1] + ("a" if first[-1] != "a" else "b"))
    assert constant_time_equal(first, first)
    assert not constant_time_equal(first, second)


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(ValueError, match="Out of range"):
        canonical_json({"x": float("nan")})
