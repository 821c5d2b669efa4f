"""The webhook witness's signature timestamp comes from the injected clock, checked by a real HTTP receiver on
loopback that recomputes the HMAC itself (not with amber's helper)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from amber.core.clock import FrozenClock
from amber.ledger import tlog
from amber.ledger.checkpoints import CheckpointView
from amber.ledger.witnesses import WebhookWitness
from tests.conftest import build_runtime

SECRET = b"webhook-secret-for-the-clock-test"
AT = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


@dataclass
class Received:
    signature: str
    body: bytes


@dataclass
class Receiver:
    url: str
    posts: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            found.posts.append(Received(self.headers["x-amber-signature"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/witness"
    yield found
    server.shutdown()
    server.server_close()
    thread.join(5)


def _expected(at: datetime, body: bytes) -> str:
    stamp = int(at.timestamp())
    return f"t={stamp},v1={hmac.new(SECRET, f'{stamp}.'.encode() + body, hashlib.sha256).hexdigest()}"


def _checkpoint(size: int) -> CheckpointView:
    signer = tlog.Signer.generate("amber/clock-test")
    root = hashlib.sha256(str(size).encode()).digest()
    note = tlog.sign_checkpoint(tlog.Checkpoint("amber/clock-test", size, root), signer)
    return CheckpointView(size, size, root.hex(), AT, signer.verifier.vkey, note)


def test_the_signature_timestamp_is_the_injected_clocks(receiver: Receiver) -> None:
    clock = FrozenClock(AT)
    witness = WebhookWitness("hook", receiver.url, SECRET, clock=clock)
    witness.publish(_checkpoint(3), "amber/clock-test")
    clock.advance(timedelta(minutes=90, seconds=7))
    witness.publish(_checkpoint(4), "amber/clock-test")
    first, second = receiver.posts
    assert first.signature == _expected(AT, first.body)
    assert first.signature.startswith(f"t={int(AT.timestamp())},")  # 1795694400: the frozen instant, not now
    assert second.signature == _expected(AT + timedelta(minutes=90, seconds=7), second.body)
    assert json.loads(second.body)["tree_size"] == 4


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_the_runtime_gives_its_clock_to_the_webhook_witness(
    receiver: Receiver,
    state_url: str,
    catalog_path: Path,
    tmp_path: Path,
    target_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMBER_TEST_WEBHOOK_SECRET", SECRET.decode())
    clock = FrozenClock(AT)
    config = {"kind": "webhook", "name": "hook", "url": receiver.url, "secret": "env:AMBER_TEST_WEBHOOK_SECRET"}
    rt = build_runtime(state_url, catalog_path, tmp_path, clock, ledger_witnesses=[config])
    try:
        assert rt.checkpointer is not None
        clock.advance(timedelta(days=3))
        view = rt.checkpointer.sign_now()  # no background thread under AMBER_ENV=test: delivered here
    finally:
        rt.close()
    (post,) = receiver.posts
    assert post.signature == _expected(AT + timedelta(days=3), post.body)
    delivered = json.loads(post.body)
    assert (delivered["note"], delivered["signed_at"]) == (view.note, (AT + timedelta(days=3)).isoformat())
