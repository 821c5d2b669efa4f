"""`amber audit rotate-key` delivers the checkpoints it signs to the witnesses, and an auditor who trusts only
the original key verifies the log against everything the witness holds, across the rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amber import audit
from amber.cli import ledger_cmds
from amber.ledger import tlog
from amber.ledger.checkpoints import write_key
from amber.ledger.witnesses import FileWitness, fetch
from tests.conftest import Amber


# The command is the same code on both stores; one keeps this quick.
@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_rotate_key_publishes_to_the_witnesses(amber: Amber, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = f"amber/{amber.rt.installation_id}"
    old, new = tlog.Signer.generate(origin), tlog.Signer.generate(origin)
    write_key(tmp_path / "old.key", old)
    write_key(tmp_path / "new.key", new)
    witness_file = tmp_path / "witness.jsonl"
    monkeypatch.setenv("AMBER_DATABASE_URL", amber.rt.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("AMBER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AMBER_LEDGER_SIGNING_KEY", f"file:{tmp_path / 'old.key'}")
    monkeypatch.setenv(
        "AMBER_LEDGER_WITNESSES", json.dumps([{"kind": "file", "name": "disk", "path": str(witness_file)}])
    )
    amber.request("alice", "engineering", "oncall")

    ledger_cmds.rotate_key(new_key=f"file:{tmp_path / 'new.key'}")

    records = [json.loads(line) for line in witness_file.read_text().splitlines()]
    # No checkpoint existed: the old key signed one to start the key history, then the new key its first.
    assert [tlog.open_note(r["note"], [old.verifier, new.verifier])[1] for r in records] == [
        [old.verifier],
        [new.verifier],
    ]
    fetched = fetch(FileWitness("disk", witness_file), tmp_path / "witnessed")
    assert len(fetched.saved) == 2
    notes = [(str(p), p.read_text()) for p in fetched.saved]
    with amber.rt.uow() as session:
        report = audit.verify(session, keys=[old.verifier], witnessed=notes, origin=origin)
    assert report.ok, report.problems
