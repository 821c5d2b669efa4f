"""The gateway's asyncio server: TLS, authentication with the amber grant token, relay to the upstream
database as the grant's own role, every statement judged (statements.py) and recorded.

Invariants:
- Nothing reaches the upstream before it was judged; a refused statement never reaches it at all (the
  gateway sends an empty query in its place so that its own ErrorResponse lands in protocol order).
- A session lives only as long as its grant: liveness is checked before every statement, and `cut()` ends every
  session of a grant at once with a FATAL message naming the grant and why.
- Every statement, allowed or refused, is handed to the recorder before the client sees its result, and one that
  reached the database but never completed is recorded as interrupted when the session ends; the recorder never
  drops an entry, and while it cannot write, new statements and logins are refused (fail closed).
- A client never sees the upstream password or the upstream's cancel key.
What this does NOT do yet: SCRAM towards the client (cleartext passwords are accepted only inside TLS), or
COPY FROM STDIN (refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import pglast
from pglast.enums import TransactionStmtKind

from amber.core.clock import Clock
from amber.gateway.pgwire import codec
from amber.gateway.scram import ScramClient, ScramError
from amber.gateway.statements import SchemaInfo, Verdict, judge

log = logging.getLogger(__name__)

ALLOWED_STARTUP = frozenset(
    {
        "user",
        "database",
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "standard_conforming_strings",
    }
)
REFUSED_STARTUP = frozenset({"options", "replication"})


class AuthFailed(Exception):
    pass


@dataclass(frozen=True)
class GatewayGrant:
    grant_id: str
    role_name: str
    grantee_issuer: str
    grantee_subject: str
    grantee_name: str
    resource: str
    expires_at: datetime
    host: str
    port: int
    database: str
    upstream_password: str = field(repr=False)
    masked: tuple[tuple[str, frozenset[str]], ...] = ()  # ("schema.table", columns) the level masks


class Authenticator(Protocol):
    def authenticate(self, user: str, token: str) -> GatewayGrant: ...

    def still_live(self, grant_id: str) -> str | None:
        """None if the grant is live; otherwise why it ended."""
        ...


class Recorder(Protocol):
    @property
    def healthy(self) -> bool:
        """False while entries cannot be written: the server then refuses new statements and logins."""
        ...

    async def record(self, event: str, grant: GatewayGrant, payload: dict[str, Any]) -> None:
        """Queue one entry, waiting while the queue is full. Never drops an entry."""
        ...


class FailedLogins:
    """Per-source limit on failed logins: `limit` failures per `window_s` seconds, then refuse for the window."""

    def __init__(self, limit: int = 5, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, source: str) -> bool:
        now = time.monotonic()
        entries = self._failures.get(source)
        if not entries:
            return False
        while entries and now - entries[0] > self.window_s:
            entries.popleft()
        return len(entries) >= self.limit

    def failed(self, source: str) -> None:
        self._failures.setdefault(source, deque()).append(time.monotonic())


@dataclass
class _Pending:
    """What to do when the upstream's next ReadyForQuery arrives."""

    error: bytes | None = None
    swallow_empty: bool = False


@dataclass
class _Running:
    verdict: Verdict
    started: float
    rows: int = 0


class Session:
    def __init__(
        self,
        server: GatewayServer,
        *,
        grant: GatewayGrant,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
        session_id: str,
    ) -> None:
        self.server = server
        self.grant = grant
        self.client_w = client_w
        self.upstream_r = upstream_r
        self.upstream_w = upstream_w
        self.id = session_id
        self.pending: deque[_Pending] = deque()
        self.running: deque[_Running] = deque()
        self.prepared: dict[str, Verdict] = {}
        self.portals: dict[str, Verdict] = {}
        self.sql_prepared: set[str] = set()
        self.skip_until_sync = False
        self.batch_error: bytes | None = None
        self.closed = asyncio.Event()
        # PostgreSQL aborts a transaction block on any error; a refused statement never reached the upstream, so
        # the gateway plays that part: until ROLLBACK (or COMMIT, which then rolls back) it refuses everything.
        self.in_transaction = False
        self.aborted = False
        self.cut_reason: str | None = None

    # -- client -> upstream ------------------------------------------------------------------------------

    async def from_client(self, parser: codec.FrontendParser, reader: asyncio.StreamReader) -> None:
        while not self.closed.is_set():
            data = await reader.read(65536)
            if not data:
                return
            try:
                messages = parser.feed(data)
            except codec.ProtocolError as exc:
                await self.fatal("08P01", f"protocol violation: {exc}")
                return
            out = bytearray()
            for msg in messages:
                if isinstance(msg, codec.Terminate):
                    self.upstream_w.write(bytes(out) + msg.raw)
                    return
                out += await self.handle(msg)
            if out:
                self.upstream_w.write(bytes(out))
                await self.upstream_w.drain()

    async def handle(self, msg: codec.Message) -> bytes:  # noqa: PLR0915 - one branch per message type
        if isinstance(msg, codec.Sync):
            error, self.batch_error, self.skip_until_sync = self.batch_error, None, False
            self.pending.append(_Pending(error=error))
            return msg.raw
        if self.skip_until_sync:
            return b""
        if isinstance(msg, codec.Query | codec.Parse | codec.Execute | codec.FunctionCall):
            ended = self.server.authenticator.still_live(self.grant.grant_id)
            if ended is not None:
                await self.server.cut_session(self, ended)
                return b""
            if not self.server.recorder.healthy:
                down = Verdict(
                    False,
                    "",
                    "any",
                    "recording",
                    "the ledger is unavailable, so amber refuses "
                    "statements it cannot record (fail closed); try again shortly",
                )
                await self.record_refusal(down)
                if isinstance(msg, codec.Query | codec.FunctionCall):
                    self.pending.append(_Pending(error=self.refusal(down), swallow_empty=True))
                    return codec.empty_query()
                return self.refuse_in_batch(down)
        if isinstance(msg, codec.Query) and self.aborted:
            return await self.while_aborted(msg)
        if isinstance(msg, codec.Query):
            verdicts = self.judge(msg.sql)
            refused = next((v for v in verdicts if not v.allowed), None)
            if refused is not None:
                for verdict in verdicts:  # the whole string is refused, so every part is recorded as refused
                    await self.record_refusal(verdict)
                self.aborted = self.in_transaction
                self.pending.append(_Pending(error=self.refusal(refused), swallow_empty=True))
                return codec.empty_query()
            now = time.perf_counter()
            for verdict in verdicts:
                if verdict.kind != "empty":
                    self.running.append(_Running(verdict, now))
                if verdict.prepares:
                    self.sql_prepared.add(verdict.prepares)
            self.pending.append(_Pending())
            return msg.raw
        if isinstance(msg, codec.Parse) and self.aborted:
            if _is_rollback(msg.sql):
                self.aborted = False
                self.prepared[msg.name] = Verdict(True, msg.sql, "TransactionStmt")
                return msg.raw
            return self.refuse_in_batch(
                Verdict(
                    False, msg.sql, "any", "aborted", "the transaction was aborted; only ROLLBACK is accepted", "25P02"
                )
            )
        if isinstance(msg, codec.Parse):
            verdicts = self.judge(msg.sql)
            refused = next((v for v in verdicts if not v.allowed), None)
            if refused is None and len(verdicts) > 1:
                refused = Verdict(
                    False, msg.sql, "multi", "multi-statement", "a prepared statement must be a single statement"
                )
            if refused is not None:
                await self.record_refusal(refused)
                self.prepared.pop(msg.name, None)
                return self.refuse_in_batch(refused)
            self.prepared[msg.name] = verdicts[0]
            return msg.raw
        if isinstance(msg, codec.Bind):
            statement = self.prepared.get(msg.statement)
            if statement is None:
                return self.refuse_in_batch(
                    Verdict(
                        False, "", "bind", "prepared", f"prepared statement {msg.statement!r} was not allowed by amber"
                    )
                )
            self.portals[msg.portal] = statement
            return msg.raw
        if isinstance(msg, codec.Execute):
            statement = self.portals.get(msg.portal)
            if statement is None:
                return self.refuse_in_batch(
                    Verdict(False, "", "execute", "prepared", f"portal {msg.portal!r} was not allowed by amber")
                )
            self.running.append(_Running(statement, time.perf_counter()))
            return msg.raw
        if isinstance(msg, codec.Close):
            if msg.kind == "S":
                self.prepared.pop(msg.name, None)
            else:
                self.portals.pop(msg.name, None)
            return msg.raw
        if isinstance(msg, codec.FunctionCall):
            verdict = Verdict(
                False,
                "<fast-path function call>",
                "FunctionCall",
                "function-call",
                "the fast-path function call protocol is not allowed; use SQL",
            )
            await self.record_refusal(verdict)
            self.pending.append(_Pending(error=self.refusal(verdict), swallow_empty=True))
            return codec.empty_query()
        if isinstance(msg, codec.CopyFromClient):
            return b""  # only COPY ... TO STDOUT is ever forwarded; the upstream is never in COPY IN
        if isinstance(msg, codec.Describe | codec.Flush):
            return msg.raw
        await self.fatal("08P01", f"unexpected message type {getattr(msg, 'kind', type(msg).__name__)!r}")
        return b""

    async def while_aborted(self, msg: codec.Query) -> bytes:
        """In an aborted transaction block: ROLLBACK passes, COMMIT becomes ROLLBACK, anything else is refused."""
        kind = _transaction_kind(msg.sql)
        if kind in (
            TransactionStmtKind.TRANS_STMT_ROLLBACK,
            TransactionStmtKind.TRANS_STMT_ROLLBACK_TO,
            TransactionStmtKind.TRANS_STMT_COMMIT,
        ):
            self.aborted = False
            self.pending.append(_Pending())
            if kind == TransactionStmtKind.TRANS_STMT_COMMIT:
                return codec.message("Q", codec.cstr("ROLLBACK"))
            return msg.raw
        error = codec.error_response(
            "25P02",
            "current transaction is aborted (amber refused a statement in it), commands ignored until end "
            "of transaction block",
        )
        self.pending.append(_Pending(error=error, swallow_empty=True))
        return codec.empty_query()

    def judge(self, sql: str) -> list[Verdict]:
        return self.server.judge(self.grant.resource, sql, frozenset(self.sql_prepared), self.grant.masked)

    def refusal(self, verdict: Verdict) -> bytes:
        return codec.error_response(
            verdict.sqlstate,
            f"amber refused this statement ({verdict.rule}): {verdict.message}",
            hint="amber grants read-only access; see `amber grants`",
        )

    def refuse_in_batch(self, verdict: Verdict) -> bytes:
        self.aborted = self.aborted or self.in_transaction
        self.batch_error = self.refusal(verdict)
        self.skip_until_sync = True
        return b""

    async def record_refusal(self, verdict: Verdict) -> None:
        """Refused statements are recorded at once; allowed ones when they finish (with rows and duration)."""
        await self.server.recorder.record("gateway.statement", self.grant, self.payload(verdict, "refused"))

    def payload(
        self, verdict: Verdict, outcome: str, *, rows: int | None = None, duration_ms: float | None = None
    ) -> dict[str, Any]:
        return {
            "session": self.id,
            "statement": verdict.sql[:10000],
            "fingerprint": verdict.fingerprint,
            "tables": list(verdict.tables),
            "outcome": outcome,
            "rule": verdict.rule,
            "message": verdict.message or None,
            "rows": rows,
            "duration_ms": round(duration_ms, 3) if duration_ms is not None else None,
        }

    # -- upstream -> client ------------------------------------------------------------------------------

    async def from_upstream(self) -> None:
        parser = codec.BackendParser()
        while not self.closed.is_set():
            data = await self.upstream_r.read(65536)
            if not data:
                return
            out = bytearray()
            for msg in parser.feed(data):
                out += await self.on_backend(msg)
            if out:
                self.client_w.write(bytes(out))
                await self.client_w.drain()

    async def on_backend(self, msg: codec.BackendMessage) -> bytes:
        kind = msg.kind
        if kind == "D":
            if self.running:
                self.running[0].rows += 1
            return msg.raw
        if (
            kind in ("C", "E", "s", "I")
            and self.running
            and not (kind == "I" and self.pending and self.pending[0].swallow_empty)
        ):
            done = self.running.popleft()
            outcome = "error" if kind == "E" else "allowed"
            rows = codec.command_tag_rows(msg.body) if kind == "C" else None
            await self.finish(done, outcome, rows if rows is not None else done.rows)
            if kind == "E":
                while self.running:  # the rest of this query or batch is skipped by the server
                    await self.finish(self.running.popleft(), "skipped", 0)
        if kind == "I" and self.pending and self.pending[0].swallow_empty:
            return b""
        if kind == "Z":
            entry = self.pending.popleft() if self.pending else _Pending()
            status = msg.body[:1]
            self.in_transaction = status in (b"T", b"E")
            if not self.in_transaction:
                self.aborted = False
            raw = codec.ready_for_query("E") if self.aborted and status == b"T" else msg.raw
            if entry.error is not None:
                return entry.error + raw
            return raw
        return msg.raw

    async def finish(self, running: _Running, outcome: str, rows: int) -> None:
        duration = (time.perf_counter() - running.started) * 1000
        await self.server.recorder.record(
            "gateway.statement", self.grant, self.payload(running.verdict, outcome, rows=rows, duration_ms=duration)
        )

    async def fatal(self, code: str, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.client_w.write(codec.error_response(code, text, severity="FATAL"))
            await self.client_w.drain()
        self.closed.set()


class GatewayServer:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        recorder: Recorder,
        schema_for: Callable[[str], SchemaInfo],
        clock: Clock,
        tls: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
        verdict_cache_size: int = 10000,
    ) -> None:
        self.authenticator = authenticator
        self.recorder = recorder
        self.schema_for = schema_for
        self.clock = clock
        self.tls = tls
        self.host = host
        self.port = port
        self.failed_logins = FailedLogins()
        self.sessions: dict[str, set[Session]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancel_keys: dict[tuple[int, int], tuple[str, int, int, int]] = {}
        self._verdicts: dict[tuple[Any, ...], list[Verdict]] = {}
        self._shapes: dict[tuple[Any, ...], Verdict] = {}
        self._verdict_cache_size = verdict_cache_size

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("gateway listening on %s:%d (TLS %s)", self.host, self.port, "on" if self.tls else "off")

    async def stop(self) -> None:
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                await self.cut_session(session, "amber is shutting down")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self, grant_id: str, reason: str) -> None:
        """End every session of a grant. Thread-safe: the worker calls this from its own thread."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._cut(grant_id, reason), self._loop)

    async def _cut(self, grant_id: str, reason: str) -> None:
        for session in list(self.sessions.get(grant_id, ())):
            await self.cut_session(session, reason)

    async def cut_session(self, session: Session, reason: str) -> None:
        if session.closed.is_set():
            return
        session.cut_reason = reason
        await session.fatal("57P01", f"amber ended this session: grant {session.grant.grant_id} {reason}")
        with contextlib.suppress(Exception):
            session.upstream_w.close()
        with contextlib.suppress(Exception):
            session.client_w.close()

    def judge(
        self,
        resource: str,
        sql: str,
        prepared: frozenset[str],
        masked: tuple[tuple[str, frozenset[str]], ...] = (),
    ) -> list[Verdict]:
        """Judge `sql`, from a cache when the answer cannot differ.

        NOTE: two caches. By exact text: a verdict depends on the text, the prepared names and the upstream
        schema, never on anything else. By shape (the text with its literal constants blanked by PostgreSQL's
        own scanner): only for a single SELECT or SHOW, whose verdict never depends on a literal's value
        (EXPLAIN, BEGIN or SET can: `EXPLAIN (ANALYZE 0)` differs from `(ANALYZE 1)`, so they are never cached
        by shape). Both caches are cleared when they fill up.
        """
        key = (resource, sql, prepared, masked)
        cached = self._verdicts.get(key)
        if cached is not None:
            return cached
        shape = _shape(sql)
        if shape is not None:
            by_shape = self._shapes.get((resource, shape, prepared, masked))
            if by_shape is not None:
                return [replace(by_shape, sql=sql.strip())]
        verdicts = judge(sql, self.schema_for(resource), prepared=prepared, masked=dict(masked))
        if len(self._verdicts) >= self._verdict_cache_size:
            self._verdicts.clear()
            self._shapes.clear()
        self._verdicts[key] = verdicts
        if shape is not None and len(verdicts) == 1 and verdicts[0].kind in SHAPE_CACHEABLE:
            self._shapes[(resource, shape, prepared, masked)] = verdicts[0]
        return verdicts

    # -- one client connection -----------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "unknown"
        try:
            await self._serve(reader, writer, source)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception:
            log.exception("gateway: unexpected error on a connection from %s", source)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        parser = codec.FrontendParser()
        tls_on = False
        startup: codec.Startup | None = None
        while startup is None:
            data = await reader.read(65536)
            if not data:
                return
            try:
                messages = parser.feed(data)
            except codec.ProtocolError as exc:
                writer.write(codec.error_response("08P01", f"protocol violation: {exc}", severity="FATAL"))
                await writer.drain()
                return
            for msg in messages:
                if isinstance(msg, codec.SSLRequest):
                    if self.tls is None or tls_on:
                        writer.write(b"N")
                        await writer.drain()
                        continue
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.tls)
                    tls_on = True
                elif isinstance(msg, codec.GSSENCRequest):
                    writer.write(b"N")
                    await writer.drain()
                elif isinstance(msg, codec.CancelRequest):
                    await self._forward_cancel(msg)
                    return
                elif isinstance(msg, codec.Startup):
                    startup = msg
        await self._session(startup, parser, reader, writer, source, tls_on)

    async def _session(  # noqa: PLR0917 - one connection's state, passed once from _serve
        self,
        startup: codec.Startup,
        parser: codec.FrontendParser,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: str,
        tls_on: bool,
    ) -> None:
        params = {k.lower(): v for k, v in startup.params.items()}
        bad = sorted((set(params) - ALLOWED_STARTUP) | (set(params) & REFUSED_STARTUP))
        if bad:
            await _fatal(
                writer,
                "08004",
                f"amber refuses the startup parameter(s) {', '.join(bad)}; "
                f"allowed: {', '.join(sorted(ALLOWED_STARTUP))}",
            )
            return
        if not tls_on:
            await _fatal(writer, "28000", "amber's gateway needs TLS for logins (use sslmode=require)")
            return
        if self.failed_logins.blocked(source):
            await _fatal(writer, "28000", "too many failed logins from your address; wait a minute")
            return
        writer.write(codec.auth_cleartext())
        await writer.drain()
        password_msg = await _read_password(parser, reader)
        if password_msg is None:
            return
        user = params.get("user", "")
        try:
            token = password_msg.data.rstrip(b"\0").decode()
            grant = await asyncio.to_thread(self.authenticator.authenticate, user, token)
        except (AuthFailed, UnicodeDecodeError) as exc:
            self.failed_logins.failed(source)
            log.warning("gateway: failed login for user %r from %s: %s", user[:64], source, exc)
            await _fatal(writer, "28P01", f"amber: login failed for {user[:64]!r}: {exc}")
            return
        if not self.recorder.healthy:
            await _fatal(
                writer, "08006", "amber cannot record sessions right now (the ledger is unavailable); try again shortly"
            )
            return
        try:
            upstream_r, upstream_w, key, status = await self._connect_upstream(grant, params)
        except (OSError, ScramError, codec.ProtocolError, UpstreamRefused) as exc:
            await _fatal(writer, "08006", f"amber could not reach the database for grant {grant.grant_id}: {exc}")
            return
        session_id = secrets.token_hex(8)
        session = Session(
            self, grant=grant, client_w=writer, upstream_r=upstream_r, upstream_w=upstream_w, session_id=session_id
        )
        client_key = (secrets.randbits(31), secrets.randbits(31))
        self._cancel_keys[client_key] = (grant.host, grant.port, key[0], key[1])
        self.sessions.setdefault(grant.grant_id, set()).add(session)
        try:
            await self.recorder.record(
                "gateway.session_started",
                grant,
                {"session": session_id, "source": source, "application": params.get("application_name")},
            )
            writer.write(codec.auth_ok() + status + codec.backend_key_data(*client_key) + codec.ready_for_query("I"))
            await writer.drain()
            tasks = [
                asyncio.create_task(session.from_client(parser, reader)),
                asyncio.create_task(session.from_upstream()),
                asyncio.create_task(session.closed.wait()),
            ]
            _, rest = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in rest:
                task.cancel()
        finally:
            session.closed.set()
            self.sessions.get(grant.grant_id, set()).discard(session)
            self._cancel_keys.pop(client_key, None)
            with contextlib.suppress(Exception):
                upstream_w.close()
            # Statements that reached the database but never reported completion are recorded too.
            while session.running:
                await session.finish(session.running.popleft(), "interrupted", 0)
            await self.recorder.record(
                "gateway.session_ended", grant, {"session": session_id, "reason": session.cut_reason or "closed"}
            )

    async def _connect_upstream(
        self, grant: GatewayGrant, params: dict[str, str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[int, int], bytes]:
        reader, writer = await asyncio.open_connection(grant.host, grant.port)
        startup = {
            "user": grant.role_name,
            "database": grant.database,
            "application_name": f"amber-gateway {params.get('application_name', '')}".strip()[:63],
        }
        for name in ("client_encoding", "datestyle", "timezone", "intervalstyle", "extra_float_digits"):
            if name in params:
                startup[name] = params[name]
        writer.write(codec.startup_message(startup))
        await writer.drain()
        parser = codec.BackendParser()
        scram: ScramClient | None = None
        status = bytearray()
        key: tuple[int, int] = (0, 0)
        while True:
            data = await reader.read(65536)
            if not data:
                raise UpstreamRefused("the database closed the connection during login")
            for msg in parser.feed(data):
                if msg.kind == "R":
                    code = struct.unpack_from("!i", msg.body, 0)[0]
                    if code == 0:
                        continue
                    if code == 10:
                        scram = ScramClient(grant.upstream_password)
                        writer.write(codec.sasl_initial_response("SCRAM-SHA-256", scram.first_message()))
                    elif code == 11 and scram is not None:
                        writer.write(codec.sasl_response(scram.final_message(msg.body[4:])))
                    elif code == 12 and scram is not None:
                        scram.verify_final(msg.body[4:])
                    elif code == 3:
                        writer.write(codec.password_message(grant.upstream_password))
                    else:
                        raise UpstreamRefused(f"unsupported upstream authentication method {code}")
                    await writer.drain()
                elif msg.kind == "E":
                    fields = codec.error_fields(msg.body)
                    raise UpstreamRefused(fields.get("M", "login refused"))
                elif msg.kind == "S":
                    status += msg.raw
                elif msg.kind == "K":
                    pid, secret = struct.unpack_from("!ii", msg.body, 0)
                    key = (pid, secret)
                elif msg.kind == "Z":
                    return reader, writer, key, bytes(status)
                elif msg.kind == "N":
                    status += msg.raw

    async def _forward_cancel(self, msg: codec.CancelRequest) -> None:
        target = self._cancel_keys.get((msg.pid, msg.secret))
        if target is None:
            return
        host, port, pid, secret = target
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(codec.cancel_request(pid, secret))
            await writer.drain()
            writer.close()


class UpstreamRefused(Exception):
    pass


def _transaction_kind(sql: str) -> TransactionStmtKind | None:
    """The kind of a single transaction-control statement, else None."""
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None
    if len(statements) == 1 and isinstance(statements[0].stmt, pglast.ast.TransactionStmt):
        kind = statements[0].stmt.kind
        return kind if isinstance(kind, TransactionStmtKind) else None
    return None


def _is_rollback(sql: str) -> bool:
    return _transaction_kind(sql) in (
        TransactionStmtKind.TRANS_STMT_ROLLBACK,
        TransactionStmtKind.TRANS_STMT_ROLLBACK_TO,
    )


SHAPE_CACHEABLE = frozenset({"SelectStmt", "VariableShowStmt"})
_LITERALS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})


def _shape(sql: str) -> tuple[tuple[str, str], ...] | None:
    """The token sequence of `sql` with literal constants blanked; None if it does not scan."""
    try:
        tokens = pglast.parser.scan(sql)
    except pglast.parser.ParseError:
        return None
    return tuple((t.name, "" if t.name in _LITERALS else sql[t.start : t.end + 1]) for t in tokens)


async def _read_password(parser: codec.FrontendParser, reader: asyncio.StreamReader) -> codec.PasswordMessage | None:
    while True:
        data = await reader.read(65536)
        if not data:
            return None
        for msg in parser.feed(data):
            if isinstance(msg, codec.PasswordMessage):
                return msg
            return None


async def _fatal(writer: asyncio.StreamWriter, code: str, text: str) -> None:
    writer.write(codec.error_response(code, text, severity="FATAL"))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
