"""Inclusion and consistency proofs and receipts over the API, verified offline by tools/amber_verify.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from amber import ledger
from amber.ledger import tlog
from tests.conftest import Amber

TOOL = Path(__file__).resolve().parents[2] / "tools" / "amber_verify.py"


def _vkey(amber: Amber) -> str:
    assert amber.rt.checkpointer is not None
    return amber.rt.checkpointer.verifier.vkey


def test_inclusion_and_consistency_proofs_verify_against_the_signed_checkpoint(amber: Amber) -> None:
    amber.request("alice", "engineering", "oncall")
    headers = amber.headers("bob", "engineering")
    assert amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("root", "platform")).status_code == 201
    old = amber.api.get("/v1/ledger/proofs/inclusion", params={"seq": 2}, headers=headers).json()
    old_size = old["tree_size"]
    amber.request("carol", "engineering", "oncall")
    assert amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("root", "platform")).status_code == 201
    body = amber.api.get("/v1/ledger/proofs/inclusion", params={"seq": 3}, headers=headers).json()
    # Without a size the proof is against the latest signed checkpoint, which covers the entry.
    text, signers = tlog.open_note(body["checkpoint"], [tlog.Verifier.parse(_vkey(amber))])
    checkpoint = tlog.Checkpoint.parse(text)
    assert signers
    assert checkpoint.size == body["tree_size"] > old_size
    with amber.rt.uow() as session:
        entry = ledger.entries(session, after_seq=2, limit=1)[0]
    from amber.ledger.proofs import exported

    with amber.rt.uow() as session:
        from amber.ledger.models import LedgerEntry

        row = session.get(LedgerEntry, entry.seq)
        assert row is not None
        data, _ = tlog.entry_leaf(exported(row))
    proof = [bytes.fromhex(h) for h in body["proof"]]
    assert tlog.verify_inclusion(2, checkpoint.size, tlog.leaf_hash(data), proof, checkpoint.root)
    cons = amber.api.get(
        "/v1/ledger/proofs/consistency", params={"old": old_size, "new": checkpoint.size}, headers=headers
    ).json()
    assert cons["new_root"] == checkpoint.root.hex()
    assert cons["old_root"] == bytes.fromhex(old["root"]).hex()
    assert tlog.verify_consistency(
        old_size,
        checkpoint.size,
        bytes.fromhex(cons["old_root"]),
        checkpoint.root,
        [bytes.fromhex(h) for h in cons["proof"]],
    )
    assert amber.api.get("/v1/ledger/proofs/inclusion", params={"seq": 10_000}, headers=headers).status_code == 404
    assert amber.api.get("/v1/ledger/proofs/inclusion", params={"seq": 1}).status_code == 401


def test_people_involved_fetch_receipts_that_verify_offline(amber: Amber, tmp_path: Path) -> None:
    body = amber.request("alice", "engineering", "oncall")
    assert amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("root", "platform")).status_code == 201
    listed = amber.api.get("/v1/ledger/receipts", params={"subject": body["id"]}, headers=amber.headers("alice"))
    assert listed.status_code == 200, listed.text
    types = [item["type"] for item in listed.json()]
    assert types[:3] == ["request.submitted", "request.decided", "request.approved"]
    grant_receipts = amber.api.get(
        "/v1/ledger/receipts", params={"subject": body["grant"]["id"]}, headers=amber.headers("alice")
    ).json()
    assert grant_receipts[0]["type"] == "grant.issued"
    receipt = listed.json()[0]["receipt"]
    path = tmp_path / "receipt.tlog-proof"
    path.write_text(receipt)
    assert receipt.startswith("c2sp.org/tlog-proof@v1\nextra ")
    # The standalone tool, run in isolated mode from another directory, needs only the file and the key.
    ok = subprocess.run(
        [sys.executable, "-I", str(TOOL), "receipt", str(path), "--key", _vkey(amber)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "receipt OK" in ok.stdout
    # Someone else's request: no receipt (and no hint that the entry exists).
    assert (
        amber.api.get(
            "/v1/ledger/receipts", params={"subject": body["id"]}, headers=amber.headers("mallory", "engineering")
        ).status_code
        == 404
    )
    seq = listed.json()[0]["seq"]
    assert amber.api.get(f"/v1/ledger/receipts/{seq}", headers=amber.headers("mallory")).status_code == 404
    audited = amber.api.get(f"/v1/ledger/receipts/{seq}", headers=amber.headers("ann", "security"))
    assert audited.status_code == 200
    assert tlog.verify_receipt(audited.text, [tlog.Verifier.parse(_vkey(amber))]).ok


def test_a_forged_receipt_names_the_failed_check(amber: Amber) -> None:
    amber.request("alice", "engineering", "oncall")
    assert amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("root", "platform")).status_code == 201
    seq = 3
    receipt = amber.api.get(f"/v1/ledger/receipts/{seq}", headers=amber.headers("ann", "security")).text
    key = [tlog.Verifier.parse(_vkey(amber))]
    parsed = tlog.Receipt.parse(receipt)
    edited = {**parsed.entry, "payload": {**parsed.entry["payload"], "outcome": "deny"}}
    forged = tlog.format_receipt(edited, parsed.index, parsed.proof, parsed.note)
    assert [p.check for p in tlog.verify_receipt(forged, key).problems] == ["hash", "inclusion"]
    other_key = [tlog.Signer.generate("someone").verifier]
    assert [p.check for p in tlog.verify_receipt(receipt, other_key).problems] == ["signature"]
    rehashed = {**edited, "hash": tlog.hashlib.sha256(tlog.entry_leaf(edited)[0]).hexdigest()}
    forged = tlog.format_receipt(rehashed, parsed.index, parsed.proof, parsed.note)
    assert [p.check for p in tlog.verify_receipt(forged, key).problems] == ["inclusion"]
