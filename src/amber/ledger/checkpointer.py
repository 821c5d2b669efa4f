"""The checkpoint loop: sign every N entries or S seconds, then hand each checkpoint to the witnesses.

Owns when checkpoints are signed (checkpoints.py owns how). Invariants:
- witnesses are called only after the checkpoint committed, and a failing witness never blocks signing, the
  ledger, or the caller of `sign_now` while the background thread runs (that thread delivers);
- "S seconds" is measured on the injected clock, from the latest checkpoint's `signed_at`; the thread's own
  polling (`poll_s`, real time) only decides how often that is looked at;
- a background loop that was started signs a last checkpoint when it is stopped, so a graceful shutdown
  leaves no entry covered by the hash chain alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from amber.core.clock import Clock
from amber.core.db import UnitOfWork
from amber.core.errors import AmberError
from amber.ledger import tlog
from amber.ledger.checkpoints import CheckpointView, latest_checkpoint, sign
from amber.ledger.service import head
from amber.ledger.witnesses import Witness, publish_pending

log = logging.getLogger("amber.ledger")
PROBLEM_REPEAT = timedelta(minutes=10)  # how often a lasting signing problem is logged again


class Checkpointer:
    """Signs a checkpoint every `every_entries` entries or `every` time (whichever first), and on demand.

    `start()` runs that in a thread that looks every `poll_s` seconds (real time); `stop()` ends it and signs
    a final checkpoint over whatever was appended since the last one.
    """

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
        poll_s: float = 1.0,
    ) -> None:
        self.uow = uow
        self.clock = clock
        self.signer = signer
        self.origin = origin
        self.every_entries = every_entries
        self.every = every
        self.witnesses = list(witnesses)
        self.poll_s = poll_s
        # Background rounds completed since start (for health checks and tests that wait for the thread).
        self.rounds = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem: tuple[str, datetime] | None = None  # the signing problem last logged, and when

    @property
    def verifier(self) -> tlog.Verifier:
        return self.signer.verifier

    @property
    def running(self) -> bool:
        return self._thread is not None

    def sign_now(self) -> CheckpointView:
        """Sign now. Delivery to the witnesses follows the commit: by the background thread when it runs
        (so a slow witness never delays the caller), else here (a failing witness does not fail this)."""
        with self.uow() as session:
            view = sign(session, self.signer, self.origin, self.clock.now())
        if self.running:
            self._wake.set()
        else:
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
            # Not every round (a key not in force would say so every few seconds): when the problem is new or
            # changed, and again every PROBLEM_REPEAT while it lasts (no checkpoints is a gap in the evidence).
            now = self.clock.now()
            if self._problem is None or self._problem[0] != exc.message or now - self._problem[1] >= PROBLEM_REPEAT:
                log.error("ledger checkpoint not signed: %s", exc.message)  # noqa: TRY400 - the message says it all
                self._problem = (exc.message, now)
        else:
            if self._problem is not None:
                log.warning("ledger checkpoints: signing works again")
                self._problem = None
        self.publish()
        return view

    def start(self) -> None:
        """Run `tick` every `poll_s` seconds in a daemon thread until `stop()`. Idempotent."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._wake.clear()
        self.rounds = 0

        def run() -> None:
            while True:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self.tick()
                except Exception:  # e.g. the database restarts: the next round retries
                    log.exception("ledger checkpointer: this round failed; retrying in %ss", self.poll_s)
                self.rounds += 1

        self._thread = threading.Thread(target=run, name="amber-ledger-checkpoints", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> CheckpointView | None:
        """End the background thread, then sign a final checkpoint if anything was appended since the last
        one and deliver it once (a witness that is down gets it after the next start). Returns that checkpoint.

        Does nothing if the thread was not started (the CLI, tests that sign explicitly).
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        self._stop.set()
        self._wake.set()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("ledger checkpointer: the background round did not finish within %ss", timeout_s)
        view = None
        try:
            with self.uow() as session:
                size, _ = head(session)
                last = latest_checkpoint(session)
                if size > (last.tree_size if last is not None else 0):
                    view = sign(session, self.signer, self.origin, self.clock.now())
        except AmberError as exc:
            log.error("final ledger checkpoint not signed: %s", exc.message)  # noqa: TRY400 - as in tick
        except Exception:  # shutting down: say so, and let the rest of the shutdown run
            log.exception("final ledger checkpoint not signed")
        try:
            self.publish()
        except Exception:
            log.exception("ledger witnesses not caught up at shutdown; they catch up after the next start")
        return view
