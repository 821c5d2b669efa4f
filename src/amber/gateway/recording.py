"""Recording gateway statements in the ledger: batched off the hot path, never dropped, fail closed.

Entries go into a queue; one writer task appends them in batches (one transaction per batch). When the queue is
over its limit, sessions stop reading their clients until there is room again (back-pressure: `over_limit`,
`room`); an entry is never dropped. When a batch cannot be written, the
recorder turns unhealthy (the server then refuses new statements and logins), keeps the batch, and retries it
until it is written.

With `database_url` set, batches are hashed and written by a child process (ChildWriter): hashing the chain and
the Merkle tree in the gateway's own process costs it about half its throughput in GIL time (bench/gateway.py).
A batch counts as written only when the child says it committed; if the child dies, a new one gets the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from amber import ledger
from amber.core.clock import Clock
from amber.core.db import UnitOfWork, make_engine, make_unit_of_work
from amber.gateway.server import GatewayGrant
from amber.ledger import Actor

log = logging.getLogger(__name__)


Row = tuple[Any, str, str, str, str, str, dict[str, Any]]  # at, event, iss, sub, name, grant id, payload
GATEWAY_ACTOR = ("amber", "gateway", "amber gateway")  # who records what no authenticated person did


def _row_bytes(row: Row) -> int:
    """An entry's approximate size: its statement's characters plus a fixed allowance for the rest."""
    statement = row[6].get("statement")
    return 512 + (len(statement) if isinstance(statement, str) else 0)


def _entries(rows: list[Row]) -> list[ledger.NewEntry]:
    return [
        ledger.NewEntry(
            at=at,
            event_type=event,
            actor=Actor(iss, sub, name),
            subject_kind="grant",
            subject_id=grant_id,
            payload=payload,
        )
        for at, event, iss, sub, name, grant_id, payload in rows
    ]


def _child_main(database_url: str, conn: Connection) -> None:
    """The child process: append each batch it receives in one transaction and say how it went."""
    engine = make_engine(database_url)
    uow = make_unit_of_work(engine)
    try:
        while True:
            try:
                rows = conn.recv()
            except EOFError:
                return
            try:
                with uow() as session:
                    ledger.append_many(session, _entries(rows))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which keeps the batch
                conn.send(f"error: {type(exc).__name__}")
            else:
                conn.send("ok")
    finally:
        engine.dispose()


class ChildWriter:
    """Writes batches through a child process; `write` blocks (in a worker thread) until the child committed."""

    def __init__(self, database_url: str, timeout_s: float = 30.0) -> None:
        self._url = database_url
        self._timeout_s = timeout_s
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            self.close()
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            self._proc = context.Process(
                target=_child_main, args=(self._url, child), name="amber-ledger-writer", daemon=True
            )
            self._proc.start()
            child.close()
            self._conn = parent
        return self._conn

    def write(self, rows: list[Row]) -> None:
        conn = self._ensure()
        try:
            conn.send(rows)
            if not conn.poll(self._timeout_s):
                raise TimeoutError("the ledger writer did not answer")  # noqa: TRY301 - handled with the others
            reply = conn.recv()
        except (OSError, EOFError, TimeoutError):
            self.close()
            raise
        if reply != "ok":
            raise RuntimeError(str(reply))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None


class LedgerRecorder:
    def __init__(
        self,
        uow: UnitOfWork,
        clock: Clock,
        *,
        queue_max: int = 10_000,
        queue_max_bytes: int = 64 * 1024 * 1024,
        batch_max: int = 500,
        batch_max_bytes: int = 8 * 1024 * 1024,
        retry_s: float = 0.5,
        linger_s: float = 0.005,
        database_url: str | None = None,
    ) -> None:
        self._linger_s = linger_s
        self._child = ChildWriter(database_url) if database_url else None
        self._uow = uow
        self._clock = clock
        self._queue: deque[Row] = deque()
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self._queue_bytes = 0  # the entries' approximate size (statements are kept whole up to 1 MiB)
        self._batch_max = batch_max
        self._batch_max_bytes = batch_max_bytes
        self._retry_s = retry_s
        self._healthy = True
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._queued = 0  # entries ever queued; `written` counts those committed
        self._written_event: asyncio.Event | None = None
        self.written = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def queued(self) -> int:
        """Entries waiting to be written (not counting a batch being written)."""
        return len(self._queue)

    @property
    def over_limit(self) -> bool:
        return len(self._queue) >= self.queue_max or self._queue_bytes >= self.queue_max_bytes

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._written_event = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._child is not None:
            await asyncio.to_thread(self._child.close)

    def record_nowait(self, event: str, grant: GatewayGrant, payload: dict[str, Any]) -> None:
        assert self._wake is not None, "LedgerRecorder.start() was not called"  # noqa: S101 - wiring bug
        assert self._room is not None  # noqa: S101
        self._append(
            (
                self._clock.now(),
                event,
                grant.grantee_issuer,
                grant.grantee_subject,
                grant.grantee_name,
                grant.grant_id,
                payload,
            )
        )

    def record_login_failure(self, user: str, source: str, why: str) -> None:
        """A failed or malformed gateway login, by the gateway itself (nobody was authenticated), about the
        grant the client named."""
        assert self._wake is not None, "LedgerRecorder.start() was not called"  # noqa: S101 - wiring bug
        payload = {"user": user[:200], "source": source, "reason": why[:500]}
        self._append((self._clock.now(), "gateway.login_failed", *GATEWAY_ACTOR, user.rsplit("@", 1)[-1][:64], payload))

    def _append(self, row: Row) -> None:
        assert self._wake is not None  # noqa: S101 - set in start()
        assert self._room is not None  # noqa: S101
        self._queue.append(row)
        self._queue_bytes += _row_bytes(row)
        self._queued += 1
        if self.over_limit:
            self._room.clear()
        self._wake.set()

    async def record(self, event: str, grant: GatewayGrant, payload: dict[str, Any]) -> None:
        await self.room()
        self.record_nowait(event, grant, payload)

    async def room(self) -> None:
        assert self._room is not None, "LedgerRecorder.start() was not called"  # noqa: S101 - wiring bug
        await self._room.wait()

    async def flush(self) -> None:
        """Wait until every entry queued so far is committed."""
        if self._written_event is None:
            return
        target = self._queued
        while self.written < target:
            self._written_event.clear()
            await self._written_event.wait()

    async def _run(self) -> None:
        assert self._wake is not None  # noqa: S101 - set in start()
        assert self._room is not None  # noqa: S101
        assert self._written_event is not None  # noqa: S101
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(queue) < self._batch_max and self._linger_s > 0:
                # Let a batch gather: one transaction per entry would cost the writer a core at a few thousand
                # statements a second, and the clients' latency with it.
                await asyncio.sleep(self._linger_s)
            batch = self._take_batch()
            while True:
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception as exc:  # noqa: BLE001 - any failure: keep the batch, refuse, retry
                    if self._healthy:
                        log.error(  # noqa: TRY400 - the type is the story; the batch is kept and retried
                            "gateway: cannot write to the ledger, refusing statements: %s", type(exc).__name__
                        )
                    self._healthy = False
                    await asyncio.sleep(self._retry_s)
                    continue
                break
            if not self._healthy:
                log.warning("gateway: the ledger is writable again")
            self._healthy = True
            self.written += len(batch)
            self._written_event.set()
            if not self.over_limit:
                self._room.set()

    def _take_batch(self) -> list[Row]:
        """Up to batch_max entries and about batch_max_bytes (at least one entry, however large)."""
        batch: list[Row] = []
        size = 0
        while self._queue and len(batch) < self._batch_max and (not batch or size < self._batch_max_bytes):
            row = self._queue.popleft()
            row_size = _row_bytes(row)
            self._queue_bytes -= row_size
            size += row_size
            batch.append(row)
        return batch

    def _write(self, rows: list[Row]) -> None:
        if self._child is not None:
            self._child.write(rows)
            return
        with self._uow() as session:
            ledger.append_many(session, _entries(rows))
