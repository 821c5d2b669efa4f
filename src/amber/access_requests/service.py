"""Access requests: submit, approve, deny, cancel, expire, review. The orchestration of the lifecycle.

`AccessRequestService` is the one public service; its parts live beside it, each owning one responsibility
and the invariants that go with it:
- amber.access_requests.base: the collaborators, the policy inputs, and the one way a request changes
  state (every transition appended to the ledger in the same transaction as the state it changes);
- amber.access_requests.submission: input checks, history and the policy decision; break-glass access;
- amber.access_requests.review: approve / deny with k-of-n counting, lapsed approvals and no
  self-approval; the post-hoc review of break-glass access;
- amber.access_requests.pending: cancellation, pending expiry and the re-checks after a SCIM change;
- amber.access_requests.notices: the notification outbox and its at-least-once delivery;
- amber.access_requests.queries: get, explain, list and the inboxes.
"""

from __future__ import annotations

from amber.access_requests.pending import Pending
from amber.access_requests.queries import Queries
from amber.access_requests.submission import Submission


class AccessRequestService(Submission, Pending, Queries):
    """Submit, approve, deny, cancel, expire and read access requests; one transaction per call."""
