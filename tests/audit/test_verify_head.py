"""The verifier proves the head: entries no trusted checkpoint covers fail unless allowed, and C2SP conformance
(a known key's bad signature, control characters in origins, leading zeros in receipt indices)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amber.ledger import proofs, tlog
from amber.ledger.checkpointer import Checkpointer
from tests.conftest import Amber


def _cp(amber: Amber) -> Checkpointer:
    assert amber.rt.checkpointer is not None
    return amber.rt.checkpointer


@pytest.fixture
def bundle(amber: Amber, tmp_path: Path) -> Path:
    amber.request("alice", "engineering", "oncall")
    _cp(amber).sign_now()
    with amber.rt.uow() as session:
        proofs.export_bundle(session, tmp_path / "bundle", _cp(amber).origin)
    return tmp_path / "bundle"


def _entries(bundle: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (bundle / "entries.jsonl").read_text().splitlines()]


def _forge_tail(bundle: Path, count: int) -> int:
    """Append `count` well-chained entries after the last checkpoint; return the log's new size."""
    entries = _entries(bundle)
    for _ in range(count):
        last = entries[-1]
        body = {k: v for k, v in last.items() if k != "hash"} | {"seq": last["seq"] + 1, "prev": last["hash"]}
        entries.append({**body, "hash": hashlib.sha256(tlog.canonical_json(body)).hexdigest()})
    (bundle / "entries.jsonl").write_text("".join(tlog.canonical_json(e).decode() + "\n" for e in entries))
    return len(entries)


def test_forged_entries_after_the_last_checkpoint_fail_with_their_count(amber: Amber, bundle: Path) -> None:
    signed = len(_entries(bundle))
    size = _forge_tail(bundle, 2)
    report = tlog.verify_bundle(bundle, [_cp(amber).verifier])
    assert [(p.check, p.seq) for p in report.problems] == [("unsigned-tail", signed + 1)]
    assert f"2 entries after the newest signed checkpoint (size {signed})" in str(report.problems[0])
    allowed = tlog.verify_bundle(bundle, [_cp(amber).verifier], allow_unsigned_tail=True)
    assert allowed.ok, allowed.problems
    assert (allowed.entries, allowed.signed_size, allowed.unsigned) == (size, signed, 2)


def test_an_export_without_checkpoints_fails(amber: Amber, bundle: Path) -> None:
    (bundle / "checkpoints.jsonl").write_text("")
    count = len(_entries(bundle))
    report = tlog.verify_bundle(bundle, [_cp(amber).verifier])
    assert [p.check for p in report.problems] == ["unsigned-tail"]
    assert f"all {count} entries are unsigned" in str(report.problems[0])
    assert tlog.verify_bundle(bundle, [_cp(amber).verifier], allow_unsigned_tail=True).signed_size is None


def test_the_standalone_verifier_exits_nonzero_on_an_unsigned_tail(
    amber: Amber, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _forge_tail(bundle, 1)
    vkey = _cp(amber).verifier.vkey
    assert tlog.main(["bundle", str(bundle), "--key", vkey]) == 1
    assert "unsigned-tail: 1 entries" in capsys.readouterr().out
    assert tlog.main(["bundle", str(bundle), "--key", vkey, "--allow-unsigned-tail"]) == 0
    assert "the last 1 entries" in capsys.readouterr().err


def _tamper_signature(note: str) -> str:
    text, _, line = note.rstrip("\n").rpartition("\n")
    prefix, _, blob = line.rpartition(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    return f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


def test_a_tampered_signature_by_the_known_key_is_an_error(amber: Amber, bundle: Path) -> None:
    lines = [json.loads(line) for line in (bundle / "checkpoints.jsonl").read_text().splitlines()]
    lines[-1]["note"] = _tamper_signature(lines[-1]["note"])
    (bundle / "checkpoints.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = tlog.verify_bundle(bundle, [_cp(amber).verifier])
    assert [p.check for p in report.problems] == ["signature"]
    assert "the signature by the known key" in str(report.problems[0])
    assert "is invalid" in str(report.problems[0])


def test_receipts_refuse_a_tampered_known_signature_and_leading_zero_indices(amber: Amber) -> None:
    amber.request("alice", "engineering", "oncall")
    _cp(amber).sign_now()
    with amber.rt.uow() as session:
        receipt = proofs.receipt(session, 3)
    keys = [_cp(amber).verifier]
    assert tlog.verify_receipt(receipt, keys).ok
    head, _, note = receipt.partition("\n\n")
    bad = tlog.verify_receipt(f"{head}\n\n{_tamper_signature(note)}", keys)
    assert [(p.check, "is invalid" in p.message) for p in bad.problems] == [("signature", True)]
    padded = tlog.verify_receipt(receipt.replace("\nindex 2\n", "\nindex 02\n"), keys)
    assert "\nindex 2\n" in receipt
    assert [p.check for p in padded.problems] == ["format"]
    assert "leading zeros" in padded.problems[0].message


@pytest.mark.parametrize(
    "origin", ["amber\tlog", "amber\rlog", "amber\x00log", "amber\x1b[2Jlog", "amber\x7f", "a\x85"]
)
def test_origins_with_control_characters_are_refused(origin: str) -> None:
    root = base64.b64encode(bytes(32)).decode()
    with pytest.raises(ValueError, match="control character"):
        tlog.Checkpoint.parse(f"{origin}\n1\n{root}\n")
    with pytest.raises(ValueError, match="control character"):
        tlog.sign_checkpoint(tlog.Checkpoint(origin, 1, bytes(32)), tlog.Signer.generate("k"))


def test_a_checkpoint_with_a_control_character_in_its_origin_fails_verification(amber: Amber, bundle: Path) -> None:
    signer = tlog.Signer.generate("intruder")
    entries = len(_entries(bundle))
    note = tlog.sign_note(f"amber\tx\n{entries}\n{base64.b64encode(bytes(32)).decode()}\n", signer)
    (bundle / "witness.checkpoint").write_text(note)
    report = tlog.verify_bundle(bundle, [_cp(amber).verifier], extra_checkpoints=[bundle / "witness.checkpoint"])
    assert [p.check for p in report.problems] == ["format"]
    assert "control character" in str(report.problems[0])


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)  # a fresh interpreter per command: one store
def test_live_verify_proves_the_head_and_refuses_the_stored_key_in_production(amber: Amber, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AMBER_DATABASE_URL": amber.rt.engine.url.render_as_string(hide_password=False),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
    }
    amber.request("alice", "engineering", "oncall")
    vkey = _cp(amber).verifier.vkey
    _cp(amber).sign_now()
    assert _amber(env, "audit", "verify", "--key", vkey).returncode == 0
    amber.request("bob", "engineering", "oncall")  # appended after the last checkpoint
    tail = _amber(env, "audit", "verify", "--key", vkey)
    assert tail.returncode == 1
    assert "unsigned-tail: " in tail.stdout
    assert "Traceback" not in tail.stderr
    assert _amber(env, "audit", "verify", "--key", vkey, "--allow-unsigned-tail").returncode == 0
    stored = _amber(env, "audit", "verify", "--allow-unsigned-tail")
    assert stored.returncode == 0
    assert "trusting the public key stored in the very database" in stored.stderr
    production = _amber({**env, "AMBER_ENV": "production"}, "audit", "verify", "--allow-unsigned-tail")
    assert production.returncode == 2
    assert "needs --key" in production.stderr
    assert "Traceback" not in production.stderr


def _amber(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
