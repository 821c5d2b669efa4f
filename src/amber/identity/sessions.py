"""Web sign-in state: amber's browser sessions and the sign-ins in flight.

Owns `web_sessions` (one row per signed-in browser, keyed by the SHA-256 of the cookie value, so the
store never holds a usable session id) and `web_logins` (state -> nonce and PKCE verifier for one
authorization code flow, used once, for at most 10 minutes). Protects: a session ends at its expiry, at
sign-out, or when SCIM deprovisions its person, whichever comes first.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Index, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from amber.core.clock import as_utc
from amber.core.db import Base
from amber.identity.principals import Principal

LOGIN_TTL = timedelta(minutes=10)
SESSION_PREFIX = "amb_ses_"


class WebSession(Base):
    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(512))
    email: Mapped[str | None] = mapped_column(String(512))
    groups: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(256))

    __table_args__ = (Index("ix_web_sessions_subject", "issuer", "subject"),)


class WebLogin(Base):
    __tablename__ = "web_logins"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    return_to: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class PendingLogin:
    provider: str
    nonce: str
    code_verifier: str
    return_to: str


def start_login(session: Session, *, provider: str, return_to: str, now: datetime) -> tuple[str, PendingLogin]:
    """Record a sign-in in flight; returns the `state` to send and what the callback will need."""
    state = secrets.token_urlsafe(32)
    pending = PendingLogin(provider, secrets.token_urlsafe(32), secrets.token_urlsafe(64), return_to)
    session.add(
        WebLogin(
            state_hash=digest(state),
            provider=provider,
            nonce=pending.nonce,
            code_verifier=pending.code_verifier,
            return_to=return_to,
            created_at=now,
        )
    )
    return state, pending


def take_login(session: Session, state: str, *, now: datetime) -> PendingLogin | None:
    """The sign-in `state` names, used once: the row is removed whether or not it is still fresh.

    What this does NOT check: that the browser presenting `state` is the one that started the sign-in; the
    caller compares `state` with the browser's cookie first.
    """
    row = session.get(WebLogin, digest(state))
    if row is None:
        return None
    session.delete(row)
    if as_utc(row.created_at) + LOGIN_TTL <= now:
        return None
    return PendingLogin(row.provider, row.nonce, row.code_verifier, row.return_to)


def open_session(session: Session, principal: Principal, *, provider: str, now: datetime, ttl: timedelta) -> str:
    """Create a browser session for `principal`; returns the cookie value (shown to the browser only)."""
    value = SESSION_PREFIX + secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_hash=digest(value),
            provider=provider,
            issuer=principal.issuer,
            subject=principal.subject,
            name=principal.name,
            email=principal.email,
            groups=json.dumps(sorted(principal.groups)),
            created_at=now,
            expires_at=now + ttl,
        )
    )
    return value


def session_principal(session: Session, value: str, *, now: datetime) -> Principal | None:
    """Who a live session cookie belongs to, with the groups their ID token had at sign-in."""
    if not value.startswith(SESSION_PREFIX):
        return None
    row = session.get(WebSession, digest(value))
    if row is None or row.ended_at is not None or as_utc(row.expires_at) <= now:
        return None
    groups = json.loads(row.groups)
    return Principal(row.issuer, row.subject, row.name, frozenset(str(g) for g in groups), row.email)


def end_session(session: Session, value: str, *, now: datetime, reason: str) -> bool:
    row = session.get(WebSession, digest(value))
    if row is None or row.ended_at is not None:
        return False
    row.ended_at = now
    row.end_reason = reason
    return True


def end_sessions_of(session: Session, issuer: str, subject: str, *, now: datetime, reason: str) -> int:
    """End every live browser session of one person (SCIM deprovisioning). Returns how many ended."""
    live = list(
        session.scalars(
            select(WebSession.id_hash).where(
                WebSession.issuer == issuer, WebSession.subject == subject, WebSession.ended_at.is_(None)
            )
        )
    )
    if live:
        session.execute(
            update(WebSession).where(WebSession.id_hash.in_(live)).values(ended_at=now, end_reason=reason[:256])
        )
    return len(live)
