"""What amber leaves on disk is its owner's alone; endpoints reveal no paths; only admins force a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select, text

from amber.core.db import make_engine
from amber.ledger.models import SignedCheckpoint
from tests.conftest import Amber


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_state_and_key_files_are_private(amber: Amber, tmp_path: Path) -> None:
    amber.request("alice", "engineering", "oncall")  # writes to the state store (the WAL exists now)
    amber.api.post("/v1/ledger/checkpoints", headers=amber.headers("root", "platform"))
    state = tmp_path / "state"
    assert mode(state) == 0o700
    for name in ("secret.key", "ledger-signing.key", "dev-issuer-ed25519.pem"):
        assert mode(state / name) == 0o600, name
    if amber.rt.engine.dialect.name == "sqlite":
        database = Path(str(amber.rt.engine.url.database))
        assert mode(database) == 0o600
        assert mode(Path(f"{database}-wal")) == 0o600
        with amber.rt.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


def test_an_existing_state_file_loses_group_and_other_access(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    engine = make_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    assert mode(database) == 0o600
    fresh = tmp_path / "deeper" / "new.db"
    make_engine(f"sqlite:///{fresh}").dispose()
    assert mode(fresh) == 0o600


def test_healthz_reveals_no_paths(amber: Amber, tmp_path: Path) -> None:
    response = amber.api.get("/healthz")
    assert response.status_code == 200
    assert str(tmp_path) not in response.text
    assert "amber.yaml" not in response.text
    assert response.json()["catalog"] == {"hash": amber.rt.catalog().content_hash}


def _checkpoints(amber: Amber) -> int:
    with amber.rt.uow() as session:
        return session.scalar(select(func.count()).select_from(SignedCheckpoint)) or 0


def test_only_admins_force_a_checkpoint(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall")
    alice = amber.headers("alice")
    assert amber.api.post("/v1/ledger/checkpoints", headers=alice).status_code == 403
    refused = amber.api.get("/v1/ledger/receipts", params={"subject": body["id"]}, headers=alice)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "newer than the latest signed checkpoint" in refused.json()["detail"]
    proof = amber.api.get("/v1/ledger/proofs/inclusion", params={"seq": 1}, headers=alice)
    assert proof.status_code == 409
    assert _checkpoints(amber) == 0  # nothing was signed on alice's behalf
    admin = amber.api.get("/v1/ledger/proofs/inclusion", params={"seq": 1}, headers=amber.headers("root", "platform"))
    assert admin.status_code == 200, admin.text
    assert _checkpoints(amber) == 1
    listed = amber.api.get("/v1/ledger/receipts", params={"subject": body["id"]}, headers=alice)
    assert listed.status_code == 200, listed.text  # covered now: served from the latest checkpoint
    assert _checkpoints(amber) == 1
