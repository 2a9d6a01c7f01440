"""Audit bundles: a whole ledger in one portable JSON Lines file (docs/ledger-format.md, Audit bundles).

Line 1 is a header; then one line per entry, each line being exactly the entry's
canonical bytes (so ``SHA-256(0x00 || line)`` is its leaf hash); then one line per
checkpoint; then the principals' public keys as the log left them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from eventsourcing.domain import Aggregate

from ledger.entry import Entry
from ledger.jws import RepeatedMember, unique_members
from ledger.store import LedgerStore, StoredCheckpoint, StoredEntry, all_checkpoints, genesis_parameters
from projections.base import Cursor
from projections.keys import PRINCIPAL_EVENTS, PrincipalsView, snapshot

FORMAT = "dfg-audit-bundle/1"


class BundleError(Exception):
    pass


def export_bundle(store: LedgerStore, out: IO[bytes]) -> int:
    """Write the ledger as it stood at its head when the export began: a sequencer that
    appends meanwhile adds nothing to the bundle (neither entries nor checkpoints).

    The principals line is built here from the entries written, so that it describes
    the bundle's own size, and nothing outside the ledger's tables is read or written:
    taken from the read models, it would describe whatever size those had reached, and
    bringing them up to date meant writing them beside a running server."""
    size, root = store.head()
    checkpoints = [cp for cp in all_checkpoints(store) if cp.size <= size]
    ledger = genesis_parameters(store) or {}
    header = {
        "format": FORMAT,
        "chain": ledger.get("chain"),
        "origin": ledger.get("origin"),
        "checkpoint_key": ledger.get("checkpoint_key"),
        "size": size,
        "root": root.hex(),
        "checkpoints": len(checkpoints),
    }
    out.write(json.dumps(header, sort_keys=True).encode() + b"\n")
    principals = _Principals()
    start = 1
    while start <= size:
        page = store.read_entries(start, min(5000, size - start + 1))
        if not page:
            break
        for stored in page:
            out.write(stored.canonical + b"\n")
        principals.apply(page)
        start = page[-1].seq + 1
    for cp in checkpoints:
        line: dict[str, Any] = {"checkpoint": cp.note}
        if cp.cosignatures:
            # each a whole line ending in its newline, as the format has it and readers
            # require: a relay of an earlier release kept a line as its witness sent it
            line["cosignatures"] = [c if c.endswith("\n") else c + "\n" for c in cp.cosignatures]
        out.write(json.dumps(line).encode() + b"\n")
    out.write(json.dumps({"principals": principals.snapshot()}, sort_keys=True).encode() + b"\n")
    return size


class _Principals:
    """The principals view of the entries handed to it, in a private in-memory database.
    Only principal events are decoded (the stored event column picks them), so a
    consent-heavy log costs little more to export."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:")
        self._view = PrincipalsView()
        self._view.create(self._cursor())

    def _cursor(self) -> Cursor:
        return cast(Cursor, self._db.cursor())  # sqlite3's, which the views' protocol describes

    def apply(self, page: Sequence[StoredEntry]) -> None:
        entries = [Entry.decode(s.canonical) for s in page if s.event_type.startswith(PRINCIPAL_EVENTS)]
        if entries:
            self._view.apply(self._cursor(), entries)

    def snapshot(self) -> dict[str, Any]:
        try:
            return snapshot(self._cursor())
        finally:
            self._db.close()


@dataclass
class BundleReader:
    """Streams a bundle's entries while indexing them in a temporary SQLite file, so the
    audit can rebuild any aggregate's past without holding the log in memory."""

    path: Path

    def __post_init__(self) -> None:
        self.header: dict[str, Any] = _read_header(self.path)
        self.size: int = self.header["size"]
        self.root = bytes.fromhex(self.header["root"])
        self._tmp = tempfile.TemporaryDirectory(prefix="dfg-audit-")
        self._db = sqlite3.connect(Path(self._tmp.name) / "index.sqlite", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE e (aggregate BLOB, seq INTEGER, state BLOB, PRIMARY KEY (aggregate, seq))"
        )
        self.checkpoints: list[StoredCheckpoint] = []
        self.principals: dict[str, Any] = {}
        #: After ``entries()``: what is wrong with the principals line, if anything.
        self.principals_problem: str | None = None
        self._ended = False  # the principals line was read: nothing may follow it

    def entries(self, *, check_principals: bool = True) -> Iterator[StoredEntry]:
        """The entries, in order; then the tail is read. ``check_principals``: the
        principals line must be what the entries say (not when only the tail is wanted,
        so that a changed entry is named by the audit rather than by that line)."""
        size = self.size
        principals = _Principals() if check_principals else None
        with self.path.open("rb") as handle:
            handle.readline()
            pending: list[tuple[bytes, int, bytes]] = []
            page: list[StoredEntry] = []
            for position in range(1, size + 1):
                line = handle.readline()
                if not line.endswith(b"\n"):
                    raise BundleError(f"the bundle ends after {position - 1} of {size} entries")
                canonical = line[:-1]
                if position == 1:
                    self._check_header_against(canonical)
                aggregate_id, version, event_type = _columns(canonical)
                if event_type == "?" and canonical.startswith((b'{"checkpoint"', b'{"principals"')):
                    raise BundleError(
                        f"the bundle holds {position - 1} entries, not the {size} its header counts"
                        f" (line {position + 1} is a checkpoint or the principals line)"
                    )
                pending.append((aggregate_id.bytes, position, canonical))
                stored = StoredEntry(position, aggregate_id, version, event_type, canonical)
                page.append(stored)
                if len(pending) >= 1000:
                    self._index(pending)
                    self._apply(principals, page)
                yield stored
            self._index(pending)
            self._apply(principals, page)
            self.checkpoints, self._ended = [], False
            for number, line in enumerate(handle, start=size + 2):
                self._read_tail_line(number, line)
        counted = self.header["checkpoints"]
        if counted != len(self.checkpoints):
            raise BundleError(
                f"the header counts {counted!r} checkpoints, the bundle holds {len(self.checkpoints)}"
            )
        if principals is not None:
            derived = principals.snapshot()
            self.principals_problem = (
                _principals_problem(self.principals, derived)
                if self._ended
                else "the bundle has no principals line (its last line, after the checkpoints)"
            )

    def _check_header_against(self, genesis: bytes) -> None:
        """The header's ledger fields are those the genesis entry names (the audit checks
        the entry itself): a header that says otherwise misleads whoever reads it first."""
        try:
            ledger = json.loads(genesis)["data"]["ledger"]
        except (ValueError, RecursionError, KeyError, TypeError):
            return  # not a genesis entry: the audit names entry 1
        if not isinstance(ledger, dict):
            return  # nor is this one
        for name in ("chain", "origin", "checkpoint_key"):
            if self.header[name] != ledger.get(name):
                raise BundleError(
                    f"the header's {name} ({self.header[name]!r}) is not the one the genesis entry"
                    f" names ({ledger.get(name)!r})"
                )

    def _read_tail_line(self, number: int, line: bytes) -> None:
        """After the entries: checkpoint lines, then the principals line; nothing else."""
        try:
            item = json.loads(line, object_pairs_hook=unique_members)
        except RepeatedMember as exc:
            raise BundleError(f"line {number} names the member {exc.name!r} twice") from exc
        except (ValueError, RecursionError) as exc:
            raise BundleError(f"line {number} of the bundle is not JSON (or nests too deeply)") from exc
        if self._ended:
            raise BundleError(f"line {number} follows the principals line, which ends a bundle")
        if isinstance(item, dict) and isinstance(item.get("checkpoint"), str):
            if set(item) - {"checkpoint", "cosignatures"}:
                raise BundleError(f"line {number}: a checkpoint line has only checkpoint and cosignatures")
            note = item["checkpoint"]
            size = _note_size(note)
            if size < 0:
                raise BundleError(f"line {number}: the checkpoint is not a checkpoint note")
            if size == 0:  # the audit met it only after entry 1, as "a checkpoint was skipped"
                raise BundleError(
                    f"line {number}: a checkpoint of size 0, which no ledger signs (its first is of"
                    " size 1, its genesis entry's)"
                )
            if self.checkpoints and size <= self.checkpoints[-1].size:
                raise BundleError(
                    f"line {number}: checkpoints come by increasing size, and {size} follows"
                    f" {self.checkpoints[-1].size}"
                )
            cosignatures = item.get("cosignatures", [])
            if not isinstance(cosignatures, list) or not all(isinstance(c, str) for c in cosignatures):
                raise BundleError(f"line {number}: cosignatures are a list of signature lines")
            if not all(c.endswith("\n") and c.count("\n") == 1 for c in cosignatures):
                # appended to the note as they are (docs/ledger-format.md), they must keep it a note
                raise BundleError(
                    f"line {number}: each cosignature is one signature line, ending in its newline"
                )
            self.checkpoints.append(StoredCheckpoint(size, b"", note, tuple(cosignatures)))
        elif isinstance(item, dict) and set(item) == {"principals"} and isinstance(item["principals"], dict):
            self.principals, self._ended = item["principals"], True
        elif isinstance(item, dict) and "checkpoint" in item:
            raise BundleError(f"line {number}: a checkpoint line's checkpoint is its signed note, as text")
        elif isinstance(item, dict) and "principals" in item:
            raise BundleError(
                f"line {number}: the principals line has one member, principals, an object by principal id"
            )
        else:
            raise BundleError(
                f"line {number} is neither a checkpoint nor the principals: more entries than the header's"
                f" size ({self.size})?"
            )

    def read_tail(self) -> None:
        """Read checkpoints and keys without streaming entries (they follow the entries)."""
        for _ in self.entries(check_principals=False):
            pass

    def load_before(self, aggregate_id: uuid.UUID, seq: int) -> Aggregate | None:
        rows = self._db.execute(
            "SELECT state FROM e WHERE aggregate = ? AND seq < ? ORDER BY seq",
            (aggregate_id.bytes, seq),
        ).fetchall()
        aggregate: Aggregate | None = None
        for (state,) in rows:
            aggregate = Entry.decode(state).to_event().mutate(aggregate)
        return aggregate

    @staticmethod
    def _apply(principals: _Principals | None, page: list[StoredEntry]) -> None:
        if principals is not None:
            principals.apply(page)
        page.clear()

    def _index(self, pending: list[tuple[bytes, int, bytes]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO e VALUES (?, ?, ?)", pending)
        pending.clear()

    def close(self) -> None:
        self._db.close()
        self._tmp.cleanup()


def _principals_problem(written: dict[str, Any], derived: dict[str, Any]) -> str | None:
    """The principals line is a convenience, but a reader may take keys from it: it
    must say what the bundle's entries say."""
    if written == derived:
        return None
    differing = sorted(n for n in set(written) | set(derived) if written.get(n) != derived.get(n))
    return f"the bundle's principals line is not what its entries say (first differing: {differing[0]!r})"


def _read_header(path: Path) -> dict[str, Any]:
    """The bundle's first line, with the two fields the audit relies on checked: the
    number of entries and the root of their tree."""
    with path.open("rb") as handle:
        first = handle.readline(_HEADER_LIMIT)
    try:
        header = json.loads(first, object_pairs_hook=unique_members)
    except RepeatedMember as exc:
        raise BundleError(f"{path}: the header names the member {exc.name!r} twice") from exc
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{path} is not an audit bundle (bad header)") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} file")
    unknown = sorted(set(header) - _HEADER_MEMBERS)
    if unknown:
        raise BundleError(f"{path}: the header has members a {FORMAT} header has not: {unknown}")
    missing = sorted(_HEADER_MEMBERS - set(header))
    if missing:  # each is checked against the contents: one left out would go unchecked
        raise BundleError(f"{path}: the header lacks members every {FORMAT} header has: {missing}")
    size, root = header.get("size"), header.get("root")
    if type(size) is not int or size < 0:
        raise BundleError(f"{path}: the header's size is not a number of entries: {size!r}")
    if not isinstance(root, str) or not _ROOT.fullmatch(root):
        raise BundleError(f"{path}: the header's root is not a SHA-256 hash in hex: {root!r}")
    counted = header["checkpoints"]
    if type(counted) is not int or counted < 0:
        raise BundleError(f"{path}: the header's checkpoints is not a number of checkpoints: {counted!r}")
    return header


_ROOT = re.compile(r"[0-9a-f]{64}")
_HEADER_MEMBERS = frozenset({"format", "chain", "origin", "checkpoint_key", "size", "root", "checkpoints"})
#: A header is a few hundred bytes; reading a longer first line whole is never needed.
_HEADER_LIMIT = 64 * 1024


def checkpoint_lines(path: Path) -> list[StoredCheckpoint]:
    """Checkpoints of a bundle (they are at its end)."""
    reader = BundleReader(path)
    try:
        reader.read_tail()
        return reader.checkpoints
    finally:
        reader.close()


def _columns(canonical: bytes) -> tuple[uuid.UUID, int, str]:
    try:
        doc = json.loads(canonical)
        return uuid.UUID(doc["aggregate"]), int(doc["version"]), str(doc["event"])
    except (ValueError, RecursionError, KeyError, TypeError):
        return uuid.UUID(int=0), 0, "?"


def _note_size(note: str) -> int:
    try:
        return int(note.split("\n")[1])
    except (IndexError, ValueError):
        return -1
