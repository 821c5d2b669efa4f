"""Streaming entries to SIEMs: JSON lines, at least once, in order, from a persisted cursor, without gaps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from amber import ledger
from amber.ledger import tlog
from amber.ledger.streams import FileSink, HttpSink, Streamer, SyslogSink, sink_for
from amber.ledger.witnesses import position
from tests.conftest import Amber


class FlakySink:
    """A real file sink whose consumer goes down after some batches (the disk fills, the SIEM restarts)."""

    def __init__(self, path: Path) -> None:
        self.inner = FileSink(path)
        self.fail = False

    def send(self, lines: Sequence[bytes]) -> None:
        if self.fail:
            raise OSError("no space left on device")
        self.inner.send(lines)


def _seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def test_a_consumer_that_was_down_catches_up_without_gaps(amber: Amber, tmp_path: Path) -> None:
    out = tmp_path / "siem.jsonl"
    sink = FlakySink(out)
    streamer = Streamer(amber.rt.uow, sink, "siem", batch=4)
    amber.request("alice", "engineering", "oncall")
    assert streamer.catch_up(amber.clock.now) > 0
    sink.fail = True
    amber.request("bob", "engineering", "oncall")
    before = position(amber.rt.uow, "stream:siem")
    with pytest.raises(OSError, match="no space"):
        streamer.run_once(amber.clock.now())
    assert position(amber.rt.uow, "stream:siem") == before  # nothing acknowledged, nothing skipped
    sink.fail = False
    amber.request("carol", "engineering", "oncall")
    streamer.catch_up(amber.clock.now)
    with amber.rt.uow() as session:
        total = ledger.count(session)
    assert _seqs(out) == list(range(1, total + 1))
    # Each line is the exported entry: canonical body plus its hash, re-hashable by the SIEM.
    line = json.loads(out.read_text().splitlines()[2])
    data, stored = tlog.entry_leaf(line)
    assert tlog.hashlib.sha256(data).hexdigest() == stored
    # A second, independent consumer starts from the beginning with its own cursor.
    other = tmp_path / "other.jsonl"
    Streamer(amber.rt.uow, FileSink(other), "archive").catch_up(amber.clock.now)
    assert _seqs(other) == _seqs(out)


def test_a_crash_between_send_and_cursor_resends_rather_than_loses(amber: Amber, tmp_path: Path) -> None:
    out = tmp_path / "siem.jsonl"
    amber.request("alice", "engineering", "oncall")

    class CrashAfterSend(FileSink):
        def send(self, lines: Sequence[bytes]) -> None:
            super().send(lines)
            raise KeyboardInterrupt  # the process dies before the cursor is written

    with pytest.raises(KeyboardInterrupt):
        Streamer(amber.rt.uow, CrashAfterSend(out), "siem", batch=3).run_once(amber.clock.now())
    Streamer(amber.rt.uow, FileSink(out), "siem", batch=3).catch_up(amber.clock.now)
    seqs = _seqs(out)
    assert seqs[:3] == [1, 2, 3]
    assert seqs[3:] == list(range(1, max(seqs) + 1))  # delivered again: at least once, never a gap


@pytest.fixture
def http_siem() -> Iterator[tuple[str, list[bytes], dict[str, bool]]]:
    bodies: list[bytes] = []
    state = {"down": False}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if state["down"]:
                self.send_response(503)
            else:
                bodies.append(body)
                self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ingest", bodies, state
    server.shutdown()
    server.server_close()


def test_http_sink_posts_ndjson_and_retries_after_an_outage(
    amber: Amber, http_siem: tuple[str, list[bytes], dict[str, bool]]
) -> None:
    url, bodies, state = http_siem
    streamer = Streamer(amber.rt.uow, sink_for(url), "splunk", batch=5)
    assert isinstance(streamer.sink, HttpSink)
    amber.request("alice", "engineering", "oncall")
    state["down"] = True
    with pytest.raises(Exception, match="503"):
        streamer.run_once(amber.clock.now())
    state["down"] = False
    streamer.catch_up(amber.clock.now)
    seqs = [json.loads(line)["seq"] for body in bodies for line in body.splitlines()]
    with amber.rt.uow() as session:
        assert seqs == list(range(1, ledger.count(session) + 1))


def test_syslog_sink_sends_rfc5424_messages(amber: Amber) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        sink = sink_for(f"syslog://127.0.0.1:{port}")
        assert isinstance(sink, SyslogSink)
        amber.request("alice", "engineering", "oncall")
        sent = Streamer(amber.rt.uow, sink, "syslog").catch_up(amber.clock.now)
        messages = [receiver.recv(65536) for _ in range(sent)]
    assert messages[0].startswith(b"<134>1 - ")
    entry = json.loads(messages[0].split(b" ledger - ", 1)[1])
    assert entry["seq"] == 1


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)  # a fresh interpreter per command: one store
def test_cli_streams_to_stdout_from_its_cursor(amber: Amber, tmp_path: Path) -> None:
    amber.request("alice", "engineering", "oncall")
    env = {
        **os.environ,
        "AMBER_DATABASE_URL": amber.rt.engine.url.render_as_string(hide_password=False),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
    }
    args = [sys.executable, "-m", "amber", "audit", "stream", "--to", "stdout", "--name", "cli"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    with amber.rt.uow() as session:
        total = ledger.count(session)
    assert [json.loads(line)["seq"] for line in first.stdout.splitlines()] == list(range(1, total + 1))
    amber.request("bob", "engineering", "oncall")
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(second.stdout.splitlines()[0])["seq"] == total + 1


def test_syslog_udp_sends_an_entry_too_large_for_a_datagram_without_its_payload(amber: Amber) -> None:
    big = {"statement": "SELECT '" + "x" * 200_000 + "'"}
    with amber.rt.uow() as session:
        ledger.append(
            session,
            at=amber.clock.now(),
            event_type="test.big",
            actor=ledger.SYSTEM,
            subject_kind="test",
            subject_id="big",
            payload=big,
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sink = sink_for(f"syslog://127.0.0.1:{receiver.getsockname()[1]}")
        sent = Streamer(amber.rt.uow, sink, "syslog-big").catch_up(amber.clock.now)
        messages = [receiver.recv(65536) for _ in range(sent)]
    entries = [json.loads(m.split(b" ledger - ", 1)[1]) for m in messages]
    (last,) = [e for e in entries if e["type"] == "test.big"]
    assert last["payload"]["payload_bytes"] == len(tlog.canonical_json(big))
    assert "too large for a syslog UDP datagram" in last["payload"]["omitted"]
