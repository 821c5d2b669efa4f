"""`amber witness`: an independent witness pulls checkpoints from a real amber served on loopback (uvicorn),
checks them against its own last-seen checkpoint, cosigns, and alarms on rollback, fork, bad signatures,
origin mismatches, staleness and an unreachable log. Time moves on a FrozenClock; nothing sleeps.

The misbehaving log is simulated the way an admin of the state database would do it: deleting checkpoint rows
(after disabling the append-only triggers, as such an admin can), or inserting a checkpoint row signed by the
log's key over another history (the key holder forking the log).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import text

from amber import audit, ledger
from amber.api.app import create_app
from amber.core.db import is_postgres
from amber.ledger import checkpoints, tlog, witness
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.models import SignedCheckpoint
from tests.conftest import Amber, free_port

ROOT = Path(__file__).resolve().parents[2]
MAX_AGE = timedelta(minutes=30)


@pytest.fixture
def served(amber: Amber) -> Iterator[str]:
    """The same amber, also served over HTTP on loopback (lifespan off: the `amber` fixture's app owns it)."""
    port = free_port()
    config = uvicorn.Config(
        create_app(amber.rt, run_worker=False), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_the_standalone_witness_is_the_module_verbatim_and_needs_only_stdlib_and_tlog() -> None:
    source = (ROOT / "src" / "amber" / "ledger" / "witness.py").read_text()
    assert (ROOT / "tools" / "amber_witness.py").read_text() == source, (
        "tools/amber_witness.py must be a copy of src/amber/ledger/witness.py"
    )
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    assert {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names} == {"amber.ledger", "amber_verify"}


def _cp(amber: Amber) -> Checkpointer:
    assert amber.rt.checkpointer is not None
    return amber.rt.checkpointer


def _grow(amber: Amber, who: str = "alice") -> checkpoints.CheckpointView:
    amber.request(who, "engineering", "oncall")
    return _cp(amber).sign_now()


def _witness(amber: Amber, url: str, directory: Path, **overrides: Any) -> witness.Witness:
    options: dict[str, Any] = {
        "directory": directory,
        "signer": overrides.pop("signer", None) or tlog.Signer.generate("witness.example"),
        "fetch": witness.http_fetch(url),
        "max_age": MAX_AGE,
        "clock": amber.clock,
        "log_key": _cp(amber).verifier.vkey,
    }
    return witness.Witness(**(options | overrides))


def _state(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / witness.STATE_FILE).read_text())
    return data


def _kinds(outcome: witness.Outcome) -> list[str]:
    return [alarm.kind for alarm in outcome.alarms]


def _delete_checkpoints_after(amber: Amber, size: int) -> None:
    """What an admin of the state database can do: drop the append-only guard, delete the newer checkpoints."""
    with amber.rt.engine.begin() as conn:
        if is_postgres(conn):
            conn.execute(text("ALTER TABLE ledger_checkpoints DISABLE TRIGGER ledger_checkpoints_no_update_delete"))
            conn.execute(text("DELETE FROM ledger_checkpoints WHERE tree_size > :size"), {"size": size})
            conn.execute(text("ALTER TABLE ledger_checkpoints ENABLE TRIGGER ledger_checkpoints_no_update_delete"))
        else:
            conn.execute(text("DROP TRIGGER ledger_checkpoints_no_delete"))
            conn.execute(text("DELETE FROM ledger_checkpoints WHERE tree_size > :size"), {"size": size})


def _serve_note(amber: Amber, size: int, root: bytes, note: str) -> None:
    """Make the log serve `note` as its latest checkpoint (a row inserted by whoever holds the key or the DB)."""
    with amber.rt.uow() as session:
        session.add(
            SignedCheckpoint(
                tree_size=size,
                root_hash=root.hex(),
                signed_at=amber.clock.now(),
                vkey=_cp(amber).verifier.vkey,
                note=note,
            )
        )


def _forged(amber: Amber, size: int, history: bytes = b"another history") -> tuple[bytes, str]:
    root = hashlib.sha256(history).digest()
    return root, tlog.sign_checkpoint(tlog.Checkpoint(_cp(amber).origin, size, root), _cp(amber).signer)


def test_normal_growth_is_checked_and_cosigned_and_the_state_is_kept_across_runs(
    amber: Amber, served: str, tmp_path: Path
) -> None:
    directory = tmp_path / "witness"
    signer = tlog.Signer.generate("witness.example")
    first = _grow(amber)
    outcome = _witness(amber, served, directory, signer=signer).run_once()
    assert outcome.ok, outcome.alarms
    assert outcome.size == first.tree_size
    assert outcome.cosigned is not None
    # The cosigned note: the log's note plus one more signature line; both signatures verify.
    assert outcome.cosigned.startswith(first.note)
    _, signers = tlog.open_note(outcome.cosigned, [_cp(amber).verifier, signer.verifier])
    assert signers == [_cp(amber).verifier, signer.verifier]
    # Its own state: 0600 files in a 0700 directory; the cosigned note where --checkpoint DIR reads it.
    state = _state(directory)
    assert (state["origin"], state["size"], state["root"]) == (_cp(amber).origin, first.tree_size, first.root_hash)
    assert directory.stat().st_mode & 0o777 == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    (saved,) = (directory / witness.NOTES_DIR).glob("*.checkpoint")
    assert saved.read_text() == outcome.cosigned

    # Nothing new: unchanged, nothing cosigned again.
    amber.clock.advance(timedelta(minutes=5))
    again = _witness(amber, served, directory, signer=signer, log_key=None).run_once()  # the pin is in the state
    assert (again.ok, again.cosigned, again.size) == (True, None, first.tree_size)

    # The log grows twice; a new witness process (same directory) checks consistency from its own last-seen.
    _grow(amber, "bob")
    second = _grow(amber, "carol")
    grown = _witness(amber, served, directory, signer=signer, log_key=None).run_once()
    assert grown.ok, grown.alarms
    assert grown.size == second.tree_size
    assert len(list((directory / witness.NOTES_DIR).glob("*.checkpoint"))) == 2
    assert _state(directory)["grown_at"] == amber.clock.now().isoformat()

    # The pin cannot be swapped by a command-line option.
    other = tlog.Signer.generate(_cp(amber).origin).verifier.vkey
    with pytest.raises(witness.WitnessError, match="not a key this witness follows"):
        _witness(amber, served, directory, signer=signer, log_key=other).run_once()


def test_a_rollback_alarms_and_the_state_never_moves_back(amber: Amber, served: str, tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    older = _grow(amber)
    newer = _grow(amber, "bob")
    assert _witness(amber, served, directory).run_once().size == newer.tree_size
    _delete_checkpoints_after(amber, older.tree_size)  # the log now serves the older checkpoint
    outcome = _witness(amber, served, directory, log_key=None).run_once()
    assert _kinds(outcome) == ["rollback"]
    assert f"size {older.tree_size}, smaller than the {newer.tree_size}" in outcome.alarms[0].message
    assert _state(directory)["size"] == newer.tree_size  # not moved back
    (evidence,) = (directory / witness.EVIDENCE_DIR).glob("rollback-*")
    assert evidence.read_text() == older.note
    # Not even when told to: the state file refuses to go back.
    state = witness._State.load(directory)
    assert state is not None
    state.size, state.root = older.tree_size, older.root_hash
    with pytest.raises(witness.WitnessError, match="refusing to move the witness state back"):
        state.save(directory)
    assert _state(directory)["size"] == newer.tree_size


def test_a_fork_alarms_same_size_other_root_or_a_failed_consistency_proof(
    amber: Amber, served: str, tmp_path: Path
) -> None:
    directory = tmp_path / "witness"
    seen = _grow(amber)
    assert _witness(amber, served, directory).run_once().ok
    # The key holder signs another root for the same size: two signed views of one log.
    root, note = _forged(amber, seen.tree_size)
    _serve_note(amber, seen.tree_size, root, note)
    outcome = _witness(amber, served, directory, log_key=None).run_once()
    assert _kinds(outcome) == ["fork"]
    assert list((directory / witness.EVIDENCE_DIR).glob("fork-*"))
    # A larger tree that does not extend what the witness saw: the consistency proof fails.
    amber.request("bob", "engineering", "oncall")
    with amber.rt.uow() as session:
        size, _ = ledger.head(session)
    root, note = _forged(amber, size)
    _serve_note(amber, size, root, note)
    outcome = _witness(amber, served, directory, log_key=None).run_once()
    assert _kinds(outcome) == ["consistency"]
    assert f"from the witnessed size {seen.tree_size} to {size} does not verify" in outcome.alarms[0].message
    assert _state(directory)["size"] == seen.tree_size


def test_bad_signatures_and_origin_mismatches_alarm(amber: Amber, served: str, tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    seen = _grow(amber)
    assert _witness(amber, served, directory).run_once().ok
    amber.request("bob", "engineering", "oncall")
    grown = _cp(amber).sign_now()
    # A signature by the log's key (same name and key id) that does not verify.
    text_part, _, sig_line = grown.note.rpartition("\n\n")
    name, _, blob = sig_line.strip().partition(" ")
    raw = bytearray(base64.b64decode(blob.split(" ")[-1]))
    raw[-1] ^= 1
    broken = f"{text_part}\n\n{name} {blob.split(' ')[0]} {base64.b64encode(bytes(raw)).decode()}\n"
    _serve_note(amber, grown.tree_size, bytes.fromhex(grown.root_hash), broken)
    outcome = _witness(amber, served, directory, log_key=None).run_once()
    assert _kinds(outcome) == ["signature"]
    assert "invalid" in outcome.alarms[0].message
    # Signed by another key named after the origin, with no signed rotation to it.
    intruder = tlog.Signer.generate(_cp(amber).origin)
    other = tlog.sign_checkpoint(
        tlog.Checkpoint(_cp(amber).origin, grown.tree_size, bytes.fromhex(grown.root_hash)), intruder
    )
    _serve_note(amber, grown.tree_size, bytes.fromhex(grown.root_hash), other)
    outcome = _witness(amber, served, directory, log_key=None).run_once()
    assert _kinds(outcome) == ["signature"]
    assert "not signed by the log key in force" in outcome.alarms[0].message
    assert _state(directory)["size"] == seen.tree_size
    # A witness pinned to a key named otherwise than the log's origin never accepts the log's checkpoints.
    misnamed = tlog.Signer.generate("ops-2026").verifier.vkey
    fresh = _witness(amber, served, tmp_path / "w2", log_key=misnamed).run_once()
    assert _kinds(fresh) == ["origin"]
    assert not (tmp_path / "w2" / witness.STATE_FILE).exists()


def test_stale_and_unreachable_logs_alarm_after_max_age(amber: Amber, served: str, tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    _grow(amber)
    assert _witness(amber, served, directory).run_once().ok
    amber.clock.advance(MAX_AGE)
    assert _witness(amber, served, directory, log_key=None).run_once().ok  # exactly max-age: not yet
    amber.clock.advance(timedelta(seconds=1))
    stale = _witness(amber, served, directory, log_key=None).run_once()
    assert _kinds(stale) == ["stale"]
    # The log grows again: no alarm, and the staleness clock restarts.
    _grow(amber, "bob")
    assert _witness(amber, served, directory, log_key=None).run_once().ok
    # Unreachable: a warning within max-age, an alarm after it.
    closed = f"http://127.0.0.1:{free_port()}"
    amber.clock.advance(timedelta(minutes=10))
    down = _witness(amber, closed, directory, log_key=None).run_once()
    assert down.ok
    assert "did not answer" in down.warnings[0]
    amber.clock.advance(MAX_AGE)
    down = _witness(amber, closed, directory, log_key=None).run_once()
    assert _kinds(down) == ["unreachable"]


def test_the_witness_follows_a_signed_key_rotation(amber: Amber, served: str, tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    _grow(amber)
    assert _witness(amber, served, directory).run_once().ok
    new = tlog.Signer.generate(_cp(amber).origin)
    with amber.rt.uow() as session:
        rotated = checkpoints.rotate_key(
            session, old=_cp(amber).signer, new=new, origin=_cp(amber).origin, at=amber.clock.now(), actor=ledger.SYSTEM
        )
    outcome = _witness(amber, served, directory, log_key=None).run_once()
    assert outcome.ok, outcome.alarms
    assert outcome.size == rotated.tree_size
    assert [k for _, k in _state(directory)["keys"]] == [_cp(amber).verifier.vkey, new.verifier.vkey]
    assert any("followed the log's signed key rotation" in w for w in outcome.warnings)


class _AlarmSink(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_the_command_exits_1_says_why_on_stderr_and_posts_the_alarm(amber: Amber, served: str, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    handler = type("Sink", (_AlarmSink,), {"received": received})
    sink = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    key = tmp_path / "witness.key"
    directory = tmp_path / "witness"
    older = _grow(amber)
    _grow(amber, "bob")
    try:
        made = _run("amber", "witness", "keygen", "--name", "witness.example", "--out", str(key))
        assert made.returncode == 0, made.stderr
        assert key.stat().st_mode & 0o777 == 0o600
        wvkey = made.stdout.strip()
        args = ["run", "--log", served, "--state", str(directory), "--key", f"file:{key}", "--once"]
        ok = _run("amber", "witness", *args, "--log-key", _cp(amber).verifier.vkey)
        assert ok.returncode == 0, ok.stderr
        assert "cosigned size" in ok.stdout
        _delete_checkpoints_after(amber, older.tree_size)
        url = f"http://127.0.0.1:{sink.server_address[1]}/alarm"
        # The standalone script, without amber importable: it falls back to amber_verify.py next to it.
        alarmed = _run("standalone", *args, "--alarm-url", url)
        assert alarmed.returncode == 1
        assert "amber-witness: ALARM rollback:" in alarmed.stderr
        assert [a["kind"] for a in received[0]["alarms"]] == ["rollback"]
        assert received[0]["origin"] == _cp(amber).origin
        # The auditor: the verifier counts the witness's cosignature on the head's checkpoint.
        assert wvkey.startswith("witness.example+")
    finally:
        sink.shutdown()
        sink.server_close()


def _run(how: str, *args: str) -> subprocess.CompletedProcess[str]:
    if how == "amber":
        command = [sys.executable, "-m", "amber", *args]
    else:
        boot = (
            "import runpy, sys; sys.modules['amber'] = None; sys.path.insert(0, sys.argv[1]); "
            "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        command = [sys.executable, "-c", boot, str(ROOT / "tools"), str(ROOT / "tools" / "amber_witness.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ))


def test_the_verifier_requires_min_witnesses_cosignatures_on_the_head(
    amber: Amber, served: str, tmp_path: Path
) -> None:
    directory = tmp_path / "witness"
    signer = tlog.Signer.generate("witness.example")
    other = tlog.Signer.generate("witness.other")
    _grow(amber)
    assert _witness(amber, served, directory, signer=signer).run_once().ok
    notes = [(str(p), p.read_text()) for p in sorted((directory / witness.NOTES_DIR).glob("*.checkpoint"))]
    log_key = [_cp(amber).verifier]

    def verify(**kwargs: Any) -> list[str]:
        with amber.rt.uow() as session:
            report = audit.verify(session, keys=log_key, witnessed=notes, origin=_cp(amber).origin, **kwargs)
        return report.problems

    assert verify(witness_keys=[signer.verifier], min_witnesses=1) == []
    two = verify(witness_keys=[signer.verifier, other.verifier], min_witnesses=2)
    assert len(two) == 1
    assert "carries 1 valid cosignature(s)" in two[0]
    assert "2 required" in two[0]
    # The log grew past what the witness cosigned: the head is not witnessed.
    _grow(amber, "bob")
    behind = verify(witness_keys=[signer.verifier], min_witnesses=1)
    assert any("carries 0 valid cosignature(s)" in p for p in behind)
    # The offline verifier (bundle + the witness's directory) says the same.
    assert _witness(amber, served, directory, signer=signer, log_key=None).run_once().ok
    with amber.rt.uow() as session:
        size, _ = ledger.head(session)
    bundle = tmp_path / "bundle"
    from amber.ledger import proofs

    with amber.rt.uow() as session:
        proofs.export_bundle(session, bundle, _cp(amber).origin)
    witnessed = [directory / witness.NOTES_DIR]
    passed = tlog.verify_bundle(
        bundle, log_key, extra_checkpoints=witnessed, witness_keys=[signer.verifier], min_witnesses=1
    )
    assert passed.ok, passed.problems
    failed = tlog.verify_bundle(
        bundle, log_key, extra_checkpoints=witnessed, witness_keys=[other.verifier], min_witnesses=1
    )
    assert [p.check for p in failed.problems] == ["witness"]
    # A witness cosignature that does not verify (a known witness key) is an error, not a missing cosignature.
    (saved,) = [p for p in (directory / witness.NOTES_DIR).glob("*.checkpoint") if p.name.startswith(f"{size:020d}")]
    body, _, last = saved.read_text().rstrip("\n").rpartition("\n")
    name, _, blob = last.partition(" ")[2].partition(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    tampered = tmp_path / "tampered.checkpoint"
    tampered.write_text(f"{body}\n\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n")
    bad = tlog.verify_bundle(
        bundle, log_key, extra_checkpoints=[tampered], witness_keys=[signer.verifier], min_witnesses=1
    )
    assert [p.check for p in bad.problems] == ["witness", "witness"]
    assert "invalid" in str(bad.problems[0])
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "amber",
            "audit",
            "verify",
            "--bundle",
            str(bundle),
            "--key",
            log_key[0].vkey,
            "--checkpoint",
            str(directory / witness.NOTES_DIR),
            "--witness-key",
            signer.verifier.vkey,
            "--min-witnesses",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr


def test_the_polling_loop_reports_every_round_and_exits_1_after_an_alarm(
    amber: Amber, served: str, tmp_path: Path
) -> None:
    directory = tmp_path / "witness"
    _grow(amber)
    node = _witness(amber, served, directory)
    said: list[str] = []
    shouted: list[str] = []
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the injected clock moves instead of time passing
        slept.append(seconds)
        amber.clock.advance(timedelta(minutes=20))

    code = witness.run(node, once=False, interval_s=60, rounds=3, sleep=sleep, out=said.append, err=shouted.append)
    assert code == 1
    assert slept == [60, 60]
    assert said[0].startswith("amber-witness: cosigned size")
    assert said[1].startswith("amber-witness: unchanged at size")  # 20 minutes: within max-age
    assert shouted == [f"amber-witness: ALARM stale: {node.run_once().alarms[0].message}"]  # 40 minutes: stale
