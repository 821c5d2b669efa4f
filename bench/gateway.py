"""Benchmark: pgbench -S directly, through pgbouncer (session mode) and through amber's gateway, in one run.

Each target runs `pgbench -S` for --seconds with the simple and the prepared protocol at 1 and 8 clients,
against the same freshly initialised database (scale 1). The gateway path is the real thing: TLS, a grant token,
every statement parsed, judged and recorded in the ledger (SQLite state). pgbouncer is Debian's package with
`auth_type = any` on loopback. Prints TPS and average latency per target and the ratios gateway/direct and
gateway/pgbouncer, then one JSON line. Needs `pgbench` and (optionally) `pgbouncer` on PATH.

    .venv/bin/python bench/gateway.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the lock on Linux
    uvloop = None  # type: ignore[assignment]

from amber.api.runtime import Runtime
from amber.core.settings import Settings
from amber.identity import Principal

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


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("pgbench") is None:
        sys.exit("pgbench is not installed")
    db = f"amber_bench_gw_{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="amber-bench-gw-"))
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    bouncer: subprocess.Popen[bytes] | None = None
    rt: Runtime | None = None
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()  # as `amber serve` does
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        subprocess.run(
            ["pgbench", "-i", "-s", "1", "-q", f"postgresql://postgres@127.0.0.1:5432/{db}"],
            check=True,
            capture_output=True,
        )
        (work / "policies").mkdir()
        (work / "policies" / "bench.cedar").write_text(
            '@id("bench")\n@auto_approve\npermit (principal, action == Amber::Action::"request", resource);\n'
        )
        (work / "amber.yaml").write_text(
            textwrap.dedent("""
            version: 1
            identity: {dev_issuer: true}
            resources:
              - name: bench
                kind: postgres
                connection: env:AMBER_BENCH_DB
                grantee_group: amber_grantees
                levels:
                  read-only: {schemas: [public], connection_limit: 20, via: gateway, max_ttl: 1h}
            """)
        )
        os.environ["AMBER_BENCH_DB"] = f"postgresql://postgres@127.0.0.1:5432/{db}"
        rt = Runtime.build(Settings(env="test", state_dir=work / "state", catalog=work / "amber.yaml", gateway_port=0))
        thread.start()
        asyncio.run_coroutine_threadsafe(rt.start_gateway(), loop).result(10)
        assert rt.gateway is not None
        who = Principal("https://bench", "bench", "bench", frozenset({"bench"}))
        outcome = rt.requests.submit(
            who, resource="bench", level="read-only", reason="benchmark", ttl=timedelta(minutes=30)
        )
        activation = outcome.activation
        if activation is None or activation.password is None:
            raise RuntimeError(f"no credential: {activation}")
        grant = activation.grant
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
                "PGPORT": str(rt.gateway.server.port),
                "PGUSER": grant.id,
                "PGPASSWORD": activation.password,
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
        figures: dict[str, Any] = {"bench": "gateway", "seconds": args.seconds, "results": {}}
        for mode in ("simple", "prepared"):
            for clients in (1, 8):
                for name, env in targets.items():
                    key = f"{name}/{mode}/c{clients}"
                    figures["results"][key] = pgbench(
                        env, ["-M", mode, "-c", str(clients), "-j", str(min(clients, 2))], args.seconds
                    )
                    print(
                        f"{key:<28} {figures['results'][key]['tps']:>10.1f} tps "
                        f"{figures['results'][key]['latency_ms']:>8.3f} ms"
                    )
        results = figures["results"]
        for mode in ("simple", "prepared"):
            for clients in (1, 8):
                gw = results[f"gateway/{mode}/c{clients}"]
                direct = results[f"direct/{mode}/c{clients}"]
                figures[f"ratio_gateway_direct_{mode}_c{clients}"] = round(gw["tps"] / direct["tps"], 3)
                figures[f"added_latency_ms_{mode}_c{clients}"] = round(gw["latency_ms"] - direct["latency_ms"], 3)
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
        if rt is not None:
            if rt.gateway is not None and thread.is_alive():
                asyncio.run_coroutine_threadsafe(rt.gateway.stop(), loop).result(30)
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as conn:
                for (role,) in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'amber_g_') "
                    "AND shobj_description(oid, 'pg_authid') LIKE %s",
                    (f"%{rt.installation_id}%",),
                ).fetchall():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            rt.close()
        loop.call_soon_threadsafe(loop.stop)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
