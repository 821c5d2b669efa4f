"""Grants: the state machine of access that was approved, and the driver of the provisioners."""

from amber.grants.lifecycle import ENDED, LIVE, GrantStatus
from amber.grants.models import Grant
from amber.grants.service import Activation, GrantService, connection_info, get, issue, role_name_for

__all__ = [
    "ENDED",
    "LIVE",
    "Activation",
    "Grant",
    "GrantService",
    "GrantStatus",
    "connection_info",
    "get",
    "issue",
    "role_name_for",
]
