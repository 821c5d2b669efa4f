"""Malformed or unauthenticated API calls get RFC 9457 problem+json answers with a clear message."""

from __future__ import annotations

import pytest

from tests.conftest import Amber

PROBLEM = "application/problem+json"


def _assert_problem(response, status: int, needle: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://amber.dev/problems/")
    assert needle in body["detail"], body
    return body


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"resource": "orders-db", "level": "read-only", "reason": "x"}, "duration: Field required"),
        (
            {"resource": "orders-db", "level": "read-only", "reason": "x", "duration": "forever"},
            "not a duration",
        ),
        ({"resource": "orders-db", "level": "read-only", "reason": "", "duration": "1h"}, "reason"),
        (
            {"resource": "orders-db", "level": "read-only", "reason": "x", "duration": "1h", "admin": True},
            "Extra inputs are not permitted",
        ),
        ({"resource": "orders-db", "level": "read-only", "reason": "x", "duration": -5}, "positive"),
    ],
)
def test_malformed_request_bodies(amber: Amber, payload: dict, needle: str) -> None:  # type: ignore[type-arg]
    response = amber.api.post("/v1/requests", json=payload, headers=amber.headers("bob", "engineering"))
    body = _assert_problem(response, 422, needle)
    assert body["errors"]


def test_body_that_is_not_json(amber: Amber) -> None:
    response = amber.api.post(
        "/v1/requests",
        content=b"{not json",
        headers={**amber.headers("bob", "engineering"), "content-type": "application/json"},
    )
    _assert_problem(response, 422, "JSON")


def test_unknown_resource_and_level(amber: Amber) -> None:
    headers = amber.headers("bob", "engineering")
    response = amber.api.post(
        "/v1/requests",
        headers=headers,
        json={"resource": "payroll", "level": "read-only", "reason": "x", "duration": "1h"},
    )
    _assert_problem(response, 404, "no resource named 'payroll'")
    response = amber.api.post(
        "/v1/requests",
        headers=headers,
        json={"resource": "orders-db", "level": "admin", "reason": "x", "duration": "1h"},
    )
    _assert_problem(response, 404, "has no access level 'admin'")


def test_missing_and_bad_tokens(amber: Amber) -> None:
    _assert_problem(amber.api.get("/v1/requests"), 401, "Authorization: Bearer")
    response = amber.api.get("/v1/requests", headers={"authorization": "Bearer not-a-jwt"})
    body = _assert_problem(response, 401, "not a well-formed JWT")
    assert response.headers["www-authenticate"] == "Bearer"
    assert body["title"] == "Not authenticated"


def test_unknown_ids_and_routes(amber: Amber) -> None:
    headers = amber.headers("bob", "engineering")
    _assert_problem(amber.api.get("/v1/requests/req_nope", headers=headers), 404, "no request req_nope")
    _assert_problem(amber.api.post("/v1/grants/grt_nope/revoke", json={}, headers=headers), 404, "no grant")
    _assert_problem(amber.api.get("/v1/nothing-here", headers=headers), 404, "Not Found")
    _assert_problem(amber.api.delete("/v1/requests", headers=headers), 405, "Method Not Allowed")


def test_health_metrics_and_openapi(amber: Amber) -> None:
    health = amber.api.get("/healthz").json()
    assert health["status"] == "ok"
    assert "DEVELOPMENT identity issuer" in health["warnings"][0]
    amber.request("alice", "engineering", "oncall")
    metrics = amber.api.get("/metrics").text
    assert 'amber_requests_total{outcome="auto_approve"} 1.0' in metrics
    assert "amber_provision_seconds_bucket" in metrics
    spec = amber.api.get("/openapi.json").json()
    assert "/v1/requests" in spec["paths"]
    assert "/v1/grants/{grant_id}/revoke" in spec["paths"]
