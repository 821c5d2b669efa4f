"""Policy bundles: Cedar policy files + amber's schema + workflow settings, compiled and content-hashed.

Invariant: a bundle either compiles completely (every statement parses, carries a unique `@id`, uses only
known annotations, and validates against the schema) or `compile_bundle` raises PolicyError naming the file,
the line and the problem. The caller keeps its running bundle in that case.

`compile_bundle` is pure (text in, bundle out). `load_bundle` only reads the folder's files; it is the one
place in `policy` that does I/O, and it does nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from amber.core.durations import parse_duration
from amber.core.errors import ConfigError

ANNOTATIONS = frozenset(
    {
        "id",
        "message",
        "auto_approve",
        "approvals",
        "approvers",
        "approvers_all",
        "max_ttl",
        "single_use",
        "business_hours",
    }
)
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class PolicyError(ConfigError):
    type_slug = "policy"
    title = "Policy error"


@dataclass(frozen=True)
class Statement:
    """One policy of the bundle: where it is, what it is called, and its annotations."""

    id: str
    file: str
    line: int
    effect: str
    text: str
    annotations: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def message(self) -> str:
        return self.annotations.get("message", "")


@dataclass(frozen=True)
class WorkflowSettings:
    timezone: str = "UTC"
    pending_ttl: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class PolicyBundle:
    hash: str
    statements: tuple[Statement, ...]
    settings: WorkflowSettings
    source: str
    policy_set: Any = field(repr=False, compare=False)
    schema: Any = field(repr=False, compare=False)
    # Parsed resource entities, per (resource, level, max TTL); filled by the engine, dropped with the bundle.
    entity_cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def statement(self, cedar_id: str) -> Statement:
        """The statement cedarpy calls `policy<N>`."""
        return self.statements[int(cedar_id.removeprefix("policy"))]

    def by_id(self, policy_id: str) -> Statement | None:
        return next((s for s in self.statements if s.id == policy_id), None)


def schema_text() -> str:
    return resources.files("amber.policy").joinpath("schema.cedarschema").read_text()


def load_bundle(directory: Path, settings: WorkflowSettings) -> PolicyBundle:
    """Read every `*.cedar` file under `directory` (sorted) and compile them."""
    if not directory.is_dir():
        raise PolicyError(f"{directory}: the policy bundle folder does not exist")
    sources: dict[str, str] = {}
    for path in sorted(directory.rglob("*.cedar")):
        try:
            sources[str(path)] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path}: cannot read policy file: {exc}") from None
    if not sources:
        raise PolicyError(f"{directory}: no .cedar files; amber denies everything without policies")
    return compile_bundle(sources, settings, source=str(directory))


def compile_bundle(sources: dict[str, str], settings: WorkflowSettings, *, source: str = "<memory>") -> PolicyBundle:
    schema = schema_text()
    statements: list[Statement] = []
    seen: dict[str, str] = {}
    for name in sorted(sources):
        for line, text in split_statements(name, sources[name]):
            statement = _compile_statement(name, line, text)
            if statement.id in seen:
                raise PolicyError(f"{name}:{line}: policy id {statement.id!r} is already used at {seen[statement.id]}")
            seen[statement.id] = statement.where
            statements.append(statement)
    combined = "\n".join(s.text for s in statements)
    result = cedarpy.validate_policies(combined, schema)
    if not result.validation_passed:
        problems = []
        for error in result.errors:
            where = statements[int(error.policy_id.removeprefix("policy"))].where if error.policy_id else source
            problems.append(f"{where}: {error.error}")
        raise PolicyError("policy bundle does not validate against amber's schema:\n  " + "\n  ".join(problems))
    digest = hashlib.sha256()
    digest.update(b"amber-policy-bundle-v1\0")
    digest.update(schema.encode())
    for name in sorted(sources):
        digest.update(b"\0" + Path(name).name.encode() + b"\0" + sources[name].encode())
    digest.update(
        json.dumps(
            {"timezone": settings.timezone, "pending_ttl_s": settings.pending_ttl.total_seconds()}, sort_keys=True
        ).encode()
    )
    return PolicyBundle(
        hash=digest.hexdigest(),
        statements=tuple(statements),
        settings=settings,
        source=source,
        policy_set=cedarpy.PolicySet.from_str(combined),
        schema=cedarpy.Schema.from_str(schema),
    )


def _compile_statement(name: str, line: int, text: str) -> Statement:
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise PolicyError(f"{name}:{line}: {exc}") from None
    policies = parsed.get("staticPolicies", {})
    if parsed.get("templates") or len(policies) != 1:
        raise PolicyError(f"{name}:{line}: expected exactly one policy statement (templates are not supported)")
    policy = next(iter(policies.values()))
    annotations: dict[str, str] = {k: (v if v is not None else "") for k, v in policy.get("annotations", {}).items()}
    unknown = sorted(set(annotations) - ANNOTATIONS)
    if unknown:
        raise PolicyError(f"{name}:{line}: unknown annotation(s) {unknown}; amber understands {sorted(ANNOTATIONS)}")
    policy_id = annotations.get("id", "").strip()
    if not policy_id:
        raise PolicyError(f'{name}:{line}: every policy needs an @id("...") so decisions can name it')
    _check_annotations(name, line, policy["effect"], annotations)
    return Statement(id=policy_id, file=name, line=line, effect=policy["effect"], text=text, annotations=annotations)


def _check_annotations(name: str, line: int, effect: str, annotations: dict[str, str]) -> None:
    where = f"{name}:{line}"
    workflow = set(annotations) - {"id", "message"}
    if effect == "forbid" and workflow:
        raise PolicyError(f"{where}: a forbid policy takes only @id and @message, not {sorted(workflow)}")
    if "approvals" in annotations:
        value = annotations["approvals"]
        if not value.isdigit() or not 1 <= int(value) <= 10:
            raise PolicyError(f"{where}: @approvals must be a number from 1 to 10, not {value!r}")
        if not (annotations.get("approvers", "").strip() or annotations.get("approvers_all", "").strip()):
            raise PolicyError(f"{where}: @approvals needs @approvers or @approvers_all (who may approve)")
    if "auto_approve" in annotations and "approvals" in annotations:
        raise PolicyError(f"{where}: a policy is either @auto_approve or needs @approvals, not both")
    if "max_ttl" in annotations:
        try:
            parse_duration(annotations["max_ttl"])
        except ValueError as exc:
            raise PolicyError(f"{where}: @max_ttl: {exc}") from None
    if "business_hours" in annotations and not _HOURS.match(annotations["business_hours"]):
        raise PolicyError(f"{where}: @business_hours must look like 09:00-18:00")
    if "single_use" in annotations and annotations["single_use"] not in ("", "true"):
        raise PolicyError(f'{where}: @single_use takes no value (or "true")')


def split_statements(name: str, text: str) -> list[tuple[int, str]]:
    """Split a .cedar file into statements at top-level `;`, keeping each one's first line.

    Comments (`//`) and string literals are skipped so a `;` inside them does not split. A trailing
    fragment without `;` is an error that names its line.
    """
    statements: list[tuple[int, str]] = []
    start: int | None = None
    depth = 0
    i = 0
    line = 1
    start_line = 1
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
        if char == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end == -1 else end
            continue
        if start is None and not char.isspace():
            start, start_line = i, line
        if char == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == ";" and depth == 0 and start is not None:
            statements.append((start_line, text[start : i + 1]))
            start = None
        i += 1
    if start is not None:
        raise PolicyError(f"{name}:{start_line}: statement does not end with ';'")
    return statements


def parse_hours(value: str) -> tuple[int, int]:
    """`09:00-18:00` -> minutes from midnight (start, end)."""
    match = _HOURS.match(value)
    if match is None:
        raise ValueError(f"not a business-hours range: {value!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return h1 * 60 + m1, h2 * 60 + m2
