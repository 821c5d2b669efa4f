"""`amber witness ...`: the independent witness, run by another party on its own machine (docs/ledger.md).

Thin: options in, amber.ledger.witness does the work (the same code as tools/amber_witness.py). Needs no amber
settings, database or identity: only the log's URL, the log's public key (pinned on the first run), the
witness's own key by reference and its own state directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from amber.cli.text import echo

witness_app = typer.Typer(no_args_is_help=True, help="An independent witness of an amber ledger: check, cosign.")


@witness_app.command("keygen")
def keygen(
    name: Annotated[str, typer.Option("--name", help="The witness's name in its cosignatures.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the private key (0600, never overwritten).")],
) -> None:
    """Create the witness's Ed25519 signing key; print its public verifier key (give it to auditors)."""
    from amber.ledger import witness

    try:
        echo(witness.keygen(name, out).vkey)
    except witness.WitnessError as exc:
        raise typer.BadParameter(str(exc)) from None


@witness_app.command("run")
def run(
    log: Annotated[str, typer.Option("--log", help="The log's base URL (https://amber.example).")],
    state: Annotated[Path, typer.Option("--state", help="The witness's own state directory.")],
    key: Annotated[str, typer.Option("--key", help="The witness's signing key: file:/path or env:NAME.")],
    log_key: Annotated[
        str | None, typer.Option("--log-key", help="The log's verifier key; required on the first run (pinned).")
    ] = None,
    max_age: Annotated[
        str, typer.Option("--max-age", help="Alarm when nothing new, or no answer, for longer (90s, 15m, 2h, 1d).")
    ] = "1h",
    once: Annotated[bool, typer.Option("--once", help="One round (for cron); else poll every --interval.")] = False,
    interval: Annotated[str, typer.Option("--interval", help="Polling interval.")] = "60s",
    alarm_url: Annotated[str | None, typer.Option("--alarm-url", help="Also POST alarms as JSON here.")] = None,
) -> None:
    """Check the log's latest checkpoint against this witness's last-seen one (signature, key name = origin,
    RFC 9162 consistency), cosign it into STATE/checkpoints, and alarm (exit 1, stderr, --alarm-url) on rollback,
    fork, bad signature, origin or key-name mismatch, staleness and a log unreachable for longer than --max-age."""
    from amber.ledger import witness

    try:
        node = witness.Witness(
            directory=state,
            signer=witness.load_key(key),
            fetch=witness.http_fetch(log),
            max_age=witness.parse_age(max_age),
            log_key=log_key,
        )
        if alarm_url:
            witness.http_fetch(alarm_url)  # the same scheme check
        code = witness.run(
            node,
            once=once,
            interval_s=witness.parse_age(interval).total_seconds(),
            alarm_url=alarm_url,
            out=echo,
            err=lambda line: echo(line, file=sys.stderr),
        )
    except (witness.WitnessError, ValueError) as exc:
        echo(f"amber-witness: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
