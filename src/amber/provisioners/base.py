"""The provisioner contract: a Protocol and the plain dataclasses that cross it.

Invariants every implementation keeps:
- `provision` and `revoke` are idempotent and keyed by the grant id: calling them twice is harmless, and a
  role is recognised as amber's by its name (`amber_g_<short id>`) *and* its comment, which names the grant id
  and the owning amber installation.
- A provisioned credential can never write, by privileges, not only by session settings.
- `revoke` ends live sessions before anything slower (dropping objects), so access stops first.
- Errors are raised as ProvisionerError with a message safe to show (never a password or an admin DSN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol
from urllib.parse import quote

from amber.core.errors import Unavailable

ROLE_PREFIX = "amber_g_"


class ProvisionerError(Unavailable):
    type_slug = "provisioning-failed"
    title = "Provisioning failed"


@dataclass(frozen=True)
class GrantSpec:
    """What one grant must become on the target. Built by `grants` from the grant row and its catalog level."""

    grant_id: str
    role_name: str
    owner_tag: str  # the amber installation id; reconciliation only ever touches roles carrying it
    expires_at: datetime
    schemas: tuple[str, ...]
    statement_timeout: timedelta
    connection_limit: int
    # (schema, table, column) the role may not read: it gets SELECT on the table's other columns only.
    masked_columns: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class RevokeSpec:
    grant_id: str
    role_name: str


@dataclass(frozen=True)
class ConnectionInfo:
    """Where the granted role connects. Holds no secret; the password is added only when shown once."""

    host: str
    port: int
    database: str
    user: str

    def url(self, password: str | None = None) -> str:
        auth = quote(self.user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.database, safe='')}"


@dataclass(frozen=True)
class ManagedRole:
    """A role on the target that looks like amber's (by name prefix), with what its comment says about it."""

    role_name: str
    grant_id: str | None
    owner_tag: str | None
    can_login: bool
    session_count: int


@dataclass(frozen=True)
class Finding:
    """One result of `amber resource check`: a problem, how bad it is, and the exact statement that fixes it."""

    code: str
    severity: Literal["danger", "warning", "ok"]
    message: str
    fix: str | None = None


class Provisioner(Protocol):
    kind: str

    def provision(self, spec: GrantSpec) -> ConnectionInfo:
        """Create (or bring up to date) the grant's role. The role has no usable password yet."""
        ...

    def set_password(self, spec: GrantSpec, password: str) -> None:
        """Give the grant's role its one password. Called once, when the credential is shown."""
        ...

    def revoke(self, specs: Sequence[RevokeSpec]) -> None:
        """Remove access for many grants at once: block logins, end their sessions, then drop the roles."""
        ...

    def inspect(self) -> list[ManagedRole]:
        """Every `amber_g_*` role on the target, for the reconciler."""
        ...

    def sweep(self, owner_tag: str) -> list[str]:
        """Tidy what amber keeps on the target besides roles: remove what no role needs any more (a dropped
        role's scheduled expiry cut) and put back what installation `owner_tag`'s live roles lack (a cut job
        removed by hand); return what changed. Never touches a role."""
        ...

    def check(self) -> list[Finding]:
        """Report what on the target would let a granted role write or log in without a password."""
        ...

    def harden(self) -> list[str]:
        """Apply the fixes `check` proposes; return the statements applied."""
        ...

    def close(self) -> None:
        """Release connections to the target."""
        ...
