"""Independent verification: export bundles, the standalone verifier, and every kind of tampering it names."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from amber import audit, ledger
from amber.ledger import checkpoints, proofs, tlog
from amber.ledger.checkpointer import Checkpointer
from tests.conftest import Amber

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "amber_verify.py"


def test_the_standalone_tool_is_tlog_verbatim_and_needs_only_stdlib_and_cryptography() -> None:
    source = (ROOT / "src" / "amber" / "ledger" / "tlog.py").read_text()
    assert TOOL.read_text() == source, "tools/amber_verify.py must be a copy of src/amber/ledger/tlog.py"
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert modules - set(sys.stdlib_module_names) == {"cryptography"}


def _cp(amber: Amber) -> Checkpointer:
    assert amber.rt.checkpointer is not None
    return amber.rt.checkpointer


def _bundle(amber: Amber, directory: Path) -> Path:
    with amber.rt.uow() as session:
        proofs.export_bundle(session, directory, _cp(amber).origin)
    return directory


@pytest.fixture
def history(amber: Amber, tmp_path: Path) -> tuple[Amber, Path, Path]:
    """Three requests with a checkpoint after each, exported; plus the first checkpoint kept by an auditor."""
    amber.request("alice", "engineering", "oncall")
    kept = tmp_path / "kept.checkpoint"
    kept.write_text(_cp(amber).sign_now().note)
    amber.request("bob", "engineering", "oncall")
    _cp(amber).sign_now()
    amber.request("carol", "engineering", "oncall")
    _cp(amber).sign_now()
    return amber, _bundle(amber, tmp_path / "bundle"), kept


def _verify(amber: Amber, bundle: Path, **kwargs: Any) -> tlog.Report:
    return tlog.verify_bundle(bundle, [_cp(amber).verifier], **kwargs)


def _lines(bundle: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (bundle / "entries.jsonl").read_text().splitlines()]


def _write(bundle: Path, entries: list[dict[str, Any]]) -> None:
    (bundle / "entries.jsonl").write_text("".join(tlog.canonical_json(e).decode() + "\n" for e in entries))


def _rechain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an operator who rewrites history does: renumber and recompute every seq, prev and hash."""
    prev = tlog.GENESIS
    out = []
    for seq, entry in enumerate(entries, 1):
        body = {k: v for k, v in entry.items() if k != "hash"} | {"seq": seq, "prev": prev}
        prev = hashlib.sha256(tlog.canonical_json(body)).hexdigest()
        out.append({**body, "hash": prev})
    return out


def _checks(report: tlog.Report) -> list[tuple[str, int | None]]:
    return [(p.check, p.seq) for p in report.problems]


def test_an_untouched_export_verifies(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, kept = history
    report = _verify(amber, bundle, since=kept)
    assert report.ok, report.problems
    with amber.rt.uow() as session:
        assert report.entries == ledger.count(session)
    assert report.checkpoints == 4
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["origin"] == _cp(amber).origin
    assert (bundle / "keys.txt").read_text().strip() == _cp(amber).verifier.vkey


def test_a_modified_entry_is_named(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    entries = _lines(bundle)
    entries[4]["payload"] = {**entries[4]["payload"], "reason": "nothing to see"}
    _write(bundle, entries)
    assert _checks(_verify(amber, bundle))[0] == ("hash", 5)


def test_a_rewritten_history_with_recomputed_hashes_breaks_the_signed_root(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, kept = history
    entries = _lines(bundle)
    first_size = tlog.Checkpoint.parse(tlog.open_note(kept.read_text(), [_cp(amber).verifier])[0]).size
    entries[first_size + 1]["actor"] = {**entries[first_size + 1]["actor"], "name": "someone else"}
    _write(bundle, _rechain(entries))
    report = _verify(amber, bundle)
    assert report.problems, "a rewritten chain must not verify"
    assert {p.check for p in report.problems} == {"root", "consistency"}
    assert all(p.seq == first_size + 1 for p in report.problems if p.check == "root")
    assert f"an entry after {first_size} was modified" in str(report.problems[0])


def test_a_deleted_entry_is_named(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    entries = _lines(bundle)
    del entries[6]
    _write(bundle, entries)
    checks = _checks(_verify(amber, bundle))
    assert checks[0] == ("sequence", 7)
    assert ("truncation", None) in checks


def test_a_deleted_entry_with_renumbering_is_caught(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    entries = _lines(bundle)
    del entries[6]
    _write(bundle, _rechain(entries))
    checks = {check for check, _ in _checks(_verify(amber, bundle))}
    assert checks >= {"root", "truncation"}


def test_an_inserted_entry_is_named(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    entries = _lines(bundle)
    body = {k: v for k, v in entries[3].items() if k != "hash"} | {"type": "grant.revoked"}
    fake = {**body, "hash": hashlib.sha256(tlog.canonical_json(body)).hexdigest()}  # well-formed on its own
    entries.insert(3, fake)
    _write(bundle, entries)
    assert _checks(_verify(amber, bundle))[0] == ("sequence", 5)


def test_reordered_entries_are_named(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    entries = _lines(bundle)
    entries[2], entries[3] = entries[3], entries[2]
    _write(bundle, entries)
    assert _checks(_verify(amber, bundle))[0] == ("sequence", 3)
    entries = _lines(bundle)
    _write(bundle, _rechain(entries))
    assert {check for check, _ in _checks(_verify(amber, bundle))} == {"root", "consistency"}


def test_a_truncated_log_is_detected(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    entries = _lines(bundle)
    _write(bundle, entries[:-3])
    report = _verify(amber, bundle)
    assert [p.check for p in report.problems] == ["truncation"]
    assert f"signed for {len(entries)} entries but the log has {len(entries) - 3}" in str(report.problems[0])


def test_a_rollback_to_an_earlier_state_is_detected_with_a_kept_checkpoint(amber: Amber, tmp_path: Path) -> None:
    amber.request("alice", "engineering", "oncall")
    _cp(amber).sign_now()
    old = _bundle(amber, tmp_path / "old")
    amber.request("bob", "engineering", "oncall")
    kept = tmp_path / "kept.checkpoint"
    kept.write_text(_cp(amber).sign_now().note)
    # The operator later shows the auditor the old state (checkpoints included): only the kept one reveals it.
    assert _verify(amber, old).ok
    report = _verify(amber, old, since=kept)
    assert [p.check for p in report.problems] == ["rollback"]


def test_a_split_view_is_detected(history: tuple[Amber, Path, Path], tmp_path: Path) -> None:
    amber, bundle, _ = history
    # The key holder signs a different history of the same size and shows it to someone else (a witness).
    entries = _lines(bundle)
    forked = _rechain([*entries[:-1], {**entries[-1], "payload": {"forked": True}}])
    frontier = tlog.Frontier()
    for entry in forked:
        frontier.append(tlog.leaf_hash(tlog.entry_leaf(entry)[0]))
    note = tlog.sign_checkpoint(tlog.Checkpoint(_cp(amber).origin, len(forked), frontier.root()), _cp(amber).signer)
    witnessed = tmp_path / "witness.checkpoint"
    witnessed.write_text(note)
    report = _verify(amber, bundle, extra_checkpoints=[witnessed])
    assert [p.check for p in report.problems] == ["split-view"]
    assert str(witnessed) in str(report.problems[0])
    # A directory of fetched checkpoints is read whole (every *.checkpoint in it); an empty one is an error.
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (fetched / "a.checkpoint").write_text(note)
    (fetched / "notes.txt").write_text("not a checkpoint")
    report = _verify(amber, bundle, extra_checkpoints=[fetched])
    assert [p.check for p in report.problems] == ["split-view"]
    assert str(fetched / "a.checkpoint") in str(report.problems[0])
    with pytest.raises(ValueError, match="holds no"):
        _verify(amber, bundle, extra_checkpoints=[_empty(tmp_path)])


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_bad_signatures_are_detected(history: tuple[Amber, Path, Path]) -> None:
    amber, bundle, _ = history
    lines = (bundle / "checkpoints.jsonl").read_text().splitlines()
    item = json.loads(lines[1])
    lines_of_note = item["note"].split("\n")
    item["note"] = "\n".join([lines_of_note[0], "3", *lines_of_note[2:]])  # claim a different size
    lines[1] = json.dumps(item)
    (bundle / "checkpoints.jsonl").write_text("\n".join(lines) + "\n")
    report = _verify(amber, bundle)
    assert [p.check for p in report.problems] == ["signature"]
    assert f"#{item['id']}" in str(report.problems[0])
    stranger = tlog.Signer.generate(_cp(amber).origin).verifier  # same name, different key
    assert {p.check for p in tlog.verify_bundle(bundle, [stranger]).problems} == {"signature"}


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)  # a fresh interpreter per command: one store
def test_export_and_verify_from_the_command_line(history: tuple[Amber, Path, Path], tmp_path: Path) -> None:
    amber, _, kept = history
    env = {
        **os.environ,
        "AMBER_DATABASE_URL": amber.rt.engine.url.render_as_string(hide_password=False),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
    }
    out = tmp_path / "cli-bundle"
    exported = _amber(env, "audit", "export", str(out))
    assert exported.returncode == 0, exported.stderr
    # The CLI signs with the key in the state dir; the runtime's dev key lives there too.
    vkey = (out / "keys.txt").read_text().split()[-1]
    ok = _amber(env, "audit", "verify", "--bundle", str(out), "--key", vkey, "--since", str(kept))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ledger OK" in ok.stdout
    tool = subprocess.run(
        [sys.executable, "-I", str(out / "amber_verify.py"), "bundle", str(out), "--key", vkey],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert tool.returncode == 0, tool.stdout + tool.stderr
    entries = _lines(out)
    _write(out, entries[:5] + entries[6:])
    bad = _amber(env, "audit", "verify", "--bundle", str(out), "--key", vkey)
    assert bad.returncode == 1
    assert "entry 6: sequence: line 6 holds entry 7" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_audit_verify_against_the_database_catches_a_rewritten_suffix(
    history: tuple[Amber, Path, Path], tmp_path: Path
) -> None:
    amber, _, kept = history
    engine = amber.rt.engine
    with amber.rt.uow() as session:
        assert audit.verify(session, since=(str(kept), kept.read_text()), origin=_cp(amber).origin).ok
        rows = [proofs.exported(row) for row in ledger.iter_raw(session)]
    size = len(rows)
    # An operator with full database access rewrites the last entry, recomputes its hash, and hides the
    # checkpoints it had signed. The chain alone now verifies; the auditor's kept checkpoint plus the
    # stored tree still catch it.
    rows[-1]["payload"] = {**rows[-1]["payload"], "rewritten": True}
    rewritten = _rechain(rows)[-1]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
            conn.exec_driver_sql("ALTER TABLE ledger_checkpoints DISABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
            conn.exec_driver_sql("DROP TRIGGER ledger_checkpoints_no_delete")
        conn.execute(
            text("UPDATE ledger_entries SET payload = :p, entry_hash = :h WHERE seq = :s"),
            {"p": tlog.canonical_json(rewritten["payload"]).decode(), "h": rewritten["hash"], "s": size},
        )
        conn.execute(text("DELETE FROM ledger_checkpoints WHERE tree_size = :s"), {"s": size})
    with amber.rt.uow() as session:
        assert ledger.verify_chain(ledger.iter_raw(session)).ok
        report = audit.verify(session, since=(str(kept), kept.read_text()), origin=_cp(amber).origin)
        assert checkpoints.latest_checkpoint(session) is not None
    assert report.problems == [
        f"tree: the stored Merkle tree's root at size {size} does not match the entries",
    ]


def _amber(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
