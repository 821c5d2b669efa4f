"""The independent witness (`amber witness`, tools/amber_witness.py): pulls the log's checkpoints, checks them
against its OWN last-seen checkpoint, cosigns, and alarms.

Unlike witnesses.py (amber pushes to a file, webhook or bucket, with the delivery cursor in amber's database),
this runs on another party's machine and keeps everything it relies on in its own state directory: the pinned
log key (and the keys it followed through signed rotations), the origin, and the last checkpoint it cosigned
(size, root, when it was first seen, when the log last answered). An admin of amber's state database can stop
amber publishing, but not unnoticed: the witness alarms when nothing new comes for longer than `max_age`.

Invariants:
- it cosigns a checkpoint only after checking, in this order: the log's signature by the key in force (pinned,
  or reached through rotations whose entries are proved included in the signed tree and signed by the previous
  key), key name == origin, and the RFC 9162 consistency proof from its own last-seen (size, root) to the new
  one; a checkpoint of the same size must have the same root;
- its last-seen state never moves backwards: `_State.save` re-reads the file and refuses a smaller size or
  another root at the same size, whatever the caller asks; files are written 0600, atomically (temp, fsync,
  rename, fsync of the directory);
- an alarm never advances the state; the offending note is kept under `evidence/` (two notes of one size with
  different roots, both signed, are proof of a fork to anyone).

What this does NOT check: the entries themselves (the auditor's verifier does, against the notes this saves),
or that the log's clock is right. A log that is merely quiet (nothing appended) publishes nothing new, which the
witness cannot tell from a log that stopped publishing: set `max_age` above the log's quietest stretch.

NOTE: imports only the standard library and tlog (as `amber_verify` in the standalone copy, so that
tools/amber_witness.py runs next to tools/amber_verify.py without amber installed). A test keeps the copy
identical.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

try:
    from amber.ledger import tlog
except ImportError:  # the standalone copy, tools/amber_witness.py, next to tools/amber_verify.py
    import amber_verify as tlog  # type: ignore[import-not-found,no-redef]

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
NOTES_DIR = "checkpoints"  # cosigned notes: `amber audit verify --checkpoint STATE/checkpoints`
EVIDENCE_DIR = "evidence"  # notes that raised an alarm, kept as they were served
CHECKPOINT_PATH = "/.well-known/amber-ledger/checkpoint"
CONSISTENCY_PATH = "/v1/ledger/proofs/consistency"
ROTATIONS_PATH = "/.well-known/amber-ledger/rotations"
MAX_BODY = 1 << 20
ALARMS = ("rollback", "fork", "consistency", "signature", "key-name", "origin", "stale", "unreachable", "format")


class Clock(Protocol):
    def now(self) -> datetime: ...


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class WitnessError(Exception):
    """A configuration or usage error (exit 2): nothing was checked."""


@dataclass(frozen=True)
class Alarm:
    kind: str
    message: str

    def __str__(self) -> str:
        return f"ALARM {self.kind}: {self.message}"


@dataclass
class Outcome:
    """One round: what was cosigned (if anything), the alarms, warnings that are not alarms."""

    cosigned: str | None = None
    size: int | None = None
    alarms: list[Alarm] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.alarms


# -- state ------------------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, 0600: a temp file in the same directory, fsync, rename, fsync dir."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class _State:
    """What the witness relies on, in STATE/state.json. `keys`: (first tree size it signs, verifier key)."""

    origin: str
    keys: list[tuple[int, str]]
    size: int | None = None
    root: str | None = None  # hex
    note: str | None = None  # the log's note as served (without our cosignature)
    grown_at: str | None = None  # when the witness first saw the current checkpoint (the log last grew)
    contact_at: str | None = None  # when the log last answered with a checkpoint that passed the checks

    def in_force(self, size: int) -> tlog.Verifier:
        start = max(s for s, _ in self.keys if s <= size) if any(s <= size for s, _ in self.keys) else 0
        return tlog.Verifier.parse([k for s, k in self.keys if s == start][-1])

    @classmethod
    def load(cls, directory: Path) -> _State | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                origin=str(data["origin"]),
                keys=[(int(s), str(k)) for s, k in data["keys"]],
                size=data.get("size"),
                root=data.get("root"),
                note=data.get("note"),
                grown_at=data.get("grown_at"),
                contact_at=data.get("contact_at"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise WitnessError(f"{path}: not a witness state file ({exc})") from None

    def save(self, directory: Path) -> None:
        """Write the state, refusing to move the last-seen checkpoint backwards (whatever is on disk now)."""
        current = _State.load(directory)
        if current is not None and current.size is not None:
            if self.size is None or self.size < current.size:
                raise WitnessError(
                    f"refusing to move the witness state back from size {current.size} to {self.size}: the "
                    "last-seen checkpoint only grows"
                )
            if self.size == current.size and self.root != current.root:
                raise WitnessError(f"refusing to replace the root the witness saw at size {current.size}")
            if current.origin != self.origin:
                raise WitnessError(f"refusing to change the witnessed origin {current.origin!r}")
        body = {
            "format": "amber-witness-state/1",
            "origin": self.origin,
            "keys": [[s, k] for s, k in self.keys],
            "size": self.size,
            "root": self.root,
            "note": self.note,
            "grown_at": self.grown_at,
            "contact_at": self.contact_at,
        }
        _write_private(directory / STATE_FILE, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def prepare(directory: Path) -> None:
    """Create the state directory (0700) and its sub-directories."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for sub in (NOTES_DIR, EVIDENCE_DIR):
        (directory / sub).mkdir(mode=0o700, exist_ok=True)


def note_name(size: int, note: str) -> str:
    """`<size, 20 digits>-<first 16 hex of the note's SHA-256>.checkpoint`: sorted by size, named by content."""
    return f"{size:020d}-{hashlib.sha256(note.encode()).hexdigest()[:16]}.checkpoint"


# -- keys, notes ------------------------------------------------------------------------------------------


def load_key(reference: str) -> tlog.Signer:
    """The witness's signing key from `file:/path` or `env:NAME`. Errors name the reference, never the key."""
    kind, _, where = reference.partition(":")
    if kind == "file":
        try:
            value = Path(where).expanduser().read_text()
        except OSError as exc:
            raise WitnessError(f"witness key {reference}: cannot read the file ({exc.strerror})") from None
    elif kind == "env":
        value = os.environ.get(where, "")
        if not value:
            raise WitnessError(f"witness key {reference}: the variable is not set")
    else:
        raise WitnessError("the witness key must be given by reference: `file:/path` or `env:NAME`")
    try:
        return tlog.Signer.parse(value)
    except ValueError as exc:
        raise WitnessError(f"witness key {reference}: {exc}") from None


def keygen(name: str, out: Path) -> tlog.Verifier:
    """Create the witness's Ed25519 key (named after the witness) in a new 0600 file; return its verifier key."""
    try:
        signer = tlog.Signer.generate(name)
    except ValueError as exc:
        raise WitnessError(f"witness key name {name!r}: {exc}") from None
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WitnessError(f"{out} exists; a key is never overwritten") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(signer.skey() + "\n")
    return signer.verifier


def cosign(note: str, signer: tlog.Signer) -> str:
    """Append the witness's Ed25519 note signature over the note's text (C2SP signed-note: one more signature
    line, which Go's note.Open and tlog.open_note read like any other)."""
    text, sep, _ = note.rpartition("\n\n")
    if not sep:
        raise ValueError("not a signed note")
    body = (text + "\n").encode()
    signature = base64.b64encode(signer.verifier.key_id + signer.sign(body)).decode()
    return f"{note}\u2014 {signer.name} {signature}\n"


# -- the log, over HTTP -----------------------------------------------------------------------------------


class Unreachable(Exception):
    """The log did not answer (network error, timeout, a 5xx)."""


Fetch = Callable[[str], tuple[int, bytes]]
"""GET a path of the log: (status, body). Raises Unreachable when there is no answer."""


def http_fetch(base_url: str, *, timeout_s: float = 10.0, token: str | None = None) -> Fetch:
    """A stdlib HTTP(S) client for the log at `base_url` (certificates checked by Python's defaults)."""
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise WitnessError(f"the log URL must be http(s)://: {base_url!r}")

    def fetch(path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(base_url.rstrip("/") + path, headers={"accept": "*/*"})  # noqa: S310
        if token:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - scheme checked
                return int(response.status), response.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise Unreachable(f"HTTP {exc.code} from {path}") from None
            return exc.code, exc.read(MAX_BODY + 1)
        except (OSError, urllib.error.URLError) as exc:
            raise Unreachable(f"{path}: {getattr(exc, 'reason', exc)}") from None

    return fetch


def post_alarm(url: str, alarms: Sequence[Alarm], origin: str | None, at: datetime, timeout_s: float = 10.0) -> None:
    """POST the alarms as JSON to an alarm webhook. Raises OSError if it cannot be delivered."""
    body = json.dumps(
        {"origin": origin, "at": at.isoformat(), "alarms": [{"kind": a.kind, "message": a.message} for a in alarms]}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by the caller
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310
        pass


# -- one round --------------------------------------------------------------------------------------------


@dataclass
class Witness:
    """Checks and cosigns one log's checkpoints; all it trusts is in `directory` (and `log_key` on first use)."""

    directory: Path
    signer: tlog.Signer
    fetch: Fetch
    max_age: timedelta
    clock: Clock = field(default_factory=_SystemClock)
    log_key: str | None = None

    def _state(self) -> _State:
        state = _State.load(self.directory)
        pinned = tlog.Verifier.parse(self.log_key) if self.log_key else None
        if state is None:
            if pinned is None:
                raise WitnessError(f"{self.directory} holds no witness state: pin the log's key with --log-key VKEY")
            return _State(origin=pinned.name, keys=[(0, pinned.vkey)])
        if pinned is not None and pinned.vkey not in {k for _, k in state.keys}:
            raise WitnessError(
                f"--log-key {pinned.name}+{pinned.key_id.hex()} is not a key this witness follows; the pinned key "
                "changes only through a rotation signed by the key in force"
            )
        return state

    def run_once(self) -> Outcome:
        """One round, holding the state directory's lock: two witness processes on one directory take turns."""
        prepare(self.directory)
        fd = os.open(self.directory / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._round()
        finally:
            os.close(fd)  # releases the lock

    def _round(self) -> Outcome:
        state = self._state()
        now = self.clock.now()
        outcome = Outcome()
        try:
            self._check(state, now, outcome)
        except Unreachable as exc:
            last = _at(state.contact_at)
            if last is not None and now - last > self.max_age:
                outcome.alarms.append(
                    Alarm("unreachable", f"the log has not answered since {state.contact_at} (> {self.max_age}): {exc}")
                )
            else:
                outcome.warnings.append(f"the log did not answer: {exc}")
        return outcome

    def _check(self, state: _State, now: datetime, outcome: Outcome) -> None:
        status, body = self.fetch(CHECKPOINT_PATH)
        if status != 200 or len(body) > MAX_BODY:
            raise Unreachable(f"the log served no checkpoint (HTTP {status})")
        try:
            note = body.decode("utf-8")
            text, _ = tlog.open_note(note, [])
            checkpoint = tlog.Checkpoint.parse(text)
        except (UnicodeDecodeError, ValueError) as exc:
            self._alarm(outcome, Alarm("format", f"the served checkpoint is not a signed checkpoint note: {exc}"))
            return
        if checkpoint.origin != state.origin:
            self._alarm(
                outcome, Alarm("origin", f"the checkpoint is for {checkpoint.origin!r}, not {state.origin!r}"), note
            )
            return
        if not self._signed(state, checkpoint, note, outcome):
            return
        if state.size is not None and state.root is not None:
            old_root = bytes.fromhex(state.root)
            if checkpoint.size < state.size:
                self._alarm(
                    outcome,
                    Alarm(
                        "rollback",
                        f"the log serves a checkpoint of size {checkpoint.size}, smaller than the {state.size} this "
                        "witness cosigned (a restored backup, or entries deleted)",
                    ),
                    note,
                )
                return
            if checkpoint.size == state.size:
                if checkpoint.root != old_root:
                    self._alarm(
                        outcome,
                        Alarm("fork", f"two different roots signed for size {state.size}: the log forked"),
                        note,
                    )
                    return
                state.contact_at = now.isoformat()
                grown = _at(state.grown_at)
                if grown is not None and now - grown > self.max_age:
                    outcome.alarms.append(
                        Alarm(
                            "stale",
                            f"no new checkpoint since {state.grown_at} (> {self.max_age}); the log stays at size "
                            f"{state.size}: it stopped publishing, or nothing was appended",
                        )
                    )
                state.save(self.directory)
                outcome.size = state.size
                return
            if not self._consistent(state.size, old_root, checkpoint, note, outcome):
                return
        cosigned = cosign(note, self.signer)
        _write_private(self.directory / NOTES_DIR / note_name(checkpoint.size, cosigned), cosigned.encode())
        state.size, state.root, state.note = checkpoint.size, checkpoint.root.hex(), note
        state.grown_at = state.contact_at = now.isoformat()
        state.save(self.directory)
        outcome.cosigned, outcome.size = cosigned, checkpoint.size

    def _signed(self, state: _State, checkpoint: tlog.Checkpoint, note: str, outcome: Outcome) -> bool:
        """The log's signature by the key in force at this size (following signed rotations), named after the
        origin."""
        key = state.in_force(checkpoint.size)
        try:
            _, signers = tlog.open_note(note, [key])
        except tlog.BadSignature as exc:
            self._alarm(outcome, Alarm("signature", f"checkpoint of size {checkpoint.size}: {exc}"), note)
            return False
        if not signers:
            followed = self._follow_rotations(state, checkpoint, note, outcome)
            if followed is None:
                return False
            key = followed
        if key.name != checkpoint.origin:
            self._alarm(
                outcome,
                Alarm("key-name", f"the log key {key.name!r} is not named after the origin {checkpoint.origin!r}"),
                note,
            )
            return False
        return True

    def _follow_rotations(
        self, state: _State, checkpoint: tlog.Checkpoint, note: str, outcome: Outcome
    ) -> tlog.Verifier | None:
        """Not signed by the key in force: accept a new key only as the verifier does, through `ledger.key_rotated`
        entries signed by the previous key, each proved included in this signed tree. Returns the key that
        signed the checkpoint, with the state's schedule extended; None (after an alarm) otherwise."""
        problem = f"checkpoint of size {checkpoint.size} is not signed by the log key in force"
        status, body = self.fetch(f"{ROTATIONS_PATH}?size={checkpoint.size}")  # no answer: Unreachable, no alarm yet
        if status != 200:
            self._alarm(outcome, Alarm("signature", f"{problem} (and the log shows no key rotation)"), note)
            return None
        keys = list(state.keys)
        try:
            for item in json.loads(body):
                step = _rotation(item, keys[-1], checkpoint)
                if step is not None:
                    keys.append(step)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            self._alarm(outcome, Alarm("signature", f"{problem}: {exc}"), note)
            return None
        candidate = _State(state.origin, keys)
        key = candidate.in_force(checkpoint.size)
        try:
            _, signers = tlog.open_note(note, [key])
        except tlog.BadSignature as exc:
            self._alarm(outcome, Alarm("signature", f"checkpoint of size {checkpoint.size}: {exc}"), note)
            return None
        if not signers:
            self._alarm(outcome, Alarm("signature", f"{problem}, nor by a key it rotated to"), note)
            return None
        state.keys = keys
        outcome.warnings.append(f"followed the log's signed key rotation to {key.name}+{key.key_id.hex()}")
        return key

    def _consistent(
        self, old_size: int, old_root: bytes, checkpoint: tlog.Checkpoint, note: str, outcome: Outcome
    ) -> bool:
        """RFC 9162: the new tree extends the one this witness saw, proved from the witness's own (size, root)."""
        status, body = self.fetch(f"{CONSISTENCY_PATH}?old={old_size}&new={checkpoint.size}")
        proof: list[bytes] | None = None
        if status == 200:
            try:
                proof = [bytes.fromhex(h) for h in json.loads(body)["proof"]]
            except (ValueError, KeyError, TypeError):
                proof = None
        if proof is None or not tlog.verify_consistency(old_size, checkpoint.size, old_root, checkpoint.root, proof):
            why = "does not verify" if proof is not None else f"could not be obtained (HTTP {status})"
            self._alarm(
                outcome,
                Alarm(
                    "consistency",
                    f"the consistency proof from the witnessed size {old_size} to {checkpoint.size} {why}: the log "
                    "rewrote history or forked",
                ),
                note,
            )
            return False
        return True

    def _alarm(self, outcome: Outcome, alarm: Alarm, note: str | None = None) -> None:
        outcome.alarms.append(alarm)
        if note is not None:
            size = tlog.Checkpoint.parse(tlog.open_note(note, [])[0]).size
            _write_private(self.directory / EVIDENCE_DIR / f"{alarm.kind}-{note_name(size, note)}", note.encode())


def _rotation(item: dict[str, Any], current: tuple[int, str], checkpoint: tlog.Checkpoint) -> tuple[int, str] | None:
    """One served rotation entry: (its seq, the new key) if it hands over from the key in force `current`,
    None if it is not this witness's business (followed already, or before the key it pinned). Raises
    ValueError when it is not what it claims: its hash, its inclusion in the signed tree, the old key's
    signature."""
    entry, index = item["entry"], int(item["index"])
    seq = int(entry["seq"])
    payload = entry["payload"]
    old, new = tlog.Verifier.parse(payload["old_key"]), tlog.Verifier.parse(payload["new_key"])
    if seq <= current[0] or old != tlog.Verifier.parse(current[1]):
        return None
    data, stored = tlog.entry_leaf(entry)
    if hashlib.sha256(data).hexdigest() != stored or seq != index + 1 or entry.get("type") != tlog.KEY_ROTATION_EVENT:
        raise ValueError(f"rotation entry {seq}: its content does not match its hash")
    proof = [bytes.fromhex(h) for h in item["proof"]]
    if not tlog.verify_inclusion(index, checkpoint.size, tlog.leaf_hash(data), proof, checkpoint.root):
        raise ValueError(f"rotation entry {seq} is not in the signed tree")
    statement = tlog.rotation_statement(str(payload.get("origin", "")), old.vkey, new.vkey)
    if not old.verify(statement, base64.b64decode(payload["signature"], validate=True)):
        raise ValueError(f"rotation entry {seq} is not signed by the key in force")
    return seq, new.vkey


# -- the command ------------------------------------------------------------------------------------------


def parse_age(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `1d` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise WitnessError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d)") from None
    if not 0 < value < 1e7:
        raise WitnessError(f"the duration must be positive: {text!r}")
    return timedelta(seconds=value * units[unit])


def report(outcome: Outcome, *, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    for warning in outcome.warnings:
        err(f"amber-witness: warning: {warning}")
    for alarm in outcome.alarms:
        err(f"amber-witness: {alarm}")
    if outcome.cosigned is not None:
        out(f"amber-witness: cosigned size {outcome.size}")
    elif outcome.ok and outcome.size is not None:
        out(f"amber-witness: unchanged at size {outcome.size}")
    return 1 if outcome.alarms else 0


def run(
    witness: Witness,
    *,
    once: bool,
    interval_s: float,
    alarm_url: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
    out: Callable[[str], None] | None = None,
    err: Callable[[str], None] | None = None,
) -> int:
    """`--once`: one round, exit 1 on an alarm. Otherwise poll every `interval_s` (alarms are reported every round
    they hold; the loop goes on) until interrupted or `rounds` ran; exit 1 if any round alarmed."""
    say = out or _stdout
    shout = err or _stderr
    worst = 0
    done = 0
    while True:
        outcome = witness.run_once()
        code = report(outcome, out=say, err=shout)
        if outcome.alarms and alarm_url:
            try:
                post_alarm(alarm_url, outcome.alarms, _origin(witness), witness.clock.now())
            except OSError as exc:
                shout(f"amber-witness: the alarm could not be posted to the alarm URL: {exc}")
        worst = max(worst, code)
        done += 1
        if once or (rounds is not None and done >= rounds):
            return worst
        sleep(interval_s)


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def _origin(witness: Witness) -> str | None:
    state = _State.load(witness.directory)
    return state.origin if state else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An independent witness of an amber ledger: check, cosign, alarm.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="create the witness's signing key (0600, never overwritten)")
    gen.add_argument("--name", required=True, help="the witness's name in its signatures (e.g. witness.example.org)")
    gen.add_argument("--out", required=True, type=Path)
    go = sub.add_parser("run", help="check and cosign the log's latest checkpoint (once, or polling)")
    go.add_argument("--log", required=True, help="the log's base URL (https://amber.example)")
    go.add_argument("--state", required=True, type=Path, help="the witness's own state directory")
    go.add_argument("--key", required=True, help="the witness's signing key: file:/path or env:NAME")
    go.add_argument("--log-key", help="the log's verifier key (required on the first run: it is pinned)")
    go.add_argument("--max-age", default="1h", help="alarm when nothing new or no answer for longer (default 1h)")
    go.add_argument("--once", action="store_true", help="one round (for cron); else poll every --interval")
    go.add_argument("--interval", default="60s", help="polling interval (default 60s)")
    go.add_argument("--alarm-url", help="also POST alarms as JSON to this URL")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            sys.stdout.write(keygen(args.name, args.out).vkey + "\n")
            return 0
        witness = Witness(
            directory=args.state,
            signer=load_key(args.key),
            fetch=http_fetch(args.log),
            max_age=parse_age(args.max_age),
            log_key=args.log_key,
        )
        if args.alarm_url:
            http_fetch(args.alarm_url)  # the same scheme check
        interval_s = parse_age(args.interval).total_seconds()
        return run(witness, once=args.once, interval_s=interval_s, alarm_url=args.alarm_url)
    except (WitnessError, ValueError) as exc:
        sys.stderr.write(f"amber-witness: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
