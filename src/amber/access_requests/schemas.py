"""API shapes for access requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from amber.access_requests.models import AccessRequest, Approval
from amber.core.clock import as_utc
from amber.core.durations import MAX_LEVEL_TTL, format_duration, parse_duration
from amber.grants.models import Grant
from amber.grants.schemas import CredentialOut, GrantOut, PersonOut


class RequestIn(BaseModel):
    """A request as the API takes it. Every malformed value is refused here (422), before any policy is asked.

    Not checked here: the level's own maximum and reason rules (they need the catalog; the service checks
    them) and how far ahead the start is (it needs the clock and settings; the service checks it).
    """

    model_config = ConfigDict(extra="forbid")

    resource: str = Field(min_length=1, max_length=64)
    level: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)
    duration: str | int = Field(
        description=f"How long, e.g. 30m, 2h, 1h30m, or seconds; at most {format_duration(MAX_LEVEL_TTL)}"
    )
    supersedes: str | None = Field(default=None, max_length=40)
    start: datetime | None = Field(default=None, description="Scheduled access: when it should begin (RFC 3339).")
    break_glass: bool = Field(
        default=False,
        description="Emergency access: granted at once if policy allows, "
        "owners and security are notified, and a review is required afterwards.",
    )

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give the start with a time zone, e.g. 2026-11-27T09:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the start is out of range") from None

    @field_validator("duration", mode="before")
    @classmethod
    def _duration_type(cls, value: object) -> object:
        # Before pydantic's coercion, which would read `true` as 1 second and `1.5` as a string error.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("give the duration as text like 30m or 2h, or as whole seconds")  # noqa: TRY004
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | int) -> str | int:
        if parse_duration(value) > MAX_LEVEL_TTL:
            raise ValueError(
                f"duration {value!r} is longer than any access level allows ({format_duration(MAX_LEVEL_TTL)})"
            )
        return value

    @property
    def ttl(self) -> timedelta:
        return parse_duration(self.duration)

    @property
    def ttl_seconds(self) -> int:
        return int(self.ttl.total_seconds())


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=2000)


class DecisionOut(BaseModel):
    outcome: str
    reasons: list[str]
    policy_ids: list[str]
    policy_hash: str
    granted_ttl_s: int
    approvals_required: int
    approver_groups: list[str]
    approver_all_groups: list[str]
    single_use: bool
    window_end_at: datetime | None


class ApprovalOut(BaseModel):
    approver: PersonOut
    verdict: str
    comment: str
    at: datetime


class RequestOut(BaseModel):
    id: str
    status: str
    requester: PersonOut
    resource: str
    level: str
    reason: str
    requested_ttl_s: int
    supersedes: str | None
    submitted_at: datetime
    closed_at: datetime | None
    requested_start_at: datetime | None
    pending_expires_at: datetime | None
    break_glass: bool
    review_status: str | None
    decision: DecisionOut
    approvals: list[ApprovalOut] = []
    grant: GrantOut | None = None
    credential: CredentialOut | None = Field(
        default=None, description="Present once, in the response that made the grant usable."
    )

    @classmethod
    def of(
        cls,
        request: AccessRequest,
        *,
        approvals: list[Approval] | None = None,
        grant: Grant | None = None,
        credential: CredentialOut | None = None,
    ) -> RequestOut:
        return cls(
            id=request.id,
            status=request.status,
            requester=PersonOut(
                iss=request.requester_issuer, sub=request.requester_subject, name=request.requester_name
            ),
            resource=request.resource,
            level=request.level,
            reason=request.reason,
            requested_ttl_s=request.requested_ttl_s,
            supersedes=request.supersedes_id,
            submitted_at=as_utc(request.submitted_at),
            closed_at=as_utc(request.closed_at) if request.closed_at else None,
            requested_start_at=as_utc(request.requested_start_at) if request.requested_start_at else None,
            pending_expires_at=as_utc(request.pending_expires_at) if request.pending_expires_at else None,
            break_glass=request.break_glass,
            review_status=request.review_status,
            decision=DecisionOut(
                outcome=request.outcome,
                reasons=json.loads(request.decision_reasons),
                policy_ids=json.loads(request.policy_ids),
                policy_hash=request.policy_hash,
                granted_ttl_s=request.granted_ttl_s,
                approvals_required=request.approvals_required,
                approver_groups=json.loads(request.approver_groups),
                approver_all_groups=json.loads(request.approver_all_groups),
                single_use=request.single_use,
                window_end_at=as_utc(request.window_end_at) if request.window_end_at else None,
            ),
            approvals=[
                ApprovalOut(
                    approver=PersonOut(iss=a.approver_issuer, sub=a.approver_subject, name=a.approver_name),
                    verdict=a.verdict,
                    comment=a.comment,
                    at=as_utc(a.decided_at),
                )
                for a in approvals or []
            ],
            grant=GrantOut.of(grant) if grant is not None else None,
            credential=credential,
        )
