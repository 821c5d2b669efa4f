"""Transparency-log primitives and the offline verifier: RFC 9162 Merkle trees, C2SP signed notes and
checkpoints, receipts, and verification of an exported ledger bundle.

Owns: the bytes an auditor re-derives without amber. It protects the guarantee "never loses or rewrites
history" against the operator: the verifier trusts only the public key it is given, never amber's database.

NOTE: this module imports ONLY the Python standard library and `cryptography`, and nothing from amber. It is
copied verbatim to tools/amber_verify.py (a test keeps the two identical) so auditors can run it alone:

    python3 amber_verify.py bundle DIR --key VKEY [--checkpoint FILE ...] [--since FILE] [--jobs N]
                               [--allow-unsigned-tail] [--legacy-key-names]
                               [--witness-key VKEY ... --min-witnesses N]
    python3 amber_verify.py receipt FILE --key VKEY

Formats (docs/ledger.md):
- leaf data   = canonical JSON of the entry body (exactly the bytes whose SHA-256 is the entry's hash);
- leaf hash   = SHA-256(0x00 || leaf data); node hash = SHA-256(0x01 || left || right)  (RFC 9162 2.1.1);
- checkpoint  = "<origin>\\n<tree size>\\n<base64 root>\\n" as a C2SP signed note with Ed25519 signatures;
- receipt     = a C2SP tlog-proof (`c2sp.org/tlog-proof@v1`) whose `extra` line carries the entry.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import concurrent.futures
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HASH_SIZE = 32
GENESIS = "0" * 64
KEY_ROTATION_EVENT = "ledger.key_rotated"
PROOF_HEADER = "c2sp.org/tlog-proof@v1"
_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # an em dash and a space open every signature line of a signed note

# -- canonical encoding ---------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8 (not \\u escapes), no NaN or Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# -- RFC 9162 Merkle tree -------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) computed the naive recursive way of RFC 9162 2.1.1 (the reference; O(n))."""
    if not leaf_hashes:
        return EMPTY_ROOT
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = _split(len(leaf_hashes))
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


NodeGetter = Callable[[int, int], bytes]
"""`node(level, index)`: the hash of the perfect subtree over leaves [index * 2**level, (index+1) * 2**level)."""


class Frontier:
    """The right edge of a Merkle tree: one perfect-subtree hash per set bit of the size, largest first.

    Appending a leaf returns the perfect-subtree nodes it completes, so a store can keep every node and
    answer proofs without recomputing; the root is folded from the frontier in O(log n).
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes, not {len(hashes)}")
        self.size = size
        self._levels = [bit for bit in range(size.bit_length() - 1, -1, -1) if size >> bit & 1]
        self._hashes = list(hashes)

    @staticmethod
    def positions(size: int) -> list[tuple[int, int]]:
        """(level, index) of the frontier's nodes for a tree of `size` leaves, largest subtree first."""
        return [(bit, (size >> bit) - 1) for bit in range(size.bit_length() - 1, -1, -1) if size >> bit & 1]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        index = self.size
        created = [(0, index, leaf)]
        value, level = leaf, 0
        while self._levels and self._levels[-1] == level:
            self._levels.pop()
            value = node_hash(self._hashes.pop(), value)
            level += 1
            created.append((level, index >> level, value))
        self._levels.append(level)
        self._hashes.append(value)
        self.size += 1
        return created

    def blob(self) -> bytes:
        """The frontier's hashes concatenated, largest subtree first (how amber stores it)."""
        return b"".join(self._hashes)

    @classmethod
    def from_blob(cls, size: int, blob: bytes) -> Frontier:
        return cls(size, [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)])

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        value = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            value = node_hash(left, value)
        return value


def _subtree(lo: int, hi: int, node: NodeGetter) -> bytes:
    """MTH(D[lo:hi]) from stored perfect subtrees (lo is aligned as in RFC 9162's recursion)."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        return node(n.bit_length() - 1, lo // n)
    k = _split(n)
    return node_hash(_subtree(lo, lo + k, node), _subtree(lo + k, hi, node))


def _path(m: int, lo: int, hi: int, node: NodeGetter) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if m < lo + k:
        return [*_path(m, lo, lo + k, node), _subtree(lo + k, hi, node)]
    return [*_path(m, lo + k, hi, node), _subtree(lo, lo + k, node)]


def _subproof(m: int, lo: int, hi: int, complete: bool, node: NodeGetter) -> list[bytes]:
    if m == hi:
        return [] if complete else [_subtree(lo, hi, node)]
    k = _split(hi - lo)
    if m <= lo + k:
        return [*_subproof(m, lo, lo + k, complete, node), _subtree(lo + k, hi, node)]
    return [*_subproof(m, lo + k, hi, False, node), _subtree(lo, lo + k, node)]


def tree_root(size: int, node: NodeGetter) -> bytes:
    return EMPTY_ROOT if size == 0 else _subtree(0, size, node)


def inclusion_proof(index: int, size: int, node: NodeGetter) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 2.1.3.1."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _path(index, 0, size, node)


def consistency_proof(old_size: int, new_size: int, node: NodeGetter) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 2.1.4.1 (empty when either size is 0 or they are equal)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, 0, new_size, True, node)


def needed_nodes(compute: Callable[[NodeGetter], object]) -> list[tuple[int, int]]:
    """The perfect-subtree nodes `compute` reads (which nodes a proof needs does not depend on their hashes)."""
    seen: list[tuple[int, int]] = []

    def record(level: int, index: int) -> bytes:
        seen.append((level, index))
        return bytes(HASH_SIZE)

    compute(record)
    return seen


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `proof` show leaf hash `leaf` at `index` in the tree of `size` with `root`?"""
    if not 0 <= index < size:
        return False
    fn, sn, value = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            value = node_hash(sibling, value)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            value = node_hash(value, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and value == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree (new_size, new_root) an append-only extension of (old_size, old_root)?"""
    if old_size < 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# -- C2SP signed notes (Ed25519) ------------------------------------------------------------------------


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ED25519]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ValueError("a key name must be non-empty without spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    """A note verifier key: `name+hexid+base64(0x01 || public key)` (C2SP signed-note)."""

    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.public)

    @property
    def vkey(self) -> str:
        blob = base64.b64encode(bytes([_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        try:
            name, hex_id, blob = vkey.strip().split("+", 2)
            raw = base64.b64decode(blob, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"not a verifier key (name+id+key): {vkey[:40]!r}") from exc
        _check_name(name)
        if len(raw) != 33 or raw[0] != _ED25519:
            raise ValueError("only Ed25519 verifier keys are supported")
        key = cls(name, raw[1:])
        if key.key_id.hex() != hex_id.lower():
            raise ValueError(f"verifier key {name}: the key id does not match the key")
        return key

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


class Signer:
    """A note signer key. Holds the private key in memory only; its repr never shows it."""

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            raise ValueError("an Ed25519 signing key is 32 bytes")
        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.verifier = Verifier(name, self._key.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return f"Signer({self.verifier.vkey})"

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """`PRIVATE+KEY+name+hexid+base64(0x01 || seed)` as written by `amber audit keygen` (and Go's note)."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValueError("not a signing key (PRIVATE+KEY+name+id+key)")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except binascii.Error as exc:
            raise ValueError("signing key: bad base64") from exc
        if len(raw) != 33 or raw[0] != _ED25519:
            raise ValueError("only Ed25519 signing keys are supported")
        signer = cls(parts[2], raw[1:])
        if signer.verifier.key_id.hex() != parts[3].lower():
            raise ValueError("signing key: the key id does not match the key")
        return signer

    def skey(self) -> str:
        """The private key in text form. Callers write it to a 0600 file; never log it."""
        blob = base64.b64encode(bytes([_ED25519]) + self._key.private_bytes_raw()).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{blob}"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def sign_note(text: str, signer: Signer) -> str:
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("a note's text ends with a newline and has no blank line")
    signature = base64.b64encode(signer.verifier.key_id + signer.sign(text.encode())).decode()
    return f"{text}\n{_SIG_PREFIX}{signer.name} {signature}\n"


class BadSignature(ValueError):
    """A signature line by a known key (name and key id) that does not verify: an error, never skipped."""


def open_note(note: str, keys: Iterable[Verifier]) -> tuple[str, list[Verifier]]:
    """Split a signed note into its text and the given keys that signed it.

    Signatures by unknown keys are skipped (C2SP signed-note); a signature by a known key (same name and key id)
    that does not verify raises BadSignature. Does NOT check what the text says; callers parse it and decide
    which signer they require.
    """
    text, sep, block = note.rpartition("\n\n")
    if not sep or not block.endswith("\n"):
        raise ValueError("not a signed note (no blank line before the signatures)")
    text += "\n"
    by_id = {(k.name, k.key_id): k for k in keys}
    signed: list[Verifier] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            raise ValueError("malformed signature line in note")
        name, _, blob = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            raise ValueError("malformed signature in note") from exc
        key = by_id.get((name, raw[:4]))
        if key is None:
            continue
        if not key.verify(text.encode(), raw[4:]):
            raise BadSignature(f"the signature by the known key {key.name}+{key.key_id.hex()} is invalid")
        signed.append(key)
    return text, signed


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise ValueError("a checkpoint has an origin, a size and a root hash, each on its own line")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        _check_origin(origin)
        if not _is_index(size_text):
            raise ValueError("checkpoint: bad tree size")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise ValueError("checkpoint: the root is not base64") from exc
        if len(root) != HASH_SIZE:
            raise ValueError("checkpoint: the root is not 32 bytes")
        return cls(origin, int(size_text), root)


def _check_origin(origin: str) -> None:
    """An origin is one non-empty line without control characters (TAB, CR, NUL, DEL ...)."""
    if not origin:
        raise ValueError("checkpoint: the origin is empty")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in origin):
        raise ValueError(f"checkpoint: the origin {origin!r} contains a control character")


def _is_index(text: str) -> bool:
    """ASCII decimal digits without a leading zero (C2SP tree sizes and tlog-proof indices)."""
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


class KeyNameError(ValueError):
    """The log's key is not named after the checkpoint origin (C2SP tlog-checkpoint)."""


def check_key_name(origin: str, name: str) -> None:
    """C2SP tlog-checkpoint: the log's signature is by a key whose name is the origin line. Raises KeyNameError."""
    if name != origin:
        raise KeyNameError(
            f"the signing key is named {name!r} but the checkpoint origin is {origin!r}: a log's key must be named "
            "after its origin; create one with `amber audit keygen --out FILE` (named after the origin) and hand "
            "over to it with `amber audit rotate-key --new-key file:FILE`"
        )


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """Sign a checkpoint with the log's key. Refuses (KeyNameError) a key not named after the origin."""
    _check_origin(checkpoint.origin)
    check_key_name(checkpoint.origin, signer.name)
    return sign_note(checkpoint.text(), signer)


# -- entries, key rotation, receipts ---------------------------------------------------------------------


def entry_leaf(entry: dict[str, Any]) -> tuple[bytes, str]:
    """(leaf data, the entry's stored hash) of an exported entry: its body is every field except `hash`."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return canonical_json(body), str(entry.get("hash", ""))


def rotation_statement(origin: str, old_key: str, new_key: str) -> bytes:
    """What the old key signs when it hands over to the new one (stored in the `ledger.key_rotated` entry)."""
    return canonical_json({"statement": "amber ledger key rotation", "origin": origin, "old": old_key, "new": new_key})


def format_receipt(entry: dict[str, Any], index: int, proof: Sequence[bytes], checkpoint_note: str) -> str:
    """A C2SP tlog-proof: header, `extra` (the entry as canonical JSON, base64), `index`, the proof, the note."""
    lines = [
        PROOF_HEADER,
        "extra " + base64.b64encode(canonical_json(entry)).decode(),
        f"index {index}",
        *(base64.b64encode(h).decode() for h in proof),
    ]
    return "\n".join(lines) + "\n\n" + checkpoint_note


@dataclass
class Receipt:
    entry: dict[str, Any]
    index: int
    proof: list[bytes]
    note: str

    @classmethod
    def parse(cls, text: str) -> Receipt:
        head, sep, note = text.partition("\n\n")
        lines = head.split("\n")
        if not sep or lines[0] != PROOF_HEADER:
            raise ValueError(f"not a receipt: the first line must be {PROOF_HEADER}")
        rest = lines[1:]
        if not rest or not rest[0].startswith("extra "):
            raise ValueError("receipt: missing the `extra` line with the entry")
        entry = json.loads(base64.b64decode(rest[0][6:], validate=True))
        if len(rest) < 2 or not rest[1].startswith("index "):
            raise ValueError("receipt: missing the `index` line")
        if not _is_index(rest[1][6:]):
            raise ValueError("receipt: the index is not a decimal number without leading zeros")
        proof = [base64.b64decode(line, validate=True) for line in rest[2:]]
        if not isinstance(entry, dict):
            raise ValueError("receipt: the entry is not a JSON object")  # noqa: TRY004 - bad input, not a bug
        return cls(entry, int(rest[1][6:]), proof, note)


# -- verification ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        where = f"entry {self.seq}: " if self.seq is not None else ""
        return f"{where}{self.check}: {self.message}"


@dataclass
class Report:
    entries: int = 0
    root: bytes = EMPTY_ROOT
    checkpoints: int = 0
    problems: list[Problem] = field(default_factory=list)
    signed_size: int | None = None
    """The largest tree size a trusted, matching checkpoint signs (None: no such checkpoint)."""

    @property
    def unsigned(self) -> int:
        """How many entries at the end of the log no trusted checkpoint covers."""
        return self.entries - (self.signed_size or 0)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Signed:
    source: str
    checkpoint: Checkpoint
    note: str


def verify_receipt(text: str, keys: Sequence[Verifier], origin: str | None = None) -> Report:
    """Check a receipt offline: the entry's own hash, a trusted signature on the checkpoint, the inclusion proof.

    Does NOT prove the checkpoint is the latest or that others saw the same one (compare with a witness).
    """
    report = Report(entries=1)
    try:
        receipt = Receipt.parse(text)
        note_text, signers = open_note(receipt.note, keys)
        checkpoint = Checkpoint.parse(note_text)
    except BadSignature as exc:
        report.problems.append(Problem("signature", str(exc)))
        return report
    except (ValueError, binascii.Error) as exc:
        report.problems.append(Problem("format", str(exc)))
        return report
    seq = receipt.entry.get("seq") if isinstance(receipt.entry.get("seq"), int) else None
    data, stored = entry_leaf(receipt.entry)
    if hashlib.sha256(data).hexdigest() != stored:
        report.problems.append(Problem("hash", "the entry's content does not match its hash", seq))
    if seq != receipt.index + 1:
        report.problems.append(Problem("sequence", f"entry seq {seq} is not leaf index {receipt.index} + 1", seq))
    if not signers:
        report.problems.append(Problem("signature", "the checkpoint has no valid signature by a trusted key"))
    elif all(key.name != checkpoint.origin for key in signers):
        report.problems.append(
            Problem(
                "key-name",
                f"the checkpoint is signed by {signers[0].name!r}, not by a key named after its "
                f"origin {checkpoint.origin!r}",
            )
        )
    if origin is not None and checkpoint.origin != origin:
        report.problems.append(Problem("origin", f"the checkpoint is for {checkpoint.origin!r}, not {origin!r}"))
    if not verify_inclusion(receipt.index, checkpoint.size, leaf_hash(data), receipt.proof, checkpoint.root):
        report.problems.append(
            Problem(
                "inclusion", f"the proof does not place this entry in the signed tree of size {checkpoint.size}", seq
            )
        )
    report.root, report.checkpoints = checkpoint.root, 1
    return report


Leaf = tuple[bytes, str, dict[str, Any]]
"""(leaf data, the stored hash, the parsed entry)."""


def _fields(line: bytes) -> Leaf | None:
    """Split an exported line without a full JSON parse: (body bytes, hash, {seq, prev, type}); None if the line
    does not have the exported canonical layout (the caller then parses it as JSON).

    Safe because the body bytes are what gets hashed: a line that is not amber's canonical bytes cannot match
    its entry hash chain and the signed roots at the same time; the fields only locate the checks.
    """
    h = line.find(b',"hash":"')
    p = line.rfind(b',"prev":"')
    t = line.rfind(b',"type":"')
    if h < 0 or p < 0 or t < p or line[h + 73 : h + 74] != b'"' or line[p + 73 : p + 81] != b'","seq":':
        return None
    comma = line.find(b",", p + 81)
    end = line.find(b'"', t + 9)
    digits = line[p + 81 : comma]
    if comma < 0 or end < 0 or not digits.isdigit():
        return None
    fields = {"seq": int(digits), "prev": line[p + 9 : p + 73].decode(), "type": line[t + 9 : end].decode()}
    return line[:h] + line[h + 74 :], line[h + 9 : h + 73].decode(), fields


def read_leaves(path: Path) -> Iterator[Leaf]:
    """The entries of an entries.jsonl file, streamed. Each line is canonical JSON of the body plus `hash`, so
    the leaf data is the line without its `"hash":...` member (the body's canonical bytes). Key rotation
    entries, and any line without the canonical layout, are parsed as JSON in full."""
    number = 0
    with path.open("rb") as handle:
        while block := handle.readlines(1 << 22):
            for raw in block:
                number += 1
                line = raw.rstrip(b"\r\n")
                fast = _fields(line)
                if fast is not None and fast[2]["type"] != KEY_ROTATION_EVENT:
                    yield fast
                elif line.strip():
                    yield _parsed(line, path, number)


def _parsed(line: bytes, path: Path, number: int) -> Leaf:
    entry = json.loads(line)
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} line {number} is not a JSON object")  # noqa: TRY004 - bad input
    data, stored = entry_leaf(entry)
    return data, stored, entry


def _key_schedule(
    entries: Iterable[dict[str, Any]], roots: Sequence[Verifier]
) -> tuple[list[tuple[int, Verifier]], list[Problem]]:
    """Which key signs which tree sizes: the trusted key(s) from size 0, then each rotation signed by the old key."""
    schedule = [(0, key) for key in roots]
    problems: list[Problem] = []
    for entry in entries:
        if entry.get("type") != KEY_ROTATION_EVENT:
            continue
        seq = int(entry["seq"])
        payload = entry.get("payload", {})
        try:
            old, new = Verifier.parse(payload["old_key"]), Verifier.parse(payload["new_key"])
            signature = base64.b64decode(payload["signature"], validate=True)
        except (KeyError, ValueError, TypeError, binascii.Error):
            problems.append(Problem("key-rotation", "malformed key rotation entry", seq))
            continue
        latest_start = max((s for s, _ in schedule), default=0)
        current = [key for start, key in schedule if start == latest_start]
        statement = rotation_statement(str(payload.get("origin", "")), old.vkey, new.vkey)
        if old not in current or not old.verify(statement, signature):
            problems.append(Problem("key-rotation", "the rotation is not signed by the key in force", seq))
            continue
        schedule.append((seq, new))
    return schedule, problems


def _keys_for(size: int, schedule: Sequence[tuple[int, Verifier]]) -> list[Verifier]:
    start = max((s for s, _ in schedule if s <= size), default=None)
    return [key for s, key in schedule if s == start]


def verify_log(
    entries: Iterable[dict[str, Any]],
    checkpoints: Sequence[tuple[str, str]],
    keys: Sequence[Verifier],
    *,
    origin: str | None = None,
    since: tuple[str, str] | None = None,
    allow_unsigned_tail: bool = True,
    legacy_key_names: bool = False,
    witness_keys: Sequence[Verifier] = (),
    min_witnesses: int = 0,
) -> Report:
    """Verify entries (in file order) against signed checkpoints (source name, note text).

    Checks, naming the entry where one applies: `sequence` (seq n on line n), `link` (prev is the previous
    entry's hash), `hash` (the body re-hashes to its hash), `signature` (each checkpoint is signed by the key
    in force at its size), `origin`, `truncation`/`rollback` (a checkpoint is larger than the log),
    `root` (the log's first n entries do not hash to a checkpoint's root), `split-view` (two valid checkpoints
    cannot both be true). What this does NOT prove: that the log's timestamps are true (they are the log's
    claim), or that nothing was appended after the newest checkpoint and then withheld.
    `unsigned-tail` (with `allow_unsigned_tail=False`, what the command lines pass unless told otherwise):
    entries after the newest trusted checkpoint that matches the log, or no such checkpoint at all;
    `report.unsigned` and `report.signed_size` say how many either way.
    `key-name`: a checkpoint is signed by a key not named after its origin (C2SP tlog-checkpoint);
    `legacy_key_names` accepts that only for keys the log later rotated away from (installations older than
    the rule), never for the key in force.
    """
    return verify_leaves(
        ((*entry_leaf(entry), entry) for entry in entries),
        checkpoints,
        keys,
        origin=origin,
        since=since,
        allow_unsigned_tail=allow_unsigned_tail,
        legacy_key_names=legacy_key_names,
        witness_keys=witness_keys,
        min_witnesses=min_witnesses,
    )


def verify_leaves(
    leaves: Iterable[Leaf],
    checkpoints: Sequence[tuple[str, str]],
    keys: Sequence[Verifier],
    *,
    origin: str | None = None,
    since: tuple[str, str] | None = None,
    allow_unsigned_tail: bool = True,
    legacy_key_names: bool = False,
    witness_keys: Sequence[Verifier] = (),
    min_witnesses: int = 0,
) -> Report:
    """`verify_log` over (leaf data, hash, entry) triples, streamed: memory stays flat for any log size."""
    return _verify(
        lambda wanted, nodes, report, rotations: _walk(leaves, wanted, report, rotations, nodes),
        checkpoints,
        keys,
        origin,
        since,
        allow_unsigned_tail=allow_unsigned_tail,
        legacy_key_names=legacy_key_names,
        witness_keys=witness_keys,
        min_witnesses=min_witnesses,
    )


class _Nodes:
    """The perfect-subtree hashes a walk keeps: those the consistency proofs between checkpoints read."""

    def __init__(self, wanted: Iterable[tuple[int, int]] = ()) -> None:
        self.wanted = frozenset(wanted)
        self.ends = frozenset((index + 1) << level for level, index in self.wanted)
        self.found: dict[tuple[int, int], bytes] = {}

    def record(self, end: int, level: int, value: bytes) -> None:
        """`value` is the hash of the perfect subtree of 2**level leaves ending before leaf `end`."""
        key = (level, (end >> level) - 1)
        if key in self.wanted:
            self.found[key] = value


Walker = Callable[[set[int], _Nodes, Report, list[dict[str, Any]]], dict[int, bytes]]
"""Reads the log once: checks the chain into the report, collects key rotations, keeps the wanted nodes, returns
the root at each wanted size (and sets the report's entry count and final root)."""


def _consistency_nodes(sizes: Iterable[int]) -> set[tuple[int, int]]:
    """The nodes of the consistency proofs between consecutive tree sizes."""
    needed: set[tuple[int, int]] = set()
    for old, new in itertools.pairwise(sorted(set(sizes))):
        if old > 0:
            needed.update(needed_nodes(functools.partial(consistency_proof, old, new)))
    return needed


def _verify(
    walk: Walker,
    checkpoints: Sequence[tuple[str, str]],
    keys: Sequence[Verifier],
    origin: str | None,
    since: tuple[str, str] | None,
    *,
    allow_unsigned_tail: bool,
    legacy_key_names: bool = False,
    witness_keys: Sequence[Verifier] = (),
    min_witnesses: int = 0,
) -> Report:
    report = Report()
    notes = [*checkpoints, *([since] if since else [])]
    parsed = _parsed_checkpoints(notes, origin, report)
    rotations: list[dict[str, Any]] = []
    sizes = {cp.size for _, cp, _ in parsed}
    nodes = _Nodes(_consistency_nodes(sizes))
    roots = walk(sizes, nodes, report, rotations)
    schedule, rotation_problems = _key_schedule(rotations, keys)
    report.problems.extend(rotation_problems)
    signed = _signed_checkpoints(parsed, schedule, report, legacy_key_names=legacy_key_names)
    report.checkpoints = len(signed)
    forks = _judge(signed, roots, report.entries, since, report)
    _check_consistency([s for s in signed if s not in forks], nodes.found, report)
    tail = report.unsigned > 0 or report.signed_size is None
    if tail and not allow_unsigned_tail and not report.problems:
        report.problems.append(_unsigned_tail(report))
    if min_witnesses > 0 or witness_keys:
        _check_witnesses([s for s in signed if s not in forks], witness_keys, min_witnesses, report)
    return report


def _check_witnesses(signed: Sequence[_Signed], keys: Sequence[Verifier], needed: int, report: Report) -> None:
    """The checkpoint covering the head (size = entries) carries valid cosignatures by at least `needed` of the
    witness `keys`, counted over every copy of it given (the bundle's, each witness's). A witness key's signature
    that does not verify is an error. Does NOT check when the witnesses saw it (notes carry no time)."""
    head = [s for s in signed if s.checkpoint.size == report.entries]
    cosigners: set[Verifier] = set()
    for item in head:
        try:
            _, found = open_note(item.note, keys)
        except BadSignature as exc:
            report.problems.append(Problem("witness", f"checkpoint {item.source}: {exc}"))
            continue
        cosigners.update(found)
    if len(cosigners) < needed:
        named = ", ".join(sorted(f"{k.name}+{k.key_id.hex()}" for k in cosigners)) or "none"
        report.problems.append(
            Problem(
                "witness",
                f"the checkpoint covering the head (size {report.entries}) carries {len(cosigners)} valid "
                f"cosignature(s) by the given witness keys ({named}); {needed} required",
            )
        )


def _check_consistency(signed: Sequence[_Signed], found: dict[tuple[int, int], bytes], report: Report) -> None:
    """Each pair of consecutive signed checkpoints (by size) with the RFC 9162 consistency proof drawn from the
    log's own tree. Does NOT say which of the two is false: a failure means the log between them was rewritten, or
    one of them was signed over another history."""
    distinct = {(s.checkpoint.size, s.checkpoint.root): s for s in signed if s.checkpoint.size <= report.entries}
    ordered = sorted(distinct.values(), key=lambda s: s.checkpoint.size)
    for older, newer in itertools.pairwise(ordered):
        m, n = older.checkpoint.size, newer.checkpoint.size
        if m == n:
            continue  # same size, different roots: `_judge` reports the split view
        try:
            proof = consistency_proof(m, n, lambda level, index: found[level, index])
        except KeyError:
            continue  # a checkpoint between them was refused (and reported): its neighbours' nodes were kept
        if not verify_consistency(m, n, older.checkpoint.root, newer.checkpoint.root, proof):
            report.problems.append(
                Problem(
                    "consistency",
                    f"the log's RFC 9162 consistency proof from checkpoint {older.source} (size {m}) to checkpoint "
                    f"{newer.source} (size {n}) does not verify: the log's first {n} entries are not what they "
                    "were signed over, or the two were signed over different histories",
                )
            )


def _unsigned_tail(report: Report) -> Problem:
    if report.signed_size is None:
        return Problem(
            "unsigned-tail",
            f"no checkpoint signed by a trusted key matches the log: all {report.entries} entries are unsigned",
        )
    return Problem(
        "unsigned-tail",
        f"{report.unsigned} entries after the newest signed checkpoint (size {report.signed_size}) are not covered "
        f"by a trusted signature: entries {report.signed_size + 1}..{report.entries} could be forged",
        report.signed_size + 1,
    )


def _parsed_checkpoints(
    notes: Sequence[tuple[str, str]], origin: str | None, report: Report
) -> list[tuple[str, Checkpoint, str]]:
    parsed = []
    for source, note in notes:
        try:
            text, _ = open_note(note, [])
            checkpoint = Checkpoint.parse(text)
        except ValueError as exc:
            report.problems.append(Problem("format", f"checkpoint {source}: {exc}"))
            continue
        if origin is not None and checkpoint.origin != origin:
            report.problems.append(
                Problem("origin", f"checkpoint {source} is for {checkpoint.origin!r}, not {origin!r}")
            )
            continue
        parsed.append((source, checkpoint, note))
    return parsed


def _signed_checkpoints(
    parsed: Sequence[tuple[str, Checkpoint, str]],
    schedule: Sequence[tuple[int, Verifier]],
    report: Report,
    *,
    legacy_key_names: bool = False,
) -> list[_Signed]:
    signed: list[_Signed] = []
    for source, checkpoint, note in parsed:
        try:
            _, signers = open_note(note, [key for _, key in schedule])
        except BadSignature as exc:
            report.problems.append(Problem("signature", f"checkpoint {source} (size {checkpoint.size}): {exc}"))
            continue
        in_force = set(signers) & set(_keys_for(checkpoint.size, schedule))
        if not in_force:
            report.problems.append(
                Problem("signature", f"checkpoint {source} (size {checkpoint.size}) is not signed by the key in force")
            )
            continue
        if all(key.name != checkpoint.origin for key in in_force) and not (
            legacy_key_names and _rotated_away(in_force, schedule)
        ):
            names = ", ".join(sorted(repr(key.name) for key in in_force))
            report.problems.append(
                Problem(
                    "key-name",
                    f"checkpoint {source} (size {checkpoint.size}) is signed by the key {names}, not by a key named "
                    f"after its origin {checkpoint.origin!r} (C2SP tlog-checkpoint)",
                )
            )
            continue
        signed.append(_Signed(source, checkpoint, note))
    return signed


def _rotated_away(keys: set[Verifier], schedule: Sequence[tuple[int, Verifier]]) -> bool:
    """Whether the log later handed over from these keys (a signed rotation): `legacy_key_names` accepts only
    such old keys with another name than the origin, never the key in force at the end of the log."""
    latest_start = max((s for s, _ in schedule), default=0)
    return not keys & {key for start, key in schedule if start == latest_start}


def _walk(
    leaves: Iterable[Leaf],
    wanted: set[int],
    report: Report,
    rotations: list[dict[str, Any]],
    nodes: _Nodes | None = None,
) -> dict[int, bytes]:
    """Check the chain (first problem only), compute the root at every wanted size, collect key rotations, keep
    the wanted nodes."""
    nodes = nodes or _Nodes()
    ends = nodes.ends
    roots: dict[int, bytes] = {0: EMPTY_ROOT} if 0 in wanted else {}
    sha256 = hashlib.sha256
    stack: list[bytes] = []  # the frontier, inlined: this loop is the verifier's hot path
    prev = GENESIS
    chain_ok = True
    position = 0
    for data, stored, entry in leaves:
        position += 1
        if chain_ok:
            seq = entry.get("seq")
            problem = None
            if seq != position:
                what = "missing (deleted?)" if isinstance(seq, int) and seq > position else "out of order or duplicated"
                problem = Problem("sequence", f"line {position} holds entry {seq}: entry {what}", position)
            elif entry.get("prev") != prev:
                problem = Problem(
                    "link", "prev does not match the previous entry's hash (changed, removed or inserted)", position
                )
            elif sha256(data).hexdigest() != stored:
                problem = Problem("hash", "the entry's content does not match its hash (edited)", position)
            if problem is not None:
                report.problems.append(problem)
                chain_ok = False
        if entry.get("type") == KEY_ROTATION_EVENT:
            rotations.append(entry)
        prev = stored
        value = sha256(b"\x00" + data).digest()
        keep = position in ends
        if keep:
            nodes.record(position, 0, value)
        merges, level = position, 0
        while not merges & 1:
            value = sha256(b"\x01" + stack.pop() + value).digest()
            merges >>= 1
            level += 1
            if keep:
                nodes.record(position, level, value)
        stack.append(value)
        if position in wanted:
            roots[position] = _fold(stack)
    report.entries = position
    report.root = _fold(stack)
    return roots


def _fold(stack: Sequence[bytes]) -> bytes:
    if not stack:
        return EMPTY_ROOT
    value = stack[-1]
    for left in reversed(stack[:-1]):
        value = node_hash(left, value)
    return value


# -- the same walk, split across processes ---------------------------------------------------------------
#
# entries.jsonl is cut into byte ranges; each process checks its lines and folds their leaf hashes into the
# perfect subtrees its range covers, assuming the range starts at the leaf its first `seq` names. The parent
# then checks that each range starts where the previous one ended (count and `prev`) and joins the subtrees
# into the tree. Any doubt (a problem, a line to parse in full other than a key rotation, a gap at a seam)
# and the caller walks the whole file again in one process, which names the problem precisely: the parallel
# walk only ever says "all good" or "look closer".

_PARALLEL_MIN_BYTES = 32 << 20
_CHUNK_BYTES = (4 << 20, 32 << 20)
_HASH_KEY = b',"hash":"'
_PREV_KEY = b',"prev":"'
_TYPE_KEY = b',"type":"'
_ROTATION_TYPE = KEY_ROTATION_EVENT.encode() + b'"'

Chunk = tuple[
    int, int, str, str, list[bytes], dict[int, list[bytes]], list[dict[str, Any]], dict[tuple[int, int], bytes]
]
"""(first leaf index, entries, first `prev`, last hash, subtree hashes, {wanted size: subtree hashes}, rotations,
{wanted node: hash} of the nodes made inside the range)."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _walk_in_parallel(
    path: Path,
    wanted: set[int],
    report: Report,
    rotations: list[dict[str, Any]],
    *,
    processes: int | None,
    nodes: _Nodes,
) -> dict[int, bytes] | None:
    """`_walk` over an entries.jsonl file in `processes` processes; None if the file needs a closer look (or
    processes cannot be used here), and then `report` and `rotations` are untouched."""
    size = path.stat().st_size
    workers = min(_cpus(), 8) if processes is None else processes
    if workers < 2 or size == 0 or (processes is None and size < _PARALLEL_MIN_BYTES):
        return None
    step = min(max(size // (workers * 4), _CHUNK_BYTES[0]), _CHUNK_BYTES[1])
    if processes is not None:  # as asked, even for a small file (tests use this)
        step = max(1, -(-size // (workers * 2)))
    wanted_sizes = tuple(sorted(wanted))
    wanted_nodes = tuple(sorted(nodes.wanted))
    jobs = [(str(path), lo, min(lo + step, size), wanted_sizes, wanted_nodes) for lo in range(0, size, step)]
    # Fork is cheap and safe only while this process has a single thread; otherwise start fresh interpreters.
    single = threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if single else "spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            result = _join(pool.map(_check_chunk, jobs), wanted, nodes)
            if result is None:
                pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 - no processes here (no semaphores, an unimportable module ...): one will do
        return None
    if result is None:
        nodes.found.clear()
        return None
    roots, found, entries, root = result
    rotations.extend(found)
    report.entries, report.root = entries, root
    return roots


def _join(
    chunks: Iterable[Chunk | None], wanted: set[int], nodes: _Nodes | None = None
) -> tuple[dict[int, bytes], list[dict[str, Any]], int, bytes] | None:
    """Stitch the ranges' results in file order: (roots at the wanted sizes, rotations, entries, final root); the
    wanted nodes made inside the ranges and where they meet go into `nodes`."""
    nodes = nodes or _Nodes()
    roots: dict[int, bytes] = {0: EMPTY_ROOT} if 0 in wanted else {}
    rotations: list[dict[str, Any]] = []
    edge: list[tuple[int, bytes]] = []  # (level, hash): the frontier of everything joined so far
    size, prev = 0, GENESIS
    for chunk in chunks:
        if chunk is None:
            return None
        start, count, first_prev, last_hash, hashes, snapshots, found, kept = chunk
        if count == 0:
            continue
        if start != size or first_prev != prev:
            return None
        for at, subtrees in snapshots.items():
            partial = _attach(list(edge), start, at, subtrees)
            if partial is None:
                return None
            roots[at] = _fold([value for _, value in partial])
        joined = _attach(edge, start, start + count, hashes, nodes)
        if joined is None:
            return None
        nodes.found.update(kept)
        edge = joined
        size, prev = start + count, last_hash
        rotations += found
    return roots, rotations, size, _fold([value for _, value in edge])


def _attach(
    edge: list[tuple[int, bytes]], lo: int, hi: int, hashes: list[bytes], nodes: _Nodes | None = None
) -> list[tuple[int, bytes]] | None:
    """Extend the frontier of a tree of `lo` leaves by the perfect subtrees covering leaves [lo, hi) in order
    (largest aligned first: what `_check_chunk`'s stack holds), keeping the wanted nodes this makes in `nodes`.
    None if `hashes` is not that many."""
    levels = []
    at = lo
    while at < hi:
        level = (at & -at).bit_length() - 1 if at else hi.bit_length() - 1
        while at + (1 << level) > hi:
            level -= 1
        levels.append(level)
        at += 1 << level
    if len(levels) != len(hashes):
        return None
    end = lo
    for first_level, subtree in zip(levels, hashes, strict=True):
        end += 1 << first_level
        level, value = first_level, subtree
        while edge and edge[-1][0] == level:
            value = node_hash(edge.pop()[1], value)
            level += 1
            if nodes is not None:
                nodes.record(end, level, value)
        edge.append((level, value))
    return edge


def _chunk_lines(path: str, lo: int, hi: int) -> list[bytes]:
    """The lines that start in bytes [lo, hi) of the file, without their line ends."""
    with open(path, "rb") as handle:
        if lo > 0:
            handle.seek(lo - 1)
            handle.readline()  # the end of a line that started before lo: the previous range's
        start = handle.tell()
        if start >= hi:
            return []
        data = handle.read(hi - start)
        if not data.endswith(b"\n"):
            data += handle.readline()
    lines = data.split(b"\n")
    if b"\r" in data:
        lines = [line.rstrip(b"\r") for line in lines]
    return lines


def _check_chunk(job: tuple[str, int, int, tuple[int, ...], tuple[tuple[int, int], ...]]) -> Chunk | None:
    """In a worker process: check one range of entries.jsonl as `read_leaves` + `_walk` would, assuming it
    starts at the leaf its first line names. None at the first doubt (the caller then walks sequentially)."""
    path, lo, hi, wanted_sizes, wanted_nodes = job
    try:
        return _check_lines(_chunk_lines(path, lo, hi), set(wanted_sizes), _Nodes(wanted_nodes))
    except Exception:  # noqa: BLE001 - whatever it is, the sequential walk will meet it and report it
        return None


def _check_lines(lines: Iterable[bytes], wanted: set[int], nodes: _Nodes | None = None) -> Chunk | None:
    nodes = nodes or _Nodes()
    ends = nodes.ends
    sha256, hexlify = hashlib.sha256, binascii.hexlify
    stack: list[bytes] = []
    snapshots: dict[int, list[bytes]] = {}
    rotations: list[dict[str, Any]] = []
    start = position = -1
    first_prev = prev = b""
    for line in lines:
        # The layout checks of `_fields`, inlined (this loop is the verifier's hot path).
        h = line.find(_HASH_KEY)
        p = line.rfind(_PREV_KEY)
        t = line.rfind(_TYPE_KEY)
        if h < 0 or p < 0 or t < p or line[h + 73 : h + 74] != b'"' or line[p + 73 : p + 81] != b'","seq":':
            if not line.strip():
                continue
            return None
        comma = line.find(b",", p + 81)
        digits = line[p + 81 : comma]
        if comma < 0 or line.find(b'"', t + 9) < 0 or not digits.isdigit():
            return None
        seq = int(digits)
        entry_prev = line[p + 9 : p + 73]
        if line.startswith(_ROTATION_TYPE, t + 9):
            entry = json.loads(line)
            data, stored = entry_leaf(entry)
            if entry.get("seq") != seq or entry.get("prev") != entry_prev.decode():
                return None
            rotations.append(entry)
            stored_hash = stored.encode()
        else:
            data = line[:h] + line[h + 74 :]
            stored_hash = line[h + 9 : h + 73]
        if start < 0:
            start, position, first_prev = seq - 1, seq - 1, entry_prev
        elif entry_prev != prev:
            return None
        position += 1
        if seq != position or hexlify(sha256(data).digest()) != stored_hash:
            return None
        prev = stored_hash
        value = sha256(b"\x00" + data).digest()
        keep = position in ends
        if keep:
            nodes.record(position, 0, value)
        merges, width = position, 2
        while not merges & 1 and position - width >= start:  # else the sibling lies before this range
            value = sha256(b"\x01" + stack.pop() + value).digest()
            merges >>= 1
            if keep:
                nodes.record(position, width.bit_length() - 1, value)
            width <<= 1
        stack.append(value)
        if position in wanted:
            snapshots[position] = list(stack)
    if start < 0:
        return 0, 0, GENESIS, GENESIS, [], {}, [], {}
    return start, position - start, first_prev.decode(), prev.decode(), stack, snapshots, rotations, nodes.found


def _judge(
    signed: Sequence[_Signed], roots: dict[int, bytes], size: int, since: tuple[str, str] | None, report: Report
) -> list[_Signed]:
    """Each checkpoint against the log's roots; returns those reported as split view (their conflict is named)."""
    forks: list[_Signed] = []
    matching = sorted(
        (s for s in signed if roots.get(s.checkpoint.size) == s.checkpoint.root), key=lambda s: s.checkpoint.size
    )
    largest_good = matching[-1].checkpoint.size if matching else 0
    report.signed_size = largest_good if matching else None
    for item in signed:
        cp = item.checkpoint
        if cp.size > size:
            check = "rollback" if since is not None and item.note == since[1] else "truncation"
            report.problems.append(
                Problem(check, f"checkpoint {item.source} is signed for {cp.size} entries but the log has {size}")
            )
            continue
        if roots.get(cp.size) == cp.root:
            continue
        rivals = [s for s in signed if s.checkpoint.size == cp.size and s.checkpoint.root != cp.root]
        if rivals or largest_good >= cp.size:
            forks.append(item)
            report.problems.append(
                Problem(
                    "split-view",
                    f"checkpoint {item.source} (size {cp.size}) and the log matching a valid checkpoint of size "
                    f"{max(largest_good, cp.size)} cannot both be true",
                    cp.size,
                )
            )
            continue
        good_below = max((s.checkpoint.size for s in matching if s.checkpoint.size < cp.size), default=0)
        report.problems.append(
            Problem(
                "root",
                f"entries 1..{cp.size} do not hash to the root signed in checkpoint {item.source}: an entry after "
                f"{good_below} was modified, deleted, inserted or reordered",
                good_below + 1,
            )
        )
    return forks


def notes_in(path: Path) -> list[tuple[str, str]]:
    """The checkpoints in a file (one signed note, or JSON lines with a `note` each: a file witness's log), or in
    every `*.checkpoint` file of a directory (what `amber audit checkpoints fetch` writes)."""
    if path.is_dir():
        files = sorted(path.glob("*.checkpoint"))
        if not files:
            raise ValueError(f"{path} holds no *.checkpoint files")
        return [note for file in files for note in notes_in(file)]
    content = path.read_text(encoding="utf-8")
    if not content.lstrip().startswith("{"):
        return [(str(path), content)]
    found = []
    for number, line in enumerate(content.splitlines(), 1):
        if line.strip():
            found.append((f"{path}:{number}", str(json.loads(line)["note"])))
    return found


def verify_bundle(
    directory: Path,
    keys: Sequence[Verifier] | None = None,
    *,
    extra_checkpoints: Sequence[Path] = (),
    since: Path | None = None,
    processes: int | None = None,
    allow_unsigned_tail: bool = False,
    legacy_key_names: bool = False,
    witness_keys: Sequence[Verifier] = (),
    min_witnesses: int = 0,
) -> Report:
    """Verify an `amber audit export` bundle. Without `keys`, trusts the bundle's keys.txt (say so to the user).
    Entries no trusted checkpoint covers (or a bundle without one) fail unless `allow_unsigned_tail`.

    `processes`: how many processes check entries.jsonl (None: one per CPU for files of 32 MiB or more, else 1).
    The result is the same either way (see `_walk_in_parallel`).
    """
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    if keys is None:
        keys = [Verifier.parse(line) for line in (directory / "keys.txt").read_text().splitlines() if line.strip()]
    notes: list[tuple[str, str]] = []
    for line in (directory / "checkpoints.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            notes.append((f"#{item['id']} (bundle)", str(item["note"])))
    for path in extra_checkpoints:
        notes += notes_in(path)
    since_note = (str(since), since.read_text(encoding="utf-8")) if since else None
    path = directory / "entries.jsonl"

    def walk(wanted: set[int], nodes: _Nodes, report: Report, rotations: list[dict[str, Any]]) -> dict[int, bytes]:
        roots = _walk_in_parallel(path, wanted, report, rotations, processes=processes, nodes=nodes)
        return _walk(read_leaves(path), wanted, report, rotations, nodes) if roots is None else roots

    return _verify(
        walk,
        notes,
        keys,
        str(manifest["origin"]),
        since_note,
        allow_unsigned_tail=allow_unsigned_tail,
        legacy_key_names=legacy_key_names,
        witness_keys=witness_keys,
        min_witnesses=min_witnesses,
    )


def _say(line: str, *, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(line + "\n")


def unsigned_warning(report: Report) -> str | None:
    """What an OK report with entries no trusted checkpoint covers must say (allowed by --allow-unsigned-tail)."""
    if report.signed_size is None:
        return f"warning: no checkpoint signed by a trusted key: all {report.entries} entries are unsigned"
    if report.unsigned:
        return (
            f"warning: the last {report.unsigned} entries ({report.signed_size + 1}..{report.entries}) are not "
            "covered by a signed checkpoint"
        )
    return None


def _print_report(report: Report, what: str) -> int:
    if report.ok:
        _say(f"{what} OK: {report.entries} entries, {report.checkpoints} checkpoints, root {report.root.hex()}")
        warning = unsigned_warning(report) if what == "ledger" else None
        if warning:
            _say(warning, err=True)
        return 0
    _say(f"{what} verification FAILED:")
    for problem in report.problems:
        _say(f"  {problem}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an amber ledger export or receipt offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    bundle = sub.add_parser("bundle", help="verify an `amber audit export` directory")
    bundle.add_argument("directory", type=Path)
    bundle.add_argument("--key", action="append", default=[], help="trusted verifier key (name+id+key)")
    bundle.add_argument("--checkpoint", action="append", type=Path, default=[], help="a witnessed checkpoint")
    bundle.add_argument("--since", type=Path, help="a checkpoint you kept: prove the log only grew since")
    bundle.add_argument("--jobs", type=int, help="processes checking the entries (default: one per CPU if large)")
    bundle.add_argument(
        "--allow-unsigned-tail", action="store_true", help="pass even if no trusted checkpoint covers the last entries"
    )
    bundle.add_argument("--witness-key", action="append", default=[], help="a witness's verifier key (repeatable)")
    bundle.add_argument(
        "--min-witnesses", type=int, default=0, help="cosignatures by --witness-key the head's checkpoint needs"
    )
    bundle.add_argument(
        "--legacy-key-names",
        action="store_true",
        help="accept checkpoints by keys not named after the origin if the log later rotated away from them",
    )
    receipt = sub.add_parser("receipt", help="verify a receipt (c2sp.org/tlog-proof@v1)")
    receipt.add_argument("file", type=Path)
    receipt.add_argument("--key", action="append", default=[], required=True)
    args = parser.parse_args(argv)
    try:
        keys = [Verifier.parse(k) for k in args.key]
        if args.command == "receipt":
            return _print_report(verify_receipt(args.file.read_text(encoding="utf-8"), keys), "receipt")
        if not keys:
            _say("warning: no --key given; trusting the keys in the bundle itself", err=True)
        report = verify_bundle(
            args.directory,
            keys or None,
            extra_checkpoints=args.checkpoint,
            since=args.since,
            processes=args.jobs,
            allow_unsigned_tail=args.allow_unsigned_tail,
            legacy_key_names=args.legacy_key_names,
            witness_keys=[Verifier.parse(k) for k in args.witness_key],
            min_witnesses=args.min_witnesses,
        )
    except (OSError, ValueError, KeyError) as exc:
        _say(f"error: {exc}", err=True)
        return 2
    return _print_report(report, "ledger")


if __name__ == "__main__":
    sys.exit(main())
