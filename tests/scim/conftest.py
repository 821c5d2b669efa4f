"""Fixtures for SCIM tests: the shared amber (dev issuer, both state stores) with SCIM provisioning turned on."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import CATALOG, POLICIES

SCIM_TOKEN = "scim-provisioning-token-for-tests-0123456789"


@pytest.fixture
def catalog_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AMBER_TEST_SCIM_TOKEN", SCIM_TOKEN)
    scim = (
        "  scim:\n    token: env:AMBER_TEST_SCIM_TOKEN\n    issuer: dev\n    subject_attribute: externalId\n"
        "  roles:\n    approver: [leads, team-orders]\n"
    )
    text = textwrap.dedent(CATALOG).replace("  auditors: [security]\n", "  auditors: [security]\n" + scim)
    path = tmp_path / "amber.yaml"
    path.write_text(text)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    return path
