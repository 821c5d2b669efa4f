"""The replay covers every column: each one of requests, approvals and grants, edited in the state database
by someone who switched the state tables' own triggers off, is named by `amber audit verify`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from amber import audit
from amber.access_requests.models import AccessRequest, Approval
from amber.audit.replay import EXEMPT, SET_BUT_UNRECORDED, _compare_row, _replay, compared_columns
from amber.core.db import Base, make_unit_of_work
from amber.grants.models import Grant
from amber.ledger.models import LedgerEntry
from tests.conftest import Amber, connect_as

TABLES = ("access_requests", "approvals", "grants")
ZONE = "Asia/Kolkata"  # +05:30: a business-hours window ends at a local time that is not a UTC one

EXTRA = """
@id("contractors-once")
@approvals("1")
@approvers("leads")
@single_use
permit (principal in Amber::Group::"contractors", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only");

@id("sre-break-glass")
@max_ttl("1h")
permit (principal in Amber::Group::"sre", action == Amber::Action::"break_glass", resource);

@id("auditors-need-security-and-owner")
@approvals("2")
@approvers_all("security, owners")
permit (principal in Amber::Group::"auditors", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only");

@id("analysts-in-office-hours")
@auto_approve
@business_hours("09:00-17:00")
permit (principal in Amber::Group::"analysts", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only");
"""


@dataclass
class Rows:
    """The rows whose columns the test edits: the richest of each table, and a request nothing refers to."""

    request: str
    lone_request: str
    window_grant: str
    approval: int
    grant: str


def test_every_column_is_compared_or_exempt_with_a_reason() -> None:
    for table in TABLES:
        actual = {column.name for column in Base.metadata.tables[table].columns}
        compared = set(compared_columns(table))
        exempt = set(EXEMPT[table])
        assert compared | exempt == actual, table
        assert not compared & exempt, table
        assert all(len(reason) > 20 for reason in EXEMPT[table].values()), table
    assert set(EXEMPT) == set(TABLES)


def test_the_exempt_list_is_the_one_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "ledger.md").read_text()
    for table, columns in EXEMPT.items():
        for column in columns:
            assert f"`{table}.{column}`" in doc


def _post(amber: Amber, path: str, user: str, *groups: str, body: dict[str, Any] | None = None) -> Any:
    response = amber.api.post(path, json=body if body is not None else {}, headers=amber.headers(user, *groups))
    assert response.status_code < 300, response.text
    return response.json()


def _ask(amber: Amber, user: str, *groups: str, **fields: Any) -> Any:
    body = {"resource": "orders-db", "level": "read-only", "reason": "investigating INC-42", "duration": "1h"}
    return _post(amber, "/v1/requests", user, *groups, body={**body, **fields})


def _to_local_ten(amber: Amber) -> None:
    local = amber.clock.now().astimezone(ZoneInfo(ZONE))
    ten = local.replace(hour=10, minute=0, second=0, microsecond=0)
    amber.clock.advance((ten if ten > local else ten + timedelta(days=1)) - local)


def _lifecycle(amber: Amber) -> Rows:
    """Every kind of request and grant there is, so every column holds a value somewhere."""
    catalog = amber.rt.catalog()
    (catalog.bundle_path / "extra.cedar").write_text(EXTRA)
    path = catalog.path
    path.write_text(
        path.read_text().replace("  security_groups: [security]", f"  timezone: {ZONE}\n  security_groups: [security]")
    )
    amber.rt.reload_catalog()
    amber.rt.grants.gateway = ("127.0.0.1", 6432)  # tokens are issued; nothing connects through it here
    _to_local_ten(amber)

    glass = _ask(amber, "sam", "sre", break_glass=True, reason="orders API down, INC-77")
    _post(amber, f"/v1/requests/{glass['id']}/review", "olga", "team-orders", body={"comment": "checked: reads only"})
    _post(amber, f"/v1/grants/{glass['grant']['id']}/revoke", "ada", "platform", body={"reason": "incident over"})

    pending = _ask(amber, "bob", "engineering")
    approved = _post(
        amber, f"/v1/requests/{pending['id']}/approve", "carol", "leads", body={"comment": "ok for INC-42"}
    )
    _post(amber, f"/v1/grants/{approved['grant']['id']}/credentials", "bob", "engineering")

    _ask(amber, "ann", "auditors")  # needs one approval from each of two groups: stays pending
    denied = _ask(amber, "dan", "marketing")
    window = _ask(amber, "ivy", "analysts", duration="8h")  # granted until the end of business hours (17:00 local)
    start = (amber.clock.now() + timedelta(hours=2)).astimezone(ZoneInfo(ZONE)).isoformat()
    _ask(amber, "bob", "engineering", "oncall", supersedes=pending["id"], start=start)

    gateway = _ask(amber, "alice", "engineering", "oncall", level="gateway")
    _post(amber, f"/v1/grants/{gateway['grant']['id']}/credentials", "alice", "engineering", "oncall")

    once = _ask(amber, "cody", "contractors")
    used = _post(amber, f"/v1/requests/{once['id']}/approve", "carol", "leads")
    claim = _post(amber, f"/v1/grants/{used['grant']['id']}/credentials", "cody", "contractors")
    with connect_as(claim["url"]) as conn:
        conn.execute("SELECT 1")
        amber.tick()  # the single-use grant's session is seen

    with make_unit_of_work(amber.rt.engine)() as session:
        approval = session.query(Approval).filter_by(request_id=pending["id"]).one().id
    return Rows(
        request=glass["id"],
        lone_request=denied["id"],
        window_grant=window["grant"]["id"],
        approval=approval,
        grant=gateway["grant"]["id"],
    )


@pytest.fixture
def lived(amber: Amber) -> tuple[Amber, Rows]:
    return amber, _lifecycle(amber)


def _verify(engine: Engine) -> list[str]:
    with make_unit_of_work(engine)() as session:
        return audit.verify(session).problems


def test_a_full_lifecycle_replays_to_exactly_the_state_tables(lived: tuple[Amber, Rows]) -> None:
    amber, rows = lived
    assert _verify(amber.rt.engine) == []
    local = amber.clock.now().astimezone(ZoneInfo(ZONE))
    amber.clock.advance(local.replace(hour=17) - local - timedelta(seconds=1))
    assert rows.window_grant not in amber.tick()
    amber.clock.advance(timedelta(seconds=1))
    assert rows.window_grant in amber.tick()  # business hours end at 17:00 local time, on every state store
    assert _verify(amber.rt.engine) == []
    amber.clock.advance(timedelta(days=2))
    amber.tick()  # pending requests expire, live grants expire and are deprovisioned
    assert _verify(amber.rt.engine) == []
    with make_unit_of_work(amber.rt.engine)() as session:
        statuses = {row.status for row in session.query(AccessRequest)}
        ends = {row.end_reason for row in session.query(Grant)}
    assert {"approved", "denied", "expired"} <= statuses
    assert {"expired", "incident over", "single-use grant: its session ended"} & ends


def _switch_off_state_triggers(conn: Connection) -> None:
    """What someone with write access to the state database does first; only the ledger's triggers stay."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE access_requests DISABLE TRIGGER USER")
    else:
        conn.exec_driver_sql("DROP TRIGGER access_requests_immutable")
        conn.exec_driver_sql("DROP TRIGGER access_requests_no_delete")


def _other(value: Any, column_type: str) -> Any:
    """A different value of the same type and length."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, datetime):
        return value + timedelta(minutes=7)
    if isinstance(value, str):
        if value.startswith("["):
            return json.dumps([*json.loads(value), "intruders"])
        return value[:-1] + ("x" if value[-1:] != "x" else "y")
    assert value is None
    if "DATETIME" in column_type or "TIMESTAMP" in column_type:
        return datetime(2026, 1, 1, tzinfo=UTC)
    if "INT" in column_type:
        return 5432
    return "x"


def _edit_and_verify(engine: Engine, table: str, row_id: object, column: str, value: Any) -> list[str]:
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            _switch_off_state_triggers(conn)
            conn.execute(text(f"UPDATE {table} SET {column} = :value WHERE id = :id"), {"value": value, "id": row_id})
            return audit.verify(Session(bind=conn)).problems
        finally:
            tx.rollback()


def _current(engine: Engine, table: str, row_id: object, column: str) -> Any:
    model = {"access_requests": AccessRequest, "approvals": Approval, "grants": Grant}[table]
    with make_unit_of_work(engine)() as session:
        row = session.get(model, row_id)
        assert row is not None
        return getattr(row, column)


def _cases(rows: Rows) -> Iterator[tuple[str, object, str]]:
    """(table, row id, column) for every compared column; a request's id is changed on one nothing refers to."""
    for table, row_id in (("access_requests", rows.request), ("approvals", rows.approval), ("grants", rows.grant)):
        for column in compared_columns(table):
            yield table, rows.lone_request if (table, column) == ("access_requests", "id") else row_id, column


# Key columns: a row under another key is a row no event explains (and the ledger's row is missing).
KEYS = {("access_requests", "id"), ("grants", "id"), ("approvals", "request_id")}
KEYS |= {("approvals", "approver_issuer"), ("approvals", "approver_subject")}


def test_an_edit_of_any_column_is_named_with_its_table_row_and_column(lived: tuple[Amber, Rows]) -> None:
    amber, rows = lived
    engine = amber.rt.engine
    assert _verify(engine) == []
    for table, row_id, column in _cases(rows):
        column_type = str(Base.metadata.tables[table].columns[column].type)
        current = _current(engine, table, row_id, column)
        if (table, column) == ("grants", "request_id"):
            new: Any = rows.lone_request  # another request, which has no grant
        elif (table, column) == ("approvals", "request_id"):
            new = rows.request
        else:
            new = _other(current, column_type)
        problems = _edit_and_verify(engine, table, row_id, column, new)
        label = f"{table} {row_id}"
        if (table, column) in KEYS:
            shown = new if column == "id" else row_id
            assert any(p.startswith(f"{table} {shown}: the state row has no ledger events") for p in problems), (
                table,
                column,
                problems,
            )
            assert any("the state row is gone" in p for p in problems), (table, column, problems)
            continue
        digest = " (SHA-256)" if column in ("gateway_token_hash", "gateway_scram_verifier") else ""
        assert len(problems) == 1, (table, column, problems)
        assert problems[0].startswith(f"{label}: {column}{digest} is "), (table, column, problems)
    assert _verify(engine) == []


T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BOB = ("https://idp.test", "u-1", "bob")
CAROL = ("https://idp.test", "u-2", "carol")


def _old_entry(seq: int, event: str, subject: str, payload: dict[str, Any], actor: tuple[str, str, str]) -> LedgerEntry:
    return LedgerEntry(
        seq=seq,
        entry_at=T0 + timedelta(seconds=seq),
        event_type=event,
        actor_issuer=actor[0],
        actor_subject=actor[1],
        actor_name=actor[2],
        subject_kind=event.partition(".")[0],
        subject_id=subject,
        payload=json.dumps(payload),
        prev_hash="",
        entry_hash="",
    )


OLD_LEDGER = [
    # As amber wrote them before break-glass, schedules, conditions, gateway token digests and grantee names.
    (
        "request.submitted",
        "req_1",
        {
            "resource": "db",
            "level": "ro",
            "reason": "INC-1",
            "requested_ttl_s": 60,
            "groups": ["eng"],
            "supersedes": None,
        },
        BOB,
    ),
    (
        "request.decided",
        "req_1",
        {
            "outcome": "require_approval",
            "reasons": [],
            "policy_ids": ["p"],
            "policy_hash": "h",
            "granted_ttl_s": 60,
            "approvals_required": 1,
            "approver_groups": ["leads"],
        },
        BOB,
    ),
    ("request.reviewed", "req_1", {"verdict": "approve", "comment": "ok"}, CAROL),
    ("request.approved", "req_1", {"by": "approvals"}, CAROL),
    (
        "grant.issued",
        "grt_1",
        {
            "request_id": "req_1",
            "grantee": {"iss": BOB[0], "sub": BOB[1]},
            "resource": "db",
            "level": "ro",
            "role": "amber_g_1",
            "expires_at": "2026-11-26T13:00:00.000000Z",
            "via": "gateway",
        },
        CAROL,
    ),
    ("grant.activated", "grt_1", {"role": "amber_g_1", "target": "::1:5432/orders", "provision_ms": 1.0}, BOB),
    ("grant.credential_issued", "grt_1", {"to": {"iss": BOB[0], "sub": BOB[1]}}, BOB),
]


def test_entries_written_before_a_column_was_recorded_replay_to_what_the_migration_gave_the_row() -> None:
    entries = [_old_entry(seq, *entry) for seq, entry in enumerate(OLD_LEDGER, start=1)]
    replayed = _replay(iter(entries))
    request = replayed.requests["req_1"].values
    assert (request["break_glass"], request["requested_start_at"], request["single_use"]) == (False, None, False)
    assert (request["approver_all_groups"], request["window_end_at"], request["pending_expires_at"]) == (
        "[]",
        None,
        None,
    )
    assert (request["status"], request["closed_at"]) == ("approved", "2026-11-26T12:00:04.000000Z")
    assert replayed.approvals["req_1", *CAROL[:2]].values["approver_groups"] == "[]"
    grant = replayed.grants["grt_1"].values
    assert grant["grantee_name"] == "bob"  # through the request
    assert (grant["connect_host"], grant["connect_port"], grant["connect_database"]) == ("::1", 5432, "orders")
    assert (grant["starts_at"], grant["single_use"]) == (None, False)
    assert grant["gateway_token_hash"] is SET_BUT_UNRECORDED


def _old_gateway_grant_problems(token_hash: str | None) -> list[str]:
    entries = [_old_entry(seq, *entry) for seq, entry in enumerate(OLD_LEDGER, start=1)]
    state = _replay(iter(entries)).grants["grt_1"]
    row = Grant(**{column: value for column, value in state.values.items() if value is not SET_BUT_UNRECORDED})
    row.gateway_token_hash, row.gateway_scram_verifier = token_hash, "SCRAM-SHA-256$4096:..."
    report = audit.AuditReport()
    _compare_row(report, "grants", "grt_1", row, state)
    return report.problems


def test_an_old_gateway_credential_needs_its_hash_set_but_any_value_passes() -> None:
    assert _old_gateway_grant_problems("a" * 64) == []
    assert _old_gateway_grant_problems(None) == [
        "grants grt_1: gateway_token_hash (SHA-256) is None in the state table but the ledger (up to entry 7) "
        "says <set, value not on record>"
    ]


def test_an_entry_the_replay_cannot_read_is_a_problem_not_a_crash() -> None:
    submitted = dict(OLD_LEDGER[0][2])
    del submitted["groups"]
    activated = {"role": "amber_g_1", "target": "db.example/orders", "provision_ms": 1.0}  # no port
    entries = [
        _old_entry(1, "request.submitted", "req_1", submitted, BOB),
        _old_entry(2, "grant.activated", "grt_1", activated, BOB),
    ]
    problems = _replay(iter(entries)).problems
    assert len(problems) == 2
    assert problems[0].startswith("entry 1 (request.submitted): the replay cannot read its payload (KeyError")
    assert problems[1].startswith("entry 2 (grant.activated): the replay cannot read its payload (ValueError")
