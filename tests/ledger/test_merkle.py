"""The RFC 9162 Merkle tree: Certificate Transparency test vectors, a naive reference, and the stored tree."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, Engine, bindparam, func, select

from amber import ledger
from amber.core.db import make_engine, make_unit_of_work
from amber.core.migrate import upgrade
from amber.ledger import tlog, tree
from amber.ledger.models import TreeNode

# The published CT vectors (certificate-transparency merkle_tree_test / Go's merkle testonly).
LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def hashes(leaves: Sequence[bytes]) -> list[bytes]:
    return [tlog.leaf_hash(leaf) for leaf in leaves]


def getter(leaf_hashes: Sequence[bytes]) -> tlog.NodeGetter:
    """Perfect subtrees computed the naive way, independently of the Frontier."""

    def node(level: int, index: int) -> bytes:
        lo, hi = index << level, (index + 1) << level
        assert hi <= len(leaf_hashes), "asked for a subtree beyond the tree"
        return tlog.root_of(leaf_hashes[lo:hi])

    return node


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH, written straight from the text over the list of leaf hashes."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, leaves[:k]), tlog.root_of(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), tlog.root_of(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF."""
    n = len(leaves)
    if m == n:
        return [] if complete else [tlog.root_of(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], complete), tlog.root_of(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), tlog.root_of(leaves[:k])]


def test_leaf_and_node_hashes_follow_rfc_9162() -> None:
    assert tlog.EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert tlog.leaf_hash(b"") == bytes.fromhex(ROOTS[0])
    assert tlog.node_hash(b"a" * 32, b"b" * 32) != tlog.node_hash(b"b" * 32, b"a" * 32)


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_ct_vectors(size: int) -> None:
    leaf_hashes = hashes(LEAVES[:size])
    frontier = tlog.Frontier()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    assert tlog.root_of(leaf_hashes).hex() == ROOTS[size - 1]
    assert frontier.root().hex() == ROOTS[size - 1]
    assert tlog.tree_root(size, getter(leaf_hashes)).hex() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION)
def test_inclusion_proofs_match_the_ct_vectors(index: int, size: int, expected: list[str]) -> None:
    leaf_hashes = hashes(LEAVES[:size])
    proof = tlog.inclusion_proof(index, size, getter(leaf_hashes))
    assert [h.hex() for h in proof] == expected
    root = bytes.fromhex(ROOTS[size - 1])
    assert tlog.verify_inclusion(index, size, leaf_hashes[index], proof, root)


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_consistency_proofs_match_the_ct_vectors(old: int, new: int, expected: list[str]) -> None:
    proof = tlog.consistency_proof(old, new, getter(hashes(LEAVES[:new])))
    assert [h.hex() for h in proof] == expected
    assert tlog.verify_consistency(old, new, bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1]), proof)


def _leaves(n: int) -> list[bytes]:
    return hashes([i.to_bytes(4, "big") for i in range(n)])


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=400).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_incremental_tree_and_inclusion_proofs_match_the_reference(case: tuple[int, int]) -> None:
    size, index = case
    leaf_hashes = _leaves(size)
    frontier = tlog.Frontier()
    stored: dict[tuple[int, int], bytes] = {}
    for leaf in leaf_hashes:
        for level, idx, value in frontier.append(leaf):
            stored[(level, idx)] = value
    root = tlog.root_of(leaf_hashes)
    assert frontier.root() == root
    # Every node the frontier emitted is the perfect subtree it claims to be, and nothing is missing.
    assert stored == {key: getter(leaf_hashes)(*key) for key in stored}
    assert len(stored) == sum(size >> level for level in range(size.bit_length()))
    proof = tlog.inclusion_proof(index, size, lambda level, idx: stored[(level, idx)])
    assert proof == ref_path(index, leaf_hashes)
    assert tlog.verify_inclusion(index, size, leaf_hashes[index], proof, root)
    assert not tlog.verify_inclusion(index, size, tlog.leaf_hash(b"forged"), proof, root)
    if proof:
        bad = [*proof[:-1], bytes(32)]
        assert not tlog.verify_inclusion(index, size, leaf_hashes[index], bad, root)
    if size > 1:
        assert not tlog.verify_inclusion((index + 1) % size, size, leaf_hashes[index], proof, root)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=400).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_proofs_match_the_reference(case: tuple[int, int]) -> None:
    old, new = case
    leaf_hashes = _leaves(new)
    proof = tlog.consistency_proof(old, new, getter(leaf_hashes))
    assert proof == ([] if old == new else ref_subproof(old, leaf_hashes, True))
    old_root, new_root = tlog.root_of(leaf_hashes[:old]), tlog.root_of(leaf_hashes)
    assert tlog.verify_consistency(old, new, old_root, new_root, proof)
    # A different history of the same size is not consistent with the new tree.
    forged = tlog.root_of([tlog.leaf_hash(b"x"), *leaf_hashes[1:old]])
    assert not tlog.verify_consistency(old, new, forged, new_root, proof)
    if old < new:
        assert not tlog.verify_consistency(new, old, new_root, old_root, proof)


def test_every_size_up_to_64_exhaustively() -> None:
    for size in range(1, 65):
        leaf_hashes = _leaves(size)
        node = getter(leaf_hashes)
        root = tlog.root_of(leaf_hashes)
        for index in range(size):
            assert tlog.verify_inclusion(index, size, leaf_hashes[index], tlog.inclusion_proof(index, size, node), root)
        for old in range(1, size + 1):
            proof = tlog.consistency_proof(old, size, node)
            assert tlog.verify_consistency(old, size, tlog.root_of(leaf_hashes[:old]), root, proof)


def test_proofs_read_logarithmically_many_nodes() -> None:
    size = 1_000_003
    reads = tlog.needed_nodes(lambda node: tlog.inclusion_proof(123_457, size, node))
    assert len(reads) <= 2 * size.bit_length()
    reads = tlog.needed_nodes(lambda node: tlog.consistency_proof(777_777, size, node))
    assert len(reads) <= 3 * size.bit_length()


# -- the tree stored alongside the ledger, on both state stores --------------------------------------------

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = make_engine(state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _append(engine: Engine, n: int, *, grouped: bool = False) -> None:
    uow = make_unit_of_work(engine)
    items = [
        ledger.NewEntry(T0 + timedelta(seconds=i), "test.event", ledger.SYSTEM, "test", f"t{i}", {"i": i})
        for i in range(n)
    ]
    if grouped:
        with uow() as session:
            ledger.append_many(session, items)
        return
    for item in items:
        with uow() as session:
            ledger.append(
                session,
                at=item.at,
                event_type=item.event_type,
                actor=item.actor,
                subject_kind=item.subject_kind,
                subject_id=item.subject_id,
                payload=item.payload,
            )


def _leaf_hashes(engine: Engine) -> list[bytes]:
    from amber.ledger.proofs import exported

    with make_unit_of_work(engine)() as session:
        return [tlog.leaf_hash(tlog.entry_leaf(exported(row))[0]) for row in ledger.iter_raw(session)]


@pytest.mark.parametrize("grouped", [False, True], ids=["single", "grouped"])
def test_stored_tree_is_maintained_incrementally_with_each_append(engine: Engine, grouped: bool) -> None:
    _append(engine, 37, grouped=grouped)
    _append(engine, 6, grouped=not grouped)
    leaf_hashes = _leaf_hashes(engine)
    assert len(leaf_hashes) == 43
    with make_unit_of_work(engine)() as session:
        # Every perfect subtree of two or more leaves is stored; leaves are computed from their entries.
        nodes = session.scalar(select(func.count()).select_from(TreeNode))
        assert nodes == sum(43 >> level for level in range(1, (43).bit_length()))
        assert session.scalar(select(func.count()).select_from(TreeNode).where(TreeNode.level == 0)) == 0
        for size in range(1, 44):
            root = tlog.root_of(leaf_hashes[:size])
            assert tree.root(session, size) == root
            for index in range(size):
                assert tree.leaf(session, index) == leaf_hashes[index]
                proof = tree.inclusion_proof(session, index, size)
                assert tlog.verify_inclusion(index, size, leaf_hashes[index], proof, root)
                old = index + 1
                proof = tree.consistency_proof(session, old, size)
                assert tlog.verify_consistency(old, size, tlog.root_of(leaf_hashes[:old]), root, proof)


def test_leaf_data_is_the_canonical_body_whose_hash_is_the_entry_hash(engine: Engine) -> None:
    _append(engine, 1)
    from amber.ledger.proofs import exported

    with make_unit_of_work(engine)() as session:
        row = next(iter(ledger.iter_raw(session)))
        data, stored = tlog.entry_leaf(exported(row))
        assert tree.leaf(session, 0) == tlog.leaf_hash(data)
    assert tlog.hashlib.sha256(data).hexdigest() == stored == row.entry_hash
    assert data.startswith(b'{"actor":{"iss":"amber","name":"amber","sub":"system"},"at":"2026-11-26T12:00:00.000000Z"')


def test_a_failed_transaction_leaves_neither_entry_nor_node(engine: Engine) -> None:
    _append(engine, 3)
    uow = make_unit_of_work(engine)

    def failing_state_change() -> None:
        with uow() as session:
            ledger.append(
                session, at=T0, event_type="x", actor=ledger.SYSTEM, subject_kind="t", subject_id="t", payload={}
            )
            raise RuntimeError("the caller's state change failed")

    with pytest.raises(RuntimeError):
        failing_state_change()
    _append(engine, 1)
    leaf_hashes = _leaf_hashes(engine)
    with make_unit_of_work(engine)() as session:
        assert ledger.count(session) == 4
        assert tree.root(session, 4) == tlog.root_of(leaf_hashes)


def test_upgrading_a_ledger_with_entries_builds_its_tree_once(state_url: str) -> None:
    from sqlalchemy import text

    from amber.ledger.chain import GENESIS, entry_body, hash_body, payload_text

    engine = make_engine(state_url)
    try:
        upgrade(engine, "0002")  # a ledger written before the Merkle tree existed
        prev = GENESIS
        with engine.begin() as conn:
            for seq in range(1, 38):
                at = T0 + timedelta(seconds=seq)
                body = entry_body(
                    seq=seq,
                    at=at,
                    event_type="test.event",
                    actor=ledger.SYSTEM,
                    subject_kind="test",
                    subject_id=f"t{seq}",
                    payload={"seq": seq},
                    prev_hash=prev,
                )
                entry_hash = hash_body(body)
                conn.execute(
                    text(
                        "INSERT INTO ledger_entries (seq, entry_at, event_type, actor_issuer, actor_subject, "
                        "actor_name, subject_kind, subject_id, payload, prev_hash, entry_hash) VALUES (:seq, :at, "
                        "'test.event', 'amber', 'system', 'amber', 'test', :sid, :payload, :prev, :hash)"
                    ).bindparams(bindparam("at", type_=DateTime(timezone=True))),
                    {
                        "seq": seq,
                        "at": at,
                        "sid": f"t{seq}",
                        "payload": payload_text({"seq": seq}),
                        "prev": prev,
                        "hash": entry_hash,
                    },
                )
                prev = entry_hash
        upgrade(engine)
        _append(engine, 5)
        leaf_hashes = _leaf_hashes(engine)
        with make_unit_of_work(engine)() as session:
            assert ledger.count(session) == 42
            assert tree.root(session, 37) == tlog.root_of(leaf_hashes[:37])
            assert tree.root(session, 42) == tlog.root_of(leaf_hashes)
            assert ledger.verify_chain(ledger.iter_raw(session)).ok
    finally:
        engine.dispose()
