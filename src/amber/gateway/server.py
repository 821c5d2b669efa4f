"""The gateway's asyncio server: TLS, authentication with the amber grant token, the upstream connection as the
grant's own role; then relay.py relays the session, every statement judged (statements.py) and recorded.

Invariants:
- Nothing reaches the upstream before it was judged; a refused statement never reaches it at all (the
  gateway sends an empty query, or in an extended batch a Describe of a statement that cannot exist, in its
  place, so that its own ErrorResponse lands in protocol order). A statement the judge rewrites (a timeout above
  the level's limit held at it, `BEGIN ... READ WRITE` kept read only; session_settings.py) reaches it as the
  text amber wrote, never the client's, with a NOTICE to the client saying so.
- A session lives only as long as its grant: liveness is checked before every statement, and `cut()` ends every
  session of a grant at once with a FATAL message naming the grant and why.
- Every statement, allowed or refused, is handed to the recorder before the client sees its result, and one that
  reached the database but never completed is recorded as interrupted when the session ends; the recorder never
  drops an entry, and while it cannot write, new statements and logins are refused (fail closed).
- A client never sees the upstream password or the upstream's cancel key.
- Logins happen only inside TLS. Clients prove their token with SCRAM-SHA-256 (-PLUS with channel binding when
  the certificate allows), so it never crosses the wire; a cleartext password is asked for only for a token
  issued before amber stored SCRAM verifiers. Every failed or malformed login counts against its source address.
What this does NOT do yet: COPY FROM STDIN (refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

import pglast

from amber.core.clock import Clock
from amber.gateway.pgwire import codec, encodings
from amber.gateway.relay import Recorder, Session
from amber.gateway.schema_info import Lookup, NeedLookups, UpstreamSchema
from amber.gateway.scram import ScramClient, ScramError, ScramProtocolError, ScramServer
from amber.gateway.session_settings import SessionRules, split_identifiers
from amber.gateway.statements import MaskedItems, SchemaInfo, Verdict, judge
from amber.gateway.tls import UpstreamTls

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
        "search_path",  # pgjdbc's currentSchema=; only the level's schemas (`_startup_search_path`)
    }
)
REFUSED_STARTUP = frozenset({"options", "replication"})
# Settings that change how the server's lexer reads text: the gateway sends them in the upstream startup packet
# (so they are the session's reset values too: RESET ALL and DISCARD ALL restore them), the judge refuses every
# statement that would change them, and a ParameterStatus reporting another value ends the session (decision
# 0010). pglast reads SQL as a server with exactly these values does. client_encoding is pinned per session.
PINNED_SETTINGS = {
    "standard_conforming_strings": "on",
    "backslash_quote": "safe_encoding",
    "escape_string_warning": "on",
}


CACHE_TEXT_MAX = 64 * 1024  # characters: longer statements are judged every time, never cached


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
    # The HMAC of the gateway token this session logged in with: a session whose grant's token was re-issued
    # since is ended (GrantWatcher).
    token_hash: str = field(default="", repr=False)
    masked: MaskedItems = ()  # ((schema, table), columns) the level masks, names as PostgreSQL resolves them
    schemas: tuple[str, ...] = ()  # the level's schemas: what search_path and LOCK may name
    statement_timeout_ms: int = 30_000  # the level's limit, also the role's default (lock_timeout: the same)
    idle_in_transaction_timeout_ms: int = 60_000  # the role's default, set by the provisioner


@dataclass(frozen=True)
class CleartextToken:
    """A gateway token the client sent as a cleartext password (inside TLS)."""

    token: str = field(repr=False)


LoginProof = CleartextToken | ScramServer  # a ScramServer holding the client's final message and proof


class Authenticator(Protocol):
    def scram_verifier(self, user: str) -> str | None:
        """The SCRAM verifier to challenge `user` with, or None if that user must log in with a cleartext token."""
        ...

    def authenticate(self, user: str, proof: LoginProof) -> GatewayGrant:
        """The live grant `user` names if `proof` holds; otherwise AuthFailed with a message for the user."""
        ...

    def still_live(self, grant_id: str) -> str | None:
        """None if the grant is live; otherwise why it ended."""
        ...


@dataclass(frozen=True)
class _Connected:
    """A client that logged in and its upstream connection, ready to relay."""

    grant: GatewayGrant
    source: str
    params: dict[str, str]
    parser: codec.FrontendParser
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    upstream_r: asyncio.StreamReader
    upstream_w: asyncio.StreamWriter
    upstream_key: tuple[int, int]
    encoding: str  # the session's client encoding, PostgreSQL's canonical name (pinned)
    preamble: bytes = field(repr=False)  # what precedes BackendKeyData: SASL final, AuthenticationOk, statuses


class FailedLogins:
    """A limit on failed logins per key (a source address, or the grant id a login names): `limit` failures per
    `window_s` seconds, then refuse that key for the window.

    Per source alone lets many addresses guess at one grant; per grant alone lets one address try every grant.
    amber keeps both. At most `max_keys` keys are remembered: keys whose failures all left the window go first,
    then the oldest, so names made up by a client cannot grow it without bound.
    """

    def __init__(
        self,
        limit: int = 5,
        window_s: float = 60.0,
        max_keys: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._now = now
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, key: str) -> bool:
        now = self._now()
        entries = self._failures.get(key)
        if not entries:
            return False
        while entries and now - entries[0] > self.window_s:
            entries.popleft()
        return len(entries) >= self.limit

    def failed(self, key: str) -> None:
        now = self._now()
        if key not in self._failures and len(self._failures) >= self.max_keys:
            for old in [k for k, when in self._failures.items() if not when or now - when[-1] > self.window_s]:
                del self._failures[old]
            while len(self._failures) >= self.max_keys:
                del self._failures[next(iter(self._failures))]
        entries = self._failures.setdefault(key, deque())
        entries.append(now)
        while len(entries) > self.limit:
            entries.popleft()


class PendingLogins:
    """Caps connections that have not logged in yet: in all, and per source address.

    An unauthenticated connection costs a socket, a task and up to MAX_STARTUP / MAX_LOGIN_MESSAGE bytes for at
    most `login_timeout_s`: with these caps, what nobody authenticated can make the gateway hold is bounded.
    """

    def __init__(self, limit: int = 256, per_source: int = 32) -> None:
        self.limit = limit
        self.per_source = per_source
        self.total = 0
        self._by_source: dict[str, int] = {}

    def admit(self, source: str) -> Callable[[], None] | None:
        """A release function for an admitted connection (call it once logged in or gone; calling again is a
        no-op), or None if a cap is reached."""
        if self.total >= self.limit or self._by_source.get(source, 0) >= self.per_source:
            return None
        self.total += 1
        self._by_source[source] = self._by_source.get(source, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.total -= 1
            left = self._by_source[source] - 1
            if left:
                self._by_source[source] = left
            else:
                del self._by_source[source]

        return release


class GatewayServer:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        recorder: Recorder,
        schema_for: Callable[[str], UpstreamSchema | SchemaInfo],
        clock: Clock,
        tls: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
        verdict_cache_size: int = 10000,
        channel_binding: bytes | None = None,
        login_timeout_s: float = 60.0,
        upstream_tls: Callable[[str], UpstreamTls] | None = None,
        max_pending_logins: int = 256,
        max_pending_logins_per_source: int = 32,
    ) -> None:
        self.authenticator = authenticator
        # From connect to a logged-in session (PostgreSQL's authentication_timeout): a client that stalls in the
        # handshake holds a socket and a task, so it is cut.
        self.login_timeout_s = login_timeout_s
        self.pending_logins = PendingLogins(max_pending_logins, max_pending_logins_per_source)
        # The TLS each resource's catalog connection asks for (sslmode): used for the upstream connection too.
        self.upstream_tls = upstream_tls or (lambda _resource: UpstreamTls())
        self.channel_binding = channel_binding  # tls-server-end-point data of `tls`'s certificate, for -PLUS
        self.recorder = recorder
        self.schema_for = schema_for
        self.clock = clock
        self.tls = tls
        self.host = host
        self.port = port
        self.failed_logins = FailedLogins()  # per source address
        # Per grant id: many addresses together get a few more tries at one grant than one address does.
        self.failed_logins_per_grant = FailedLogins(limit=10)
        self.sessions: dict[str, set[Session]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancel_keys: dict[tuple[int, int], tuple[str, int, int, int]] = {}
        self._verdicts: dict[tuple[Any, ...], list[Verdict]] = {}
        self._shapes: dict[tuple[Any, ...], Verdict] = {}
        self._verdict_cache_size = verdict_cache_size
        self._tasks: set[asyncio.Task[None]] = set()
        # Why a grant ended, if it did (asked when the database terminates a session; see Session.hold_fatal).
        self.explain_end: Callable[[str], Awaitable[str | None]] | None = None

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
        session.cut(reason)

    def cut_old_tokens(self, grant_id: str, token_hash: str) -> int:
        """End the grant's sessions that logged in with another token than `token_hash` (the one in force).
        Call on the loop. Returns how many were ended."""
        stale = [s for s in self.sessions.get(grant_id, ()) if not hmac.compare_digest(s.grant.token_hash, token_hash)]
        for session in stale:
            session.cut("had its gateway token re-issued; sessions opened with the old token end (reconnect)")
        return len(stale)

    def background(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a task a session started (asyncio holds tasks only weakly)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def judge(
        self,
        resource: str,
        sql: str,
        prepared: frozenset[str],
        masked: MaskedItems = (),
        rules: SessionRules | None = None,
        *,
        fetched: dict[Any, Any] | None = None,
    ) -> list[Verdict]:
        """Judge `sql`, from a cache when the answer cannot differ. Raises NeedLookups (before any cache or state
        changes) when the judge needs names not looked up yet: `fetched` holds what earlier rounds found.

        NOTE: two caches. By exact text: a verdict depends on the text, the prepared names, the masked columns,
        the session's rules (level schemas, limits, encoding) and the upstream schema, never on anything else.
        By shape (the text with its literal constants blanked by PostgreSQL's own scanner): only for a single
        SELECT or SHOW, whose verdict never depends on a literal's value
        (EXPLAIN, BEGIN or SET can: `EXPLAIN (ANALYZE 0)` differs from `(ANALYZE 1)`, so they are never cached
        by shape). A verdict goes in one cache: by shape where it may, else by text. Each is cleared when full.
        """
        rules = rules or SessionRules()
        schema = self.schema_for(resource)
        # The upstream's catalogs changed since a verdict was cached: it is not reused (schema_info.py).
        version = schema.version if isinstance(schema, UpstreamSchema) else 0
        key = (resource, version, sql, prepared, masked, rules)
        cached = self._verdicts.get(key)
        if cached is not None:
            return cached
        shape = _shape(sql)
        shape_key = (resource, version, shape, prepared, masked, rules)
        if shape is not None:
            by_shape = self._shapes.get(shape_key)
            if by_shape is not None:
                return [by_shape.with_sql(sql.strip())]
        if isinstance(schema, UpstreamSchema):
            lookup = Lookup(schema, fetched)
            verdicts = judge(sql, lookup, prepared=prepared, masked=dict(masked), rules=rules)
            if lookup.missing:
                raise NeedLookups(schema, frozenset(lookup.missing))
            if lookup.unavailable:
                return verdicts  # refused because a lookup failed: never cached
        else:
            verdicts = judge(sql, schema, prepared=prepared, masked=dict(masked), rules=rules)
        if len(sql) > CACHE_TEXT_MAX:
            return verdicts  # rarely repeated, and a full cache of them would hold gigabytes (statements up to 64 MiB)
        if (
            shape is not None
            and len(verdicts) == 1
            and verdicts[0].kind in SHAPE_CACHEABLE
            and not verdicts[0].literal_dependent
        ):
            # Only by shape: texts that differ only in literals (pgbench's, an ORM's) would flood the other.
            if len(self._shapes) >= self._verdict_cache_size:
                self._shapes.clear()
            self._shapes[shape_key] = verdicts[0]
        else:
            if len(self._verdicts) >= self._verdict_cache_size:
                self._verdicts.clear()
            self._verdicts[key] = verdicts
        return verdicts

    # -- one client connection -----------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "unknown"
        release = self.pending_logins.admit(source)
        if release is None:
            log.warning("gateway: refused a connection from %s: too many connections waiting to log in", source)
            with contextlib.suppress(Exception):
                await _fatal(writer, "53300", "amber: too many connections are waiting to log in; try again shortly")
                writer.close()
            return
        logged_in = False

        def on_login() -> None:
            nonlocal logged_in
            logged_in = True
            release()

        try:
            await self._serve(reader, writer, source, on_login)
        except TimeoutError:
            log.info("gateway: login from %s timed out", source)
            with contextlib.suppress(Exception):
                await _fatal(writer, "08P01", "amber: login timed out")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception:
            log.exception("gateway: unexpected error on a connection from %s", source)
        finally:
            release()
            with contextlib.suppress(Exception):
                if logged_in:
                    writer.close()
                else:
                    # Abort, not close: a graceful TLS close keeps reading (and decrypting) whatever a refused
                    # client still sends. Every message for the client was drained before this.
                    writer.transport.abort()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: str,
        logged_in: Callable[[], None],
    ) -> None:
        parser = codec.FrontendParser()
        tls_on = False
        startup: codec.Startup | None = None
        deadline = asyncio.get_running_loop().time() + self.login_timeout_s
        while startup is None:
            async with asyncio.timeout_at(deadline):
                data = await reader.read(65536)
            if not data:
                return
            try:
                messages = parser.feed(data)
            except codec.ProtocolError as exc:
                writer.write(codec.error_response("08P01", f"protocol violation: {exc}", severity="FATAL"))
                await writer.drain()
                return
            for index, msg in enumerate(messages):
                if isinstance(msg, codec.SSLRequest):
                    if self.tls is None or tls_on:
                        writer.write(b"N")
                        await writer.drain()
                        continue
                    if index != len(messages) - 1 or parser.has_buffered() or bool(getattr(reader, "_buffer", b"")):
                        # Bytes sent before the TLS handshake would be read as if they came through TLS (the
                        # CVE-2021-23214 class): refuse, as PostgreSQL does.
                        writer.write(
                            codec.error_response(
                                "08P01", "protocol violation: unencrypted data after the SSL request", severity="FATAL"
                            )
                        )
                        await writer.drain()
                        return
                    writer.write(b"S")
                    await writer.drain()
                    async with asyncio.timeout_at(deadline):
                        await writer.start_tls(self.tls)
                    tls_on = True
                elif isinstance(msg, codec.GSSENCRequest):
                    writer.write(b"N")
                    await writer.drain()
                elif isinstance(msg, codec.CancelRequest):
                    await self._forward_cancel(msg)
                    writer.close()  # gracefully: libpq reads the TLS close as the cancel's answer
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2):
                            await writer.wait_closed()
                    return
                elif isinstance(msg, codec.Startup):
                    startup = msg
        async with asyncio.timeout_at(deadline) as login_time:
            connected = await self._session(startup, parser, reader, writer, source, tls_on)
            login_time.reschedule(None)  # logged in: the session lives as long as its grant
        if connected is not None:
            logged_in()
            connected.parser.max_message = codec.MAX_CLIENT_MESSAGE
            await self._relay(connected)

    async def _session(  # noqa: PLR0917 - one connection's state, passed once from _serve
        self,
        startup: codec.Startup,
        parser: codec.FrontendParser,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: str,
        tls_on: bool,
    ) -> _Connected | None:
        """Check the startup packet, log the client in and connect upstream; None (after telling the client why)
        if any of that fails."""
        params = {k.lower(): v for k, v in startup.params.items()}
        bad = sorted((set(params) - ALLOWED_STARTUP) | (set(params) & REFUSED_STARTUP))
        if bad:
            await _fatal(
                writer,
                "08004",
                f"amber refuses the startup parameter(s) {', '.join(bad)}; "
                f"allowed: {', '.join(sorted(ALLOWED_STARTUP))}",
            )
            return None
        encoding = encodings.canonical(params.get("client_encoding", "UTF8"))
        if encoding is None:
            await _fatal(
                writer,
                "08004",
                f"amber refuses client_encoding {params['client_encoding'][:64]!r}: amber's parser must read the "
                "same characters as the database, which it cannot promise in this encoding; use UTF8",
            )
            return None
        if params.get("standard_conforming_strings", "on").lower() != "on":
            await _fatal(
                writer,
                "08004",
                "amber keeps standard_conforming_strings on (its parser reads strings as the database does only "
                "then); remove it from the connection parameters",
            )
            return None
        if not tls_on:
            await _fatal(writer, "28000", "amber's gateway needs TLS for logins (use sslmode=require)")
            return None
        if self.failed_logins.blocked(source):
            await _fatal(writer, "28000", "too many failed logins from your address; wait a minute")
            return None
        user = params.get("user", "")
        grant_key = user[:64]
        if self.failed_logins_per_grant.blocked(grant_key):
            await _fatal(writer, "28000", f"too many failed logins for {grant_key!r}; wait a minute")
            return None
        try:
            login = await self._login(user, parser, reader, writer)
        except AuthFailed as exc:
            self._login_failed(source, grant_key)
            log.warning("gateway: failed login for user %r from %s: %s", user[:64], source, exc)
            self.recorder.record_login_failure(user, source, str(exc))
            await _fatal(writer, "28P01", f"amber: login failed for {user[:64]!r}: {exc}")
            return None
        except (codec.ProtocolError, ScramProtocolError) as exc:
            self._login_failed(source, grant_key)
            log.warning("gateway: malformed login for user %r from %s: %s", user[:64], source, exc)
            self.recorder.record_login_failure(user, source, f"protocol violation: {exc}")
            await _fatal(writer, "08P01", f"protocol violation during login: {exc}")
            return None
        if login is None:
            return None  # the client left during the exchange
        grant, sasl_final = login
        bad_path = _startup_search_path_problem(params.get("search_path"), grant.schemas)
        if bad_path is not None:
            await _fatal(writer, "08004", bad_path)
            return None
        if not self.recorder.healthy:
            await _fatal(
                writer, "08006", "amber cannot record sessions right now (the ledger is unavailable); try again shortly"
            )
            return None
        try:
            upstream_r, upstream_w, key, status = await self._connect_upstream(grant, params, encoding)
        except (OSError, ScramError, codec.ProtocolError, UpstreamRefused) as exc:
            await _fatal(writer, "08006", f"amber could not reach the database for grant {grant.grant_id}: {exc}")
            return None
        return _Connected(
            grant,
            source,
            params,
            parser,
            reader,
            writer,
            upstream_r,
            upstream_w,
            key,
            encoding,
            sasl_final + codec.auth_ok() + status,
        )

    def _login_failed(self, source: str, grant_key: str) -> None:
        self.failed_logins.failed(source)
        self.failed_logins_per_grant.failed(grant_key)

    async def _relay(self, c: _Connected) -> None:
        """Run one logged-in session until it ends, then record how it ended."""
        grant = c.grant
        session_id = secrets.token_hex(8)
        client_key = (secrets.randbits(31), secrets.randbits(31))
        self._cancel_keys[client_key] = (grant.host, grant.port, c.upstream_key[0], c.upstream_key[1])
        # uvloop's transports do not subclass asyncio.Transport but have its methods (set_protocol, pause_reading).
        client_transport = cast("asyncio.Transport", c.writer.transport)
        upstream_transport = cast("asyncio.Transport", c.upstream_w.transport)
        c.parser.encoding = encodings.python_codec(c.encoding)
        session = Session(
            self,
            grant=grant,
            parser=c.parser,
            client=client_transport,
            upstream=upstream_transport,
            session_id=session_id,
            rules=SessionRules(
                schemas=grant.schemas,
                statement_timeout_ms=grant.statement_timeout_ms,
                idle_in_transaction_timeout_ms=grant.idle_in_transaction_timeout_ms,
                client_encoding=c.encoding,
            ),
            pinned={**PINNED_SETTINGS, "client_encoding": c.encoding},
        )
        self.sessions.setdefault(grant.grant_id, set()).add(session)
        try:
            await self.recorder.record(
                "gateway.session_started",
                grant,
                {"session": session_id, "source": c.source, "application": c.params.get("application_name")},
            )
            c.writer.write(c.preamble + codec.backend_key_data(*client_key) + codec.ready_for_query("I"))
            await c.writer.drain()
            # From here on the session's protocol callbacks relay; bytes the streams already hold go first.
            session.attach(_take_buffered(c.reader), _take_buffered(c.upstream_r))
            await session.done
        finally:
            session.close()
            self.sessions.get(grant.grant_id, set()).discard(session)
            self._cancel_keys.pop(client_key, None)
            # Statements that reached the database but never reported completion are recorded too.
            while session.running:
                session.finish(session.running.popleft(), "interrupted", 0)
            await self.recorder.record(
                "gateway.session_ended", grant, {"session": session_id, "reason": session.cut_reason or "closed"}
            )

    async def _login(
        self, user: str, parser: codec.FrontendParser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[GatewayGrant, bytes] | None:
        """Check the client's token for `user`: SCRAM-SHA-256 (-PLUS when the certificate allows), or a cleartext
        password for a token issued before amber stored verifiers. Returns the grant and what to send before
        AuthenticationOk (the SCRAM server signature), or None if the client left; raises AuthFailed, or
        ProtocolError / ScramProtocolError for a malformed exchange.
        NOTE: the caller has checked TLS is on; channel_binding is this server's certificate hash.
        """
        verifier = await asyncio.to_thread(self.authenticator.scram_verifier, user)
        if verifier is None:
            writer.write(codec.auth_cleartext())
            await writer.drain()
            message = await _read_password(parser, reader)
            if message is None:
                return None
            try:
                token = message.data.rstrip(b"\0").decode()
            except UnicodeDecodeError:
                raise AuthFailed("wrong grant or token") from None
            return await asyncio.to_thread(self.authenticator.authenticate, user, CleartextToken(token)), b""
        scram = ScramServer(verifier, channel_binding=self.channel_binding)
        writer.write(codec.auth_sasl(scram.mechanisms))
        await writer.drain()
        message = await _read_password(parser, reader)
        if message is None:
            return None
        mechanism, client_first = codec.parse_sasl_initial(message.data)
        writer.write(codec.auth_sasl_continue(scram.server_first(mechanism, client_first)))
        await writer.drain()
        message = await _read_password(parser, reader)
        if message is None:
            return None
        scram.client_final(message.data)
        grant = await asyncio.to_thread(self.authenticator.authenticate, user, scram)
        return grant, codec.auth_sasl_final(scram.server_final())

    async def _connect_upstream(
        self, grant: GatewayGrant, params: dict[str, str], encoding: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[int, int], bytes]:
        """Log in upstream as the grant's role with the pinned settings; fail unless the server reports them."""
        reader, writer, encrypted = await self._open_upstream(grant)
        try:
            return await self._log_in_upstream(grant, params, encoding, reader, writer, encrypted)
        except BaseException:
            writer.transport.abort()
            raise

    async def _log_in_upstream(  # noqa: PLR0917 - one login's state, passed once from _connect_upstream
        self,
        grant: GatewayGrant,
        params: dict[str, str],
        encoding: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        encrypted: bool,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[int, int], bytes]:
        startup = {
            "user": grant.role_name,
            "database": grant.database,
            "application_name": f"amber-gateway {params.get('application_name', '')}".strip()[:63],
        }
        for name in ("datestyle", "timezone", "intervalstyle", "extra_float_digits", "search_path"):
            if name in params:
                startup[name] = params[name]
        startup |= {**PINNED_SETTINGS, "client_encoding": encoding}
        writer.write(codec.startup_message(startup))
        await writer.drain()
        parser = codec.BackendParser()
        scram: ScramClient | None = None
        status = bytearray()
        reported: dict[str, str] = {}
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
                        if not encrypted:
                            raise UpstreamRefused(
                                "the database asked for a cleartext password over an unencrypted connection; amber "
                                "never sends one (use scram-sha-256, or sslmode=verify-full in the catalog)"
                            )
                        writer.write(codec.password_message(grant.upstream_password))
                    else:
                        raise UpstreamRefused(f"unsupported upstream authentication method {code}")
                    await writer.drain()
                elif msg.kind == "E":
                    fields = codec.error_fields(msg.body)
                    raise UpstreamRefused(fields.get("M", "login refused"))
                elif msg.kind == "S":
                    name, value = codec.parameter_status_fields(msg.body)
                    reported[name] = value
                    status += msg.raw
                elif msg.kind == "K":
                    pid, secret = struct.unpack_from("!ii", msg.body, 0)
                    key = (pid, secret)
                elif msg.kind == "Z":
                    _check_pinned(reported, encoding)
                    return reader, writer, key, bytes(status)
                elif msg.kind == "N":
                    status += msg.raw

    async def _open_upstream(self, grant: GatewayGrant) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection to the grant's database, in TLS as its catalog entry's sslmode asks (verify-full checks
        the certificate for the host name); True if it is encrypted."""
        reader, writer = await asyncio.open_connection(grant.host, grant.port)
        tls = self.upstream_tls(grant.resource)
        if not tls.attempt or tls.context is None:
            return reader, writer, False
        try:
            writer.write(struct.pack("!ii", 8, codec.SSL_REQUEST))
            await writer.drain()
            offered = await reader.readexactly(1) == b"S"
            if offered:
                await writer.start_tls(tls.context, server_hostname=grant.host)
        except BaseException:
            writer.transport.abort()
            raise
        if not offered and tls.required:
            writer.transport.abort()
            raise UpstreamRefused(f"the database does not offer TLS, which its catalog entry asks for ({tls.mode})")
        return reader, writer, offered

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


def _check_pinned(reported: dict[str, str], encoding: str) -> None:
    """Refuse an upstream login whose server does not report the settings the gateway pinned (decision 0010)."""
    for name in ("standard_conforming_strings", "client_encoding"):
        want = encoding if name == "client_encoding" else PINNED_SETTINGS[name]
        if reported.get(name) != want:
            raise UpstreamRefused(f"the database reports {name}={reported.get(name)!r}, not amber's pinned {want!r}")


SHAPE_CACHEABLE = frozenset({"SelectStmt", "VariableShowStmt"})
_LITERALS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})


def _shape(sql: str) -> str | None:
    """`sql` with each literal constant (as PostgreSQL's own scanner finds them) replaced by NUL and its kind;
    None if it does not scan, or if it names a function whose literal arguments the judge reads.

    NUL cannot occur in a Query or Parse (they are C strings), so two texts share a shape only if everything
    but their literals' values is the same text: the same tokens, in the same places.
    """
    if "set_config" in sql.lower():
        return None
    try:
        tokens = pglast.parser.scan(sql)
    except pglast.parser.ParseError:
        return None
    parts: list[str] = []
    last = 0
    for token in tokens:
        if token.name in _LITERALS:
            parts += (sql[last : token.start], "\0", token.name)
            last = token.end + 1
    parts.append(sql[last:])
    return "".join(parts)


async def _read_password(parser: codec.FrontendParser, reader: asyncio.StreamReader) -> codec.PasswordMessage | None:
    """The client's next message, which must be a password / SASL message ('p'); None if the client left.

    During login a client sends one message and waits for the answer: anything else, or more, is refused.
    """
    while True:
        data = await reader.read(65536)
        if not data:
            return None
        messages = parser.feed(data)
        if not messages:
            continue
        if len(messages) == 1 and isinstance(messages[0], codec.PasswordMessage):
            return messages[0]
        if isinstance(messages[0], codec.Terminate):
            return None
        kinds = ", ".join(type(m).__name__ for m in messages[:3])
        raise codec.ProtocolError(f"expected one password or SASL message during login, got {kinds}")


def _startup_search_path_problem(value: str | None, schemas: tuple[str, ...]) -> str | None:
    """Why a startup `search_path` (pgjdbc's currentSchema=) is refused, or None if it names only the level's
    schemas, pg_catalog and "$user" (as `SET search_path` may)."""
    if value is None:
        return None
    entries = split_identifiers(value)
    allowed = {"pg_catalog", "$user", "", *schemas}
    if entries is None or any(entry not in allowed for entry in entries):
        return (
            f"amber refuses the startup search_path {value[:200]!r}: it may name only this level's schemas "
            f'({", ".join(schemas) or "none"}), pg_catalog and "$user"'
        )
    return None


async def _fatal(writer: asyncio.StreamWriter, code: str, text: str) -> None:
    writer.write(codec.error_response(code, text, severity="FATAL"))
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Bytes a StreamReader received but nobody read yet (it has no public non-blocking read)."""
    buffered: bytearray = getattr(reader, "_buffer", bytearray())
    data = bytes(buffered)
    buffered.clear()
    return data
