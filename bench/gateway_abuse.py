"""Benchmark: what abuse costs the gateway, in memory and event-loop stall (issue 12, item 3).

Runs amber's gateway in this process on its own event loop (uvloop, as `amber serve` does) with a heartbeat
task on that loop that wakes every 5 ms and records how late it woke: the loop's stall. Then:
1. `preauth`: N unauthenticated connections (default 5) each announce and start sending a 64 MiB message
   during login (after TLS and the startup packet), as fast as the gateway reads;
2. `names`: one logged-in session sends statements naming 20,000 functions that do not exist (one statement
   with all of them, then 200 statements of 100 new names each);
3. baseline: the same heartbeat with nothing happening, measured first in the same run.
Prints the heartbeat's median / p99 / max lateness and the gateway process's RSS growth for each phase, then one
JSON line.

    .venv/bin/python bench/gateway_abuse.py [--connections 5] [--names 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the lock on Linux
    uvloop = None  # type: ignore[assignment]

from _common import create_database, drop_database, gateway_grant
from amber.gateway.pgwire import codec


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


class Heartbeat:
    """Wakes every `period_s` on the gateway's loop and records how late each wake-up was."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.late_ms: list[float] = []
        self.recording = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period_s
            await asyncio.sleep(self.period_s)
            if self.recording:
                self.late_ms.append(max(0.0, (loop.time() - due) * 1000))

    def measure(self) -> dict[str, float]:
        values = sorted(self.late_ms)
        self.late_ms = []
        if not values:
            return {"median_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "median_ms": round(values[len(values) // 2], 2),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
            "max_ms": round(values[-1], 2),
        }


def preauth_flood(port: int, user: str, connections: int) -> dict[str, Any]:
    """Each connection: TLS, a startup packet, then a password message announced as 64 MiB, sent in 1 MiB
    chunks until the gateway closes the connection (or 64 MiB went out)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sent: list[int] = [0] * connections
    refused: list[str] = [""] * connections

    def one(index: int) -> None:
        # From another loopback address: these failed logins must not rate-limit the session of phase 2.
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        sock.sendall(struct.pack("!ii", 8, codec.SSL_REQUEST))
        assert sock.recv(1) == b"S"
        with context.wrap_socket(sock) as tls:
            tls.sendall(codec.startup_message({"user": user, "database": "x"}))
            tls.recv(65536)  # the SASL challenge
            chunk = b"x" * (1024 * 1024)
            try:
                tls.sendall(b"p" + struct.pack("!i", 64 * 1024 * 1024))
                while sent[index] < 64 * 1024 * 1024:
                    tls.sendall(chunk)
                    sent[index] += len(chunk)
            except (OSError, ssl.SSLError):
                pass
            try:
                data = tls.recv(65536)
                messages = codec.BackendParser().feed(data) if data else []
                if messages and messages[0].kind == "E":
                    refused[index] = codec.error_fields(messages[0].body).get("M", "")
            except (OSError, ssl.SSLError):
                pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return {"bytes_sent_by_clients_mb": round(sum(sent) / 2**20, 1), "refused": sum(bool(r) for r in refused)}


def unknown_names(url: str, total: int) -> dict[str, Any]:
    refused = 0
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        names = ", ".join(f"amber_bench_nothing_{i}()" for i in range(total))
        try:
            conn.execute(f"SELECT {names}")  # type: ignore[arg-type] - made-up names, the point of the test
        except psycopg.Error:
            refused += 1
        one_statement_s = time.perf_counter() - started
        for batch in range(200):
            names = ", ".join(f"amber_bench_other_{batch}_{i}()" for i in range(total // 200))
            try:
                conn.execute(f"SELECT {names}")  # type: ignore[arg-type]
            except psycopg.Error:
                refused += 1
    return {"refused": refused, "one_statement_s": round(one_statement_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5)
    parser.add_argument("--names", type=int, default=20_000)
    args = parser.parse_args()
    db = create_database("amber_bench_abuse")
    work = Path(tempfile.mkdtemp(prefix="amber-bench-abuse-"))
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        with gateway_grant(db, work, loop) as gw:
            assert gw.rt.gateway is not None
            heartbeat = Heartbeat()
            beating = asyncio.run_coroutine_threadsafe(heartbeat.run(), loop)
            url = f"postgresql://{gw.grant_id}:{gw.password}@127.0.0.1:{gw.port}/{db}?sslmode=require"
            with psycopg.connect(url, autocommit=True) as conn:  # warm: TLS, login, the first lookups
                conn.execute("SELECT 1")
            figures: dict[str, Any] = {}
            heartbeat.recording = True
            time.sleep(2)
            figures["baseline"] = {**heartbeat.measure(), "rss_mb": round(rss_mb(), 1)}
            before = rss_mb()
            flood = preauth_flood(gw.port, gw.grant_id, args.connections)
            figures["preauth"] = {**heartbeat.measure(), **flood, "rss_growth_mb": round(rss_mb() - before, 1)}
            before = rss_mb()
            names = unknown_names(url, args.names)
            schema = gw.rt.gateway.schema_for("bench")
            figures["names"] = {
                **heartbeat.measure(),
                **names,
                "rss_growth_mb": round(rss_mb() - before, 1),
                "lookups": schema.fetches,
                "cache_entries": len(schema),
            }
            beating.cancel()
        for phase, values in figures.items():
            print(f"{phase:9s} " + "  ".join(f"{k}={v}" for k, v in values.items()))
        flat = {f"{phase}_{k}": v for phase, values in figures.items() for k, v in values.items()}
        print(json.dumps(flat, sort_keys=True))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        drop_database(db)


if __name__ == "__main__":
    main()
