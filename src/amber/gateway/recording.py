"""Recording gateway statements in the ledger: batched off the hot path, never dropped, fail closed.

Entries go into a bounded queue; one writer task appends them in batches (one transaction per batch). When the
queue is full, `record` waits (back-pressure). When a batch cannot be written, the recorder turns unhealthy
(the server then refuses new statements), keeps the batch, and retries it until it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from amber import ledger
from amber.core.clock import Clock
from amber.core.db import UnitOfWork
from amber.gateway.server import GatewayGrant, RecorderDown
from amber.ledger import Actor

log = logging.getLogger(__name__)


class LedgerRecorder:
    def __init__(
        self, uow: UnitOfWork, clock: Clock, *, queue_max: int = 10_000, batch_max: int = 500, retry_s: float = 0.5
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, GatewayGrant, dict[str, Any], Any]] | None = None
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._retry_s = retry_s
        self._healthy = True
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    def start(self) -> None:
        self._queue = asyncio.Queue(self._queue_max)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._queue is not None:
            await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def record(self, event: str, grant: GatewayGrant, payload: dict[str, Any]) -> None:
        if not self._healthy:
            raise RecorderDown("the ledger is unavailable")
        assert self._queue is not None, "LedgerRecorder.start() was not called"  # noqa: S101 - wiring bug
        await self._queue.put((event, grant, payload, self._clock.now()))

    async def flush(self) -> None:
        if self._queue is not None:
            await self._queue.join()

    async def _run(self) -> None:
        assert self._queue is not None  # noqa: S101 - set in start()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._batch_max and not queue.empty():
                batch.append(queue.get_nowait())
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
            for _ in batch:
                queue.task_done()

    def _write(self, batch: list[tuple[str, GatewayGrant, dict[str, Any], Any]]) -> None:
        with self._uow() as session:
            ledger.append_many(
                session,
                [
                    ledger.NewEntry(
                        at=at,
                        event_type=event,
                        actor=Actor(grant.grantee_issuer, grant.grantee_subject, grant.grantee_name),
                        subject_kind="grant",
                        subject_id=grant.grant_id,
                        payload=payload,
                    )
                    for event, grant, payload, at in batch
                ],
            )
