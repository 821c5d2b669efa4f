"""A Principal is a person as the identity provider verified them: issuer + subject, never a bare name.

`groups` are amber group names (after the provider's group_map) read from the token at the time of the
action, less the groups the SCIM directory manages and no longer lists the person in
(`amber.identity.directory.groups_now`); `roles` are derived from them by `amber.identity.roles` for the same
action.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    issuer: str
    subject: str
    name: str
    groups: frozenset[str]
    email: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.subject)

    def in_any(self, groups: list[str] | frozenset[str] | set[str]) -> bool:
        return bool(self.groups & set(groups))

    def has_role(self, role: str) -> bool:
        return role in self.roles
