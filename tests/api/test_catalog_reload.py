"""Reloading the catalog and its policy bundle: a bad file changes nothing; a good one is a ledger event."""

from __future__ import annotations

from typing import Any

from tests.conftest import Amber

SRE = """
@id("sre-at-once")
@auto_approve
permit (principal in Amber::Group::"sre", action == Amber::Action::"request", resource);
"""


def _events(amber: Amber, kind: str) -> list[dict[str, Any]]:
    entries = amber.api.get("/v1/ledger", headers=amber.headers("sue", "security")).json()["entries"]
    return [e for e in entries if e["type"] == kind]


def _reload(amber: Amber) -> Any:
    return amber.api.post("/v1/policy/reload", headers=amber.headers("root", "platform"))


def test_bad_policy_file_keeps_the_running_bundle(amber: Amber) -> None:
    policies = amber.rt.catalog().bundle_path
    before = amber.rt.catalog.policies().hash
    (policies / "broken.cedar").write_text('@id("x")\npermit (principal, action, resource) when { context.nope };\n')
    response = _reload(amber)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert f"still running {before[:12]}" in detail
    assert f"{policies / 'broken.cedar'}:1:" in detail
    assert amber.rt.catalog.policies().hash == before
    assert amber.request("alice", "engineering", "oncall")["status"] == "approved"  # still serving
    assert len(_events(amber, "policy.loaded")) == 1


def test_bad_catalog_keeps_the_running_one(amber: Amber) -> None:
    path = amber.rt.catalog().path
    path.write_text(path.read_text().replace("max_ttl: 8h", "max_ttl: 8 hours please"))
    response = _reload(amber)
    assert response.status_code == 422
    assert f"{path}:" in response.json()["detail"]
    assert "max_ttl" in response.json()["detail"]


def test_good_reload_is_recorded_with_old_and_new_hash_and_who(amber: Amber) -> None:
    before = amber.rt.catalog.policies().hash
    (amber.rt.catalog().bundle_path / "sre.cedar").write_text(SRE)
    assert amber.api.post("/v1/policy/reload", headers=amber.headers("bob", "engineering")).status_code == 403
    response = _reload(amber)
    assert response.status_code == 200, response.text
    after = amber.rt.catalog.policies().hash
    assert response.json() == {"previous_policy_hash": before, "policy_hash": after, "changed": True}
    events = _events(amber, "policy.loaded")
    assert [e["payload"]["policy_hash"] for e in events] == [before, after]
    assert events[1]["payload"]["previous_policy_hash"] == before
    assert events[1]["actor"]["sub"] == "dev:root"
    assert "sre-at-once" in events[1]["payload"]["policies"]
    body = amber.request("sam", "sre")
    assert body["status"] == "approved"
    assert body["decision"]["policy_hash"] == after
    assert body["decision"]["policy_ids"] == ["sre-at-once"]
    assert _reload(amber).json()["changed"] is False
    assert len(_events(amber, "policy.loaded")) == 2


def test_catalog_file_change_is_recorded(amber: Amber) -> None:
    path = amber.rt.catalog().path
    first = amber.rt.catalog().content_hash
    path.write_text(path.read_text().replace("statement_timeout: 5s", "statement_timeout: 6s"))
    _reload(amber)
    events = _events(amber, "catalog.loaded")
    assert [e["payload"]["content_hash"] for e in events] == [first, amber.rt.catalog().content_hash]
