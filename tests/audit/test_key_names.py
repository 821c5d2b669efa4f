"""C2SP tlog-checkpoint: the log's key is named after the checkpoint origin (issue 13 item 3).

Signing refuses a key named otherwise (fail closed, naming both and the fix); the verifier (tlog.py, and so
tools/amber_verify.py) refuses a checkpoint signed by such a key (`key-name`), unless `--legacy-key-names` and
the log rotated away from that key to one named after the origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from amber import ledger
from amber.ledger import tlog
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.checkpoints import CheckpointError, rotate_key
from tests.conftest import Amber

ORIGIN = "test/key-names"
ROOT = Path(__file__).resolve().parents[2]


def _entries(n: int, rotation: tuple[int, tlog.Signer, tlog.Signer] | None = None) -> list[dict[str, Any]]:
    prev, out = tlog.GENESIS, []
    for seq in range(1, n + 1):
        body: dict[str, Any] = {"payload": {"n": seq}, "prev": prev, "seq": seq, "type": "test.event", "v": 1}
        if rotation is not None and seq == rotation[0]:
            _, old, new = rotation
            statement = tlog.rotation_statement(ORIGIN, old.verifier.vkey, new.verifier.vkey)
            body["type"] = tlog.KEY_ROTATION_EVENT
            body["payload"] = {
                "origin": ORIGIN,
                "old_key": old.verifier.vkey,
                "new_key": new.verifier.vkey,
                "signature": base64.b64encode(old.sign(statement)).decode(),
            }
        prev = hashlib.sha256(tlog.canonical_json(body)).hexdigest()
        out.append({**body, "hash": prev})
    return out


def _note(entries: list[dict[str, Any]], size: int, signer: tlog.Signer) -> str:
    """A checkpoint signed as a careless log would: the key's name is not checked here (sign_note)."""
    leaves = [tlog.leaf_hash(tlog.entry_leaf(e)[0]) for e in entries[:size]]
    return tlog.sign_note(tlog.Checkpoint(ORIGIN, size, tlog.root_of(leaves)).text(), signer)


def test_signing_a_checkpoint_refuses_a_key_not_named_after_the_origin() -> None:
    with pytest.raises(tlog.KeyNameError, match=r"named 'ops-2026' but the checkpoint origin is 'test/key-names'"):
        tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 1, bytes(32)), tlog.Signer.generate("ops-2026"))
    assert tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 1, bytes(32)), tlog.Signer.generate(ORIGIN))


def test_the_verifier_refuses_a_log_signature_by_a_key_named_otherwise(tmp_path: Path) -> None:
    misnamed = tlog.Signer.generate("ops-2026")
    entries = _entries(5)
    report = tlog.verify_log(entries, [("cp", _note(entries, 5, misnamed))], [misnamed.verifier], origin=ORIGIN)
    assert [p.check for p in report.problems] == ["key-name"]
    assert "'ops-2026'" in str(report.problems[0])
    assert "'test/key-names'" in str(report.problems[0])
    good = tlog.Signer.generate(ORIGIN)
    assert tlog.verify_log(entries, [("cp", _note(entries, 5, good))], [good.verifier], origin=ORIGIN).ok
    # The standalone copy says the same from the command line.
    bundle = _bundle(tmp_path / "b", entries, [_note(entries, 5, misnamed)])
    script = str(ROOT / "tools" / "amber_verify.py")
    run = subprocess.run(
        [sys.executable, script, "bundle", str(bundle), "--key", misnamed.verifier.vkey],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "key-name" in run.stdout


def test_a_receipt_signed_by_a_key_named_otherwise_fails() -> None:
    misnamed = tlog.Signer.generate("ops-2026")
    entries = _entries(3)
    leaves = [tlog.leaf_hash(tlog.entry_leaf(e)[0]) for e in entries]
    proof = tlog.inclusion_proof(1, 3, lambda level, index: tlog.root_of(leaves[index << level : (index + 1) << level]))
    receipt = tlog.format_receipt(entries[1], 1, proof, _note(entries, 3, misnamed))
    assert [p.check for p in tlog.verify_receipt(receipt, [misnamed.verifier]).problems] == ["key-name"]


def test_legacy_key_names_accepts_only_keys_the_log_rotated_away_from(tmp_path: Path) -> None:
    legacy, named = tlog.Signer.generate("amber-dev-ledger"), tlog.Signer.generate(ORIGIN)
    entries = _entries(9, rotation=(5, legacy, named))
    notes = [("old", _note(entries, 3, legacy)), ("new", _note(entries, 9, named))]
    strict = tlog.verify_log(entries, notes, [legacy.verifier], origin=ORIGIN)
    assert [p.check for p in strict.problems] == ["key-name"]
    assert tlog.verify_log(entries, notes, [legacy.verifier], origin=ORIGIN, legacy_key_names=True).ok
    bundle = _bundle(tmp_path / "b", entries, [note for _, note in notes])
    assert tlog.verify_bundle(bundle, [legacy.verifier], legacy_key_names=True).ok
    # The key in force at the end is never excused: a log still signing with a misnamed key fails.
    still = _entries(9)
    report = tlog.verify_log(
        still, [("cp", _note(still, 9, legacy))], [legacy.verifier], origin=ORIGIN, legacy_key_names=True
    )
    assert [p.check for p in report.problems] == ["key-name"]


def _bundle(directory: Path, entries: list[dict[str, Any]], notes: list[str]) -> Path:
    directory.mkdir()
    (directory / "entries.jsonl").write_text("".join(tlog.canonical_json(e).decode() + "\n" for e in entries))
    (directory / "checkpoints.jsonl").write_text(
        "".join(json.dumps({"id": i, "note": note}) + "\n" for i, note in enumerate(notes, 1))
    )
    (directory / "manifest.json").write_text(json.dumps({"origin": ORIGIN}))
    (directory / "keys.txt").write_text("")
    return directory


def test_amber_refuses_to_sign_or_rotate_to_a_key_named_otherwise(amber: Amber) -> None:
    assert amber.rt.checkpointer is not None
    base = amber.rt.checkpointer
    assert base.signer.name == base.origin  # the development key is named after the origin
    misnamed = Checkpointer(
        uow=amber.rt.uow,
        clock=amber.clock,
        signer=tlog.Signer.generate("ops-2026"),
        origin=base.origin,
        every_entries=1,
        every=timedelta(seconds=30),
    )
    amber.request("alice", "engineering", "oncall")
    with pytest.raises(CheckpointError) as refused:
        misnamed.sign_now()
    message = refused.value.message
    assert f"named 'ops-2026' but the checkpoint origin is '{base.origin}'" in message
    assert "amber audit rotate-key" in message
    base.sign_now()
    with pytest.raises(CheckpointError, match="new ledger signing key is named 'ops-2027'"), amber.rt.uow() as session:
        rotate_key(
            session,
            old=base.signer,
            new=tlog.Signer.generate("ops-2027"),
            origin=base.origin,
            at=amber.clock.now(),
            actor=ledger.SYSTEM,
        )
    with amber.rt.uow() as session:
        assert ledger.latest(session, event_type=tlog.KEY_ROTATION_EVENT) is None  # nothing was rotated
