"""Real clients through the gateway, logging in with SCRAM-SHA-256(-PLUS): psycopg and psql (libpq), asyncpg,
JDBC; `amber connect`; wrong tokens, malformed SASL messages, and tokens issued before SCRAM verifiers."""

from __future__ import annotations

import asyncio
import decimal
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest
import uvicorn

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.settings import Settings
from amber.gateway.pgwire import codec
from amber.grants.models import Grant
from tests.conftest import Amber, drop_roles_tagged, free_port
from tests.gateway.conftest import gateway_credential

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
HERE = Path(__file__).parent


def without_password(cred: dict[str, Any]) -> str:
    return str(cred["url"]).replace(f":{cred['password']}@", "@")


def with_token(cred: dict[str, Any], token: str) -> str:
    return str(cred["url"]).replace(cred["password"], token)


# -- libpq: psycopg and psql ---------------------------------------------------------------------------------


def test_psycopg_logs_in_with_scram_and_channel_binding(gw: Amber) -> None:
    cred = gateway_credential(gw)
    # channel_binding=require: libpq must do SCRAM-SHA-256-PLUS, and the binding must match its TLS connection.
    with psycopg.connect(cred["url"], autocommit=True, channel_binding="require") as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
    with psycopg.connect(cred["url"], autocommit=True, channel_binding="disable") as conn:  # plain SCRAM-SHA-256
        assert conn.execute("SELECT 1").fetchone() == (1,)
    if psycopg.pq.version() >= 160000:  # require_auth exists from libpq 16 on
        with psycopg.connect(cred["url"], autocommit=True, require_auth="scram-sha-256") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="server requested SASL authentication"):
            psycopg.connect(cred["url"], require_auth="password")  # the gateway never asks for the token itself


def test_psql_logs_in_with_scram_and_the_token_in_pgpassword(gw: Amber) -> None:
    cred = gateway_credential(gw)
    env = {**os.environ, "PGPASSWORD": cred["password"], "PGCHANNELBINDING": "require"}
    result = subprocess.run(
        ["psql", without_password(cred), "-X", "-At", "-c", "SELECT count(*) FROM public.orders"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "50"


def test_a_wrong_token_is_refused_with_one_clear_sentence(gw: Amber) -> None:
    cred = gateway_credential(gw)
    wrong = cred["password"][:-2] + "xx"
    with pytest.raises(psycopg.OperationalError) as error:
        psycopg.connect(with_token(cred, wrong))
    assert str(error.value).endswith(f"FATAL:  amber: login failed for '{cred['user']}': wrong grant or token")
    env = {**os.environ, "PGPASSWORD": wrong}
    result = subprocess.run(
        ["psql", without_password(cred), "-X", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"FATAL:  amber: login failed for '{cred['user']}': wrong grant or token")
    assert result.stderr.count("FATAL") == 1


def test_liveness_checks_apply_to_scram_logins_and_come_after_the_proof(gw: Amber) -> None:
    cred = gateway_credential(gw)
    response = gw.api.post(
        f"/v1/grants/{cred['grant_id']}/revoke", json={"reason": "done"}, headers=gw.headers("alice", "engineering")
    )
    assert response.status_code == 200
    with pytest.raises(psycopg.OperationalError, match=f"grant {cred['grant_id']} is revoked"):
        psycopg.connect(cred["url"], channel_binding="require")
    with pytest.raises(psycopg.OperationalError, match="wrong grant or token"):  # no proof, no news about the grant
        psycopg.connect(with_token(cred, "amb_gw_guess"), channel_binding="require")


def test_a_token_issued_before_scram_verifiers_still_logs_in_with_cleartext_inside_tls(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with gw.rt.uow() as session:
        grant = session.get(Grant, cred["grant_id"])
        assert grant is not None
        assert grant.gateway_scram_verifier is not None
        assert cred["password"] not in grant.gateway_scram_verifier
        grant.gateway_scram_verifier = None  # as it was for tokens issued before migration 0006
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(cred["url"], channel_binding="require")
    with pytest.raises(psycopg.OperationalError, match="wrong grant or token"):
        psycopg.connect(with_token(cred, "amb_gw_guess"))


# -- malformed login messages ----------------------------------------------------------------------------------


def login_until_sasl(port: int, user: str) -> tuple[ssl.SSLSocket, codec.BackendParser]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(struct.pack("!ii", 8, codec.SSL_REQUEST))
    assert sock.recv(1) == b"S"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock)
    parser = codec.BackendParser()
    tls.sendall(codec.startup_message({"user": user, "database": "x"}))
    offer = next_message(tls, parser)
    assert offer.kind == "R"
    assert struct.unpack_from("!i", offer.body)[0] == 10  # AuthenticationSASL
    assert offer.body[4:] == b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    return tls, parser


def next_message(sock: ssl.SSLSocket, parser: codec.BackendParser) -> codec.BackendMessage:
    for _ in range(20):
        messages = parser.feed(sock.recv(65536))
        if messages:
            return messages[0]
    raise AssertionError("no message from the gateway")


MALFORMED = [
    ("garbage first message", codec.sasl_initial_response("SCRAM-SHA-256", b"\x00\xffgarbage")),
    ("unknown mechanism", codec.sasl_initial_response("SCRAM-SHA-1", b"n,,n=,r=abc")),
    ("cleartext instead of SASL", codec.password_message("amb_gw_whatever")),
    ("a query instead of SASL", codec.message("Q", b"SELECT 1\0")),
    ("bad SASL length", codec.message("p", b"SCRAM-SHA-256\0" + struct.pack("!i", 99) + b"x")),
    ("downgrade", codec.sasl_initial_response("SCRAM-SHA-256", b"y,,n=,r=abc")),
]


def test_malformed_sasl_messages_get_a_protocol_error_and_the_gateway_keeps_serving(gw: Amber) -> None:
    cred = gateway_credential(gw)
    port = urlsplit(cred["url"]).port
    assert port is not None
    for name, message in MALFORMED[:3]:  # 4 failures in all: one short of the limit
        tls, parser = login_until_sasl(port, cred["user"])
        with tls:
            tls.sendall(message)
            reply = next_message(tls, parser)
        fields = codec.error_fields(reply.body)
        assert reply.kind == "E", name
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), name
        assert fields["M"].startswith("protocol violation during login"), fields
    # A malformed final message after a well-formed first one.
    tls, parser = login_until_sasl(port, cred["user"])
    with tls:
        tls.sendall(codec.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=clientnonce"))
        challenge = next_message(tls, parser)
        assert struct.unpack_from("!i", challenge.body)[0] == 11  # AuthenticationSASLContinue
        assert challenge.body[4:].startswith(b"r=clientnonce")
        tls.sendall(codec.sasl_response(b"c=biws,r=someone-elses-nonce,p=AAAA"))
        reply = next_message(tls, parser)
    assert codec.error_fields(reply.body)["C"] == "08P01"
    assert "nonce does not match" in codec.error_fields(reply.body)["M"]
    with psycopg.connect(cred["url"], autocommit=True) as conn:  # everyone else (and this client) is fine
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_malformed_logins_count_as_failed_logins(gw: Amber) -> None:
    cred = gateway_credential(gw)
    port = urlsplit(cred["url"]).port
    assert port is not None
    for _, message in MALFORMED[1:]:
        tls, parser = login_until_sasl(port, cred["user"])
        with tls:
            tls.sendall(message)
            assert next_message(tls, parser).kind == "E"
    with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
        psycopg.connect(cred["url"])


def test_an_unknown_grant_gets_a_challenge_like_any_other_and_fails_at_the_end(gw: Amber) -> None:
    cred = gateway_credential(gw)
    port = urlsplit(cred["url"]).port
    assert port is not None
    salts = []
    for _ in range(2):
        tls, parser = login_until_sasl(port, "grt_nope")
        with tls:
            tls.sendall(codec.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))
            challenge = next_message(tls, parser).body[4:].decode()
        salts.append(dict(part.split("=", 1) for part in challenge.split(","))["s"])
    assert salts[0] == salts[1]  # the same made-up salt every time, as a real grant's would be
    with pytest.raises(psycopg.OperationalError, match="wrong grant or token"):
        psycopg.connect(str(cred["url"]).replace(cred["user"], "grt_nope"))


# -- asyncpg -----------------------------------------------------------------------------------------------


async def asyncpg_session(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        statement = await conn.prepare(
            "SELECT o.id, o.total_cents, c.name, o.total_cents / 100.0 AS euros, now() AS at, "
            "ARRAY[c.name] AS names, o.id % 2 = 0 AS even, jsonb_build_object('id', o.id) AS doc, "
            "interval '1 day' * o.id AS age "
            "FROM public.orders o JOIN public.customers c ON c.id = o.customer_id WHERE o.id <= $1 ORDER BY o.id"
        )
        rows = await statement.fetch(5)
        assert [row["id"] for row in rows] == [1, 2, 3, 4, 5]
        first = rows[0]
        assert (first["total_cents"], first["name"], first["names"], first["even"]) == (
            100,
            "customer 2",
            ["customer 2"],
            False,
        )
        assert first["euros"] == decimal.Decimal("1.00")
        assert isinstance(first["at"], datetime)
        assert (first["doc"], first["age"]) == ('{"id": 1}', timedelta(days=1))
        assert len(await statement.fetch(2)) == 2  # the prepared statement is reused
        assert await conn.fetchval("SELECT count(*) FROM public.orders WHERE total_cents > $1", 4000) == 10
        refusals = [
            ("DELETE FROM public.orders", ()),  # the simple protocol
            ("UPDATE public.orders SET total_cents = $1 RETURNING id", (0,)),  # Parse/Describe/Flush, then Sync
        ]
        for sql, args in refusals:
            with pytest.raises(asyncpg.PostgresError) as refused:
                await asyncio.wait_for(conn.execute(sql, *args), 10)
            assert refused.value.sqlstate in ("25006", "42501"), refused.value
        assert await conn.fetchval("SELECT sum(total_cents) FROM public.orders") == 127500  # nothing changed
        async with conn.transaction():
            assert await conn.fetchval("SELECT name FROM public.customers WHERE id = $1", 3) == "customer 3"
        with pytest.raises(asyncpg.PostgresError):
            async with conn.transaction():
                await conn.execute("INSERT INTO public.customers VALUES (99, 'x')")
        assert await conn.fetchval("SELECT 1") == 1  # the transaction was rolled back; the connection works
    finally:
        await conn.close()


def test_asyncpg_prepared_statements_types_refusals_and_transactions(gw: Amber) -> None:
    cred = gateway_credential(gw)
    asyncio.run(asyncpg_session(cred["url"]))


async def within(seconds: float, url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await asyncio.wait_for(conn.fetch(sql, *args), seconds)
    finally:
        conn.terminate()


def test_asyncpg_refusal_at_prepare_reaches_the_client(gw: Amber) -> None:
    cred = gateway_credential(gw)
    with pytest.raises(asyncpg.PostgresError) as refused:
        asyncio.run(within(3, cred["url"], "UPDATE public.orders SET total_cents = $1 RETURNING id", 0))
    assert refused.value.sqlstate == "25006"


def test_asyncpg_type_introspection_is_allowed(gw: Amber) -> None:
    cred = gateway_credential(gw)
    asyncio.run(within(3, cred["url"], "SELECT ARRAY[id] FROM public.orders WHERE id = $1", 1))


# -- JDBC --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def jdbc_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        pytest.fail("java and javac (a JDK, 17 or newer) must be on PATH for the JDBC gateway test")
    if not JDBC_JAR.exists():
        pytest.fail(f"{JDBC_JAR} is missing: run scripts/services.sh as root (it installs libpostgresql-jdbc-java)")
    out = tmp_path_factory.mktemp("jdbc")
    subprocess.run(
        [javac, "-d", str(out), "-cp", str(JDBC_JAR), str(HERE / "GatewayJdbc.java")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def test_jdbc_prepared_statements_refused_write_and_transaction(gw: Amber, jdbc_classes: Path) -> None:
    cred = gateway_credential(gw)
    url = urlsplit(cred["url"])
    jdbc_url = f"jdbc:postgresql://{url.hostname}:{url.port}{url.path}"
    result = subprocess.run(
        ["java", "-cp", f"{jdbc_classes}:{JDBC_JAR}", "GatewayJdbc", jdbc_url, cred["user"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PGPASSWORD": cred["password"]},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "read 1 1:2:100,2:3:200,3:4:300,",
        "read 2 1:2:100,2:3:200,3:4:300,4:5:400,",
        "read 3 1:2:100,2:3:200,3:4:300,4:5:400,5:6:500,",
    ]
    assert lines[3].startswith("write refused 25006 ERROR: amber refused this statement (write)"), lines[3]
    assert lines[4:] == ["after 50 127500", "transaction customer 3", "committed"]


# -- amber connect ---------------------------------------------------------------------------------------------


@pytest.fixture
def served(state_url: str, catalog_path: Path, tmp_path: Path, target_db: str, target_url: str) -> Iterator[str]:
    """amber serving HTTP and its gateway on loopback (for the `amber` command); yields the API's URL."""
    port = free_port()
    settings = Settings(
        env="test",
        state_dir=tmp_path / "state",
        database_url=state_url,
        catalog=catalog_path,
        port=port,
        gateway_port=0,
        gateway_recorder_process=False,
    )
    rt = Runtime.build(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


def test_amber_connect_starts_psql_through_the_gateway(served: str, tmp_path: Path, target_url: str) -> None:
    env = {**os.environ, "AMBER_URL": served, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("PGPASSWORD", None)

    def amber(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "amber", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    assert amber("login", "--dev", "alice", "--groups", "engineering,oncall").returncode == 0
    requested = amber("request", "orders-db", "-l", "gateway", "--for", "30m", "-r", "INC-11", "--json")
    assert requested.returncode == 0, requested.stderr
    grant_id = json.loads(requested.stdout)["grant"]["id"]
    session = amber("connect", grant_id, stdin="SELECT count(*) FROM public.orders;\n")
    assert session.returncode == 0, session.stderr
    assert "50" in session.stdout
    printed = amber("connect", grant_id, "--print")
    assert printed.stdout.startswith(f"postgresql://{grant_id}:amb_gw_")
    assert "sslmode=require" in printed.stdout
