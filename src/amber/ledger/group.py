"""Group commit: many threads append standalone entries; one transaction (one durable commit) carries them all.

For entries that record no state change of their own (the gateway's per-statement entries). Lifecycle
entries keep using `append` inside the caller's transaction. Invariant: `submit` returns only after the
transaction holding the entry committed, so an acknowledged entry is durable; if the commit fails, every
waiter of that batch gets the error and none of its entries exists.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from amber.core.db import UnitOfWork
from amber.ledger.service import EntryView, NewEntry, append_many


class GroupCommitter:
    def __init__(self, uow: UnitOfWork, *, max_batch: int = 1000) -> None:
        self._uow = uow
        self._max_batch = max_batch
        self._queue: deque[tuple[NewEntry, Future[EntryView]]] = deque()
        self._lock = threading.Lock()
        self._flushing = False

    def submit(self, entry: NewEntry) -> EntryView:
        """Append `entry` and wait until it is committed (together with whatever else arrived meanwhile)."""
        future: Future[EntryView] = Future()
        with self._lock:
            self._queue.append((entry, future))
            lead = not self._flushing
            if lead:
                self._flushing = True
        if lead:
            self._drain()
        return future.result()

    def _drain(self) -> None:
        """The leader commits batches until the queue is empty; followers just wait on their futures."""
        while True:
            with self._lock:
                if not self._queue:
                    self._flushing = False
                    return
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            try:
                with self._uow() as session:
                    views = append_many(session, [entry for entry, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - every waiter of the batch must learn of the failure
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), view in zip(batch, views, strict=True):
                future.set_result(view)
