"""The notification outbox of access requests: the break-glass notice queued with the request, and its
delivery by the worker through a Notifier (amber.access_requests.notify).

Invariants:
- A break-glass notice is an outbox row written in the transaction that grants the access, with a
  `request.break_glass` ledger entry naming its recipients (the resource's owners and the security groups).
- Delivery is at least once: a row is marked delivered only after the notifier accepted it; a failure is
  retried with a capped backoff (MAX_NOTIFY_BACKOFF). Sending happens outside any transaction.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.access_requests.base import POLICY_ACTOR, ServiceBase, json_list
from amber.access_requests.models import AccessRequest, Notification
from amber.access_requests.notify import NotifyError

log = logging.getLogger(__name__)
MAX_NOTIFY_BACKOFF = timedelta(minutes=5)


class Notices(ServiceBase):
    """The notification outbox part of AccessRequestService."""

    def _break_glass(self, session: Session, request: AccessRequest, owners: list[str], *, now: datetime) -> None:
        config = self._catalog().policy
        recipients = sorted(set(owners) | set(config.security_groups))
        request.review_status = "required"
        message = (
            f"BREAK-GLASS: {request.requester_name} took {request.level} access to {request.resource} "
            f"at once ({request.reason!r}); a review is required (request {request.id})."
        )
        session.add(
            Notification(
                created_at=now,
                request_id=request.id,
                kind="break_glass",
                recipients=json.dumps(recipients),
                message=message,
                attempts=0,
                next_attempt_at=now,
            )
        )
        self._record(
            session,
            request,
            "request.break_glass",
            POLICY_ACTOR,
            {"notified": recipients, "review": "required"},
            now=now,
        )

    def deliver_notifications(self, *, limit: int = 50) -> int:
        with self._uow() as session:
            now = self._clock.now()
            due = list(
                session.scalars(
                    select(Notification)
                    .where(Notification.delivered_at.is_(None), Notification.next_attempt_at <= now)
                    .order_by(Notification.id)
                    .limit(limit)
                )
            )
            notices = [
                (
                    n.id,
                    {
                        "kind": n.kind,
                        "request_id": n.request_id,
                        "recipients": json_list(n.recipients),
                        "message": n.message,
                        "id": n.id,
                    },
                )
                for n in due
            ]
        delivered = 0
        for notice_id, notice in notices:
            error = None
            try:
                self._notifier.send(notice)
            except NotifyError as exc:
                error = str(exc)
            with self._uow() as session:
                row = session.get(Notification, notice_id)
                if row is None or row.delivered_at is not None:
                    continue
                now = self._clock.now()
                row.attempts += 1
                if error is None:
                    row.delivered_at = now
                    delivered += 1
                else:
                    row.last_error = error
                    row.next_attempt_at = now + min(MAX_NOTIFY_BACKOFF, timedelta(seconds=2 ** min(row.attempts, 8)))
                    log.warning("notification %d for %s not delivered: %s", notice_id, notice["request_id"], error)
        return delivered
