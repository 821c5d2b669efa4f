"""Reading witnessed checkpoints back (`amber audit checkpoints fetch`) and verifying the log against all of
them: from a real S3 server with Object Lock (SeaweedFS on loopback) and from a file witness. A rewritten
log, or a forked checkpoint the key holder slipped in, fails verification naming the fetched file."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from amber import audit, ledger
from amber.core.errors import ConfigError
from amber.ledger import proofs, tlog
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.checkpoints import CheckpointView
from amber.ledger.witnesses import (
    FileWitness,
    S3Witness,
    WebhookWitness,
    Witness,
    build,
    build_named,
    fetch,
    note_file_name,
)
from tests.conftest import Amber
from tests.ledger.conftest import ACCESS_KEY, SECRET_KEY


def _s3_config(s3_endpoint: str, bucket: str) -> dict[str, object]:
    return {
        "kind": "s3",
        "name": "bucket",
        "endpoint": s3_endpoint,
        "bucket": bucket,
        "prefix": "ledger-a/",
        "access_key": "env:AMBER_TEST_S3_ACCESS",
        "secret_key": "env:AMBER_TEST_S3_SECRET",
        "retention_days": 1,
    }


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBER_TEST_S3_ACCESS", ACCESS_KEY)
    monkeypatch.setenv("AMBER_TEST_S3_SECRET", SECRET_KEY)


def _checkpointer(amber: Amber, *witnesses: Witness) -> Checkpointer:
    base = amber.rt.checkpointer
    assert base is not None
    return Checkpointer(
        uow=amber.rt.uow,
        clock=amber.clock,
        signer=base.signer,
        origin=base.origin,
        every_entries=1000,
        every=timedelta(seconds=60),
        witnesses=witnesses,
    )


def _three_checkpoints(amber: Amber, cp: Checkpointer) -> list[CheckpointView]:
    signed = []
    for user in ("alice", "bob", "carol"):
        amber.request(user, "engineering", "oncall")
        signed.append(cp.sign_now())
    return signed


def _rewrite_last_entry(amber: Amber) -> int:
    """What an operator with full database access does: edit the last entry, recompute its hash, and remove
    the stored checkpoint that covered it. The hash chain verifies afterwards."""
    with amber.rt.uow() as session:
        last = proofs.exported(list(ledger.iter_raw(session))[-1])
    body = {k: v for k, v in last.items() if k != "hash"}
    body["payload"] = {**body["payload"], "rewritten": True}
    engine = amber.rt.engine
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
            conn.exec_driver_sql("ALTER TABLE ledger_checkpoints DISABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
            conn.exec_driver_sql("DROP TRIGGER ledger_checkpoints_no_delete")
        conn.execute(
            text("UPDATE ledger_entries SET payload = :p, entry_hash = :h WHERE seq = :s"),
            {
                "p": tlog.canonical_json(body["payload"]).decode(),
                "h": hashlib.sha256(tlog.canonical_json(body)).hexdigest(),
                "s": last["seq"],
            },
        )
        conn.execute(text("DELETE FROM ledger_checkpoints WHERE tree_size = :s"), {"s": last["seq"]})
    with amber.rt.uow() as session:
        assert ledger.verify_chain(ledger.iter_raw(session)).ok
    return int(last["seq"])


def _verify(amber: Amber, cp: Checkpointer, directory: Path) -> list[str]:
    notes = [(str(p), p.read_text()) for p in sorted(directory.glob("*.checkpoint"))]
    assert notes  # never a vacuous pass
    with amber.rt.uow() as session:
        return audit.verify(session, keys=[cp.verifier], witnessed=notes, origin=cp.origin).problems


def test_fetch_every_checkpoint_from_s3_then_a_rewritten_log_fails_naming_it(
    amber: Amber, s3_endpoint: str, s3_env: None, tmp_path: Path
) -> None:
    bucket = f"amber-fetch-{secrets.token_hex(4)}"
    (witness,) = build([_s3_config(s3_endpoint, bucket)], clock=amber.clock)
    assert isinstance(witness, S3Witness)
    witness.client.create_locked_bucket(bucket)
    until = amber.clock.now() + timedelta(days=1)
    witness.client.put_locked(bucket, "elsewhere/checkpoints/decoy.checkpoint", b"not ours", until)
    cp = _checkpointer(amber, witness)
    signed = _three_checkpoints(amber, cp)
    # Listing pages through every version under the prefix (two per page here), and only there.
    listed = list(witness.client.list_versions(bucket, "ledger-a/checkpoints/", page_size=2))
    assert [v.key for v in listed] == [witness.key(c) for c in signed]

    dest = tmp_path / "witnessed"
    fetched = fetch(witness, dest)
    names = [note_file_name(c.note.encode()) for c in signed]
    assert [p.name for p in fetched.saved] == names
    assert [p.read_text() for p in fetched.saved] == [c.note for c in signed]
    assert (fetched.already, fetched.unreadable) == (0, [])
    again = fetch(witness, dest)  # re-running adds only what is new
    assert (again.saved, again.already) == ([], 3)
    assert _verify(amber, cp, dest) == []

    size = _rewrite_last_entry(amber)
    problems = _verify(amber, cp, dest)
    assert f"root: entries 1..{size} do not hash to the root signed in checkpoint {dest / names[2]}" in "\n".join(
        problems
    )


def test_fetch_reads_a_file_witness_line_by_line_and_refuses_a_webhook(amber: Amber, tmp_path: Path) -> None:
    path = tmp_path / "witness.jsonl"
    disk = FileWitness("disk", path)
    cp = _checkpointer(amber, disk)
    signed = _three_checkpoints(amber, cp)
    with path.open("a") as handle:  # at-least-once: a repeated delivery; then a torn and an odd line
        handle.write(path.read_text().splitlines()[0] + "\n")
        handle.write('{"origin": "amber/x", "id": 9, "no'[:30] + "\n")
        handle.write(json.dumps({"id": 10, "note": "hello\n"}) + "\n")
    fetched = fetch(disk, tmp_path / "out")
    assert [p.read_text() for p in fetched.saved] == [c.note for c in signed]
    assert fetched.already == 1
    assert fetched.unreadable == [f"{path}:5", f"{path}:6"]
    hook = WebhookWitness("hook", "http://127.0.0.1:9/", b"k", clock=amber.clock)
    with pytest.raises(ConfigError, match="hook cannot be fetched: amber only pushes to a webhook"):
        fetch(hook, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _amber(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# Each command is a fresh interpreter; the stores are covered in-process above, so one store keeps this fast.
@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_the_command_line_fetches_from_each_witness_and_verify_names_a_forked_checkpoint(
    amber: Amber, s3_endpoint: str, s3_env: None, tmp_path: Path
) -> None:
    bucket = f"amber-fetch-{secrets.token_hex(4)}"
    configs = [
        _s3_config(s3_endpoint, bucket),
        {"kind": "file", "name": "disk", "path": str(tmp_path / "witness.jsonl")},
        {"kind": "webhook", "name": "hook", "url": "http://127.0.0.1:9/", "secret": "env:AMBER_TEST_S3_SECRET"},
    ]
    s3, disk, _ = build(configs, clock=amber.clock)
    assert isinstance(s3, S3Witness)
    s3.client.create_locked_bucket(bucket)
    cp = _checkpointer(amber, s3, disk)
    signed = _three_checkpoints(amber, cp)
    names = sorted(note_file_name(c.note.encode()) or "" for c in signed)
    env = {
        **os.environ,
        "AMBER_DATABASE_URL": amber.rt.engine.url.render_as_string(hide_password=False),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
        "AMBER_LEDGER_WITNESSES": json.dumps(configs),
    }
    by_name = _amber(env, "audit", "checkpoints", "fetch", "--witness", "bucket", "--dest", str(tmp_path / "a"))
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    assert f"fetched 3 new checkpoint(s) from bucket into {tmp_path / 'a'}" in by_name.stdout
    explicit = _amber(
        env,
        *("audit", "checkpoints", "fetch", "--s3-endpoint", s3_endpoint, "--bucket", bucket, "--prefix", "ledger-a/"),
        *("--access-key", "env:AMBER_TEST_S3_ACCESS", "--secret-key", "env:AMBER_TEST_S3_SECRET"),
        *("--dest", str(tmp_path / "b"), "--json"),
    )
    assert explicit.returncode == 0, explicit.stdout + explicit.stderr
    assert [Path(p).name for p in json.loads(explicit.stdout)["saved"]] == names
    from_file = _amber(env, "audit", "checkpoints", "fetch", "--witness", "disk", "--dest", str(tmp_path / "c"))
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    for directory in "abc":  # the same notes, whichever witness they came from
        assert sorted(p.name for p in (tmp_path / directory).iterdir()) == names
    hook = _amber(env, "audit", "checkpoints", "fetch", "--witness", "hook", "--dest", str(tmp_path / "d"))
    assert hook.returncode == 1
    assert "amber: error: ledger witness hook cannot be fetched" in hook.stderr
    assert "Traceback" not in hook.stderr
    with pytest.raises(ConfigError, match=r"no ledger witness is named 'nope' .*\(configured: bucket, disk, hook\)"):
        build_named(configs, "nope", clock=amber.clock)

    vkey = cp.verifier.vkey
    ok = _amber(env, "audit", "verify", "--key", vkey, "--checkpoint", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ledger OK" in ok.stdout
    (tmp_path / "empty").mkdir()
    empty = _amber(env, "audit", "verify", "--key", vkey, "--checkpoint", str(tmp_path / "empty"))
    assert empty.returncode == 2  # an empty directory is an error, never a pass
    assert "holds no *.checkpoint files" in empty.stderr

    # The key holder signs another history of the second checkpoint's size and writes it over that object:
    # a new version on top of the locked one. Fetching gets both versions; verification names the fork.
    second = signed[1]
    forked = tlog.sign_checkpoint(
        tlog.Checkpoint(cp.origin, second.tree_size, hashlib.sha256(b"another history").digest()), cp.signer
    )
    s3.client.put_locked(bucket, s3.key(second), forked.encode(), amber.clock.now() + timedelta(days=1))
    refetched = _amber(env, "audit", "checkpoints", "fetch", "--witness", "bucket", "--dest", str(tmp_path / "a"))
    assert "fetched 1 new checkpoint(s)" in refetched.stdout
    fork_file = tmp_path / "a" / (note_file_name(forked.encode()) or "")
    assert fork_file.read_text() == forked
    # Every version counts: the locked original under that key is still fetched, next to what covers it.
    fresh = fetch(s3, tmp_path / "e")
    assert sorted(p.read_text() for p in fresh.saved) == sorted([*(c.note for c in signed), forked])
    bad = _amber(env, "audit", "verify", "--key", vkey, "--checkpoint", str(tmp_path / "a"))
    assert bad.returncode == 1
    assert f"split-view: checkpoint {fork_file} (size {second.tree_size})" in bad.stdout
    # The same through an exported bundle and the offline verifier.
    assert _amber(env, "audit", "export", str(tmp_path / "bundle")).returncode == 0
    offline = _amber(
        env, "audit", "verify", "--bundle", str(tmp_path / "bundle"), "--key", vkey, "--checkpoint", str(tmp_path / "a")
    )
    assert offline.returncode == 1
    assert f"split-view: checkpoint {fork_file}" in offline.stdout
