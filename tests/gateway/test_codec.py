"""The sans-I/O codec, without sockets: bytes in, messages out, and bad bytes give ProtocolError."""

from __future__ import annotations

import struct

import pytest

from amber.gateway.pgwire import codec


def startup(params: dict[str, str]) -> bytes:
    return codec.startup_message(params)


def test_startup_then_typed_messages_split_across_feeds() -> None:
    parser = codec.FrontendParser()
    data = startup({"user": "grt_1", "database": "db"}) + codec.message("Q", b"SELECT 1\0") + codec.message("X")
    messages = []
    for i in range(len(data)):  # one byte at a time
        messages += parser.feed(data[i : i + 1])
    assert isinstance(messages[0], codec.Startup)
    assert messages[0].params == {"user": "grt_1", "database": "db"}
    assert isinstance(messages[1], codec.Query)
    assert messages[1].sql == "SELECT 1"
    assert isinstance(messages[2], codec.Terminate)
    assert b"".join(m.raw for m in messages) == data  # raw bytes are kept exactly


def test_ssl_gssenc_and_cancel_requests() -> None:
    ssl = struct.pack("!ii", 8, codec.SSL_REQUEST)
    gss = struct.pack("!ii", 8, codec.GSSENC_REQUEST)
    parser = codec.FrontendParser()
    assert isinstance(parser.feed(ssl)[0], codec.SSLRequest)
    assert isinstance(parser.feed(gss)[0], codec.GSSENCRequest)
    cancel = codec.FrontendParser().feed(codec.cancel_request(1234, 5678))[0]
    assert isinstance(cancel, codec.CancelRequest)
    assert (cancel.pid, cancel.secret) == (1234, 5678)


def test_extended_protocol_messages() -> None:
    parser = codec.FrontendParser()
    parser.feed(startup({"user": "u"}))
    parse = codec.message("P", b"s1\0SELECT $1\0" + struct.pack("!hi", 1, 23))
    bind = codec.message("B", b"p1\0s1\0" + b"\0\0\0\0\0\0")
    describe = codec.message("D", b"Pp1\0")
    execute = codec.message("E", b"p1\0" + struct.pack("!i", 0))
    close = codec.message("C", b"Ss1\0")
    got = parser.feed(
        parse
        + bind
        + describe
        + execute
        + close
        + codec.message("H")
        + codec.message("S")
        + codec.message("F", b"\0\0\0\1")
    )
    assert [type(m).__name__ for m in got] == [
        "Parse",
        "Bind",
        "Describe",
        "Execute",
        "Close",
        "Flush",
        "Sync",
        "FunctionCall",
    ]
    assert (got[0].name, got[0].sql, got[0].param_types) == ("s1", "SELECT $1", (23,))  # type: ignore[attr-defined]
    assert (got[1].portal, got[1].statement) == ("p1", "s1")  # type: ignore[attr-defined]
    assert (got[2].kind, got[2].name) == ("P", "p1")  # type: ignore[attr-defined]
    assert got[3].max_rows == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (struct.pack("!ii", 4, 0), "invalid startup packet length"),
        (struct.pack("!ii", 8, 12345), "unsupported protocol version"),
        (struct.pack("!ii", 200_000, codec.PROTOCOL_V3), "invalid startup packet length"),
        (struct.pack("!i", 13) + struct.pack("!i", codec.PROTOCOL_V3) + b"user\0", "unterminated string"),
    ],
)
def test_bad_startup(data: bytes, needle: str) -> None:
    with pytest.raises(codec.ProtocolError, match=needle):
        codec.FrontendParser().feed(data)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"Q" + struct.pack("!i", 2), "invalid length"),
        (b"Q" + struct.pack("!i", codec.MAX_MESSAGE + 1), "invalid length"),
        (codec.message("Q", b"SELECT 1"), "unterminated string"),
        (codec.message("Q", b"SELECT 1\0junk"), "trailing bytes"),
        (codec.message("Q", b"\xff\xfe\0"), "not valid in the session.s client encoding .utf-8."),
        (codec.message("P", b"s\0SELECT 1\0\0"), "too short"),
        (codec.message("D"), "empty Describe"),
    ],
)
def test_bad_messages_raise_protocol_error(data: bytes, needle: str) -> None:
    parser = codec.FrontendParser()
    parser.feed(startup({"user": "u"}))
    with pytest.raises(codec.ProtocolError, match=needle):
        parser.feed(data)


def test_backend_parser_and_builders() -> None:
    data = (
        codec.auth_ok()
        + codec.parameter_status("server_version", "15")
        + codec.backend_key_data(1, 2)
        + codec.error_response("25006", "no", detail="d")
        + codec.ready_for_query("I")
    )
    parser = codec.BackendParser()
    messages = parser.feed(data[:9]) + parser.feed(data[9:])
    assert [m.kind for m in messages] == ["R", "S", "K", "E", "Z"]
    fields = codec.error_fields(messages[3].body)
    assert fields == {"S": "ERROR", "V": "ERROR", "C": "25006", "M": "no", "D": "d"}
    assert codec.command_tag_rows(b"SELECT 42\0") == 42
    assert codec.command_tag_rows(b"BEGIN\0") is None


def test_sasl_initial_response_round_trip() -> None:
    raw = codec.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    mechanism, data = codec.parse_sasl_initial(raw[5:])
    assert (mechanism, data) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    with pytest.raises(codec.ProtocolError):
        codec.parse_sasl_initial(b"SCRAM-SHA-256\0" + struct.pack("!i", 99) + b"x")
