"""The worker: expiry, retries and reconciliation, in a loop that wakes at least every interval."""

from amber.worker.loop import Worker

__all__ = ["Worker"]
