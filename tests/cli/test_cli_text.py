"""What the real `amber` command prints: no terminal control from user text, and `audit tail -n N` for any N."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from amber import ledger
from amber.cli.main import TAIL_PAGE
from amber.cli.text import escape, escape_text
from amber.core.db import make_engine, make_unit_of_work
from amber.ledger import Actor
from tests.cli.conftest import Cli

HOSTILE = "INC-1 \x1b[2J\x1b]0;owned\x07 \u202egnp.exe\u202c \x9b31m \r\x7f done"


def append_entries(state_url: str, count: int, actor_name: str = "seed", subject: str = "seed") -> int:
    """Append real ledger entries straight into the state store (hash chain and tree included); the head seq."""
    engine = make_engine(state_url)
    uow = make_unit_of_work(engine)
    try:
        with uow() as session:
            ledger.append_many(
                session,
                [
                    ledger.NewEntry(
                        datetime.now(UTC), "test.seeded", Actor("test", "seed", actor_name), "test", subject, {"n": n}
                    )
                    for n in range(count)
                ],
            )
        with uow() as session:
            seq, _ = ledger.head(session)
    finally:
        engine.dispose()
    return seq


@pytest.mark.parametrize("wanted", [1, 7, TAIL_PAGE, TAIL_PAGE + 1, TAIL_PAGE * 2 + 5])
def test_tail_prints_the_newest_n_entries_oldest_first_beyond_a_page(cli: Cli, state_url: str, wanted: int) -> None:
    head = append_entries(state_url, TAIL_PAGE * 2 + 50)
    rows = [json.loads(line) for line in cli.run("audit", "tail", "-n", str(wanted), "--json").stdout.splitlines()]
    assert [row["seq"] for row in rows] == list(range(head - wanted + 1, head + 1))
    human = cli.run("audit", "tail", "-n", str(wanted)).stdout.splitlines()
    assert len(human) == wanted
    assert human[-1].split()[0] == str(head)


def test_tail_of_more_than_there_is_prints_everything(cli: Cli, state_url: str) -> None:
    head = append_entries(state_url, 3)
    rows = cli.run("audit", "tail", "-n", "100000", "--json").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in rows] == list(range(1, head + 1))
    assert cli.run("audit", "tail", "-n", "0").stdout == ""


def test_tail_escapes_control_characters_from_names_and_ids(cli: Cli, state_url: str) -> None:
    append_entries(state_url, 1, actor_name=HOSTILE, subject="s\u202eid")
    out = cli.run("audit", "tail", "-n", "1").stdout
    assert out.count("\n") == 1
    assert "\\x1b[2J" in out
    assert "\\u202e" in out
    assert "s\\u202eid" in out
    for char in ("\x1b", "\x07", "\u202e", "\u202c", "\x9b", "\r", "\x7f"):
        assert char not in out


def test_tables_and_descriptions_escape_user_text(cli: Cli) -> None:
    cli.run("login", "--dev", "bob", "--groups", "engineering")
    made = cli.run("request", "orders-db", "--level", "read-only", "--for", "30m", "--reason", HOSTILE).stdout
    listed = cli.run("requests").stdout
    tail = cli.run("audit", "tail", "-n", "5").stdout
    for out in (made, listed, tail):
        for char in ("\x1b", "\x07", "\u202e", "\x9b", "\r", "\x7f"):
            assert char not in out, (char, out)
    assert "INC-1 \\x1b[2J" in listed
    assert "pending" in made


def test_escape_helpers() -> None:
    assert escape("a\nb\tc\x1b\u202e\x85") == "a\\x0ab\\x09c\\x1b\\u202e\\x85"
    assert escape_text("line 1\nline\x1b 2") == "line 1\nline\\x1b 2"
    assert escape("plain ünïcode ✓") == "plain ünïcode ✓"
