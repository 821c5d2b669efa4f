"""PostgreSQL v3 wire protocol, sans-I/O (h11-style): feed bytes, get messages; build messages as bytes.

Invariants: the parsers never block and never do I/O; every parsed message keeps its exact raw bytes so the
gateway forwards what the client sent, byte for byte, once it has judged it; malformed input raises
ProtocolError (the server answers with a protocol error and closes, it never crashes); no message may exceed
MAX_MESSAGE bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_MESSAGE = 64 * 1024 * 1024  # a message the gateway holds whole (from the server: never a DataRow; see relay)
MAX_CLIENT_MESSAGE = 16 * 1024 * 1024  # one message from a logged-in client (a statement, a Bind)
MAX_LOGIN_MESSAGE = 16 * 1024  # one message before login: a password or SASL message needs a few hundred bytes
MAX_STARTUP = 10_000


class ProtocolError(Exception):
    """The peer sent something that is not valid protocol. The message is safe to show."""


# -- frontend (client -> server) messages ------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class Startup(Message):
    params: dict[str, str]


@dataclass(frozen=True)
class SSLRequest(Message):
    pass


@dataclass(frozen=True)
class GSSENCRequest(Message):
    pass


@dataclass(frozen=True)
class CancelRequest(Message):
    pid: int
    secret: int


@dataclass(frozen=True)
class Query(Message):
    sql: str


@dataclass(frozen=True)
class Parse(Message):
    name: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True)
class Bind(Message):
    portal: str
    statement: str


@dataclass(frozen=True)
class Describe(Message):
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True)
class Execute(Message):
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Close(Message):
    kind: str
    name: str


@dataclass(frozen=True)
class Sync(Message):
    pass


@dataclass(frozen=True)
class Flush(Message):
    pass


@dataclass(frozen=True)
class Terminate(Message):
    pass


@dataclass(frozen=True)
class PasswordMessage(Message):
    """Type 'p': a cleartext password, or a SASL initial response / response (the server knows which)."""

    data: bytes


@dataclass(frozen=True)
class FunctionCall(Message):
    pass


@dataclass(frozen=True)
class CopyFromClient(Message):
    """CopyData / CopyDone / CopyFail sent by the client (only valid during COPY FROM STDIN)."""

    kind: str


@dataclass(frozen=True)
class UnknownMessage(Message):
    kind: str


def _cstring(buf: bytes, pos: int, encoding: str = "utf-8") -> tuple[str, int]:
    """The NUL-terminated string at `pos`, read in the session's client encoding (as the server reads it)."""
    end = buf.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string in message")
    try:
        return buf[pos:end].decode(encoding), end + 1
    except UnicodeDecodeError:
        raise ProtocolError(f"string in message is not valid in the session's client encoding ({encoding})") from None


def _int16(buf: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(buf):
        raise ProtocolError("message too short")
    return struct.unpack_from("!h", buf, pos)[0], pos + 2


def _int32(buf: bytes, pos: int) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise ProtocolError("message too short")
    return struct.unpack_from("!i", buf, pos)[0], pos + 4


class FrontendParser:
    """Parses what a client sends. The first message has no type byte (startup, SSL, GSSENC or cancel)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.in_startup = True
        # Until login only small messages (MAX_LOGIN_MESSAGE): nobody unauthenticated makes the gateway hold
        # megabytes. The gateway raises it to MAX_CLIENT_MESSAGE when the session is logged in.
        self.max_message = MAX_LOGIN_MESSAGE
        # How the server reads this session's text (pgwire/encodings.py); set by the gateway at login.
        self.encoding = "utf-8"

    def has_buffered(self) -> bool:
        """True if bytes were fed that no message returned yet (a partial message, or one after the last read)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            message = self._next()
            if message is None:
                return out
            out.append(message)

    def feed_frames(self, data: bytes) -> list[tuple[int, bytes]]:
        """Like `feed` after startup, but returns (type byte, raw message) pairs without decoding them: the hot
        path decodes only what it needs (`bind_names`, `first_cstring`, or `parse_frontend` for the rest)."""
        if self.in_startup:
            raise ProtocolError("startup not finished")
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        size = len(buf)
        while size - pos >= 5:
            length = int.from_bytes(buf[pos + 1 : pos + 5], signed=True)
            if length < 4 or length > self.max_message:
                raise ProtocolError(
                    f"invalid length {length} for message {chr(buf[pos])!r} (at most {self.max_message})"
                )
            end = pos + 1 + length
            if end > size:
                break
            out.append((buf[pos], bytes(buf[pos:end])))
            pos = end
        del buf[:pos]
        return out

    def _next(self) -> Message | None:
        buf = self._buf
        if self.in_startup:
            if len(buf) < 8:
                return None
            length = struct.unpack_from("!i", buf, 0)[0]
            if length < 8 or length > MAX_STARTUP:
                raise ProtocolError(f"invalid startup packet length {length}")
            if len(buf) < length:
                return None
            raw = bytes(buf[:length])
            del buf[:length]
            return self._startup(raw)
        if len(buf) < 5:
            return None
        kind = chr(buf[0])
        length = struct.unpack_from("!i", buf, 1)[0]
        if length < 4 or length > self.max_message:
            raise ProtocolError(f"invalid length {length} for message {kind!r} (at most {self.max_message})")
        if len(buf) < 1 + length:
            return None
        raw = bytes(buf[: 1 + length])
        del buf[: 1 + length]
        return parse_frontend(kind, raw, self.encoding)

    def _startup(self, raw: bytes) -> Message:
        code = struct.unpack_from("!i", raw, 4)[0]
        if code == SSL_REQUEST:
            return SSLRequest(raw)
        if code == GSSENC_REQUEST:
            return GSSENCRequest(raw)
        if code == CANCEL_REQUEST:
            if len(raw) != 16:
                raise ProtocolError("invalid cancel request")
            pid, secret = struct.unpack_from("!ii", raw, 8)
            return CancelRequest(raw, pid, secret)
        if code != PROTOCOL_V3:
            raise ProtocolError(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
        params: dict[str, str] = {}
        pos = 8
        while pos < len(raw) and raw[pos] != 0:
            key, pos = _cstring(raw, pos)
            value, pos = _cstring(raw, pos)
            params[key] = value
        if pos != len(raw) - 1:
            raise ProtocolError("malformed startup parameters")
        self.in_startup = False
        return Startup(raw, params)


def parse_frontend(kind: str, raw: bytes, encoding: str = "utf-8") -> Message:
    """One message after startup. Names and SQL text are read in the session's client encoding."""
    body = raw[5:]
    if kind == "Q":
        sql, pos = _cstring(body, 0, encoding)
        if pos != len(body):
            raise ProtocolError("trailing bytes in Query")
        return Query(raw, sql)
    if kind == "P":
        name, pos = _cstring(body, 0, encoding)
        sql, pos = _cstring(body, pos, encoding)
        count, pos = _int16(body, pos)
        types = []
        for _ in range(max(count, 0)):
            oid, pos = _int32(body, pos)
            types.append(oid)
        return Parse(raw, name, sql, tuple(types))
    if kind == "B":
        portal, pos = _cstring(body, 0, encoding)
        statement, _ = _cstring(body, pos, encoding)
        return Bind(raw, portal, statement)
    if kind == "D":
        if not body:
            raise ProtocolError("empty Describe")
        name, _ = _cstring(body, 1, encoding)
        return Describe(raw, chr(body[0]), name)
    if kind == "E":
        portal, pos = _cstring(body, 0, encoding)
        max_rows, _ = _int32(body, pos)
        return Execute(raw, portal, max_rows)
    if kind == "C":
        if not body:
            raise ProtocolError("empty Close")
        name, _ = _cstring(body, 1, encoding)
        return Close(raw, chr(body[0]), name)
    if kind == "S":
        return Sync(raw)
    if kind == "H":
        return Flush(raw)
    if kind == "X":
        return Terminate(raw)
    if kind == "p":
        return PasswordMessage(raw, body)
    if kind == "F":
        return FunctionCall(raw)
    if kind in ("d", "c", "f"):
        return CopyFromClient(raw, kind)
    return UnknownMessage(raw, kind)


def first_cstring(raw: bytes, start: int = 5, encoding: str = "utf-8") -> tuple[str, int]:
    """The NUL-terminated string at `start` of a raw message and the position after it (Execute's portal)."""
    return _cstring(raw, start, encoding)


def bind_names(raw: bytes, encoding: str = "utf-8") -> tuple[str, str]:
    """(portal, statement) of a raw Bind message, without decoding its parameters."""
    portal, pos = _cstring(raw, 5, encoding)
    statement, _ = _cstring(raw, pos, encoding)
    return portal, statement


# -- backend (server -> client) messages, as the gateway reads them from upstream -----------------------------


@dataclass(frozen=True)
class BackendMessage:
    kind: str
    raw: bytes = field(repr=False)

    @property
    def body(self) -> bytes:
        return self.raw[5:]


class BackendParser:
    """Splits what a server sends into typed messages (all of them have a type byte)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[BackendMessage]:
        self._buf += data
        out: list[BackendMessage] = []
        buf = self._buf
        while len(buf) >= 5:
            length = struct.unpack_from("!i", buf, 1)[0]
            if length < 4 or length > MAX_MESSAGE:
                raise ProtocolError(f"invalid length {length} from server")
            if len(buf) < 1 + length:
                break
            raw = bytes(buf[: 1 + length])
            del buf[: 1 + length]
            out.append(BackendMessage(chr(raw[0]), raw))
        return out


def parameter_status_fields(body: bytes) -> tuple[str, str]:
    """(name, value) of a ParameterStatus body (read as Latin-1: never fails; the names amber watches are ASCII)."""
    name, pos = _cstring(body, 0, "latin-1")
    value, _ = _cstring(body, pos, "latin-1")
    return name, value


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, by their one-letter codes.

    Read leniently (undecodable bytes replaced): the server writes them in the session's client encoding, and
    the fields the gateway compares (severity, code, amber's marker names) are ASCII.
    """
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise ProtocolError("unterminated string in message")
        fields[code] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


# -- builders ----------------------------------------------------------------------------------------------


def message(kind: str, body: bytes = b"") -> bytes:
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def error_response(
    code: str, text: str, *, severity: str = "ERROR", detail: str | None = None, hint: str | None = None
) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(text)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    return message("E", body + b"\0")


def notice_response(text: str, *, code: str = "00000") -> bytes:
    return message("N", b"SNOTICE\0VNOTICE\0C" + cstr(code) + b"M" + cstr(text) + b"\0")


def ready_for_query(status: str) -> bytes:
    return message("Z", status.encode())


def auth_ok() -> bytes:
    return message("R", struct.pack("!i", 0))


def auth_cleartext() -> bytes:
    return message("R", struct.pack("!i", 3))


def auth_sasl(mechanisms: list[str]) -> bytes:
    return message("R", struct.pack("!i", 10) + b"".join(cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return message("R", struct.pack("!i", 11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return message("R", struct.pack("!i", 12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message("S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message("K", struct.pack("!ii", pid, secret))


def empty_query() -> bytes:
    return message("Q", cstr(""))


def startup_message(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", PROTOCOL_V3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST, pid, secret)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message("p", cstr(mechanism) + struct.pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message("p", data)


def password_message(password: str) -> bytes:
    return message("p", cstr(password))


def parse_sasl_initial(data: bytes) -> tuple[str, bytes]:
    mechanism, pos = _cstring(data, 0)
    length, pos = _int32(data, pos)
    if length < 0 or pos + length != len(data):
        raise ProtocolError("malformed SASL initial response")
    return mechanism, data[pos:]


def command_tag_rows(body: bytes) -> int | None:
    """Rows from a CommandComplete tag such as `SELECT 5`, `COPY 10`, `FETCH 3`."""
    tag = body.rstrip(b"\0").decode(errors="replace").split()
    if tag and tag[-1].isdigit():
        return int(tag[-1])
    return None
