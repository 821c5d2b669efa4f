"""`amber policy validate | test | explain | reload | show`: policy as code, tested like code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from amber import policy
from amber.catalog import Catalog, load_catalog
from amber.cli.client import Client
from amber.cli.text import echo, escape
from amber.core.durations import parse_duration
from amber.core.errors import ConfigError
from amber.core.settings import Settings

policy_app = typer.Typer(no_args_is_help=True, help="Validate, test and explain Cedar policies.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProfileOpt = Annotated[str, typer.Option("--profile", envvar="AMBER_PROFILE", help="Credential profile.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="amber's URL.")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Catalog file (default $AMBER_CATALOG).")]


def _bundle(catalog: Catalog, directory: Path | None) -> policy.PolicyBundle:
    settings = policy.WorkflowSettings(timezone=catalog.policy.timezone, pending_ttl=catalog.policy.pending_ttl)
    return policy.load_bundle(directory or catalog.bundle_path, settings)


@policy_app.command("validate")
def validate(
    directory: Annotated[Path | None, typer.Argument(help="Bundle folder.")] = None, catalog: CatalogOpt = None
) -> None:
    """Parse every .cedar file and validate it against amber's schema; name the file and line of a problem."""
    cat = load_catalog(catalog or Settings().catalog)
    bundle = _bundle(cat, directory)
    echo(f"{bundle.source}: OK, {len(bundle.statements)} policies, hash {bundle.hash[:16]}")


@dataclass
class CaseResult:
    name: str
    where: str
    failures: list[str]


def _subject(data: dict[str, Any], default_name: str) -> policy.Subject:
    name = str(data.get("name", default_name))
    groups = frozenset(str(g) for g in data.get("groups", []))
    return policy.Subject(
        issuer=str(data.get("iss", "https://idp.test")),
        subject=str(data.get("sub", name)),
        name=name,
        groups=groups,
        oncall=bool(data.get("oncall", "oncall" in groups)),
    )


def run_case(case: dict[str, Any], catalog: Catalog, bundle: policy.PolicyBundle) -> list[str]:
    resource_spec = catalog.resource(str(case["resource"]))
    level_name = str(case.get("level", "read-only"))
    level_spec = catalog.level(resource_spec.name, level_name)
    resource = policy.ResourceInfo(
        resource_spec.name,
        resource_spec.kind,
        resource_spec.environment,
        frozenset(resource_spec.tags),
        frozenset(resource_spec.owners),
    )
    level = policy.LevelInfo(
        level_name, level_spec.max_ttl, level_spec.justification.min_length, level_spec.justification.pattern
    )
    context = case.get("context", {}) or {}
    at = datetime.fromisoformat(str(context.get("at", "2026-11-26T10:00:00+00:00"))).astimezone(UTC)
    expect = case.get("expect", {}) or {}
    failures: list[str] = []
    if "approver" in case:
        requester = _subject(case.get("principal", {}), "requester")
        verdict = policy.may_approve(
            policy.ApprovalInput(
                bundle=bundle,
                requester=requester,
                approver=_subject(case["approver"], "approver"),
                resource=resource,
                level=level,
                approver_groups=frozenset(case.get("approver_sets", {}).get("any", [])),
                approver_all_groups=frozenset(case.get("approver_sets", {}).get("all", [])),
                at=at,
            )
        )
        if "allowed" in expect and verdict.allowed != bool(expect["allowed"]):
            failures.append(f"expected allowed={expect['allowed']}, got {verdict.allowed} ({verdict.reason})")
        return failures
    starts_at = at + parse_duration(context["starts_in"]) if "starts_in" in context else None
    decision = policy.decide(
        policy.PolicyInput(
            bundle=bundle,
            requester=_subject(case.get("principal", {}), "requester"),
            resource=resource,
            level=level,
            requested_ttl=parse_duration(context.get("ttl", "1h")),
            reason=str(context.get("reason", "testing INC-1")),
            at=at,
            starts_at=starts_at,
            history=policy.History(
                int(context.get("requests_last_24h", 0)),
                int(context.get("denials_last_24h", 0)),
                int(context.get("active_grants", 0)),
            ),
            action="break_glass" if case.get("action") == "break_glass" else "request",
        )
    )
    got = f"{decision.outcome} by {list(decision.policy_ids)}: {'; '.join(decision.reasons)}"
    if "outcome" in expect and decision.outcome != expect["outcome"]:
        failures.append(f"expected outcome {expect['outcome']}, got {got}")
    if "policies" in expect and list(decision.policy_ids) != list(expect["policies"]):
        failures.append(f"expected policies {expect['policies']}, got {list(decision.policy_ids)}")
    if "approvals" in expect and decision.approvals_required != int(expect["approvals"]):
        failures.append(f"expected {expect['approvals']} approvals, got {decision.approvals_required}")
    if "approvers" in expect and sorted(decision.approver_groups) != sorted(expect["approvers"]):
        failures.append(f"expected approvers {sorted(expect['approvers'])}, got {list(decision.approver_groups)}")
    if "approvers_all" in expect and sorted(decision.approver_all_groups) != sorted(expect["approvers_all"]):
        failures.append(
            f"expected one from each of {sorted(expect['approvers_all'])}, got {list(decision.approver_all_groups)}"
        )
    if "ttl" in expect and decision.ttl != parse_duration(expect["ttl"]):
        failures.append(f"expected ttl {expect['ttl']}, got {decision.ttl}")
    if "single_use" in expect and decision.single_use != bool(expect["single_use"]):
        failures.append(f"expected single_use={expect['single_use']}, got {decision.single_use}")
    if "reason_contains" in expect and not any(str(expect["reason_contains"]) in r for r in decision.reasons):
        failures.append(f"expected a reason containing {expect['reason_contains']!r}, got {list(decision.reasons)}")
    return failures


def load_cases(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(directory.rglob("*.yaml")) + sorted(directory.rglob("*.yml")):
        try:
            node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
            data = yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else 1
            raise ConfigError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
        if not isinstance(data, list):
            raise ConfigError(f"{path}:1: a policy test file is a list of cases")
        lines = [item.start_mark.line + 1 for item in node.value] if isinstance(node, yaml.SequenceNode) else []
        for index, case in enumerate(data):
            where = f"{path}:{lines[index] if index < len(lines) else 1}"
            if not isinstance(case, dict) or "resource" not in case or "expect" not in case:
                raise ConfigError(f"{where}: a case needs at least `resource` and `expect`")
            cases.append((where, case))
    return cases


@policy_app.command("test")
def run_tests(
    directory: Annotated[Path | None, typer.Argument(help="Bundle folder (tests in its tests/).")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the YAML policy test cases in the bundle's tests/ folder and report like a test runner."""
    cat = load_catalog(catalog or Settings().catalog)
    bundle = _bundle(cat, directory)
    folder = (directory or cat.bundle_path) / "tests"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no tests folder; write cases as YAML files there")
    results = []
    for where, case in load_cases(folder):
        try:
            failures = run_case(case, cat, bundle)
        except (ValueError, KeyError, ConfigError) as exc:
            failures = [f"cannot run this case: {exc}"]
        results.append(CaseResult(str(case.get("name", where)), where, failures))
    failed = [r for r in results if r.failures]
    if as_json:
        echo(json.dumps([{"name": r.name, "where": r.where, "failures": r.failures} for r in results], indent=2))
    else:
        for r in results:
            echo(f"{'PASS' if not r.failures else 'FAIL'}  {r.name}  ({r.where})")
            for failure in r.failures:
                echo(f"      {failure}")
        echo(f"policy tests: {len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


@policy_app.command("explain")
def explain(request_id: str, profile: ProfileOpt = "default", url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Why a request got its decision: the policies, their files and lines, the approvals so far."""
    data = Client.for_profile(profile, url).call("GET", f"/v1/requests/{request_id}/explain")
    if as_json:
        echo(json.dumps(data, indent=2, sort_keys=True))
        return
    echo(
        f"request {data['request_id']}: {data['status']} (decided {data['outcome']}, "
        f"policy {data['policy_hash'][:12]}{'' if data['decided_by_running_bundle'] else ', no longer running'})"
    )
    for reason in data["reasons"]:
        echo(f"  - {escape(reason)}")
    for item in data["policies"]:
        echo(f"  policy {item['id']}" + (f"  at {item['where']}" if item["where"] else ""))
        if item.get("text"):
            for line in item["text"].splitlines():
                echo(f"      {line}")
    approvals = data["approvals"]
    if approvals["required"]:
        echo(
            f"  approvals: {approvals['received']} of {approvals['required']} from "
            f"{', '.join(approvals['from_any_of'])}"
            + (
                f", one from each of {', '.join(approvals['one_from_each_of'])}"
                if approvals["one_from_each_of"]
                else ""
            )
            + (" (satisfied)" if approvals["satisfied"] else "")
        )
        for lapsed in approvals.get("not_counted", []):
            echo(f"    not counted: {lapsed['approver']}: {lapsed['reason']}")
    conditions = {k: v for k, v in data["conditions"].items() if v}
    if conditions:
        echo(f"  conditions: {conditions}")


@policy_app.command("reload")
def reload(profile: ProfileOpt = "default", url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Ask the running amber to reload its catalog, policy bundle and identity settings (admins), like
    `amber reload`. Anything refused changes nothing."""
    data = Client.for_profile(profile, url).call("POST", "/v1/policy/reload")
    if as_json:
        echo(json.dumps(data, indent=2))
    elif data["changed"]:
        echo(f"policy reloaded: {data['previous_policy_hash'][:12]} -> {data['policy_hash'][:12]}")
    else:
        echo(f"policy unchanged: {data['policy_hash'][:12]}")


def relative_start(value: str, now: datetime) -> datetime:
    """`+2h` or `in 2h` from now, or an RFC 3339 instant (UTC if no zone is given)."""
    text = value.strip()
    if text.startswith("+") or text.startswith("in "):
        return now + parse_duration(text.lstrip("+").removeprefix("in ").strip())
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


__all__ = ["policy_app", "relative_start", "timedelta"]
