"""A Principal is a person as the identity provider verified them: issuer + subject, never a bare name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    issuer: str
    subject: str
    name: str
    groups: frozenset[str]
    email: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.subject)

    def in_any(self, groups: list[str] | frozenset[str] | set[str]) -> bool:
        return bool(self.groups & set(groups))
