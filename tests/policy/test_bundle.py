"""Loading bundles: every problem names the file, the line and what is wrong; a good bundle has a stable hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from amber.policy import PolicyError, WorkflowSettings, compile_bundle, load_bundle
from amber.policy.bundle import split_statements

GOOD = """// header comment; with a semicolon
@id("a")
permit (principal, action == Amber::Action::"request", resource);

@id("b")
@message("no; never")
forbid (principal, action == Amber::Action::"request", resource) when { context.hour < 6 };
"""
SETTINGS = WorkflowSettings()


def test_statements_keep_their_lines() -> None:
    assert [line for line, _ in split_statements("x.cedar", GOOD)] == [2, 5]


def test_hash_is_stable_and_changes_with_content_and_settings() -> None:
    first = compile_bundle({"p/main.cedar": GOOD}, SETTINGS)
    assert compile_bundle({"p/main.cedar": GOOD}, SETTINGS).hash == first.hash
    assert compile_bundle({"p/main.cedar": GOOD + "\n"}, SETTINGS).hash != first.hash
    assert compile_bundle({"p/main.cedar": GOOD}, WorkflowSettings(timezone="Asia/Tokyo")).hash != first.hash
    assert [s.id for s in first.statements] == ["a", "b"]
    assert first.by_id("b").message == "no; never"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('@id("a")\npermit (principal, action, resource) when { context.x == };\n', 1, "unexpected token"),
        ('\n\npermit (principal, action == Amber::Action::"request", resource);\n', 3, "needs an @id"),
        ('@id("a")\npermit (principal, action == Amber::Action::"request", resource)\n', 1, "does not end with ';'"),
        ('@id("a")\n@colour("red")\npermit (principal, action, resource);\n', 1, "unknown annotation(s) ['colour']"),
        ('@id("a")\n@approvals("3")\npermit (principal, action, resource);\n', 1, "needs @approvers"),
        (
            '@id("a")\n@approvals("many")\n@approvers("x")\npermit (principal, action, resource);\n',
            1,
            "@approvals must be a number",
        ),
        ('@id("a")\n@max_ttl("forever")\npermit (principal, action, resource);\n', 1, "@max_ttl: not a duration"),
        ('@id("a")\n@business_hours("9-5")\npermit (principal, action, resource);\n', 1, "09:00-18:00"),
        ('@id("a")\n@auto_approve\nforbid (principal, action, resource);\n', 1, "forbid policy takes only"),
        (
            '@id("a")\npermit (principal, action, resource);\n@id("a")\npermit (principal, action, resource);\n',
            3,
            "already used at bad.cedar:1",
        ),
    ],
)
def test_bad_policies_name_file_and_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_bundle({"bad.cedar": text}, SETTINGS)
    assert f"bad.cedar:{line}:" in info.value.message
    assert needle in info.value.message


def test_schema_violation_names_the_policy_line() -> None:
    text = (
        GOOD
        + '\n@id("c")\npermit (principal, action == Amber::Action::"request", resource)\nwhen { context.hours > 1 };\n'
    )
    with pytest.raises(PolicyError) as info:
        compile_bundle({"main.cedar": text}, SETTINGS)
    assert "main.cedar:9:" in info.value.message
    assert "hours" in info.value.message


def test_unknown_entity_type_is_a_validation_error() -> None:
    text = '@id("x")\npermit (principal in Amber::Team::"a", action == Amber::Action::"request", resource);\n'
    with pytest.raises(PolicyError, match=r"main.cedar:1:"):
        compile_bundle({"main.cedar": text}, SETTINGS)


def test_load_bundle_reads_a_folder(tmp_path: Path) -> None:
    (tmp_path / "b.cedar").write_text(GOOD)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.cedar").write_text('@id("c")\npermit (principal, action, resource);\n')
    bundle = load_bundle(tmp_path, SETTINGS)
    assert [s.id for s in bundle.statements] == ["a", "b", "c"]
    assert bundle.statements[2].where == f"{tmp_path / 'sub' / 'c.cedar'}:1"
    with pytest.raises(PolicyError, match=r"no \.cedar files"):
        load_bundle(_empty(tmp_path), SETTINGS)
    with pytest.raises(PolicyError, match="does not exist"):
        load_bundle(tmp_path / "missing", SETTINGS)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_quickstart_bundle_and_its_tests_load() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "policies"
    bundle = load_bundle(root, SETTINGS)
    assert {"oncall-reads-orders-at-once", "sre-break-glass", "contractors-once-in-office-hours"} <= {
        s.id for s in bundle.statements
    }
