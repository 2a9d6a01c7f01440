"""The ledger's storage port. Engines (SQLite, PostgreSQL) implement it in ``infra``.

One ``append`` is one database transaction holding the entries, the Merkle nodes
they complete, the (signer, nonce) index rows and the new head; it fails as a whole
if another writer moved the head (compare-and-set), which keeps one sequencer per
ledger even if an operator starts two by mistake.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from eventsourcing.domain import Aggregate

from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.transaction import parse_transaction


class StoreConflict(Exception):
    """The head moved under us: another writer appended to this ledger."""


class HeadMoved(StoreConflict):
    """The ledger's head is not where this writer left it: another process appended
    meanwhile, so what this writer holds in memory (the tree, aggregates, nonces) is
    stale and none of its appends can succeed again."""


class WriterLockHandle(Protocol):
    """The ledger's writer lock, as a store holds it (``infra.writer_lock``)."""

    def release(self) -> None: ...

    def confirm(self, cursor: Any) -> None:
        """Raise ``StoreConflict`` if the lock is no longer this process's; ``cursor`` is
        the append's own, inside its transaction."""
        ...


@dataclass(frozen=True)
class AppendBatch:
    entries: Sequence[Entry]
    nodes: Sequence[tuple[int, int, bytes]]
    tx_rows: Sequence[tuple[str, int, int]]  # (signer, nonce, seq)
    old_size: int
    new_size: int
    new_root: bytes


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    cosignatures: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class RecordedViolation:
    """Evidence a replica kept when it stopped accepting: what, where, and the bytes."""

    recorded_at: str
    kind: str
    seq: int
    message: str
    evidence: str


class StoredEntry(NamedTuple):
    """An entry as a store holds it (a named tuple, built once per entry read)."""

    seq: int
    aggregate_id: uuid.UUID
    version: int
    event_type: str
    canonical: bytes


class LedgerStore(Protocol):
    def head(self) -> tuple[int, bytes]: ...

    def read_nodes(self, coords: Sequence[tuple[int, int]]) -> Sequence[bytes]: ...

    def read_node_range(self, level: int, low: int, high: int) -> Sequence[bytes]:
        """Stored hashes of nodes ``(level, low) .. (level, high - 1)``, in order; the
        list stops early where a node is missing."""
        ...

    def append(self, batch: AppendBatch) -> None: ...

    def load_aggregate(self, aggregate_id: uuid.UUID) -> Aggregate | None: ...

    def aggregate_id_prefixes(self, before: int | None = None) -> Iterator[int]:
        """The first 64 bits (``KnownIds.prefix``) of every aggregate id created by an
        entry before ``before`` (all when None); read once when a sequencer starts, or
        an audit segment at ``before``. Only the prefixes: reading whole ids as UUIDs
        cost an audit segment starting half-way through a million entries about a
        second before its first entry."""
        ...

    def load_aggregate_before(self, aggregate_id: uuid.UUID, seq: int) -> Aggregate | None:
        """The aggregate as the entries before ``seq`` left it (auditing needs the past)."""
        ...

    def last_nonce(self, signer: str) -> int: ...

    def tx_index_summary(self, upto: int | None = None) -> tuple[int, dict[str, int]]:
        """(rows, last nonce per signer) of the nonce index, for the audit (of the
        entries up to ``upto``: the audit's head)."""
        ...

    def find_tx(self, signer: str, nonce: int) -> int | None: ...

    def signer_activity(self, signer: str) -> tuple[int, int | None, int | None]:
        """(entries signed, first seq, last seq) of one principal."""
        ...

    def read_entries(self, start: int, limit: int) -> Sequence[StoredEntry]: ...

    def save_checkpoint(self, size: int, root: bytes, note: str) -> None: ...

    def latest_checkpoint(self) -> StoredCheckpoint | None: ...

    def checkpoints(self, after_size: int = 0, limit: int = 1000) -> Sequence[StoredCheckpoint]: ...

    def wait_for_append(self, timeout: float) -> None:
        """Return when entries may have been appended, or after ``timeout`` seconds."""
        ...

    # --- replication bookkeeping (relay, witnesses, replicas) ------------------------

    def save_cosignature(self, size: int, witness: str, line: str) -> bool:
        """Keep a witness's cosignature of the checkpoint at ``size`` (verified by the
        caller); False if that witness's cosignature was already kept."""
        ...

    def cosignatures(self, size: int) -> tuple[str, ...]: ...

    def cosigned_checkpoints(self, at_least: int, limit: int = 20) -> Sequence[StoredCheckpoint]:
        """The newest checkpoints with at least ``at_least`` cosignatures, newest first."""
        ...

    def marker(self, name: str) -> int:
        """A named progress counter (e.g. what the relay has published); 0 if unset."""
        ...

    def set_marker(self, name: str, value: int) -> None: ...

    def record_violation(self, kind: str, seq: int, message: str, evidence: str) -> None: ...

    def violations(self) -> Sequence[RecordedViolation]: ...

    def hold_writer_lock(self, lock: WriterLockHandle) -> None:
        """Confirm ``lock`` in each append's transaction; release it when the store is closed."""
        ...

    def close(self) -> None: ...


def newest_entry_time(store: LedgerStore, size: int | None = None) -> datetime | None:
    """The time of entry ``size`` (default: the newest): where the log's time stands.
    None for an empty log."""
    size = store.head()[0] if size is None else size
    if not size:
        return None
    (newest,) = store.read_entries(size, 1)
    return Entry.decode(newest.canonical).ts


def genesis_parameters(store: LedgerStore) -> dict[str, str] | None:
    """What the genesis entry says of the ledger (``chain``, ``origin``,
    ``checkpoint_key``); None for an empty log. As stored: the audit checks it."""
    found = store.read_entries(1, 1)
    if not found:
        return None
    entry = Entry.decode(found[0].canonical)
    ledger = entry.data.get("ledger")
    if entry.event_type != "Principal.Admitted" or not isinstance(ledger, dict):
        raise RuntimeError("the first entry of this ledger is not a genesis entry")
    return ledger


def find_transaction(store: LedgerStore, token: str) -> Entry | None:
    """The entry that recorded exactly this JWS, if any (by its signer and nonce)."""
    try:
        tx = parse_transaction(token)
    except Rejected:
        return None
    seq = store.find_tx(tx.signer, tx.payload.nonce)
    if seq is None:
        return None
    (stored,) = store.read_entries(seq, 1)
    entry = Entry.decode(stored.canonical)
    return entry if entry.tx == token else None


def all_checkpoints(store: LedgerStore) -> Iterator[StoredCheckpoint]:
    """Every checkpoint, by increasing size, a page at a time."""
    after = 0
    while page := store.checkpoints(after, 1000):
        yield from page
        after = page[-1].size
