"""The operator's and auditor's commands: keygen, checkpoint, proof, consistency, receipt, rotate-key, verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amber.ledger import tlog
from tests.conftest import Amber


def _amber(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amber", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# The commands are the same code on both stores (covered store by store in tests/ledger); one store keeps the
# suite fast, as each command is a fresh interpreter.
@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_key_lifecycle_receipts_and_proofs_from_the_command_line(amber: Amber, tmp_path: Path) -> None:
    amber.request("alice", "engineering", "oncall")
    key = tmp_path / "ledger.key"
    env = {
        **os.environ,
        "AMBER_DATABASE_URL": amber.rt.engine.url.render_as_string(hide_password=False),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
    }
    made = _amber(env, "audit", "keygen", "--out", str(key))
    assert made.returncode == 0, made.stderr
    vkey = made.stdout.strip()
    assert vkey.startswith(f"amber/{amber.rt.installation_id}+")  # named after the origin by default
    assert "PRIVATE" not in made.stdout
    assert key.stat().st_mode & 0o777 == 0o600
    assert _amber(env, "audit", "keygen", "--out", str(key)).returncode != 0  # never overwritten
    env["AMBER_LEDGER_SIGNING_KEY"] = f"file:{key}"
    signed = _amber(env, "audit", "checkpoint", "--json")
    assert signed.returncode == 0, signed.stderr
    note = json.loads(signed.stdout)["note"]
    assert tlog.open_note(note, [tlog.Verifier.parse(vkey)])[1]
    proof = json.loads(_amber(env, "audit", "proof", "2", "--json").stdout)
    assert proof["leaf_index"] == 1
    consistency = json.loads(_amber(env, "audit", "consistency", "1", "--json").stdout)
    assert consistency["old_size"] == 1
    receipt = tmp_path / "r.tlog-proof"
    assert _amber(env, "audit", "receipt", "3", "-o", str(receipt)).returncode == 0
    ok = _amber(env, "audit", "verify-receipt", str(receipt), "--key", vkey)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Rotate to a new key: the old one signs the handover, then only the new one signs.
    new_key = tmp_path / "ledger-2027.key"
    misnamed = tmp_path / "ops-2027.key"
    assert _amber(env, "audit", "keygen", "--out", str(misnamed), "--name", "ops-2027").returncode == 0
    refused = _amber(env, "audit", "rotate-key", "--new-key", f"file:{misnamed}")
    assert refused.returncode == 1
    assert f"named 'ops-2027' but the checkpoint origin is 'amber/{amber.rt.installation_id}'" in refused.stderr
    assert "amber audit keygen" in refused.stderr
    new_vkey = _amber(env, "audit", "keygen", "--out", str(new_key)).stdout.strip()
    rotated = _amber(env, "audit", "rotate-key", "--new-key", f"file:{new_key}")
    assert rotated.returncode == 0, rotated.stderr
    amber.request("bob", "engineering", "oncall")
    stale = _amber(env, "audit", "checkpoint")
    assert stale.returncode == 1
    assert "not the key in force" in stale.stdout + stale.stderr
    assert "Traceback" not in stale.stderr
    env["AMBER_LEDGER_SIGNING_KEY"] = f"file:{new_key}"
    assert _amber(env, "audit", "checkpoint").returncode == 0
    verified = _amber(env, "audit", "verify", "--key", vkey)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    out = tmp_path / "bundle"
    assert _amber(env, "audit", "export", str(out)).returncode == 0
    assert (out / "keys.txt").read_text().split() == [vkey, new_vkey]
    bundle = _amber(env, "audit", "verify", "--bundle", str(out), "--key", vkey)
    assert bundle.returncode == 0, bundle.stdout
    wrong = _amber(env, "audit", "verify", "--bundle", str(out), "--key", new_vkey)  # not the original key
    assert wrong.returncode == 1
    assert "signature" in wrong.stdout
