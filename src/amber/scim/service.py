"""SCIM 2.0 provisioning and what it sets off: deprovisioning people and re-checking grants, pending requests
and approvals after group changes.

Owns the orchestration between the directory (amber.identity.directory), the requests, the grants and the
running policy. `ScimService` is the one public service; its parts live beside it, each with the invariants
it protects:
- amber.scim.base: settings, collaborators, and the `scim.*` ledger entry every change writes in one
  transaction with what it sets off in amber's own state (only revocations follow after the commit);
- amber.scim.users: create / replace / patch / delete users; deprovisioning a person;
- amber.scim.groups: create / patch / put / delete groups and their members; renames;
- amber.scim.reevaluation: after a change, pending requests, approvals and live grants re-asked of policy;
- amber.scim.shapes: the request and response shapes Okta and Entra ID use.

What this does NOT do: authenticate the caller (amber.api.scim_routes checks the bearer token).
"""

from __future__ import annotations

from amber.scim.groups import Groups
from amber.scim.users import Users


class ScimService(Users, Groups):
    """The SCIM 2.0 Users and Groups endpoints' operations; one transaction per call, revocations after it."""
