"""Streaming ledger entries to SIEMs as JSON lines: stdout, a file, syslog (RFC 5424, UDP or TCP), or HTTP.

Owns the stream cursors (`ledger_cursors`, name `stream:<name>`). Invariant: at-least-once, in seq order,
without gaps: a batch is sent first and the cursor advanced only after the sink accepted it, so a consumer
that was down (or a streamer that crashed between the two steps) receives everything after its cursor again.
Consumers deduplicate by `seq` (each line carries its `hash`, so a duplicate is recognisably identical).
What this does NOT do: authenticate the SIEM or encrypt the transport beyond what the URL's scheme gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from amber.core.db import UnitOfWork
from amber.core.errors import InvalidInput
from amber.ledger import tlog
from amber.ledger.proofs import exported
from amber.ledger.service import iter_raw
from amber.ledger.witnesses import advance, position


class Sink(Protocol):
    def send(self, lines: Sequence[bytes]) -> None:
        """Deliver JSON lines (each ending in a newline) or raise."""


class StdoutSink:
    def send(self, lines: Sequence[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.buffer.flush()


class FileSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, lines: Sequence[bytes]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)


class SyslogSink:
    """RFC 5424 messages, facility local0 / severity info, one entry per message (TCP: octet-counted)."""

    def __init__(self, host: str, port: int, *, tcp: bool = False, app: str = "amber-ledger") -> None:
        self.address = (host, port)
        self.tcp = tcp
        self.app = app
        self.hostname = socket.gethostname()

    def _frame(self, line: bytes) -> bytes:
        message = f"<134>1 - {self.hostname} {self.app} - ledger - ".encode() + line.rstrip(b"\n")
        return f"{len(message)} ".encode() + message if self.tcp else message

    def send(self, lines: Sequence[bytes]) -> None:
        if self.tcp:
            with socket.create_connection(self.address, timeout=5) as sock:
                sock.sendall(b"".join(self._frame(line) for line in lines))
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for line in lines:
                frame = self._frame(line)
                if len(frame) > UDP_MAX:
                    frame = self._frame(without_payload(line))
                sock.sendto(frame, self.address)


UDP_MAX = 65_000  # bytes in one datagram (IPv4 allows 65,507); a statement may be kept up to 1 MiB


def without_payload(line: bytes) -> bytes:
    """An entry too large for a UDP datagram (a long statement): the same entry with its payload replaced by
    the payload's SHA-256 and size, so the SIEM still sees the entry and can fetch it (seq) from amber."""
    entry = json.loads(line)
    payload = tlog.canonical_json(entry.get("payload"))
    entry["payload"] = {
        "omitted": "too large for a syslog UDP datagram; use syslog+tcp:// or read the entry from amber",
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
    }
    return line_of(entry)


class HttpSink:
    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def send(self, lines: Sequence[bytes]) -> None:
        response = httpx.post(
            self.url, content=b"".join(lines), headers={"content-type": "application/x-ndjson"}, timeout=self.timeout_s
        )
        response.raise_for_status()


def sink_for(target: str) -> Sink:
    """`stdout`, `file:/path`, `syslog://host:port` (UDP), `syslog+tcp://host:port`, `http(s)://...`."""
    if target == "stdout":
        return StdoutSink()
    if target.startswith("file:"):
        return FileSink(Path(target.removeprefix("file:")))
    parts = urlsplit(target)
    if parts.scheme in ("syslog", "syslog+tcp") and parts.hostname:
        return SyslogSink(parts.hostname, parts.port or 514, tcp=parts.scheme == "syslog+tcp")
    if parts.scheme in ("http", "https"):
        return HttpSink(target)
    raise InvalidInput(f"unknown stream target {target!r}: stdout, file:/path, syslog://, syslog+tcp://, http(s)://")


def line_of(entry: dict[str, object]) -> bytes:
    return tlog.canonical_json(entry) + b"\n"


class Streamer:
    def __init__(self, uow: UnitOfWork, sink: Sink, name: str, *, batch: int = 500) -> None:
        self.uow = uow
        self.sink = sink
        self.cursor = f"stream:{name}"
        self.batch = batch

    def run_once(self, now: datetime) -> int:
        """Send the next batch after the cursor, then advance it. Returns how many entries were sent."""
        after = position(self.uow, self.cursor)
        with self.uow() as session:
            rows = []
            for row in iter_raw(session, batch=self.batch, after_seq=after):
                rows.append(exported(row))
                if len(rows) >= self.batch:
                    break
        if not rows:
            return 0
        self.sink.send([line_of(row) for row in rows])  # raises: the cursor stays, the batch is sent again
        with self.uow() as session:
            advance(session, self.cursor, int(str(rows[-1]["seq"])), now)
        return len(rows)

    def catch_up(self, now: Callable[[], datetime]) -> int:
        total = 0
        while sent := self.run_once(now()):
            total += sent
        return total

    def follow(self, now: Callable[[], datetime], *, poll_s: float = 0.5, stop: Callable[[], bool]) -> None:
        while not stop():
            try:
                if self.catch_up(now) == 0:
                    time.sleep(poll_s)
            except (OSError, httpx.HTTPError):
                time.sleep(poll_s)  # the sink is down: retry from the cursor
