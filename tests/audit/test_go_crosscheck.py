"""Issue 13 item 3: an independent implementation (tools/goverify, built on Go's golang.org/x/mod/sumdb/note and
tlog, nothing of amber's) reaches the same verdict as `amber audit verify --bundle` on real exports, good and
tampered: an edited entry, an appended forged entry, a forged signature, a log key not named after the origin,
a rolled-back log, and witness cosignatures (present, missing). Skipped only when `go` is not installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amber import ledger
from amber.cli.main import app
from amber.ledger import checkpoints, proofs, tlog, witness
from amber.ledger.checkpointer import Checkpointer
from tests.conftest import Amber

ROOT = Path(__file__).resolve().parents[2]
GOPATH = "/usr/share/gocode"  # Debian's golang-golang-x-mod-dev (scripts/services.sh installs it)


@pytest.fixture(scope="module")
def goverify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        pytest.skip("`go` is not installed (scripts/services.sh installs golang-go and golang-golang-x-mod-dev)")
    out = tmp_path_factory.mktemp("goverify")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": os.environ.get("AMBER_TEST_GOPATH", GOPATH),
        "GOCACHE": str(out / "cache"),
        "HOME": str(out),
    }
    built = subprocess.run(
        ["go", "build", "-o", str(out / "goverify"), "."],
        cwd=ROOT / "tools" / "goverify",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return out / "goverify"


def _go(binary: Path, bundle: Path, keys: list[str], extra: list[str]) -> tuple[bool, str]:
    args = [str(binary), *(f"-key={k}" for k in keys), *extra, str(bundle)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode in (0, 1), run.stderr
    return run.returncode == 0, run.stdout.strip()


def _amber(bundle: Path, keys: list[str], extra: list[str]) -> tuple[bool, str]:
    args = ["audit", "verify", "--bundle", str(bundle), *(f"--key={k}" for k in keys), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code == 0, result.output.strip()


def _cp(amber: Amber) -> Checkpointer:
    assert amber.rt.checkpointer is not None
    return amber.rt.checkpointer


def _copy(src: Path, dst: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _entries(bundle: Path) -> list[str]:
    return (bundle / "entries.jsonl").read_text().splitlines(keepends=True)


def _notes(bundle: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (bundle / "checkpoints.jsonl").read_text().splitlines()]


def _write_notes(bundle: Path, items: list[dict[str, object]]) -> None:
    (bundle / "checkpoints.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))


def test_go_reaches_the_verdict_of_amber_audit_verify(amber: Amber, goverify: Path, tmp_path: Path) -> None:
    cp = _cp(amber)
    first_key = cp.verifier.vkey
    amber.request("alice", "engineering", "oncall")
    first = cp.sign_now()
    amber.request("dave", "engineering", "oncall")
    second = cp.sign_now()
    # A signed key rotation to a new key named after the origin, then more entries under it.
    new = tlog.Signer.generate(cp.origin)
    with amber.rt.uow() as session:
        checkpoints.rotate_key(
            session, old=cp.signer, new=new, origin=cp.origin, at=amber.clock.now(), actor=ledger.SYSTEM
        )
    cp.signer = new
    amber.request("bob", "engineering", "oncall")
    middle = cp.sign_now()
    amber.request("carol", "engineering", "oncall")
    head = cp.sign_now()
    good = tmp_path / "good"
    with amber.rt.uow() as session:
        proofs.export_bundle(session, good, cp.origin)
    # A witness cosigned every checkpoint after the first (its own directory, as `amber witness` keeps it).
    w = tlog.Signer.generate("witness.example")
    other_witness = tlog.Signer.generate("witness.other")
    wdir = tmp_path / "witnessed"
    wdir.mkdir()
    for view in (second, middle, head):
        note = witness.cosign(view.note, w)
        (wdir / witness.note_name(view.tree_size, note)).write_text(note)
    with_witness = [f"--checkpoint={wdir}", f"--witness-key={w.verifier.vkey}"]
    go_witness = [f"-checkpoint={wdir}", f"-witness-key={w.verifier.vkey}"]

    def edited(b: Path) -> None:
        lines = _entries(b)
        lines[2] = lines[2].replace('"reason":"investigating INC-42"', '"reason":"investigating INC-43"', 1)
        assert lines[2] != _entries(good)[2]
        (b / "entries.jsonl").write_text("".join(lines))

    def appended(b: Path) -> None:
        lines = _entries(b)
        last = json.loads(lines[-1])
        body = {k: v for k, v in last.items() if k != "hash"} | {"seq": last["seq"] + 1, "prev": last["hash"]}
        body["type"] = "grant.revoked"
        forged = {**body, "hash": hashlib.sha256(tlog.canonical_json(body)).hexdigest()}
        (b / "entries.jsonl").write_text("".join(lines) + tlog.canonical_json(forged).decode() + "\n")

    def forged_signature(b: Path) -> None:
        items = _notes(b)
        note = str(items[-1]["note"])
        text, _, line = note.rstrip("\n").rpartition("\n")
        name, _, blob = line.partition(" ")[2].partition(" ")
        raw = bytearray(base64.b64decode(blob))
        raw[10] ^= 0x40
        items[-1]["note"] = f"{text}\n\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
        _write_notes(b, items)

    def rolled_back(b: Path) -> None:
        # The state database restored from a backup taken after the first checkpoint: what it exports.
        lines = _entries(b)[: first.tree_size]
        (b / "entries.jsonl").write_text("".join(lines))
        _write_notes(b, [item for item in _notes(b) if int(str(item["tree_size"])) <= first.tree_size])

    misnamed = tlog.Signer.generate("ops-2026")
    stranger = tlog.Signer.generate(cp.origin)

    def resigned(signer: tlog.Signer) -> Callable[[Path], None]:
        def edit(b: Path) -> None:
            rolled_back(b)
            items = _notes(b)
            for item in items:
                text, _ = tlog.open_note(str(item["note"]), [])
                item["note"] = tlog.sign_note(text, signer)  # sign_note: no key-name check, as a careless log
            _write_notes(b, items)

        return edit

    cases: list[tuple[str, Path, list[str], list[str], list[str], bool]] = [
        ("good", good, [first_key], [], [], True),
        (
            "good, witnessed",
            good,
            [first_key],
            [*with_witness, "--min-witnesses=1"],
            [*go_witness, "-min-witnesses=1"],
            True,
        ),
        (
            "two witnesses required, one cosigned",
            good,
            [first_key],
            [*with_witness, f"--witness-key={other_witness.verifier.vkey}", "--min-witnesses=2"],
            [*go_witness, f"-witness-key={other_witness.verifier.vkey}", "-min-witnesses=2"],
            False,
        ),
        ("the new key alone does not verify the history", good, [new.verifier.vkey], [], [], False),
        ("edited entry", _copy(good, tmp_path / "edited", edited), [first_key], [], [], False),
        ("appended forged entry", _copy(good, tmp_path / "appended", appended), [first_key], [], [], False),
        ("forged signature", _copy(good, tmp_path / "forged", forged_signature), [first_key], [], [], False),
        (
            "rolled back (a witnessed checkpoint is larger)",
            _copy(good, tmp_path / "rolled", rolled_back),
            [first_key],
            [f"--checkpoint={wdir}"],
            [f"-checkpoint={wdir}"],
            False,
        ),
        ("rolled back, alone", tmp_path / "rolled", [first_key], [], [], True),
        (
            "wrong key name",
            _copy(good, tmp_path / "misnamed", resigned(misnamed)),
            [misnamed.verifier.vkey],
            [],
            [],
            False,
        ),
        (
            "re-signed, right name",
            _copy(good, tmp_path / "named", resigned(stranger)),
            [stranger.verifier.vkey],
            [],
            [],
            True,
        ),
    ]
    checks = {
        "edited entry": "hash",
        "appended forged entry": "unsigned-tail",
        "forged signature": "signature",
        "rolled back (a witnessed checkpoint is larger)": "truncation",
        "wrong key name": "key-name",
        "two witnesses required, one cosigned": "witness",
    }
    for what, bundle, keys, amber_extra, go_extra, expected in cases:
        ours, our_output = _amber(bundle, keys, amber_extra)
        theirs, their_output = _go(goverify, bundle, keys, go_extra)
        assert (ours, theirs) == (expected, expected), f"{what}:\n amber: {our_output}\n go: {their_output}"
        if not expected:  # and for a reason amber names too
            check = their_output.removeprefix("FAIL ").split(":")[0]
            assert check in our_output, f"{what}: go says {their_output!r}, amber says {our_output!r}"
            assert check == checks.get(what, check), f"{what}: go says {their_output!r}"
