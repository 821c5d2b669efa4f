"""The checkpoint loop: sign every N entries or S seconds, then hand each checkpoint to the witnesses.

Owns when checkpoints are signed (checkpoints.py owns how). Invariant: witnesses are called only after the
checkpoint committed, and a failing witness never blocks signing or the ledger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session

from amber.core.clock import Clock
from amber.core.db import UnitOfWork
from amber.core.errors import AmberError
from amber.ledger import tlog
from amber.ledger.checkpoints import CheckpointView, latest_checkpoint, sign
from amber.ledger.service import head
from amber.ledger.witnesses import Witness, publish_pending

log = logging.getLogger("amber.ledger")


class Checkpointer:
    """Signs a checkpoint every `every_entries` entries or `every` time (whichever first), and on demand."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        signer: tlog.Signer,
        origin: str,
        every_entries: int,
        every: timedelta,
        witnesses: Sequence[Witness] = (),
    ) -> None:
        self.uow = uow
        self.clock = clock
        self.signer = signer
        self.origin = origin
        self.every_entries = every_entries
        self.every = every
        self.witnesses = list(witnesses)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def verifier(self) -> tlog.Verifier:
        return self.signer.verifier

    def sign_now(self) -> CheckpointView:
        """Sign now (after the commit, deliver to the witnesses; a failing witness does not fail this)."""
        with self.uow() as session:
            view = sign(session, self.signer, self.origin, self.clock.now())
        self.publish()
        return view

    def publish(self) -> dict[str, int]:
        return publish_pending(self.uow, self.witnesses, self.origin, self.clock.now())

    def due(self, session: Session) -> bool:
        size, _ = head(session)
        last = latest_checkpoint(session)
        if last is None:
            return size > 0
        grown = size - last.tree_size
        return grown >= self.every_entries or (grown > 0 and self.clock.now() - last.signed_at >= self.every)

    def tick(self) -> CheckpointView | None:
        """Sign if due. Errors are logged (without key material) and retried on the next tick."""
        view = None
        try:
            with self.uow() as session:
                if self.due(session):
                    view = sign(session, self.signer, self.origin, self.clock.now())
        except AmberError as exc:
            log.error("ledger checkpoint not signed: %s", exc.message)  # noqa: TRY400 - the message says it all
        self.publish()
        return view

    def start(self, poll_s: float = 1.0) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(poll_s):
                self.tick()

        self._thread = threading.Thread(target=run, name="amber-ledger-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
