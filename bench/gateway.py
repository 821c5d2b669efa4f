"""Benchmark: pgbench -S directly, through pgbouncer (session mode), through a byte-copying Python proxy and
through amber's gateway, in one run.

Each target runs `pgbench -S` for --seconds with the simple and the prepared protocol at 1 and 8 clients (one
pgbench thread, pgbench's default: the setting under which the issue's orientation figures, pgbouncer at about
0.66 of direct and a byte-copying proxy at about 0.45, reproduce here), against the same freshly initialised
database (scale 1). The gateway path is the real thing: TLS, a grant token,
every statement parsed, judged and recorded in the ledger (SQLite state, written by its child process, as `amber
serve` does). pgbouncer is Debian's package with `auth_type = any` on loopback (skipped when not installed:
`apt-get install pgbouncer`). `copyproxy` (bench/copy_proxy.py) only copies bytes, without TLS: the floor for
any proxy written in Python. Prints TPS and average latency per target, the gateway's CPU per transaction (its
own process, and its ledger writer), the ratios against direct and pgbouncer, then one JSON line.

    .venv/bin/python bench/gateway.py [--seconds 8] [--modes simple,prepared] [--clients 1,8] [--targets ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the lock on Linux
    uvloop = None  # type: ignore[assignment]

from _common import gateway_grant
from amber.api.runtime import Runtime

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pgbench(env: dict[str, str], args: list[str], seconds: int) -> dict[str, float]:
    result = subprocess.run(
        ["pgbench", "-n", "-S", "-T", str(seconds), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {result.stderr.strip()[-500:]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", result.stdout)
    if tps is None or latency is None:
        raise RuntimeError(f"cannot read pgbench output: {result.stdout[-500:]}")
    return {"tps": round(float(tps.group(1)), 1), "latency_ms": float(latency.group(1))}


def _cpu_seconds(rt: Runtime | None) -> tuple[float, float]:
    """CPU seconds (user + system) of this process (the gateway's loop and threads) and of its ledger writer."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    writer = 0.0
    child = getattr(rt.gateway.recorder, "_child", None) if rt is not None and rt.gateway is not None else None
    proc = getattr(child, "_proc", None)
    if proc is not None and proc.pid is not None:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            writer = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return usage.ru_utime + usage.ru_stime, writer


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--modes", default="simple,prepared", help="pgbench protocols to run (comma-separated)")
    parser.add_argument("--clients", default="1,8", help="client counts to run (comma-separated)")
    parser.add_argument(
        "--targets", default="direct,pgbouncer,copyproxy,gateway", help="targets to run (comma-separated)"
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    client_counts = [int(c) for c in args.clients.split(",")]
    wanted = set(args.targets.split(","))
    if shutil.which("pgbench") is None:
        sys.exit("pgbench is not installed")
    db = f"amber_bench_gw_{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="amber-bench-gw-"))
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    bouncer: subprocess.Popen[bytes] | None = None
    copier: subprocess.Popen[bytes] | None = None
    rt: Runtime | None = None
    stack = contextlib.ExitStack()
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()  # as `amber serve` does
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        subprocess.run(
            ["pgbench", "-i", "-s", "1", "-q", f"postgresql://postgres@127.0.0.1:5432/{db}"],
            check=True,
            capture_output=True,
        )
        thread.start()
        gw = stack.enter_context(gateway_grant(db, work, loop))
        rt = gw.rt
        assert rt.gateway is not None
        targets: dict[str, dict[str, str]] = {
            "direct": {
                "PGHOST": "127.0.0.1",
                "PGPORT": "5432",
                "PGUSER": "postgres",
                "PGDATABASE": db,
                "PGSSLMODE": "disable",
            },
            "gateway": {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(gw.port),
                "PGUSER": gw.grant_id,
                "PGPASSWORD": gw.password,
                "PGDATABASE": db,
                "PGSSLMODE": "require",
            },
        }
        if shutil.which("pgbouncer") or Path("/usr/sbin/pgbouncer").exists():
            port = free_port()
            ini = work / "pgbouncer.ini"
            ini.write_text(
                f"[databases]\n{db} = host=127.0.0.1 port=5432 dbname={db} user=postgres\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\n"
                f"pool_mode = session\nmax_client_conn = 100\ndefault_pool_size = 20\n"
                "unix_socket_dir =\n"
            )
            bouncer = subprocess.Popen(
                [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "-u", "postgres", str(ini)]
                if os.geteuid() == 0
                else [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(ini)]
            )
            time.sleep(1)
            targets["pgbouncer"] = {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(port),
                "PGUSER": "postgres",
                "PGDATABASE": db,
                "PGSSLMODE": "disable",
            }
        copy_port = free_port()
        copier = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("copy_proxy.py")), str(copy_port), "5432"]
        )
        time.sleep(0.5)
        targets["copyproxy"] = {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(copy_port),
            "PGUSER": "postgres",
            "PGDATABASE": db,
            "PGSSLMODE": "disable",
        }
        figures: dict[str, Any] = {"bench": "gateway", "seconds": args.seconds, "results": {}}
        targets = {name: env for name, env in targets.items() if name in wanted}
        for mode in modes:
            for clients in client_counts:
                for name, env in targets.items():
                    key = f"{name}/{mode}/c{clients}"
                    cpu_before = _cpu_seconds(rt)
                    figures["results"][key] = pgbench(env, ["-M", mode, "-c", str(clients)], args.seconds)
                    if name == "gateway":
                        # CPU the gateway's process (loop, threads) and its ledger writer spent per transaction.
                        spent = [after - before for after, before in zip(_cpu_seconds(rt), cpu_before, strict=True)]
                        transactions = figures["results"][key]["tps"] * args.seconds
                        figures["results"][key]["gateway_cpu_us_per_tx"] = round(spent[0] / transactions * 1e6, 1)
                        figures["results"][key]["writer_cpu_us_per_tx"] = round(spent[1] / transactions * 1e6, 1)
                    result = figures["results"][key]
                    cpu = (
                        f"  gateway CPU {result['gateway_cpu_us_per_tx']:.0f} us/tx, ledger writer "
                        f"{result['writer_cpu_us_per_tx']:.0f} us/tx"
                        if name == "gateway"
                        else ""
                    )
                    print(f"{key:<28} {result['tps']:>10.1f} tps {result['latency_ms']:>8.3f} ms{cpu}")
        results = figures["results"]
        for mode in modes:
            for clients in client_counts:
                if f"gateway/{mode}/c{clients}" not in results or f"direct/{mode}/c{clients}" not in results:
                    continue
                gw = results[f"gateway/{mode}/c{clients}"]
                direct = results[f"direct/{mode}/c{clients}"]
                figures[f"ratio_gateway_direct_{mode}_c{clients}"] = round(gw["tps"] / direct["tps"], 3)
                figures[f"added_latency_ms_{mode}_c{clients}"] = round(gw["latency_ms"] - direct["latency_ms"], 3)
                if f"copyproxy/{mode}/c{clients}" in results:
                    copy = results[f"copyproxy/{mode}/c{clients}"]
                    figures[f"ratio_copyproxy_direct_{mode}_c{clients}"] = round(copy["tps"] / direct["tps"], 3)
                if f"pgbouncer/{mode}/c{clients}" in results:
                    bounce = results[f"pgbouncer/{mode}/c{clients}"]
                    figures[f"ratio_gateway_pgbouncer_{mode}_c{clients}"] = round(gw["tps"] / bounce["tps"], 3)
                    figures[f"ratio_pgbouncer_direct_{mode}_c{clients}"] = round(bounce["tps"] / direct["tps"], 3)
        recorded = rt.gateway.recorder.written
        figures["ledger_entries_written"] = recorded
        print(
            "targets: gateway/direct >= 0.5 (prepared, 8 clients), >= 0.35 (simple); added latency at 1 client "
            "<= 0.2 ms"
        )
        for key in sorted(k for k in figures if k.startswith(("ratio", "added"))):
            print(f"  {key} = {figures[key]}")
        print(json.dumps(figures, sort_keys=True))
    finally:
        if bouncer is not None:
            bouncer.terminate()
            bouncer.wait(10)
        if copier is not None:
            copier.terminate()
            copier.wait(10)
        stack.close()
        loop.call_soon_threadsafe(loop.stop)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
