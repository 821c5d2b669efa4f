"""One gateway session after login: the relay between the client and the upstream database.

Driven by asyncio Protocol callbacks, not stream tasks: each chunk of bytes is judged and forwarded from the
callback that received it, with no task switch per message (bench/gateway.py measured the stream version at a
fraction of this one's throughput). Everything here is synchronous; the loop calls it.

Invariants (see server.py for the gateway's): nothing reaches the upstream before it was judged; a refused
statement never reaches it (an empty query takes its place so the refusal lands in protocol order); a rewritten one
reaches it as amber's text (Verdict.rewrite), its notice said before its ReadyForQuery; liveness is
checked before every statement; every statement is handed to the recorder before the client sees its result.
Back-pressure: the client is not read while the upstream cannot take more, while the client cannot take the
upstream's answers, or while the recorder's queue is over its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pglast
from pglast.enums import TransactionStmtKind

from amber.gateway.pgwire import codec
from amber.gateway.schema_info import NeedLookups
from amber.gateway.session_settings import SessionRules
from amber.gateway.statements import Verdict

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from amber.gateway.server import GatewayGrant, GatewayServer

STATEMENT_MAX_BYTES = 1024 * 1024  # a ledger entry keeps a statement whole up to 1 MiB of UTF-8


class Recorder(Protocol):
    @property
    def healthy(self) -> bool:
        """False while entries cannot be written: the server then refuses new statements and logins."""
        ...

    @property
    def over_limit(self) -> bool:
        """True while the queue is over its limit: sessions stop reading their clients until there is room."""
        ...

    def record_nowait(self, event: str, grant: GatewayGrant, payload: dict[str, Any]) -> None:
        """Queue one entry now. Never drops an entry (the queue may run over its limit by one read's worth)."""
        ...

    async def record(self, event: str, grant: GatewayGrant, payload: dict[str, Any]) -> None:
        """Queue one entry, first waiting while the queue is over its limit. Never drops an entry."""
        ...

    def record_login_failure(self, user: str, source: str, why: str) -> None:
        """Queue a `gateway.login_failed` entry (by the gateway: nobody was authenticated)."""
        ...

    async def room(self) -> None:
        """Return once the queue is under its limit."""
        ...


@dataclass
class _Pending:
    """What to do when the upstream's next ReadyForQuery arrives."""

    error: bytes | None = None
    swallow_empty: bool = False
    marker: bytes | None = None  # a refusal marker of this batch (forgotten at its ReadyForQuery)
    notice: bytes = b""  # said before the ReadyForQuery (why amber rewrote a statement)


@dataclass
class _Running:
    verdict: Verdict
    started: float
    rows: int = 0


_BIND, _EXECUTE, _SYNC, _DESCRIBE = b"BESD"
_DESCRIBE_KINDS = frozenset(b"SP")
_DATA_ROW = ord("D")
_ERROR = ord("E")
_PARAMETER_STATUS = ord("S")
# Messages the gateway only passes on (it counts DataRows): streamed when large, with no size cap of their own.
_STREAMED = frozenset(b"DdN")  # DataRow, CopyData, NoticeResponse
STREAM_OVER = 256 * 1024  # a message larger than this is passed on as it arrives instead of held whole
_NOTABLE = frozenset(b"CEsIZ")  # CommandComplete, Error, PortalSuspended, EmptyQuery, ReadyForQuery
_RFQ_FAILED = codec.ready_for_query("E")


JUDGE_OFF_LOOP_OVER = 16 * 1024  # statements longer than this are judged in a worker thread (see Session.judge)


class JudgeOffLoop(Exception):
    def __init__(self, sql: str) -> None:
        super().__init__(f"a statement of {len(sql)} characters")
        self.sql = sql


class _Terminated(Exception):
    def __init__(self, raw: bytes) -> None:
        super().__init__("terminate")
        self.raw = raw


class Session:
    def __init__(
        self,
        server: GatewayServer,
        *,
        grant: GatewayGrant,
        parser: codec.FrontendParser,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        session_id: str,
        rules: SessionRules | None = None,
        pinned: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        # Settings the upstream must keep (server.PINNED_SETTINGS and the client encoding): a ParameterStatus
        # reporting another value ends the session, whatever changed it (decision 0010).
        self.pinned = pinned or {}
        self.recorder: Recorder = server.recorder
        self.grant = grant
        self.parser = parser
        self.client = client
        self.upstream = upstream
        self.id = session_id
        self.rules = rules or SessionRules()
        self.pending: deque[_Pending] = deque()
        self.running: deque[_Running] = deque()
        self.prepared: dict[str, Verdict] = {}
        self.portals: dict[str, Verdict] = {}
        self.sql_prepared: set[str] = set()
        self.skip_until_sync = False
        # A refusal in the extended protocol is sent to the upstream as a Describe of a statement that cannot
        # exist (`refuse_in_batch`): its error comes back in protocol order, before any Sync, even to a client
        # that only sent Flush, and puts the upstream in the state PostgreSQL's own error would (skip until Sync,
        # transaction block aborted). Here: that statement's name -> the refusal that replaces the error.
        self.markers: dict[bytes, bytes] = {}
        self._marker_seq = 0
        self._batch_marker: bytes | None = None
        self._batch_notice = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # PostgreSQL aborts a transaction block on any error; a refused statement never reached the upstream, so
        # the gateway plays that part: until ROLLBACK (or COMMIT, which then rolls back) it refuses everything.
        self.in_transaction = False
        self.aborted = False
        self.cut_reason: str | None = None
        self._upstream_buf = bytearray()
        # Client messages waiting for schema lookups (see _hold), and what those lookups found so far.
        self._held: list[tuple[int, bytes]] | None = None
        self._fetched: dict[Any, Any] = {}
        self._judged: dict[str, list[Verdict]] = {}  # verdicts a worker thread reached for long texts
        self._streaming = 0  # bytes still to pass on of a large message being streamed (see from_upstream)
        self._client_paused: set[str] = set()  # why the client is not being read: "upstream", "recorder"
        self._waiting_for_room = False
        self.holding = False  # an upstream FATAL is held until amber knows whether the grant ended

    @property
    def closed(self) -> bool:
        return self.done.done()

    def attach(self, client_leftover: bytes, upstream_leftover: bytes) -> None:
        """Take over both transports (after login); bytes already read but not yet handled go first."""
        self.client.set_protocol(_ClientSide(self))
        self.upstream.set_protocol(_UpstreamSide(self))
        if upstream_leftover:
            self.from_upstream(upstream_leftover)
        if client_leftover or self.parser.has_buffered():
            self.from_client(client_leftover)

    def close(self) -> None:
        if self.done.done():
            return
        self.done.set_result(None)
        with contextlib.suppress(Exception):
            self.upstream.close()
        with contextlib.suppress(Exception):
            self.client.close()

    def cut(self, reason: str) -> None:
        """End the session at once with a FATAL message naming the grant and why."""
        if self.closed:
            return
        self.cut_reason = reason
        self.fatal("57P01", f"amber ended this session: grant {self.grant.grant_id} {reason}")

    def fatal(self, code: str, text: str) -> None:
        with contextlib.suppress(Exception):
            self.client.write(codec.error_response(code, text, severity="FATAL"))
        self.close()

    # -- flow control --------------------------------------------------------------------------------------

    def pause_client(self, why: str) -> None:
        if not self._client_paused:
            with contextlib.suppress(Exception):
                self.client.pause_reading()
        self._client_paused.add(why)

    def resume_client(self, why: str) -> None:
        self._client_paused.discard(why)
        if not self._client_paused and not self.closed:
            with contextlib.suppress(Exception):
                self.client.resume_reading()

    def _wait_for_recorder(self) -> None:
        if self._waiting_for_room:
            return
        self._waiting_for_room = True
        self.pause_client("recorder")

        async def wait() -> None:
            try:
                await self.recorder.room()
            finally:
                self._waiting_for_room = False
                self.resume_client("recorder")

        task = asyncio.get_running_loop().create_task(wait())
        self.server.background(task)

    # -- client -> upstream ------------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        """Judge and forward what the client sent. Bind, Execute and Sync (a prepared statement's every run) take
        a short path that decodes only the names it needs; everything else goes through `handle`.

        A statement whose judgement needs names amber has not looked up yet (NeedLookups) waits, with everything
        the client sent after it, while a worker thread looks them up; the client is not read meanwhile."""
        if self.done.done():
            return
        try:
            frames = self.parser.feed_frames(data)
        except codec.ProtocolError as exc:
            self.fatal("08P01", f"protocol violation: {exc}")
            return
        if self._held is not None:  # still waiting for a lookup: keep order
            self._held += frames
            return
        self._relay_frames(frames)

    def _relay_frames(self, frames: list[tuple[int, bytes]]) -> None:
        out = bytearray()
        try:
            for index, (kind, raw) in enumerate(frames):
                try:
                    out += self._frame(kind, raw)
                except (NeedLookups, JudgeOffLoop) as need:
                    self._hold(frames[index:], need)
                    break
                if self.done.done():
                    return
        except codec.ProtocolError as exc:
            self.fatal("08P01", f"protocol violation: {exc}")
            return
        except _Terminated as end:
            self.upstream.write(bytes(out) + end.raw)
            self.close()
            return
        if out:
            self.upstream.write(bytes(out))
        if self.recorder.over_limit:
            self._wait_for_recorder()

    def _frame(self, kind: int, raw: bytes) -> bytes:
        """What to send upstream for one client message (raises NeedLookups before changing any state)."""
        if kind == _SYNC:
            self.pending.append(_Pending(marker=self._batch_marker, notice=self._batch_notice))
            self._batch_marker, self.skip_until_sync, self._batch_notice = None, False, b""
            return raw
        if self.skip_until_sync:
            return b""
        if kind == _BIND:
            portal, name = codec.bind_names(raw, self.parser.encoding)
            statement = self.prepared.get(name)
            if statement is None:
                return self.refuse_in_batch(
                    Verdict(False, "", "bind", "prepared", f"prepared statement {name!r} was not allowed by amber")
                )
            self.portals[portal] = statement
            return raw
        if kind == _EXECUTE:
            return self.execute(raw)
        if kind == _DESCRIBE and len(raw) > 6 and raw[5] in _DESCRIBE_KINDS and raw[-1] == 0:
            return raw  # libpq describes the portal before every Execute; only names, nothing to judge
        msg = codec.parse_frontend(chr(kind), raw, self.parser.encoding)
        if isinstance(msg, codec.Terminate):
            raise _Terminated(msg.raw)
        return self.handle(msg)

    def _hold(self, frames: list[tuple[int, bytes]], need: NeedLookups | JudgeOffLoop) -> None:
        """Stop at a statement that needs lookups: look them up in a worker thread, then go on from it."""
        self._held = frames
        self.pause_client("lookup")

        async def look_up() -> None:
            try:
                if isinstance(need, JudgeOffLoop):
                    self._judged[need.sql] = await asyncio.to_thread(self.judge_blocking, need.sql)
                else:
                    self._fetched.update(await asyncio.to_thread(need.schema.fetch, need.keys))
            except Exception:
                if isinstance(need, JudgeOffLoop):  # no verdict: judging again would fail again (fail closed)
                    log.exception("gateway: judging a statement for grant %s failed", self.grant.grant_id)
                    self.fatal("XX000", "amber could not judge this statement, so it ended the session (fail closed)")
                    return
                # The keys are cached as unavailable: judged again, the statement is refused.
                log.warning("gateway: looking names up for grant %s failed", self.grant.grant_id)
            held, self._held = self._held or [], None
            if not self.closed:
                self._relay_frames(held)
                if self._held is None:
                    self._fetched.clear()
                    self.resume_client("lookup")

        self.server.background(asyncio.get_running_loop().create_task(look_up()))

    def execute(self, raw: bytes) -> bytes:
        ended = self.server.authenticator.still_live(self.grant.grant_id)
        if ended is not None:
            self.cut(ended)
            return b""
        portal, _ = codec.first_cstring(raw, 5, self.parser.encoding)
        statement = self.portals.get(portal)
        if not self.recorder.healthy:
            return self.refuse_unrecordable(None, statement.sql if statement is not None else "")
        if statement is None:
            return self.refuse_in_batch(
                Verdict(False, "", "execute", "prepared", f"portal {portal!r} was not allowed by amber")
            )
        self.running.append(_Running(statement, time.perf_counter()))
        return raw

    def handle(self, msg: codec.Message) -> bytes:
        if isinstance(msg, codec.Query | codec.Parse | codec.FunctionCall):
            ended = self.server.authenticator.still_live(self.grant.grant_id)
            if ended is not None:
                self.cut(ended)
                return b""
            if not self.recorder.healthy:
                return self.refuse_unrecordable(msg, msg.sql if isinstance(msg, codec.Query | codec.Parse) else "")
        if isinstance(msg, codec.Query):
            return self.while_aborted(msg) if self.aborted else self.query(msg)
        if isinstance(msg, codec.Parse):
            return self.parse(msg)
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
            self.record_refusal(verdict)
            self.pending.append(_Pending(error=self.refusal(verdict), swallow_empty=True))
            return codec.empty_query()
        if isinstance(msg, codec.CopyFromClient):
            return b""  # only COPY ... TO STDOUT is ever forwarded; the upstream is never in COPY IN
        if isinstance(msg, codec.Describe | codec.Flush):
            return msg.raw
        self.fatal("08P01", f"unexpected message type {getattr(msg, 'kind', type(msg).__name__)!r}")
        return b""

    def refuse_unrecordable(self, msg: codec.Message | None, sql: str) -> bytes:
        down = Verdict(
            False,
            sql,
            "any",
            "recording",
            "the ledger is unavailable, so amber refuses statements it cannot record (fail closed); try again shortly",
        )
        self.record_refusal(down)
        if isinstance(msg, codec.Query | codec.FunctionCall):
            self.pending.append(_Pending(error=self.refusal(down), swallow_empty=True))
            return codec.empty_query()
        return self.refuse_in_batch(down)

    def query(self, msg: codec.Query) -> bytes:
        verdicts = self.judge(msg.sql)
        refused = next((v for v in verdicts if not v.allowed), None)
        if refused is not None:
            for verdict in verdicts:  # the whole string is refused, so every part is recorded as refused
                self.record_refusal(verdict)
            self.aborted = self.in_transaction
            self.pending.append(_Pending(error=self.refusal(refused), swallow_empty=True))
            return codec.empty_query()
        now = time.perf_counter()
        for verdict in verdicts:
            if verdict.kind != "empty":
                self.running.append(_Running(verdict, now))
            if verdict.prepares:
                self.sql_prepared.add(verdict.prepares)
        if len(verdicts) == 1 and verdicts[0].rewrite is not None:  # judge() allows a rewrite only alone
            self.pending.append(_Pending(notice=codec.notice_response(verdicts[0].notice)))
            return codec.message("Q", codec.cstr(verdicts[0].rewrite))
        self.pending.append(_Pending())
        return msg.raw

    def parse(self, msg: codec.Parse) -> bytes:
        if self.aborted:
            if _is_rollback(msg.sql):
                self.aborted = False
                self.prepared[msg.name] = Verdict(True, msg.sql, "TransactionStmt")
                return msg.raw
            return self.refuse_in_batch(
                Verdict(
                    False, msg.sql, "any", "aborted", "the transaction was aborted; only ROLLBACK is accepted", "25P02"
                )
            )
        verdicts = self.judge(msg.sql)
        refused = next((v for v in verdicts if not v.allowed), None)
        if refused is None and len(verdicts) > 1:
            refused = Verdict(
                False, msg.sql, "multi", "multi-statement", "a prepared statement must be a single statement"
            )
        if refused is not None:
            self.record_refusal(refused)
            self.prepared.pop(msg.name, None)
            return self.refuse_in_batch(refused)
        self.prepared[msg.name] = verdicts[0]
        if verdicts[0].rewrite is not None:
            self._batch_notice += codec.notice_response(verdicts[0].notice)
            return codec.message(
                "P",
                codec.cstr(msg.name)
                + codec.cstr(verdicts[0].rewrite)
                + struct.pack(f"!h{len(msg.param_types)}I", len(msg.param_types), *msg.param_types),
            )
        return msg.raw

    def while_aborted(self, msg: codec.Query) -> bytes:
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
        """The verdicts on `sql`. A long text is judged in a worker thread (parsing half a megabyte of SQL takes
        PostgreSQL's parser a good part of a second): JudgeOffLoop holds the session until it is done."""
        judged = self._judged.pop(sql, None)
        if judged is not None:
            return judged
        if len(sql) > JUDGE_OFF_LOOP_OVER:
            raise JudgeOffLoop(sql)
        return self.server.judge(
            self.grant.resource, sql, frozenset(self.sql_prepared), self.grant.masked, self.rules, fetched=self._fetched
        )

    def judge_blocking(self, sql: str) -> list[Verdict]:
        """Judge `sql`, looking up what it needs on the way (blocking: run in a worker thread)."""
        fetched: dict[Any, Any] = {}
        while True:
            try:
                return self.server.judge(
                    self.grant.resource,
                    sql,
                    frozenset(self.sql_prepared),
                    self.grant.masked,
                    self.rules,
                    fetched=fetched,
                )
            except NeedLookups as need:
                try:
                    fetched.update(need.schema.fetch(need.keys))
                except Exception:  # noqa: BLE001 - cached as unavailable: the next round refuses (fail closed)
                    log.warning("gateway: looking up %d names for grant %s failed", len(need.keys), self.grant.grant_id)

    def refusal(self, verdict: Verdict) -> bytes:
        return codec.error_response(
            verdict.sqlstate,
            f"amber refused this statement ({verdict.rule}): {verdict.message}",
            hint="amber grants read-only access; see `amber grants`",
        )

    def refuse_in_batch(self, verdict: Verdict) -> bytes:
        """Refuse one message of an extended-protocol batch: the rest of the batch is skipped until Sync, as
        PostgreSQL does after an error; the refusal reaches the client where the upstream's error would."""
        self.aborted = self.aborted or self.in_transaction
        self._marker_seq += 1
        name = f"amber_refused_{self.id}_{self._marker_seq}".encode()
        self.markers[name] = self.refusal(verdict)
        self._batch_marker = name
        self.skip_until_sync = True
        return codec.message("D", b"S" + name + b"\0")

    def record_refusal(self, verdict: Verdict) -> None:
        """Refused statements are recorded at once; allowed ones when they finish (with rows and duration)."""
        self.recorder.record_nowait("gateway.statement", self.grant, self.payload(verdict, "refused"))

    def payload(
        self, verdict: Verdict, outcome: str, *, rows: int | None = None, duration_ms: float | None = None
    ) -> dict[str, Any]:
        return {
            "session": self.id,
            **statement_fields(verdict.sql),
            "fingerprint": verdict.fingerprint,
            "tables": list(verdict.tables),
            "outcome": outcome,
            "rule": verdict.rule,
            "message": verdict.message or None,
            "rows": rows,
            "duration_ms": round(duration_ms, 3) if duration_ms is not None else None,
        }

    def finish(self, running: _Running, outcome: str, rows: int) -> None:
        duration = (time.perf_counter() - running.started) * 1000
        self.recorder.record_nowait(
            "gateway.statement", self.grant, self.payload(running.verdict, outcome, rows=rows, duration_ms=duration)
        )

    # -- upstream -> client ------------------------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        """Forward what the upstream sent, counting rows and completing statements on the way.

        The bytes go through as they came (slices of one buffer) except where the gateway must change the stream:
        an EmptyQueryResponse standing in for a refused statement is dropped, a refusal is put before its
        ReadyForQuery, and the transaction status reads failed while the gateway holds the block aborted.
        """
        if self.closed:
            return
        if self._streaming:  # the rest of a large message the gateway passes through without holding it
            data = self._stream_on(data)
            if not data:
                return
        buf = self._upstream_buf
        buf += data
        size = len(buf)
        pos = 0
        copied = 0
        out: list[bytes] = []
        running = self.running
        while size - pos >= 5:
            length = int.from_bytes(buf[pos + 1 : pos + 5])
            end = pos + 1 + length
            kind = buf[pos]
            if length < 4 or (length > codec.MAX_MESSAGE and kind not in _STREAMED):
                self.fatal("08P01", "the database sent an invalid message")
                return
            if end > size:
                if kind in _STREAMED and length > STREAM_OVER:
                    # A large row (or COPY chunk, or notice) goes out as it arrives: the gateway only counts it,
                    # so it never holds a value of hundreds of megabytes, and no cap ends the session.
                    if kind == _DATA_ROW and running:
                        running[0].rows += 1
                    out.append(bytes(buf[copied:size]))
                    self._streaming = end - size
                    del buf[:]
                    self.client.write(b"".join(out))
                    return
                break
            if kind == _DATA_ROW:
                if running:
                    running[0].rows += 1
            elif kind == _ERROR and self.hold_fatal(bytes(buf[pos:end])):
                # The database ended this backend (an administrator, or amber revoking the grant elsewhere):
                # what came before goes out; the session ends once amber knows why (`hold_fatal`).
                out.append(bytes(buf[copied:pos]))
                del buf[:]
                self.client.write(b"".join(out))
                return
            elif kind == _PARAMETER_STATUS and not self.status_kept(bytes(buf[pos + 5 : end])):
                del buf[:]
                return
            elif kind in _NOTABLE:
                replacement = self.on_backend(kind, bytes(buf[pos:end]))
                if replacement is not None:
                    out.append(bytes(buf[copied:pos]))
                    out.append(replacement)
                    copied = end
            pos = end
        if copied < pos:
            out.append(bytes(buf[copied:pos]))
        del buf[:pos]
        if out:
            self.client.write(b"".join(out))

    def _stream_on(self, data: bytes) -> bytes:
        """Pass on what belongs to the large message being streamed; return what comes after it."""
        take = min(self._streaming, len(data))
        self._streaming -= take
        self.client.write(data[:take])
        return data[take:]

    def status_kept(self, body: bytes) -> bool:
        """False (and the session ended, fail closed) if the upstream reports a pinned setting changed."""
        name, value = codec.parameter_status_fields(body)
        want = self.pinned.get(name.lower())
        if want is None or value == want:
            return True
        self.cut_reason = f"the database changed {name} to {value!r}"
        self.fatal(
            "08P01",
            f"amber ended this session: the database reports {name}={value!r}, but amber's parser reads statements "
            f"as the database does only with {name}={want!r} (decision 0010)",
        )
        return False

    def hold_fatal(self, raw: bytes) -> bool:
        """For a FATAL admin_shutdown from the upstream: ask whether amber ended the grant (perhaps in another
        amber process, which dropped the role and so terminated this backend), and if so end the session with
        amber's own message naming the grant and why; otherwise pass the database's message on. False (pass it on
        now) for any other error."""
        explain = self.server.explain_end
        if explain is None or self.holding:
            return False
        fields = codec.error_fields(raw[5:])
        if fields.get("V", fields.get("S")) != "FATAL" or fields.get("C") != "57P01":
            return False
        self.holding = True

        async def settle() -> None:
            try:
                reason = await asyncio.wait_for(explain(self.grant.grant_id), timeout=2.0)
            except Exception:  # noqa: BLE001 - no answer: the database's own message is still true
                reason = None
            if reason is not None:
                self.cut(reason)
            else:
                with contextlib.suppress(Exception):
                    self.client.write(raw)
                self.close()

        self.server.background(asyncio.get_running_loop().create_task(settle()))
        return True

    def _refusal_for(self, raw: bytes) -> bytes | None:
        """The refusal an upstream error stands for, if it is the answer to one of this session's markers."""
        fields = codec.error_fields(raw[5:])
        if fields.get("C") != "26000":
            return None
        message = fields.get("M", "").encode()
        for name in self.markers:
            if b'"' + name + b'"' in message:
                return self.markers.pop(name)
        return None

    def on_backend(self, kind: int, raw: bytes) -> bytes | None:
        """Handle one notable upstream message; return what to send instead of it, or None to pass it on."""
        pending = self.pending
        if kind == _ERROR and self.markers:
            refusal = self._refusal_for(raw)
            if refusal is not None:
                return refusal
        swallow = kind == 0x49 and bool(pending) and pending[0].swallow_empty  # EmptyQueryResponse
        if self.running and kind != 0x5A and not swallow:  # C, E, s, I complete the oldest running statement
            done = self.running.popleft()
            if kind == 0x45:  # ErrorResponse: the rest of this query or batch is skipped by the server
                self.finish(done, "error", done.rows)
                while self.running:
                    self.finish(self.running.popleft(), "skipped", 0)
            else:
                rows = codec.command_tag_rows(raw[5:]) if kind == 0x43 else None
                self.finish(done, "allowed", rows if rows is not None else done.rows)
        if swallow:
            return b""
        if kind == 0x5A:  # ReadyForQuery
            entry = pending.popleft() if pending else None
            if entry is not None and entry.marker is not None:
                self.markers.pop(entry.marker, None)  # an earlier error in the batch made the upstream skip it
            status = raw[5:6]
            self.in_transaction = status in (b"T", b"E")
            if not self.in_transaction:
                self.aborted = False
            error = entry.error if entry is not None else None
            notice = entry.notice if entry is not None else b""
            if self.aborted and status == b"T":
                return notice + (error or b"") + _RFQ_FAILED
            if error is not None or notice:
                return notice + (error or b"") + raw
        return None


class _ClientSide(asyncio.Protocol):
    def __init__(self, session: Session) -> None:
        self.session = session

    def data_received(self, data: bytes) -> None:
        self.session.from_client(data)

    def eof_received(self) -> bool:
        self.session.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()

    def pause_writing(self) -> None:  # the client is slow to take results: stop reading the upstream
        with contextlib.suppress(Exception):
            self.session.upstream.pause_reading()

    def resume_writing(self) -> None:
        if not self.session.closed:
            with contextlib.suppress(Exception):
                self.session.upstream.resume_reading()


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, session: Session) -> None:
        self.session = session

    def data_received(self, data: bytes) -> None:
        self.session.from_upstream(data)

    def eof_received(self) -> bool:
        if not self.session.holding:
            self.session.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.session.holding:
            self.session.close()

    def pause_writing(self) -> None:  # the upstream is slow to take statements: stop reading the client
        self.session.pause_client("upstream")

    def resume_writing(self) -> None:
        self.session.resume_client("upstream")


def statement_fields(sql: str) -> dict[str, Any]:
    """A statement as the ledger keeps it: whole up to STATEMENT_MAX_BYTES of UTF-8; beyond, the first
    STATEMENT_MAX_BYTES (cut on a character boundary) and, so the record says so, `statement_truncated`, the
    full text's SHA-256 and its length in bytes."""
    if len(sql) * 4 <= STATEMENT_MAX_BYTES:  # no character takes more than 4 bytes: no need to encode it
        return {"statement": sql}
    data = sql.encode("utf-8", "surrogatepass")  # any str; lone surrogates count as 3 bytes
    if len(data) <= STATEMENT_MAX_BYTES:
        return {"statement": sql}
    return {
        "statement": data[:STATEMENT_MAX_BYTES].decode("utf-8", "ignore"),
        "statement_truncated": True,
        "statement_sha256": hashlib.sha256(data).hexdigest(),
        "statement_bytes": len(data),
    }


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
