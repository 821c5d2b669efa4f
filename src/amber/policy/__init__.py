"""Policy: Cedar decisions. Inputs (including the compiled bundle) in, a Decision out; no database, no clock.

`load_bundle` reads a folder of .cedar files; everything else here is pure.
"""

from amber.policy.bundle import PolicyBundle, PolicyError, Statement, WorkflowSettings, compile_bundle, load_bundle
from amber.policy.engine import decide, justification_problem, may_approve
from amber.policy.model import (
    ApprovalDecision,
    ApprovalInput,
    Decision,
    History,
    LevelInfo,
    Outcome,
    PolicyInput,
    ResourceInfo,
    Subject,
    approvals_satisfied,
)

__all__ = [
    "ApprovalDecision",
    "ApprovalInput",
    "Decision",
    "History",
    "LevelInfo",
    "Outcome",
    "PolicyBundle",
    "PolicyError",
    "PolicyInput",
    "ResourceInfo",
    "Statement",
    "Subject",
    "WorkflowSettings",
    "approvals_satisfied",
    "compile_bundle",
    "decide",
    "justification_problem",
    "load_bundle",
    "may_approve",
]
