"""The offline verifier split across processes: the same verdict, to the entry and the check, as one process."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.ledger import tlog

ORIGIN = "test/parallel"
OLD = tlog.Signer.generate(ORIGIN)  # a log's keys are named after its origin
NEW = tlog.Signer.generate(ORIGIN)
ROTATION_AT = 23  # entry 23 hands over from OLD to NEW
CHECKPOINTS = (1, 8, 22, 23, 40, 64, 77)


def _entries(n: int = 77) -> list[dict[str, Any]]:
    prev, out = tlog.GENESIS, []
    for seq in range(1, n + 1):
        body: dict[str, Any] = {
            "actor": {"iss": "https://idp.test", "name": 'ålice "q"', "sub": "u-1"},
            "at": f"2026-11-26T12:00:{seq % 60:02d}.000000Z",
            "payload": {"n": seq, "text": 'naïve,"prev":"x' * (seq % 3)},
            "prev": prev,
            "seq": seq,
            "subject": {"id": f"s{seq % 5}", "kind": "test"},
            "type": "test.event",
            "v": 1,
        }
        if seq == ROTATION_AT:
            statement = tlog.rotation_statement(ORIGIN, OLD.verifier.vkey, NEW.verifier.vkey)
            body["type"] = tlog.KEY_ROTATION_EVENT
            body["payload"] = {
                "origin": ORIGIN,
                "old_key": OLD.verifier.vkey,
                "new_key": NEW.verifier.vkey,
                "signature": base64.b64encode(OLD.sign(statement)).decode(),
            }
        prev = hashlib.sha256(tlog.canonical_json(body)).hexdigest()
        out.append({**body, "hash": prev})
    return out


def _bundle(directory: Path, entries: list[dict[str, Any]], lines: list[str] | None = None) -> Path:
    directory.mkdir()
    leaves = [tlog.leaf_hash(tlog.entry_leaf(entry)[0]) for entry in entries]
    with (directory / "checkpoints.jsonl").open("w") as handle:
        for number, size in enumerate(CHECKPOINTS, 1):
            signer = OLD if size < ROTATION_AT else NEW
            note = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, size, tlog.root_of(leaves[:size])), signer)
            handle.write(json.dumps({"id": number, "tree_size": size, "note": note}) + "\n")
    if lines is None:
        lines = [tlog.canonical_json(entry).decode() + "\n" for entry in entries]
    (directory / "entries.jsonl").write_text("".join(lines), newline="")
    (directory / "manifest.json").write_text(json.dumps({"origin": ORIGIN}))
    (directory / "keys.txt").write_text(OLD.verifier.vkey + "\n")
    return directory


def _line(entry: dict[str, Any]) -> str:
    return tlog.canonical_json(entry).decode() + "\n"


def _rechained(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    prev, out = tlog.GENESIS, []
    for seq, entry in enumerate(entries, 1):
        body = {k: v for k, v in entry.items() if k != "hash"} | {"seq": seq, "prev": prev}
        prev = hashlib.sha256(tlog.canonical_json(body)).hexdigest()
        out.append({**body, "hash": prev})
    return out


def _edited(entries: list[dict[str, Any]]) -> list[str]:
    entries[30]["payload"] = {"n": 0}
    return [_line(e) for e in entries]


TAMPERING: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "untouched": lambda es: [_line(e) for e in es],
    "crlf and blank lines": lambda es: [
        "\r\n".join(_line(e)[:-1] for e in es[:40]) + "\r\n\n  \n",
        *map(_line, es[40:]),
    ],
    "no final newline": lambda es: [*map(_line, es[:-1]), _line(es[-1])[:-1]],
    "json in another layout": lambda es: [*map(_line, es[:50]), json.dumps(es[50]) + "\n", *map(_line, es[51:])],
    "edited": _edited,
    "deleted": lambda es: [_line(e) for e in es if e["seq"] != 45],
    "deleted and rechained": lambda es: [_line(e) for e in _rechained([e for e in es if e["seq"] != 45])],
    "duplicated": lambda es: [*map(_line, es[:60]), _line(es[59]), *map(_line, es[60:])],
    "reordered": lambda es: [*map(_line, es[:10]), _line(es[11]), _line(es[10]), *map(_line, es[12:])],
    "first line changed": lambda es: [_line(es[0]).replace('"seq":1,', '"seq":2,'), *map(_line, es[1:])],
    "truncated": lambda es: [_line(e) for e in es[:70]],
    "rotation disguised": lambda es: [_line(e).replace("ledger.key_rotated", "ledger.x") for e in es],
}


@pytest.mark.parametrize("case", list(TAMPERING))
@pytest.mark.parametrize("processes", [2, 5])
def test_processes_reach_the_verdict_of_one(tmp_path: Path, case: str, processes: int) -> None:
    entries = _entries()
    bundle = _bundle(tmp_path / "bundle", entries, TAMPERING[case](entries))
    alone = tlog.verify_bundle(bundle, [OLD.verifier], processes=1)
    split = tlog.verify_bundle(bundle, [OLD.verifier], processes=processes)
    assert (split.problems, split.entries, split.root, split.checkpoints) == (
        alone.problems,
        alone.entries,
        alone.root,
        alone.checkpoints,
    )
    assert alone.ok == (case in {"untouched", "crlf and blank lines", "no final newline", "json in another layout"})


def test_a_clean_log_is_checked_by_the_processes_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path / "bundle", _entries())

    def sequential(_path: Path) -> None:
        raise AssertionError("fell back to one process")

    monkeypatch.setattr(tlog, "read_leaves", sequential)
    report = tlog.verify_bundle(bundle, [OLD.verifier], processes=3)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (77, len(CHECKPOINTS))


def test_unreadable_lines_fail_the_same_way(tmp_path: Path) -> None:
    entries = _entries()
    lines = [_line(e) for e in entries]
    lines[33] = "{not json\n"
    bundle = _bundle(tmp_path / "bundle", entries, lines)
    with pytest.raises(ValueError, match="Expecting property name"):
        tlog.verify_bundle(bundle, [OLD.verifier], processes=1)
    with pytest.raises(ValueError, match="Expecting property name"):
        tlog.verify_bundle(bundle, [OLD.verifier], processes=2)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), cuts=st.lists(st.integers(0, 300), max_size=6), wanted=st.sets(st.integers(0, 300)))
def test_ranges_join_into_the_rfc9162_tree(n: int, cuts: list[int], wanted: set[int]) -> None:
    """Leaves split anywhere, each range folded on its own: the joined roots are MTH of every prefix."""
    lines = [tlog.canonical_json(entry) for entry in _entries(n)]
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    chunks = [tlog._check_lines(lines[lo:hi], wanted) for lo, hi in itertools.pairwise(bounds)]
    joined = tlog._join(chunks, wanted)
    assert joined is not None
    roots, rotations, size, root = joined
    leaves = [tlog.leaf_hash(tlog.entry_leaf(json.loads(line))[0]) for line in lines]
    assert size == n
    assert root == tlog.root_of(leaves)
    assert roots == {w: tlog.root_of(leaves[:w]) for w in wanted if w <= n}
    assert [r["seq"] for r in rotations] == ([ROTATION_AT] if n >= ROTATION_AT else [])


@pytest.mark.parametrize("processes", [1, 2])
def test_consecutive_checkpoints_are_checked_with_a_consistency_proof(tmp_path: Path, processes: int) -> None:
    """A middle rewritten (every hash recomputed): the proof from size 23 to size 40 drawn from the log fails."""
    entries = _entries()
    bundle = _bundle(tmp_path / "bundle", entries)
    assert tlog.verify_bundle(bundle, [OLD.verifier], processes=processes).ok
    entries[29]["payload"] = {"n": 30, "text": "rewritten"}
    (bundle / "entries.jsonl").write_text("".join(_line(e) for e in _rechained(entries)))
    report = tlog.verify_bundle(bundle, [OLD.verifier], processes=processes)
    consistency = [str(p) for p in report.problems if p.check == "consistency"]
    assert len(consistency) == 3, report.problems  # 23 -> 40, 40 -> 64, 64 -> 77 (the rechain changed every prev)
    assert "from checkpoint #4 (bundle) (size 23) to checkpoint #5 (bundle) (size 40) does not verify" in consistency[0]
    assert "from checkpoint #5 (bundle) (size 40) to checkpoint #6 (bundle) (size 64)" in consistency[1]


def test_consistency_nodes_are_the_proofs_nodes() -> None:
    needed = tlog._consistency_nodes([0, 3, 8, 13])
    expected = {
        node
        for m, n in ((3, 8), (8, 13))
        for node in tlog.needed_nodes(lambda get, m=m, n=n: tlog.consistency_proof(m, n, get))
    }
    assert needed == expected
    assert tlog._consistency_nodes([5]) == set()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), cuts=st.lists(st.integers(0, 200), max_size=6), sizes=st.sets(st.integers(1, 200)))
def test_walks_keep_the_nodes_consistency_proofs_need(n: int, cuts: list[int], sizes: set[int]) -> None:
    """One process or ranges joined anywhere: every wanted node of the tree is kept, with its RFC 9162 hash."""
    lines = [tlog.canonical_json(entry) for entry in _entries(n)]
    leaves = [tlog.leaf_hash(tlog.entry_leaf(json.loads(line))[0]) for line in lines]
    wanted = tlog._consistency_nodes(sizes)
    expected = {
        (level, index): tlog.root_of(leaves[index << level : (index + 1) << level])
        for level, index in wanted
        if (index + 1) << level <= n
    }
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    joined = tlog._Nodes(wanted)
    chunks = [tlog._check_lines(lines[lo:hi], sizes, tlog._Nodes(wanted)) for lo, hi in itertools.pairwise(bounds)]
    result = tlog._join(chunks, sizes, joined)
    assert result is not None
    assert result[0] == {size: tlog.root_of(leaves[:size]) for size in sizes if size <= n}
    assert joined.found == expected
    walked = tlog._Nodes(wanted)
    parsed = [(*tlog.entry_leaf(json.loads(line)), json.loads(line)) for line in lines]
    tlog._walk(parsed, set(), tlog.Report(), [], walked)
    assert walked.found == expected
