"""What nobody authenticated can make the gateway hold, and what a logged-in session can send or receive.

Before login: messages are capped at a few kilobytes, connections waiting to log in are capped in all and per
source address, and bytes sent after an SSLRequest but before the TLS handshake are refused (the
CVE-2021-23214 class). After login: a client message over MAX_CLIENT_MESSAGE ends that session only, and a
value larger than any cap comes back whole, streamed through the gateway.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from amber.gateway.pgwire import codec
from tests.conftest import Amber
from tests.gateway.conftest import gateway_credential
from tests.gateway.test_sessions import RawClient, gateway_port


def reply(sock: socket.socket | ssl.SSLSocket) -> list[codec.BackendMessage]:
    """Every message the gateway sends until it closes the connection (or 5 s pass)."""
    parser = codec.BackendParser()
    messages: list[codec.BackendMessage] = []
    sock.settimeout(5)
    try:
        while data := sock.recv(65536):
            messages += parser.feed(data)
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    return messages


def fatal_message(messages: list[codec.BackendMessage]) -> str:
    errors = [codec.error_fields(m.body) for m in messages if m.kind == "E"]
    assert errors, messages
    assert errors[0]["S"] == "FATAL"
    return errors[0]["M"]


@contextmanager
def tls_socket(amber: Amber) -> Iterator[ssl.SSLSocket]:
    sock = socket.create_connection(("127.0.0.1", gateway_port(amber)), timeout=5)
    sock.sendall(struct.pack("!ii", 8, codec.SSL_REQUEST))
    assert sock.recv(1) == b"S"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(sock) as tls:
        yield tls


def test_a_big_message_before_login_is_refused_from_its_header(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with tls_socket(gw) as tls:
        tls.sendall(codec.startup_message({"user": cred["user"], "database": "x"}))
        parser = codec.BackendParser()
        assert parser.feed(tls.recv(65536))[0].kind == "R"  # the SASL challenge
        # Announce a 64 MiB password message and send only its first kilobyte: refused at once.
        tls.sendall(b"p" + struct.pack("!i", 64 * 1024 * 1024) + b"x" * 1024)
        message = fatal_message(reply(tls))
    assert "protocol violation during login" in message
    assert f"at most {codec.MAX_LOGIN_MESSAGE}" in message


def test_a_big_startup_packet_is_refused(gw: Amber) -> None:
    with socket.create_connection(("127.0.0.1", gateway_port(gw)), timeout=5) as sock:
        sock.sendall(struct.pack("!ii", 64 * 1024 * 1024, codec.PROTOCOL_V3))
        assert "invalid startup packet length" in fatal_message(reply(sock))


def test_bytes_after_the_ssl_request_before_the_handshake_are_refused(gw: Amber) -> None:
    """A man in the middle could append a plaintext startup and queries after the client's SSLRequest."""
    injected = struct.pack("!ii", 8, codec.SSL_REQUEST) + codec.startup_message({"user": "x", "database": "x"})
    with socket.create_connection(("127.0.0.1", gateway_port(gw)), timeout=5) as sock:
        sock.sendall(injected)
        messages = reply(sock)
    assert "unencrypted data after the SSL request" in fatal_message(messages)


def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_connections_waiting_to_log_in_are_capped_per_source_and_in_all(gw: Amber) -> None:
    assert gw.rt.gateway is not None
    pending = gw.rt.gateway.server.pending_logins
    pending.per_source = 3
    port = gateway_port(gw)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        wait_for(lambda: pending.total == 3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            message = fatal_message(reply(extra))
        assert "too many connections are waiting to log in" in message
        idle.pop().close()  # one leaves: room for another
        wait_for(lambda: pending.total == 2)
        cred = gateway_credential(gw)
        with psycopg.connect(cred["url"], autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert pending.total == 2  # a logged-in session no longer counts as waiting
        pending.per_source, pending.limit = 32, 2  # the cap in all
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert "too many connections are waiting to log in" in fatal_message(reply(extra))
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: pending.total == 0)


def test_a_message_over_the_cap_after_login_ends_only_that_session(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as other:
        with RawClient(gateway_port(gw), cred["user"], cred["password"]) as client:
            client.sock.sendall(b"Q" + struct.pack("!i", codec.MAX_CLIENT_MESSAGE + 1) + b"SELECT ")
            message = fatal_message(reply(client.sock))
        assert "protocol violation" in message
        assert f"at most {codec.MAX_CLIENT_MESSAGE}" in message
        assert other.execute("SELECT 2").fetchone() == (2,)


def test_a_value_larger_than_any_cap_comes_back_whole(gw: Amber) -> None:
    cred = gateway_credential(gw)
    size = codec.MAX_MESSAGE + 5 * 1024 * 1024
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        row = conn.execute("SELECT length(v), v FROM (SELECT repeat('x', %s) AS v) t", (size,)).fetchone()
        assert row is not None
        assert row[0] == size
        assert len(row[1]) == size
        del row
        assert conn.execute("SELECT 3").fetchone() == (3,)  # the session goes on

    def recorded() -> list[tuple[str, int]]:
        entries = gw.api.get(
            "/v1/ledger", params={"subject": cred["grant_id"], "limit": 50}, headers=gw.headers("sue", "security")
        ).json()["entries"]
        return [
            (e["payload"]["outcome"], e["payload"]["rows"])
            for e in entries
            if e["type"] == "gateway.statement" and "repeat" in e["payload"]["statement"]
        ]

    wait_for(lambda: recorded() != [])  # the recorder writes in batches
    assert recorded() == [("allowed", 1)]


def test_several_large_rows_are_each_counted(gw: Amber) -> None:
    rows = 3
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        got = conn.execute("SELECT g, repeat('y', 1024 * 1024) FROM generate_series(1, %s) g", (rows,)).fetchall()
        assert [r[0] for r in got] == list(range(1, rows + 1))
        assert all(len(r[1]) == 1024 * 1024 for r in got)
