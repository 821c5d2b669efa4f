"""The worker loop.

Invariants: on start it first ends whatever became overdue while amber was down, then reconciles, before
anything else runs; afterwards it checks for due grants at least every `interval_s` (default 0.1 s) so that
sessions end within a second of expiry. A failing tick is logged and counted, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time

from amber.access_requests import AccessRequestService
from amber.core.observability import Metrics
from amber.grants.service import GrantService

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        grants: GrantService,
        metrics: Metrics,
        *,
        interval_s: float = 0.1,
        reconcile_interval_s: float = 30.0,
        requests: AccessRequestService | None = None,
    ) -> None:
        self._grants = grants
        self._requests = requests
        self._metrics = metrics
        self._interval_s = interval_s
        self._reconcile_interval_s = reconcile_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_reconcile = 0.0

    def startup(self) -> None:
        """Catch up after downtime: end overdue grants first, then finish retries, then reconcile."""
        expired = self._grants.expire_due()
        if expired:
            log.info("worker: ended %d grant(s) that expired while amber was down", len(expired))
        self._grants.retry_due()
        dropped = self._grants.reconcile()
        if dropped:
            log.warning("worker: dropped %d orphan role(s): %s", len(dropped), ", ".join(dropped))
        self._last_reconcile = time.monotonic()

    def run_once(self, *, reconcile: bool = False) -> list[str]:
        self._metrics.worker_ticks.inc()
        expired = self._grants.expire_due()
        self._grants.retry_due()
        self._grants.end_used_single_use()
        if self._requests is not None:
            self._requests.expire_pending()
            self._requests.deliver_notifications()
        if reconcile or time.monotonic() - self._last_reconcile >= self._reconcile_interval_s:
            self._grants.reconcile()
            self._last_reconcile = time.monotonic()
        return expired

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="amber-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        try:
            self.startup()
        except Exception:  # a dead target must not stop the loop; it is retried below
            self._metrics.worker_errors.inc()
            log.exception("worker: start-up catch-up failed; retrying in the loop")
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                self._metrics.worker_errors.inc()
                log.exception("worker: tick failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()
