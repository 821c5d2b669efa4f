"""API shapes for grants."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from amber.core.clock import as_utc
from amber.grants.models import Grant
from amber.grants.service import Activation, connection_info


class PersonOut(BaseModel):
    iss: str
    sub: str
    name: str


class ConnectionOut(BaseModel):
    host: str
    port: int
    database: str
    user: str


class CredentialOut(BaseModel):
    """Shown exactly once. amber keeps no copy of the password."""

    user: str
    password: str
    url: str
    psql: str


class GrantOut(BaseModel):
    id: str
    request_id: str
    status: str
    resource: str
    level: str
    role: str
    grantee: PersonOut
    issued_at: datetime
    expires_at: datetime
    activated_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    connection: ConnectionOut | None
    credential_shown: bool
    last_error: str | None

    @classmethod
    def of(cls, grant: Grant, gateway: tuple[str, int] | None = None) -> GrantOut:
        info = connection_info(grant, gateway)
        return cls(
            id=grant.id,
            request_id=grant.request_id,
            status=grant.status,
            resource=grant.resource,
            level=grant.level,
            role=grant.role_name,
            grantee=PersonOut(iss=grant.grantee_issuer, sub=grant.grantee_subject, name=grant.grantee_name),
            issued_at=as_utc(grant.issued_at),
            expires_at=as_utc(grant.expires_at),
            activated_at=as_utc(grant.activated_at) if grant.activated_at else None,
            ended_at=as_utc(grant.ended_at) if grant.ended_at else None,
            end_reason=grant.end_reason,
            connection=ConnectionOut(host=info.host, port=info.port, database=info.database, user=info.user)
            if info
            else None,
            credential_shown=grant.credential_shown_at is not None,
            last_error=grant.last_error,
        )


def credential_of(activation: Activation) -> CredentialOut | None:
    url = activation.connection_url
    if url is None or activation.password is None:
        return None
    user = activation.grant.id if activation.grant.via == "gateway" else activation.grant.role_name
    return CredentialOut(user=user, password=activation.password, url=url, psql=f"psql '{url}'")


class RevokeIn(BaseModel):
    reason: str = ""
