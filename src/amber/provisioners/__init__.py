"""Provisioners turn a grant into access on a target system and take it away again.

The contract (docs/decisions/0003-provisioner-contract.md): every call is idempotent and keyed by the grant id,
runs after amber's own transaction has committed, and is retried by the worker until it succeeds.
"""

from amber.provisioners.base import (
    ConnectionInfo,
    Finding,
    GrantSpec,
    ManagedRole,
    Provisioner,
    ProvisionerError,
    RevokeSpec,
)

__all__ = [
    "ConnectionInfo",
    "Finding",
    "GrantSpec",
    "ManagedRole",
    "Provisioner",
    "ProvisionerError",
    "RevokeSpec",
]
