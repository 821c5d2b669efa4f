"""Signed checkpoints (C2SP signed-note / tlog-checkpoint), keys by reference, rotation, the well-known URL."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from amber import ledger
from amber.core.errors import ConfigError
from amber.ledger import checkpoints, tlog, tree
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.checkpoints import CheckpointError, load_signer, rotate_key, write_key
from tests.conftest import Amber

# The example key and note published with Go's golang.org/x/mod/sumdb/note (the signed-note reference code).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = f"{GO_TEXT}\n\u2014 PeterNeumann {GO_SIGNATURE}\n"


def test_notes_interoperate_with_the_go_reference_implementation() -> None:
    signer = tlog.Signer.parse(GO_SKEY)
    assert signer.verifier.vkey == GO_VKEY
    assert tlog.sign_note(GO_TEXT, signer) == GO_NOTE
    text, signers = tlog.open_note(GO_NOTE, [tlog.Verifier.parse(GO_VKEY)])
    assert (text, signers) == (GO_TEXT, [signer.verifier])
    tampered = GO_NOTE.replace("answer", "Answer")
    with pytest.raises(tlog.BadSignature, match="PeterNeumann"):
        tlog.open_note(tampered, [signer.verifier])  # a known key's bad signature is an error, not skipped
    assert tlog.open_note(tampered, [tlog.Signer.generate("PeterNeumann").verifier])[1] == []  # unknown: skipped
    assert GO_SKEY not in repr(signer)


def test_checkpoint_is_a_signed_note_over_origin_size_and_root(amber: Amber) -> None:
    amber.request("alice", "engineering", "oncall")
    cp = _checkpointer(amber).sign_now()
    lines = cp.note.split("\n")
    with amber.rt.uow() as session:
        size, _ = ledger.head(session)
        root = tree.root(session, size)
    assert lines[:4] == [f"amber/{amber.rt.installation_id}", str(size), base64.b64encode(root).decode(), ""]
    assert lines[4].startswith(f"\u2014 amber/{amber.rt.installation_id} ")  # the key is named after the origin
    text, signers = tlog.open_note(cp.note, [_checkpointer(amber).verifier])
    assert signers == [_checkpointer(amber).verifier]
    assert tlog.Checkpoint.parse(text) == tlog.Checkpoint(f"amber/{amber.rt.installation_id}", size, root)
    # Signing again without new entries returns the same checkpoint.
    assert _checkpointer(amber).sign_now().id == cp.id


def test_checkpoints_are_append_only(amber: Amber) -> None:
    _checkpointer(amber).sign_now()
    with pytest.raises(DBAPIError, match="append-only"), amber.rt.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_checkpoints SET tree_size = 1"))
    with pytest.raises(DBAPIError, match="append-only"), amber.rt.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_tree_nodes"))


def test_checkpoints_every_n_entries_or_s_seconds(amber: Amber) -> None:
    base = _checkpointer(amber)
    cp = Checkpointer(
        uow=amber.rt.uow,
        clock=amber.clock,
        signer=base.signer,
        origin=base.origin,
        every_entries=10,
        every=timedelta(seconds=30),
    )
    first = cp.tick()  # nothing signed yet and the log is not empty: sign
    assert first is not None
    assert cp.tick() is None
    amber.request("alice", "engineering", "oncall")  # a few entries, fewer than 10
    assert cp.tick() is None
    amber.clock.advance(timedelta(seconds=31))
    second = cp.tick()
    assert second is not None
    assert second.tree_size > first.tree_size
    amber.clock.advance(timedelta(seconds=31))
    assert cp.tick() is None  # time passed but nothing new to sign
    amber.request("bob", "engineering", "oncall")
    amber.request("carol", "engineering", "oncall")  # now at least 10 new entries, no time passed
    third = cp.tick()
    assert third is not None
    assert third.tree_size - second.tree_size >= 10


def test_well_known_serves_the_latest_checkpoint_and_keys(amber: Amber) -> None:
    assert amber.api.get("/.well-known/amber-ledger/checkpoint").status_code == 404
    amber.request("alice", "engineering", "oncall")
    cp = _checkpointer(amber).sign_now()
    note = amber.api.get("/.well-known/amber-ledger/checkpoint")
    assert note.status_code == 200
    assert note.text == cp.note
    assert note.headers["content-type"].startswith("text/plain")
    info = amber.api.get("/.well-known/amber-ledger.json").json()
    assert info["keys"] == [_checkpointer(amber).verifier.vkey]
    assert info["key_in_force"] == _checkpointer(amber).verifier.vkey
    assert info["tree_size"] == cp.tree_size
    assert "PRIVATE" not in str(info)


def test_admins_sign_on_demand(amber: Amber) -> None:
    amber.request("alice", "engineering", "oncall")
    assert amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("bob", "engineering")).status_code == 403
    made = amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("root", "platform"))
    assert made.status_code == 201
    assert made.json()["note"] == amber.api.get("/.well-known/amber-ledger/checkpoint").text


def test_signing_key_by_file_or_env_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signer = tlog.Signer.generate("ops-2026")
    path = tmp_path / "ledger.key"
    write_key(path, signer)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signer(f"file:{path}").verifier == signer.verifier
    monkeypatch.setenv("AMBER_TEST_LEDGER_KEY", signer.skey())
    assert load_signer("env:AMBER_TEST_LEDGER_KEY").verifier == signer.verifier
    with pytest.raises(ConfigError, match="by reference"):
        load_signer(signer.skey())
    monkeypatch.setenv("AMBER_TEST_LEDGER_KEY", signer.skey()[:-4] + "AAAA")
    with pytest.raises(ConfigError) as bad:
        load_signer("env:AMBER_TEST_LEDGER_KEY")
    assert signer.skey().split("+")[4][:20] not in str(bad.value)  # the key never appears in an error
    with pytest.raises(FileExistsError):
        write_key(path, tlog.Signer.generate("other"))


def test_key_rotation_is_an_entry_signed_by_the_old_key(amber: Amber) -> None:
    base = _checkpointer(amber)
    amber.request("alice", "engineering", "oncall")
    first = base.sign_now()
    new = tlog.Signer.generate(base.origin)
    with amber.rt.uow() as session:
        after = rotate_key(
            session, old=base.signer, new=new, origin=base.origin, at=amber.clock.now(), actor=ledger.SYSTEM
        )
    with amber.rt.uow() as session:
        entry = ledger.latest(session, event_type=tlog.KEY_ROTATION_EVENT)
        assert checkpoints.key_history(session) == [base.verifier.vkey, new.verifier.vkey]
    assert entry is not None
    assert after.tree_size == entry.seq
    assert after.vkey == new.verifier.vkey
    statement = tlog.rotation_statement(base.origin, base.verifier.vkey, new.verifier.vkey)
    assert base.verifier.verify(statement, base64.b64decode(entry.payload["signature"]))
    # The old key can no longer sign: it fails closed with a clear error.
    amber.request("bob", "engineering", "oncall")
    with pytest.raises(CheckpointError, match="not the key in force"):
        base.sign_now()
    # The offline verifier follows the rotation from the original key alone.
    with amber.rt.uow() as session:
        from amber.ledger.proofs import exported

        entries = [exported(row) for row in ledger.iter_raw(session)]
        notes = [(str(cp.id), cp.note) for cp in checkpoints.checkpoints(session)]
    report = tlog.verify_log(entries, notes, [base.verifier], origin=base.origin)
    assert report.ok, report.problems
    assert report.checkpoints == 2
    assert first.tree_size < after.tree_size
    # A checkpoint signed by the old key for a size after the rotation is refused.
    stale = tlog.sign_checkpoint(tlog.Checkpoint(base.origin, len(entries), report.root), base.signer)
    report = tlog.verify_log(entries, [*notes, ("stale", stale)], [base.verifier], origin=base.origin)
    assert [(p.check) for p in report.problems] == ["signature"]


def test_production_refuses_to_start_without_a_signing_key(tmp_path: Path, catalog_path: Path) -> None:
    from amber.api.runtime import build_checkpointer
    from amber.core.clock import SystemClock
    from amber.core.settings import Settings

    settings = Settings(env="production", state_dir=tmp_path, catalog=catalog_path)
    with pytest.raises(ConfigError, match="AMBER_LEDGER_SIGNING_KEY is required"):
        build_checkpointer(settings, amber_uow_unused, SystemClock(), "x", [])


def amber_uow_unused() -> None:  # pragma: no cover - never called: the key check comes first
    raise AssertionError


def _checkpointer(amber: Amber) -> Checkpointer:
    assert amber.rt.checkpointer is not None
    return amber.rt.checkpointer


def test_a_signing_problem_is_logged_once_not_every_round(amber: Amber, caplog: pytest.LogCaptureFixture) -> None:
    base = _checkpointer(amber)
    base.sign_now()  # the installation's key is now the key in force
    stranger = Checkpointer(
        uow=amber.rt.uow,
        clock=amber.clock,
        signer=tlog.Signer.generate(base.origin),  # named right, but not the key in force
        origin=base.origin,
        every_entries=1,
        every=timedelta(seconds=30),
    )
    for person in ("alice", "bob", "carol"):
        amber.request(person, "engineering", "oncall")
        assert stranger.tick() is None  # refused every round ...
    assert caplog.text.count("ledger checkpoint not signed") == 1  # ... and said once
    assert "key in force" in caplog.text
    amber.clock.advance(timedelta(minutes=10))
    assert stranger.tick() is None
    assert caplog.text.count("ledger checkpoint not signed") == 2  # again while it lasts, every 10 minutes
    assert base.tick() is not None  # the key in force signs: a different checkpointer, unaffected
    assert stranger.tick() is None  # nothing due: no problem this round, and that is said
    assert "signing works again" in caplog.text
    amber.request("dave", "engineering", "oncall")
    assert stranger.tick() is None
    assert caplog.text.count("ledger checkpoint not signed") == 3  # the problem is back: said at once
