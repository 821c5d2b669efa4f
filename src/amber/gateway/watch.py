"""Ending sessions of grants that ended in ANOTHER amber process.

In one process, GrantService tells the gateway directly when a grant ends (`Gateway.grant_ended`). With several
amber processes sharing one state database (replicas behind a load balancer), a revocation handled by one must
cut the sessions another's gateway holds. This watcher asks the state database, every `interval_s`, whether any
grant with a live session here is no longer active, and ends it here too; and whether its gateway token was
re-issued (in any process), ending the sessions that logged in with the old one. The query is one indexed lookup by
primary key, and only runs while this gateway has sessions.

Why polling rather than PostgreSQL LISTEN/NOTIFY: it works the same on SQLite and PostgreSQL state, needs no
extra connection held open, and cannot miss a notification sent while this process was reconnecting; the
bound it gives (interval_s, 0.5 s by default) is inside the 1 s the gateway promises. Expiry needs no watcher:
every gateway knows each grant's expiry and checks it before every statement and on its own timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection

from sqlalchemy import select

from amber.core.db import UnitOfWork
from amber.grants.models import Grant

log = logging.getLogger(__name__)


def token_hashes(uow: UnitOfWork, grant_ids: Collection[str]) -> dict[str, str]:
    """The gateway token hash in force for each of `grant_ids` that is still active."""
    if not grant_ids:
        return {}
    with uow() as session:
        rows = session.execute(
            select(Grant.id, Grant.gateway_token_hash).where(Grant.id.in_(list(grant_ids)), Grant.status == "active")
        ).all()
    return {gid: token_hash or "" for gid, token_hash in rows}


def ended_grants(uow: UnitOfWork, grant_ids: Collection[str]) -> dict[str, str]:
    """Which of `grant_ids` are no longer active in the state database, and why (for the FATAL message)."""
    if not grant_ids:
        return {}
    with uow() as session:
        rows = session.execute(
            select(Grant.id, Grant.status, Grant.end_reason).where(
                Grant.id.in_(list(grant_ids)), Grant.status != "active"
            )
        ).all()
    return {
        gid: "expired" if status == "expired" else f"was {status}" + (f": {reason}" if reason else "")
        for gid, status, reason in rows
    }


class GrantWatcher:
    def __init__(
        self,
        uow: UnitOfWork,
        live_grants: Callable[[], Collection[str]],
        on_ended: Callable[[str, str], None],
        *,
        interval_s: float = 0.5,
        on_token: Callable[[str, str], object] | None = None,
    ) -> None:
        self._uow = uow
        self._on_token = on_token  # (grant id, token hash in force): ends sessions of re-issued tokens
        self._live_grants = live_grants
        self._on_ended = on_ended
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_once(self) -> dict[str, str]:
        live = list(self._live_grants())
        if not live:
            return {}
        ended = await asyncio.to_thread(ended_grants, self._uow, live)
        for grant_id, reason in ended.items():
            self._on_ended(grant_id, reason)
        if self._on_token is not None:
            in_force = await asyncio.to_thread(token_hashes, self._uow, [g for g in live if g not in ended])
            for grant_id, token_hash in in_force.items():
                self._on_token(grant_id, token_hash)
        return ended

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception as exc:  # noqa: BLE001 - a broken state database must not stop the gateway
                if not failing:
                    log.warning("gateway: cannot check grants in the state database: %s", type(exc).__name__)
                failing = True
            else:
                failing = False
