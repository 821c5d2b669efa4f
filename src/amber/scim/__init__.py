"""SCIM 2.0 provisioning (orchestration): the identity provider creates, updates, deactivates and deletes people
and groups; amber takes access away when it says so. See amber.scim.service for the invariants."""

from amber.scim.base import SCIM_ACTOR, Revocation, ScimSettings
from amber.scim.service import ScimService

__all__ = ["SCIM_ACTOR", "Revocation", "ScimService", "ScimSettings"]
