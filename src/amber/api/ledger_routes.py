"""HTTP routes of the tamper-evident ledger: the well-known checkpoint and keys, proofs, receipts.

Thin: parse, authorize, call amber.ledger, render. Public (no token): the latest signed checkpoint, the
verifier keys, consistency proofs and the key rotation entries with their inclusion proofs: what an independent
witness (`amber witness`) needs, with no amber identity (decision 0014). They reveal sizes, subtree hashes and
public keys, no entry anyone wrote. Inclusion proofs need any verified identity (they reveal a leaf's hash).
Receipts carry an entry, so only the people involved (the entry's actor, whoever may see the request or grant it
concerns) and auditors get one.

Signing a checkpoint costs a signature, a witness delivery and a row that stays forever: only admins force one
(the POST, or a proof or receipt of an entry newer than the latest checkpoint). Everyone else gets proofs against
the latest signed checkpoint, and a 409 saying when to come back for an entry it does not cover yet.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from amber.access_requests import is_admin, is_auditor
from amber.api.auth import PrincipalDep, RuntimeDep
from amber.api.runtime import Runtime
from amber.core.durations import format_duration
from amber.core.errors import Conflict, Forbidden, NotFound
from amber.grants import get as get_grant
from amber.identity import Principal
from amber.ledger import checkpoints, proofs
from amber.ledger import head as ledger_head
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.models import LedgerEntry

WELL_KNOWN = "/.well-known/amber-ledger"
MAX_SEQ = 2**63 - 1  # the largest sequence number a BIGINT (and SQLite's INTEGER) holds
TEXT = "text/plain; charset=utf-8"

router = APIRouter()


def _checkpointer(rt: Runtime) -> Checkpointer:
    if rt.checkpointer is None:
        raise NotFound("this amber does not sign ledger checkpoints")
    return rt.checkpointer


@router.get(f"{WELL_KNOWN}/checkpoint", response_class=PlainTextResponse, tags=["ledger"])
def well_known_checkpoint(rt: RuntimeDep) -> PlainTextResponse:
    """The latest signed checkpoint as a C2SP signed note."""
    with rt.uow() as session:
        latest = checkpoints.latest_checkpoint(session)
    if latest is None:
        raise NotFound("no checkpoint has been signed yet")
    return PlainTextResponse(latest.note, media_type=TEXT)


@router.get(f"{WELL_KNOWN}.json", tags=["ledger"])
def well_known(rt: RuntimeDep) -> dict[str, Any]:
    """The log's origin, every verifier key it has used (oldest first), the key in force, the latest checkpoint."""
    signer = _checkpointer(rt)
    with rt.uow() as session:
        latest = checkpoints.latest_checkpoint(session)
        history = checkpoints.key_history(session)
    return {
        "origin": signer.origin,
        "keys": history or [signer.verifier.vkey],
        "key_in_force": history[-1] if history else signer.verifier.vkey,
        "checkpoint": latest.note if latest else None,
        "tree_size": latest.tree_size if latest else 0,
    }


@router.post("/v1/ledger/checkpoints", status_code=201, tags=["ledger"])
def sign_checkpoint(rt: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    if not is_admin(rt.catalog(), who):
        raise Forbidden("only admins sign checkpoints on demand")
    view = _checkpointer(rt).sign_now()
    return {"id": view.id, "tree_size": view.tree_size, "root": view.root_hash, "note": view.note}


@router.get("/v1/ledger/proofs/inclusion", tags=["ledger"])
def inclusion_proof(
    rt: RuntimeDep,
    who: PrincipalDep,
    seq: int = Query(ge=1, le=MAX_SEQ),
    size: int | None = Query(default=None, ge=1, le=MAX_SEQ),
) -> dict[str, Any]:
    """Entry `seq` in the tree of `size` entries (default: the latest signed checkpoint, signed now if needed)."""
    with rt.uow() as session:
        note = None
        if size is None:
            latest = _covering(rt, who, seq)
            size, note = latest.tree_size, latest.note
        body = proofs.inclusion(session, seq, size).as_dict()
    return {**body, "checkpoint": note}


@router.get("/v1/ledger/proofs/consistency", tags=["ledger"])
def consistency_proof(
    rt: RuntimeDep,
    old: int = Query(ge=0, le=MAX_SEQ),
    new: int | None = Query(default=None, ge=0, le=MAX_SEQ),
) -> dict[str, Any]:
    """The tree of `new` entries (default: the latest) extends the tree of `old` entries, append-only. Public:
    witnesses check it before they cosign (it holds subtree hashes only)."""
    with rt.uow() as session:
        return proofs.consistency(session, old, new).as_dict()


@router.get(f"{WELL_KNOWN}/rotations", tags=["ledger"])
def key_rotations(rt: RuntimeDep, size: int | None = Query(default=None, ge=1, le=MAX_SEQ)) -> list[dict[str, Any]]:
    """Every `ledger.key_rotated` entry in the tree of `size` entries (default: the latest signed checkpoint's),
    each with its inclusion proof in that tree: how a witness follows a signed key rotation. Public: a rotation
    entry holds the two public keys, the old key's signature and amber's system actor, nothing anyone wrote."""
    with rt.uow() as session:
        if size is None:
            latest = checkpoints.latest_checkpoint(session)
            if latest is None:
                raise NotFound("no checkpoint has been signed yet")
            size = latest.tree_size
        return proofs.rotations(session, size)


def _covering(rt: Runtime, who: Principal, seq: int) -> checkpoints.CheckpointView:
    """The latest signed checkpoint if it covers entry `seq`; else a new one, signed now for admins only."""
    signer = _checkpointer(rt)
    with rt.uow() as session:
        latest = checkpoints.latest_checkpoint(session)
        size, _ = ledger_head(session)
    if latest is not None and latest.tree_size >= seq:
        return latest
    if seq > size:
        raise NotFound(f"no ledger entry {seq}")
    if not is_admin(rt.catalog(), who):
        raise Conflict(
            f"entry {seq} is newer than the latest signed checkpoint ({latest.tree_size if latest else 0} entries); "
            f"the next is signed within {format_duration(signer.every)} or {signer.every_entries} entries, "
            "try again then (only admins sign on demand)"
        )
    return signer.sign_now()


def _may_see(rt: Runtime, who: Principal, row: LedgerEntry) -> bool:
    if is_auditor(rt.catalog(), who):
        return True
    if (row.actor_issuer, row.actor_subject) == (who.issuer, who.subject):
        return True
    request_id = None
    if row.subject_kind == "request":
        request_id = row.subject_id
    elif row.subject_kind == "grant":
        with rt.uow() as session:
            try:
                request_id = get_grant(session, row.subject_id).request_id
            except NotFound:
                return False
    if request_id is None:
        return False
    try:
        rt.requests.get(request_id, who)
    except NotFound:
        return False
    return True


@router.get("/v1/ledger/receipts/{seq}", response_class=PlainTextResponse, tags=["ledger"])
def receipt(rt: RuntimeDep, who: PrincipalDep, seq: int = PathParam(ge=1, le=MAX_SEQ)) -> PlainTextResponse:
    """Entry + checkpoint + inclusion proof in one c2sp.org/tlog-proof@v1 file that verifies offline."""
    with rt.uow() as session:
        row = session.get(LedgerEntry, seq)
    if row is None or not _may_see(rt, who, row):
        raise NotFound(f"no ledger entry {seq}")
    checkpoint = _covering(rt, who, seq)
    with rt.uow() as session:
        text = proofs.receipt(session, seq, checkpoint)
    return PlainTextResponse(text, media_type=TEXT)


@router.get("/v1/ledger/receipts", tags=["ledger"])
def receipts_for(
    rt: RuntimeDep, who: PrincipalDep, subject: str = Query(min_length=1, max_length=64)
) -> list[dict[str, Any]]:
    """Receipts for every entry about a request or grant (submitted, decided, approved, ended, ...)."""
    with rt.uow() as session:
        rows = list(
            session.scalars(select(LedgerEntry).where(LedgerEntry.subject_id == subject).order_by(LedgerEntry.seq))
        )
    visible = [row for row in rows if _may_see(rt, who, row)]
    if not visible:
        raise NotFound(f"no ledger entries about {subject} that you may see")
    checkpoint = _covering(rt, who, visible[-1].seq)
    with rt.uow() as session:
        return [
            {"seq": row.seq, "type": row.event_type, "receipt": proofs.receipt(session, row.seq, checkpoint)}
            for row in visible
        ]
