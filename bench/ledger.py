"""Benchmark: the tamper-evident ledger on SQLite and PostgreSQL state.

Figures (issue 5, item 7):
- single durable appends/s: one entry per transaction, committed before the next starts (one writer);
- grouped appends/s: (a) `append_many` with 1,000 entries per transaction (what the gateway's recorder does
  with the statements queued while its last write committed), entries spread over 32 subjects (the grants
  being recorded at once); (a') the same over 1,000 interleaved subjects, the worst case for the index by
  subject (each batch touches ~1,000 of its pages); (b) `GroupCommitter` with 32 threads each submitting
  one entry at a time and waiting for its commit;
- full verification of N entries (default 1M), entries/s: (a) offline, `amber_verify.py bundle` over the
  exported bundle (chain + every entry's hash + Merkle root + checkpoint signatures); (b) in-database,
  `audit.verify`'s chain + tree + checkpoint part (entries read back through SQLAlchemy);
- inclusion and consistency proof time at N entries (from the stored tree; median and p99 of 1,000 random).

Each store gets a fresh database (SQLite in a temp dir; PostgreSQL `amber_bench_ledger_*`, dropped after).
Prints readable lines, then one JSON object as the last line. Usage:
    .venv/bin/python bench/ledger.py [--entries 1000000] [--single 5000] [--state both|sqlite|postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from amber import ledger
from amber.core.db import UnitOfWork, make_engine, make_unit_of_work
from amber.core.migrate import upgrade
from amber.ledger import checkpoints, proofs, tlog, tree
from amber.ledger.group import GroupCommitter

ACTOR = ledger.Actor("https://idp.example", "u-1", "alice")


def _entry(i: int, subjects: int = 32) -> ledger.NewEntry:
    return ledger.NewEntry(
        datetime.now(UTC),
        "gateway.statement",
        ACTOR,
        "grant",
        f"grt_{i % subjects:020d}",
        {"grant": "grt_0123456789abcdef", "sql_sha256": f"{i:064x}", "rows": i % 97},
    )


@contextlib.contextmanager
def store(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/state.db"
        return
    name = f"amber_bench_ledger_{secrets.token_hex(4)}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def single(uow: UnitOfWork, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        item = _entry(i)
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
    return n / (time.perf_counter() - start)


def batched(uow: UnitOfWork, n: int, batch: int = 1000, subjects: int = 32) -> float:
    start = time.perf_counter()
    for lo in range(0, n, batch):
        with uow() as session:
            ledger.append_many(session, [_entry(i, subjects) for i in range(lo, min(n, lo + batch))])
    return n / (time.perf_counter() - start)


def group_commit(uow: UnitOfWork, n: int, threads: int = 32) -> float:
    group = GroupCommitter(uow)
    per = n // threads

    def work(t: int) -> None:
        for i in range(per):
            group.submit(_entry(t * per + i))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per * threads / (time.perf_counter() - start)


def fill(uow: UnitOfWork, total: int) -> None:
    with uow() as session:
        have, _ = ledger.head(session)
    for lo in range(have, total, 10_000):
        with uow() as session:
            ledger.append_many(session, [_entry(i) for i in range(lo, min(total, lo + 10_000))])


def proof_times(uow: UnitOfWork, size: int, samples: int = 1000) -> dict[str, float]:
    import random

    rng = random.Random(7)
    inc: list[float] = []
    con: list[float] = []
    with uow() as session:
        for _ in range(samples):
            i = rng.randrange(size)
            t = time.perf_counter()
            tree.inclusion_proof(session, i, size)
            inc.append(time.perf_counter() - t)
            m = rng.randrange(1, size)
            t = time.perf_counter()
            tree.consistency_proof(session, m, size)
            con.append(time.perf_counter() - t)

    def q(values: list[float], p: float) -> float:
        return sorted(values)[int(p * (len(values) - 1))] * 1000

    return {
        "inclusion_ms_p50": statistics.median(inc) * 1000,
        "inclusion_ms_p99": q(inc, 0.99),
        "consistency_ms_p50": statistics.median(con) * 1000,
        "consistency_ms_p99": q(con, 0.99),
    }


def run(kind: str, entries: int, n_single: int) -> dict[str, Any]:
    with store(kind) as url:
        engine = make_engine(url)
        upgrade(engine)
        uow = make_unit_of_work(engine)
        figures: dict[str, Any] = {"store": kind}
        figures["single_appends_per_s"] = single(uow, n_single)
        print(f"[{kind}] single durable appends: {figures['single_appends_per_s']:,.0f}/s ({n_single} entries)")
        figures["batched_appends_per_s"] = batched(uow, 100_000)
        print(f"[{kind}] grouped appends (append_many x1000): {figures['batched_appends_per_s']:,.0f}/s")
        figures["batched_1000_subjects_appends_per_s"] = batched(uow, 100_000, subjects=1000)
        print(
            f"[{kind}] grouped appends over 1,000 interleaved subjects: "
            f"{figures['batched_1000_subjects_appends_per_s']:,.0f}/s"
        )
        figures["group_commit_appends_per_s"] = group_commit(uow, 20_000)
        print(f"[{kind}] grouped appends (GroupCommitter, 32 threads): {figures['group_commit_appends_per_s']:,.0f}/s")
        t = time.perf_counter()
        fill(uow, entries)
        print(f"[{kind}] filled to {entries:,} entries in {time.perf_counter() - t:.1f}s")
        signer = tlog.Signer.generate("bench/ledger")  # a log key is named after the origin
        with uow() as session:
            checkpoints.sign(session, signer, "bench/ledger", datetime.now(UTC))
        figures.update(proof_times(uow, entries))
        print(
            f"[{kind}] proofs at {entries:,}: inclusion p50 {figures['inclusion_ms_p50']:.3f} ms "
            f"p99 {figures['inclusion_ms_p99']:.3f} ms; consistency p50 {figures['consistency_ms_p50']:.3f} ms "
            f"p99 {figures['consistency_ms_p99']:.3f} ms"
        )
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle"
            t = time.perf_counter()
            with uow() as session:
                proofs.export_bundle(session, bundle, "bench/ledger")
            figures["export_s"] = time.perf_counter() - t
            t = time.perf_counter()
            report = tlog.verify_bundle(bundle, [signer.verifier])
            elapsed = time.perf_counter() - t
            assert report.ok, report.problems
            figures["offline_verify_entries_per_s"] = report.entries / elapsed
            print(
                f"[{kind}] offline verification (amber_verify.py): {figures['offline_verify_entries_per_s']:,.0f} "
                f"entries/s ({report.entries:,} in {elapsed:.1f}s; export took {figures['export_s']:.1f}s)"
            )
        from amber.ledger.proofs import verify_tree

        t = time.perf_counter()
        with uow() as session:
            problems = verify_tree(session, [signer.verifier], [], None, "bench/ledger")
        elapsed = time.perf_counter() - t
        assert not problems, problems
        figures["db_verify_entries_per_s"] = entries / elapsed
        print(f"[{kind}] in-database tree+checkpoint verification: {figures['db_verify_entries_per_s']:,.0f} entries/s")
        engine.dispose()
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--state", choices=["both", "sqlite", "postgres"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.state == "both" else [args.state]
    results = {kind: run(kind, args.entries, args.single) for kind in kinds}
    print(json.dumps({"benchmark": "ledger", "entries": args.entries, "stores": results}, sort_keys=True))


if __name__ == "__main__":
    main()
