"""Gateway sessions: login rules, cuts at expiry and revocation, recording, wire-level refusals, cancel."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from amber.gateway.pgwire import codec
from amber.gateway.scram import ScramClient
from tests.conftest import Amber
from tests.gateway.conftest import gateway_credential


def gateway_port(amber: Amber) -> int:
    assert amber.rt.gateway is not None
    return amber.rt.gateway.server.port


def keep_reading(conn: psycopg.Connection[Any]) -> None:
    for _ in range(100):
        conn.execute("SELECT 1")
        time.sleep(0.02)


def url_with(cred: dict[str, Any], **changes: str) -> str:
    url = str(cred["url"])
    for old, new in changes.items():
        url = url.replace(old, new)
    return url


def test_wrong_token_unknown_grant_and_no_tls_are_refused(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with pytest.raises(psycopg.OperationalError) as wrong_token:
        psycopg.connect(url_with(cred, **{cred["password"]: cred["password"][:-2] + "xx"}))
    with pytest.raises(psycopg.OperationalError) as no_grant:
        psycopg.connect(url_with(cred, **{cred["user"]: "grt_nope"}))
    # The same answer whether the grant exists or not: a login error never says which grants exist.
    assert str(wrong_token.value).endswith("wrong grant or token")
    assert str(no_grant.value).endswith("wrong grant or token")
    assert str(wrong_token.value).replace(cred["user"], "grt_nope") == str(no_grant.value)
    with pytest.raises(psycopg.OperationalError, match="needs TLS"):
        psycopg.connect(url_with(cred, **{"sslmode=require": "sslmode=disable"}))
    with pytest.raises(psycopg.OperationalError, match="refuses the startup parameter"):
        psycopg.connect(cred["url"], options="-c default_transaction_read_only=off")


def test_user_may_be_the_grantees_name_at_the_grant_and_the_name_must_match(gw: Amber) -> None:
    cred = gateway_credential(gw)  # alice's
    grant = cred["grant_id"]
    with psycopg.connect(cred["url"], user=f"alice@{grant}", autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match=f"grant {grant} does not belong to 'bob'"):
        psycopg.connect(cred["url"], user=f"bob@{grant}")


def test_a_client_that_stalls_in_the_handshake_is_cut(gw: Amber) -> None:
    assert gw.rt.gateway is not None
    gw.rt.gateway.server.login_timeout_s = 0.3
    port = gateway_port(gw)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        started = time.monotonic()
        said = b""
        while chunk := silent.recv(1024):  # nothing sent: told and closed at the deadline
            said += chunk
        assert b"login timed out" in said
        assert time.monotonic() - started < 3
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert raw.recv(1) == b"S"
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        with tls.wrap_socket(raw) as conn:
            conn.sendall(codec.startup_message({"user": "grt_whoever", "database": "x"}))
            challenge = conn.recv(4096)
            assert challenge[:1] == b"R"  # asked for SCRAM; the client never answers
            rest = b""
            while chunk := conn.recv(4096):
                rest += chunk
            assert b"login timed out" in rest
    cred = gateway_credential(gw)  # others still log in
    gw.rt.gateway.server.login_timeout_s = 60
    with psycopg.connect(cred["url"], autocommit=True) as ok:
        assert ok.execute("SELECT 1").fetchone() == (1,)


def test_failed_logins_are_limited_per_grant_whatever_the_source(gw: Amber) -> None:
    assert gw.rt.gateway is not None
    gw.rt.gateway.server.failed_logins.limit = 1000  # as if each guess came from another address
    target = gateway_credential(gw)
    other = gateway_credential(gw, user="bob")
    bad = url_with(target, **{target["password"]: "amb_gw_wrong"})
    for _ in range(10):
        with pytest.raises(psycopg.OperationalError, match="wrong grant or token"):
            psycopg.connect(bad)
    with pytest.raises(psycopg.OperationalError, match=f"too many failed logins for '{target['user']}'"):
        psycopg.connect(target["url"])  # even the right token, for a while
    with psycopg.connect(other["url"], autocommit=True) as conn:  # another grant, same address: fine
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_failed_logins_are_rate_limited_and_recorded(gw: Amber) -> None:
    cred = gateway_credential(gw)
    bad = url_with(cred, **{cred["password"]: "amb_gw_wrong"})
    for _ in range(5):
        with pytest.raises(psycopg.OperationalError, match="wrong grant or token"):
            psycopg.connect(bad)
    with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
        psycopg.connect(cred["url"])  # even the right token, for a while
    assert gw.rt.gateway is not None
    for _ in range(100):
        entries = gw.api.get(
            "/v1/ledger", params={"subject": cred["grant_id"], "limit": 100}, headers=gw.headers("sue", "security")
        ).json()["entries"]
        failures = [e for e in entries if e["type"] == "gateway.login_failed"]
        if len(failures) == 5:
            break
        time.sleep(0.05)
    assert len(failures) == 5  # every evaluated failure; the refused-while-blocked attempt never got that far
    assert failures[0]["actor"]["sub"] == "gateway"
    assert failures[0]["payload"]["source"] == "127.0.0.1"
    assert failures[0]["payload"]["reason"] == "wrong grant or token"
    assert cred["password"] not in str(failures)


def test_session_is_cut_at_expiry_with_a_clear_message(gw: Amber) -> None:
    cred = gateway_credential(gw, duration="10m")
    conn = psycopg.connect(cred["url"], autocommit=True)
    assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
    gw.clock.advance(timedelta(minutes=10))
    assert gw.tick() == [cred["grant_id"]]
    with pytest.raises(psycopg.OperationalError, match=f"grant {cred['grant_id']} expired"):
        keep_reading(conn)  # the cut is asynchronous: it lands within moments
    conn.close()
    with pytest.raises(psycopg.OperationalError, match="expired"):
        psycopg.connect(cred["url"])


def test_statement_after_expiry_is_refused_even_before_the_worker_runs(gw: Amber) -> None:
    cred = gateway_credential(gw, duration="10m")
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.execute("SELECT 1")
        gw.clock.advance(timedelta(minutes=11))  # no worker tick: the gateway's own check catches it
        with pytest.raises(psycopg.OperationalError, match="expired"):
            conn.execute("SELECT 1")


def test_revocation_cuts_live_sessions(gw: Amber) -> None:
    cred = gateway_credential(gw)
    conn = psycopg.connect(cred["url"], autocommit=True)
    conn.execute("SELECT 1")
    response = gw.api.post(
        f"/v1/grants/{cred['grant_id']}/revoke",
        json={"reason": "incident closed"},
        headers=gw.headers("alice", "engineering"),
    )
    assert response.status_code == 200
    with pytest.raises(psycopg.OperationalError, match="was revoked: incident closed"):
        keep_reading(conn)
    conn.close()


def test_every_statement_is_recorded(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.execute("SELECT id FROM public.orders WHERE id <= 3").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute("DELETE FROM public.orders")
    assert gw.rt.gateway is not None
    for _ in range(100):
        entries = gw.api.get(
            "/v1/ledger", params={"subject": cred["grant_id"], "limit": 100}, headers=gw.headers("sue", "security")
        ).json()["entries"]
        statements = [e for e in entries if e["type"] == "gateway.statement"]
        if len(statements) >= 2 and any(e["type"] == "gateway.session_ended" for e in entries):
            break
        time.sleep(0.05)
    read = next(e for e in statements if e["payload"]["outcome"] == "allowed")
    assert read["payload"]["statement"] == "SELECT id FROM public.orders WHERE id <= 3"
    assert read["payload"]["rows"] == 3
    assert read["payload"]["tables"] == ["public.orders"]
    assert read["payload"]["fingerprint"]
    assert read["payload"]["duration_ms"] >= 0
    assert read["actor"]["sub"] == "dev:alice"
    refused = next(e for e in statements if e["payload"]["outcome"] == "refused")
    assert refused["payload"]["rule"] == "write"
    types = [e["type"] for e in entries]
    assert "gateway.session_started" in types
    assert "gateway.session_ended" in types
    verified = gw.api.get("/v1/ledger/verify", headers=gw.headers("sue", "security")).json()
    assert verified["ok"], verified


class RawClient:
    """A minimal protocol client over TLS, to send what libpq never would."""

    def __init__(self, port: int, user: str, password: str) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(struct.pack("!ii", 8, codec.SSL_REQUEST))
        assert sock.recv(1) == b"S"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(sock)
        self.parser = codec.BackendParser()
        self.sock.sendall(codec.startup_message({"user": user, "database": "x"}))
        self.login(password)
        self.until("Z")

    def login(self, password: str) -> None:
        """SCRAM-SHA-256 without channel binding, as asyncpg does it."""
        scram = ScramClient(password)
        self.expect("R")
        self.sock.sendall(codec.sasl_initial_response("SCRAM-SHA-256", scram.first_message()))
        challenge = next(m for m in self.until("R") if m.kind == "R")
        assert struct.unpack_from("!i", challenge.body)[0] == 11, challenge
        self.sock.sendall(codec.sasl_response(scram.final_message(challenge.body[4:])))

    def recv(self) -> list[codec.BackendMessage]:
        data = self.sock.recv(65536)
        return self.parser.feed(data) if data else []

    def until(self, kind: str) -> list[codec.BackendMessage]:
        seen: list[codec.BackendMessage] = []
        for _ in range(100):
            batch = self.recv()
            if not batch:
                break
            seen += batch
            if any(m.kind == kind for m in batch):
                return seen
        return seen

    def expect(self, kind: str) -> None:
        assert kind in [m.kind for m in self.until(kind)]

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_fast_path_function_call_is_refused_and_the_session_survives(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with RawClient(gateway_port(gw), cred["user"], cred["password"]) as client:
        client.sock.sendall(codec.message("F", struct.pack("!i", 2228) + struct.pack("!hhi", 0, 0, 0) + b"\0\0"))
        replies = client.until("Z")
        errors = [codec.error_fields(m.body) for m in replies if m.kind == "E"]
        assert errors
        assert "fast-path function call" in errors[0]["M"]
        client.sock.sendall(codec.message("Q", b"SELECT 7\0"))
        rows = [m for m in client.until("Z") if m.kind == "D"]
        assert len(rows) == 1


def test_garbage_gets_a_protocol_error_and_the_gateway_keeps_serving(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with RawClient(gateway_port(gw), cred["user"], cred["password"]) as client:
        client.sock.sendall(b"Q" + struct.pack("!i", 2))  # an impossible length
        replies = client.until("E")
    fatal = [codec.error_fields(m.body) for m in replies if m.kind == "E"]
    assert fatal[0]["S"] == "FATAL"
    assert "protocol violation" in fatal[0]["M"]
    with psycopg.connect(cred["url"], autocommit=True) as conn:  # everyone else is fine
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_reaches_the_right_upstream_backend(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        # NOTE: cancel_safe, not cancel: libpq's blocking PQcancel holds the GIL while it waits for the server,
        # and this server runs in the same process as the test.
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_gateway_token_can_be_reissued_and_the_old_one_stops_working(gw: Amber) -> None:
    cred = gateway_credential(gw)
    old_session = psycopg.connect(cred["url"], autocommit=True)
    assert old_session.execute("SELECT 1").fetchone() == (1,)
    again = gw.api.post(f"/v1/grants/{cred['grant_id']}/credentials", headers=gw.headers("alice", "engineering"))
    assert again.status_code == 200, again.text
    fresh = again.json()
    assert fresh["password"] != cred["password"]
    with psycopg.connect(fresh["url"], autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # The watcher (every gateway_watch_interval_s, here run once) ends sessions opened with the old token.
        assert gw.rt.gateway is not None
        loop = gw.rt.gateway.server._loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(gw.rt.gateway.watcher.check_once(), loop).result(10)
        with pytest.raises(psycopg.OperationalError, match="had its gateway token re-issued"):
            old_session.execute("SELECT 1")
        assert conn.execute("SELECT 2").fetchone() == (2,)  # the session with the new token goes on
    old_session.close()
    with pytest.raises(psycopg.OperationalError, match="wrong grant or token"):
        psycopg.connect(cred["url"])
    other = gw.api.post(f"/v1/grants/{cred['grant_id']}/credentials", headers=gw.headers("mallory", "engineering"))
    assert other.status_code == 403


def test_a_refusal_inside_a_transaction_aborts_it_like_postgresql_would(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"]) as conn:  # not autocommit: psycopg opens a transaction block
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.Error, match="amber refused"):
            conn.execute("DELETE FROM public.orders")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 2")
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)
        conn.commit()
    result = subprocess.run(
        [
            "psql",
            cred["url"],
            "-X",
            "-c",
            "BEGIN",
            "-c",
            "DELETE FROM public.orders",
            "-c",
            "SELECT 4",
            "-c",
            "COMMIT",
            "-c",
            "SELECT 5",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert "current transaction is aborted" in result.stderr
    assert "ROLLBACK" in result.stdout  # COMMIT of an aborted transaction rolls back, as in PostgreSQL
    assert " 5" in result.stdout
