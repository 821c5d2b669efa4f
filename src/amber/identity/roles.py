"""amber roles from provider groups: requester, approver, admin, auditor.

Owns the one rule that turns a person's groups (as their token says at this action, less what the SCIM
directory took away: amber.identity.directory.groups_now) into roles. Protects:
an empty `admin` or `auditor` list grants that role to nobody (deny by default); an empty `requester` or
`approver` list leaves the question to policy, which still decides every request and approval. `admin`
implies `auditor`. What this does NOT do: decide a request; policy does that with the same groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

from amber.identity.principals import Principal

REQUESTER = "requester"
APPROVER = "approver"
ADMIN = "admin"
AUDITOR = "auditor"
ROLES = (REQUESTER, APPROVER, ADMIN, AUDITOR)
_OPEN_WHEN_UNSET = {REQUESTER, APPROVER}


def roles_for(groups: Collection[str], mapping: Mapping[str, Collection[str]]) -> frozenset[str]:
    """The roles a person with `groups` has under `mapping` (role -> groups that carry it)."""
    held = set(groups)
    roles = set()
    for role in ROLES:
        allowed = set(mapping.get(role, ()))
        if (not allowed and role in _OPEN_WHEN_UNSET) or held & allowed:
            roles.add(role)
    if ADMIN in roles:
        roles.add(AUDITOR)
    return frozenset(roles)


def with_roles(principal: Principal, mapping: Mapping[str, Collection[str]]) -> Principal:
    return dataclasses.replace(principal, roles=roles_for(principal.groups, mapping))
