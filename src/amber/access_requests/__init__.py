"""Access requests: submit, approve, deny, cancel; the orchestration of the whole lifecycle."""

from amber.access_requests.base import Outcome, is_admin, is_auditor
from amber.access_requests.models import AccessRequest, Approval
from amber.access_requests.service import AccessRequestService

__all__ = ["AccessRequest", "AccessRequestService", "Approval", "Outcome", "is_admin", "is_auditor"]
