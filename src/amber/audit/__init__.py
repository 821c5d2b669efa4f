"""Audit: prove the ledger's chain is intact and that the state tables are exactly what it says."""

from amber.audit.replay import AuditReport, verify

__all__ = ["AuditReport", "verify"]
