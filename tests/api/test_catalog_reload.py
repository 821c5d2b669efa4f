"""Reloading the catalog: a bad file changes nothing; a good one is a ledger event tied to its hash."""

from __future__ import annotations

import pytest

from amber.core.errors import ConfigError
from tests.conftest import Amber


def _catalog_events(amber: Amber) -> list[dict]:  # type: ignore[type-arg]
    entries = amber.api.get("/v1/ledger", headers=amber.headers("sue", "security")).json()["entries"]
    return [e for e in entries if e["type"] == "catalog.loaded"]


def test_bad_catalog_keeps_the_running_one(amber: Amber) -> None:
    path = amber.rt.catalog().path
    good = path.read_text()
    before = amber.rt.catalog().content_hash
    path.write_text(good.replace("max_ttl: 8h", "max_ttl: 8 hours please"))
    with pytest.raises(ConfigError) as info:
        amber.rt.reload_catalog()
    assert f"{path}:" in info.value.message
    assert "max_ttl" in info.value.message
    assert amber.rt.catalog().content_hash == before
    assert amber.request("alice", "engineering", "oncall")["status"] == "approved"  # still serving
    assert len(_catalog_events(amber)) == 1


def test_good_reload_is_recorded_with_old_and_new_hash(amber: Amber) -> None:
    path = amber.rt.catalog().path
    first = amber.rt.catalog()
    path.write_text(path.read_text().replace("auto_approve: [oncall]", "auto_approve: [oncall, sre]"))
    amber.rt.reload_catalog()
    events = _catalog_events(amber)
    assert [e["payload"]["content_hash"] for e in events] == [first.content_hash, amber.rt.catalog().content_hash]
    assert events[1]["payload"]["previous_content_hash"] == first.content_hash
    assert events[1]["payload"]["policy_hash"] != first.policy_hash
    # The new policy is in force for the next decision, and the decision names its hash.
    body = amber.request("sam", "engineering", "sre")
    assert body["status"] == "approved"
    assert body["decision"]["policy_hash"] == amber.rt.catalog().policy_hash
    amber.rt.reload_catalog()  # unchanged file: nothing new on record
    assert len(_catalog_events(amber)) == 2
