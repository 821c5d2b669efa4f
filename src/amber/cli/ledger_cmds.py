"""`amber audit ...` commands for the tamper-evident ledger: keys, checkpoints, proofs, receipts, export, verify.

They run where amber's state store is reachable (like `amber audit verify`), from AMBER_* settings; none of
them needs the catalog. `verify --bundle` needs nothing but the bundle and a key; `checkpoints fetch` needs
nothing but the witness (and its credentials, by reference). Private keys are read by reference and never
printed, except by `keygen`, which writes them to a 0600 file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from amber.cli.text import echo

if TYPE_CHECKING:
    from amber.core.db import UnitOfWork
    from amber.core.settings import Settings
    from amber.ledger.checkpointer import Checkpointer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@dataclass
class Local:
    """The state store and settings, without the catalog. The signing key is loaded only when asked for."""

    settings: Settings
    uow: UnitOfWork
    installation_id: str

    @property
    def origin(self) -> str:
        return self.settings.ledger_origin or f"amber/{self.installation_id}"

    def checkpointer(self) -> Checkpointer:
        from amber.api.runtime import build_checkpointer
        from amber.core.clock import SystemClock

        return build_checkpointer(self.settings, self.uow, SystemClock(), self.installation_id, [])


def local() -> Local:
    from amber.core.db import make_engine, make_unit_of_work
    from amber.core.meta import installation_id
    from amber.core.settings import Settings

    settings = Settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    uow = make_unit_of_work(make_engine(settings.resolved_database_url))
    with uow() as session:
        install_id = installation_id(session)
    return Local(settings, uow, install_id)


def _print(data: Any, as_json: bool, human: str) -> None:
    echo(json.dumps(data, indent=2, sort_keys=True) if as_json else human)


def keygen(
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the private key (created 0600, never overwritten).")
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The key's name in signatures (default: the configured checkpoint origin, which a log key must "
            "be named after; give another name only for a witness key).",
        ),
    ] = None,
) -> None:
    """Create an Ed25519 checkpoint signing key named after the ledger's origin; print its public verifier key."""
    from amber.ledger import tlog
    from amber.ledger.checkpoints import write_key

    if name is None:
        name = local().origin
    try:
        signer = tlog.Signer.generate(name)
    except ValueError as exc:
        raise typer.BadParameter(f"key name {name!r}: {exc}") from None
    try:
        write_key(out, signer)
    except FileExistsError:
        raise typer.BadParameter(f"{out} exists; amber never overwrites a key") from None
    echo(signer.verifier.vkey)


def checkpoint(as_json: JsonOpt = False) -> None:
    """Sign a checkpoint of the ledger now (a no-op if the latest one covers every entry)."""
    view = local().checkpointer().sign_now()
    _print({"id": view.id, "tree_size": view.tree_size, "root": view.root_hash, "note": view.note}, as_json, view.note)


def proof(
    seq: Annotated[int, typer.Argument(help="The entry.")],
    size: Annotated[int | None, typer.Option("--size", help="Tree size (default: the current one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the inclusion proof of entry SEQ in the tree of SIZE entries."""
    from amber.ledger import proofs

    with local().uow() as session:
        body = proofs.inclusion(session, seq, size).as_dict()
    human = f"entry {seq} in tree size {body['tree_size']} (root {body['root']}):\n  " + "\n  ".join(body["proof"])
    _print(body, as_json, human)


def consistency(
    old: Annotated[int, typer.Argument(help="The older tree size.")],
    new: Annotated[int | None, typer.Argument(help="The newer tree size (default: the current one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the consistency proof from tree size OLD to NEW."""
    from amber.ledger import proofs

    with local().uow() as session:
        body = proofs.consistency(session, old, new).as_dict()
    human = f"tree {old} ({body['old_root']}) -> {body['new_size']} ({body['new_root']}):\n  " + "\n  ".join(
        body["proof"]
    )
    _print(body, as_json, human)


def receipt(
    seq: Annotated[int, typer.Argument(help="The entry.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the receipt here.")] = None,
) -> None:
    """Write a receipt for entry SEQ: the entry, a signed checkpoint and the inclusion proof."""
    from amber.ledger import checkpoints, proofs

    ctx = local()
    with ctx.uow() as session:
        latest = checkpoints.latest_checkpoint(session)
    if latest is None or latest.tree_size < seq:
        latest = ctx.checkpointer().sign_now()
    with ctx.uow() as session:
        text = proofs.receipt(session, seq, latest)
    if out is None and not sys.stdout.isatty():
        sys.stdout.write(text)  # the receipt's exact bytes, for a file or a pipe; a terminal gets it escaped
    elif out is None:
        echo(text, end="")
    else:
        out.write_text(text)
        echo(f"receipt for entry {seq} written to {out}")


def verify_receipt(
    file: Annotated[Path, typer.Argument(help="A receipt file.")],
    key: Annotated[list[str], typer.Option("--key", help="Trusted verifier key (name+id+key).")],
) -> None:
    """Verify a receipt offline against a trusted public key."""
    from amber.ledger import tlog

    report = tlog.verify_receipt(file.read_text(), [tlog.Verifier.parse(k) for k in key])
    if report.ok:
        echo(f"receipt OK: entry in the signed tree with root {report.root.hex()}")
        return
    echo("receipt verification FAILED:\n  " + "\n  ".join(str(p) for p in report.problems))
    raise typer.Exit(1)


def export(directory: Annotated[Path, typer.Argument(help="Directory to write the bundle into.")]) -> None:
    """Write a verification bundle: entries.jsonl, checkpoints.jsonl, keys.txt, manifest.json, amber_verify.py."""
    from amber.ledger import proofs

    ctx = local()
    ctx.checkpointer().sign_now()
    with ctx.uow() as session:
        manifest = proofs.export_bundle(session, directory, ctx.origin)
    echo(
        f"exported {manifest['entries']} entries and {manifest['checkpoints']} checkpoints to {directory}\n"
        f"{proofs.VERIFIER_ADVICE}\n"
        f"verify with: amber audit verify --bundle {directory} --key {manifest['keys'][-1]}\n"
        f"        or: python3 amber_verify.py bundle {directory} --key {manifest['keys'][-1]}"
    )


def rotate_key(
    new_key: Annotated[str, typer.Option("--new-key", help="The new signing key: file:/path or env:NAME.")],
) -> None:
    """Hand checkpoint signing over to a new key: a ledger entry signed by the current key, then a checkpoint
    (delivered to the witnesses, like every checkpoint).

    Afterwards set AMBER_LEDGER_SIGNING_KEY to the new key; the old key can no longer sign.
    """
    from amber.ledger import SYSTEM
    from amber.ledger.checkpoints import load_signer, rotate_key

    ctx = local()
    current = ctx.checkpointer()
    new = load_signer(new_key)
    with ctx.uow() as session:
        view = rotate_key(session, old=current.signer, new=new, origin=ctx.origin, at=current.clock.now(), actor=SYSTEM)
    current.publish()
    echo(f"signing key rotated to {new.verifier.vkey}; first checkpoint by it: size {view.tree_size}")


def stream(
    to: Annotated[str, typer.Option("--to", help="stdout, file:/path, syslog://h:p, syslog+tcp://h:p, http(s)://...")],
    name: Annotated[str, typer.Option("--name", help="The consumer's name; its cursor is kept under it.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new entries.")] = False,
) -> None:
    """Stream ledger entries as JSON lines, at least once and in order, from this consumer's cursor."""
    from amber.core.clock import SystemClock
    from amber.ledger.streams import Streamer, sink_for

    clock = SystemClock()
    streamer = Streamer(local().uow, sink_for(to), name)
    if follow:
        streamer.follow(clock.now, stop=lambda: False)
    else:
        sent = streamer.catch_up(clock.now)
        if to != "stdout":
            echo(f"streamed {sent} entries to {to}")


def fetch_checkpoints(
    dest: Annotated[Path, typer.Option("--dest", help="Directory to save them in, one note per file.")],
    witness: Annotated[
        str | None, typer.Option("--witness", help="A witness of AMBER_LEDGER_WITNESSES, by name.")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A file witness's JSON lines.")] = None,
    s3_endpoint: Annotated[str | None, typer.Option("--s3-endpoint", help="An S3 witness's server URL.")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="The S3 witness's bucket.")] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="The S3 witness's key prefix.")] = "",
    region: Annotated[str, typer.Option("--region", help="The S3 region (for signing).")] = "us-east-1",
    access_key: Annotated[
        str, typer.Option("--access-key", help="S3 access key by reference: env:NAME or file:/path.")
    ] = "env:AWS_ACCESS_KEY_ID",
    secret_key: Annotated[
        str, typer.Option("--secret-key", help="S3 secret key by reference: env:NAME or file:/path.")
    ] = "env:AWS_SECRET_ACCESS_KEY",  # noqa: S107 - a reference to where the secret is, not a secret
    as_json: JsonOpt = False,
) -> None:
    """Download every checkpoint a witness holds (file: every line; S3: every version of every object) into
    DEST, then verify the ledger against them all with `amber audit verify --checkpoint DEST`.

    A webhook witness cannot be fetched: amber only pushes to it. Nothing here trusts amber's database.
    """
    import httpx

    from amber.core.clock import SystemClock
    from amber.core.errors import Unavailable
    from amber.core.settings import Settings
    from amber.ledger import witnesses

    if sum(x is not None for x in (witness, file, s3_endpoint)) != 1:
        raise typer.BadParameter("give exactly one of --witness NAME, --file PATH, --s3-endpoint URL")
    clock = SystemClock()
    source: witnesses.Witness
    if witness is not None:
        source = witnesses.build_named(Settings().ledger_witnesses, witness, clock=clock)
    elif file is not None:
        source = witnesses.FileWitness(str(file), file)
    else:
        if not bucket or s3_endpoint is None:
            raise typer.BadParameter("--s3-endpoint needs --bucket")
        client = witnesses.S3Client(s3_endpoint, witnesses.secret(access_key), witnesses.secret(secret_key), region)
        # Retention is only used to write; fetching never writes.
        source = witnesses.S3Witness(bucket, client, bucket, retention=timedelta(0), clock=clock, prefix=prefix)
    try:
        fetched = witnesses.fetch(source, dest)
    except (httpx.HTTPError, witnesses.S3Error) as exc:
        raise Unavailable(f"ledger witness {source.name}: {exc}") from None
    data = {
        "witness": source.name,
        "dest": str(dest),
        "saved": [str(p) for p in fetched.saved],
        "already": fetched.already,
        "unreadable": fetched.unreadable,
    }
    human = [
        f"fetched {len(fetched.saved)} new checkpoint(s) from {source.name} into {dest} "
        f"({fetched.already} held twice or fetched before)",
        *(f"  not a checkpoint note: {where}" for where in fetched.unreadable),
        f"verify with: amber audit verify --key KEY --checkpoint {dest}",
    ]
    _print(data, as_json, "\n".join(human))
    if fetched.unreadable:
        raise typer.Exit(1)


def checkpoint_files(paths: Sequence[Path]) -> list[Path]:
    """`--checkpoint` values: a file as given (a note, or JSON lines with a `note` each); a directory means
    every `*.checkpoint` in it, as `checkpoints fetch` saves them. An empty directory is an error, not a pass."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.checkpoint"))
            if not found:
                raise typer.BadParameter(f"{path} holds no *.checkpoint files (amber audit checkpoints fetch)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or directory")
    return files


def register(audit_app: typer.Typer) -> None:
    audit_app.command("stream")(stream)
    audit_app.command("keygen")(keygen)
    audit_app.command("checkpoint")(checkpoint)
    audit_app.command("proof")(proof)
    audit_app.command("consistency")(consistency)
    audit_app.command("receipt")(receipt)
    audit_app.command("verify-receipt")(verify_receipt)
    audit_app.command("export")(export)
    audit_app.command("rotate-key")(rotate_key)
    checkpoints_app = typer.Typer(no_args_is_help=True, help="Checkpoints kept by witnesses.")
    checkpoints_app.command("fetch")(fetch_checkpoints)
    audit_app.add_typer(checkpoints_app, name="checkpoints")


def trust_stored_key(ctx: Local) -> None:
    """Live `amber audit verify` without --key: say loudly that the key comes from the database being checked;
    in production that proves nothing against whoever can write the database, so refuse (exit 2)."""
    echo(
        "warning: no --key given: trusting the public key stored in the very database being verified; whoever "
        "can rewrite the ledger can rewrite that key too. Pass --key with the key you obtained independently.",
        file=sys.stderr,
    )
    if ctx.settings.env == "production":
        from amber.core.settings import PRODUCTION_HINT

        echo(f"error: AMBER_ENV=production: `amber audit verify` needs --key KEY {PRODUCTION_HINT}", file=sys.stderr)
        raise typer.Exit(2)


def verify_offline(
    bundle: Path,
    keys: list[str],
    witnessed: list[Path],
    since: Path | None,
    as_json: bool,
    *,
    allow_unsigned_tail: bool,
    legacy_key_names: bool = False,
    witness_keys: Sequence[str] = (),
    min_witnesses: int = 0,
) -> None:
    """`amber audit verify --bundle DIR`: the offline verifier (ledger/tlog.py, = tools/amber_verify.py)."""
    from amber.ledger import tlog

    trusted = [tlog.Verifier.parse(k) for k in keys] or None
    if trusted is None:
        echo("warning: no --key given; trusting the keys in the bundle itself")
    report = tlog.verify_bundle(
        bundle,
        trusted,
        extra_checkpoints=witnessed,
        since=since,
        allow_unsigned_tail=allow_unsigned_tail,
        legacy_key_names=legacy_key_names,
        witness_keys=[tlog.Verifier.parse(k) for k in witness_keys],
        min_witnesses=min_witnesses,
    )
    problems = [str(p) for p in report.problems]
    data = {
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "root": report.root.hex(),
        "signed_size": report.signed_size,
        "unsigned": report.unsigned,
        "problems": problems,
    }
    human = (
        f"ledger OK: {report.entries} entries, {report.checkpoints} signed checkpoints, root {report.root.hex()}"
        if report.ok
        else "ledger verification FAILED:\n  " + "\n  ".join(problems)
    )
    _print(data, as_json, human)
    warning = tlog.unsigned_warning(report) if report.ok else None
    if warning:
        echo(warning, file=sys.stderr)
    if not report.ok:
        raise typer.Exit(1)
