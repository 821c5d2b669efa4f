"""The shared core of the SCIM service: its collaborators and settings, the ledger entry every SCIM change
writes, and the directory user a call names.

Invariant: every SCIM change is written with a `scim.*` ledger entry naming the SCIM call (`_record`), in
one transaction with what it sets off in amber's own state: sessions ended, pending requests denied or
cancelled, approvals recorded as lapsed (each entry's reason names the call). Only revocations, which reach
target systems, follow after the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from amber import ledger
from amber.access_requests import AccessRequestService
from amber.core.clock import Clock
from amber.core.db import UnitOfWork
from amber.core.errors import NotFound
from amber.grants import GrantService
from amber.identity.directory import NO_DIRECTORY, DirectoryScope, ScimUser
from amber.ledger import Actor
from amber.scim.shapes import scim_error

Person = tuple[str, str]  # (issuer, subject): who a token names
SCIM_ACTOR = Actor(issuer="amber", subject="scim", name="scim")


@dataclass(frozen=True)
class ScimSettings:
    """The SCIM view of the identity configuration, read from the running catalog at each call."""

    issuer: str
    subject_attribute: str
    group_map: Mapping[str, str]
    scope: DirectoryScope = NO_DIRECTORY


@dataclass(frozen=True)
class Revocation:
    grant_id: str
    reason: str


class ScimBase:
    """The collaborators every part of ScimService uses, and the helpers they share."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        settings: Callable[[], ScimSettings],
        grants: GrantService,
        requests: AccessRequestService,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._settings = settings
        self._grants = grants
        self._requests = requests

    def _record(
        self, session: Session, event: str, subject_id: str, call: str, payload: dict[str, Any], *, now: datetime
    ) -> None:
        ledger.append(
            session,
            at=now,
            event_type=event,
            actor=SCIM_ACTOR,
            subject_kind="scim_user" if event.startswith("scim.user") else "scim_group",
            subject_id=subject_id,
            payload={"call": call, **payload},
        )

    def _user(self, session: Session, user_id: str, *, include_deleted: bool = False) -> ScimUser:
        user = session.get(ScimUser, user_id)
        if user is None or (user.deleted_at is not None and not include_deleted):
            raise scim_error(NotFound, f"no SCIM user {user_id}")
        return user
