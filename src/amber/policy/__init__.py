"""Policy: pure decisions. Inputs in, a Decision out; it imports nothing but the standard library and core."""

from amber.policy.engine import decide, may_approve
from amber.policy.model import (
    ApprovalDecision,
    ApprovalInput,
    Decision,
    LevelRules,
    Outcome,
    PolicyInput,
    Subject,
)

__all__ = [
    "ApprovalDecision",
    "ApprovalInput",
    "Decision",
    "LevelRules",
    "Outcome",
    "PolicyInput",
    "Subject",
    "decide",
    "may_approve",
]
