"""Bring a ledger restored from an older backup back to everything it had published.

Why: once entries are on the entries topic, replicas hold them and witnesses have
cosigned checkpoints over them. A sequencer restored from a backup taken before them
would number new transactions in their places and sign checkpoints whose roots
disagree with the witnessed ones: evidence of a fork against an honest operator, and
receipts given for the lost entries that no longer hold. The published entries are
still on the topic (kept for ever) and in every replica (an audit bundle exported from
one), each signed by its signer: they are verified exactly as a replica verifies them
(``Replica``) and appended, so the ledger resumes where the world last saw it.

Nothing is appended unless every entry the ledger still holds is, byte for byte, the
one the source holds at its place: a ledger that accepted transactions after it was
restored has already forked, and appending the source's later entries to it would
hide that rather than mend it. A bad source is refused without marking the ledger's
store (``keep_evidence=False``): the evidence is the source's, not the ledger's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from gateways.kafka.client import KafkaSettings, partition, topic_end, why_disconnected
from gateways.kafka.relay import cosignature_problem
from gateways.kafka.topics import (
    CosignatureMessage,
    MessageError,
    Topics,
    checkpoint_from_record,
    entry_from_record,
)
from infra.bundle import BundleError, BundleReader
from ledger.note import NoteError, parse_signature_line
from ledger.replica import NeedsNewerDfg, NotThisLedger, Replica, ReplicaHalted
from ledger.store import LedgerStore, StoredEntry
from ledger.verifier import ParallelVerifier

PAGE = 2000
#: How long a broker may send nothing while records are known to be left.
_SILENCE_S = 30.0


class RecoveryRefused(RuntimeError):
    """The source cannot bring this ledger up to date (the message says why and what
    was kept)."""


@dataclass(frozen=True)
class Recovered:
    held: int  # entries the ledger held before
    size: int  # entries it holds now
    checkpoints: int  # checkpoints it did not hold, verified and kept
    #: Recovered entries beyond the newest checkpoint: each transaction's signature is
    #: checked, but no signature of the ledger's shows that it sequenced them.
    uncovered: int = 0
    #: How many entries the source held when it ended before the ledger's own end (an
    #: older bundle, say): it can show nothing published after them.
    short_source: int | None = None


@dataclass(frozen=True)
class Expected:
    """What an empty ledger (rebuilt from nothing but its keys) must find in the source's
    genesis entry: its own checkpoint key, and the chain id its topics are named by."""

    checkpoint_key: str | None = None
    chain: str | None = None


def recover_from_bundle(
    store: LedgerStore,
    path: Path,
    progress: Callable[[int], None] | None = None,
    expected: Expected = Expected(),
) -> Recovered:
    """Recover from an audit bundle, e.g. ``dfg audit export`` of a node operator's replica."""
    try:
        reader = BundleReader(path)
    except BundleError as exc:
        raise RecoveryRefused(f"{path} is not an audit bundle: {exc}") from exc
    try:
        return _recover(
            store,
            reader.entries(),
            lambda: [(checkpoint.note, checkpoint.cosignatures) for checkpoint in reader.checkpoints],
            f"the bundle {path}",
            progress,
            expected,
        )
    except BundleError as exc:
        raise RecoveryRefused(f"the bundle {path} cannot be read: {exc}") from exc
    finally:
        reader.close()


def recover_from_topics(
    store: LedgerStore,
    kafka: KafkaSettings,
    topics: Topics,
    progress: Callable[[int], None] | None = None,
    expected: Expected = Expected(),
) -> Recovered:
    """Recover from the ledger's own entries and checkpoints topics."""
    try:
        return _recover_from_topics(store, kafka, topics, progress, expected)
    except KafkaError as exc:  # what was verified by then is kept: running it again goes on
        raise RecoveryRefused(
            f"cannot read the topics: {why_disconnected(exc)}. The ledger holds {store.head()[0]}"
            " entries, every one verified; run it again once the brokers answer"
        ) from exc


def _recover_from_topics(
    store: LedgerStore,
    kafka: KafkaSettings,
    topics: Topics,
    progress: Callable[[int], None] | None,
    expected: Expected,
) -> Recovered:
    consumer = kafka.consumer()
    try:
        missing = [t for t in (topics.entries, topics.checkpoints) if not consumer.partitions_for_topic(t)]
        if missing:
            raise RecoveryRefused(
                f"no topic {', '.join(missing)} on the broker: are --chain and --topic-prefix the"
                " relay's? (Nothing was published there, so there is nothing to recover from it.)"
            )
        entries_end, _ = topic_end(consumer, topics.entries)
        start = consumer.beginning_offsets([partition(topics.entries)])[partition(topics.entries)]
        if start > 0:
            raise RecoveryRefused(
                f"{topics.entries} starts at offset {start}, not at entry 1 (its first records were"
                " deleted): recover from an audit bundle of a node operator's replica instead"
            )
        # read lazily, while the ledger's own entries are compared with them
        entries = (_entry(record) for record in _records(consumer, topics.entries, entries_end))
        # no cosignatures: the relay takes them from their topic again, from where it was
        notes = lambda: ((note, ()) for note in _notes(consumer, topics.checkpoints))  # noqa: E731
        return _recover(store, entries, notes, topics.entries, progress, expected)
    finally:
        consumer.close()


def _recover(
    store: LedgerStore,
    source: Iterator[StoredEntry],
    notes: Callable[[], Iterable[tuple[str, tuple[str, ...]]]],
    name: str,
    progress: Callable[[int], None] | None,
    expected: Expected,
) -> Recovered:
    held = store.head()[0]
    compared = _same_entries(store, source, held, name)
    verifier = ParallelVerifier()
    replica = Replica(
        store,
        verifier=verifier,
        keep_evidence=False,
        expected_checkpoint_key=expected.checkpoint_key,
        expected_chain=expected.chain,
    )
    kept = 0
    try:
        while batch := list(islice(source, PAGE)):
            replica.accept_entries(batch)
            if progress is not None:
                progress(replica.size)
        for note, cosignatures in notes():
            accepted = replica.accept_checkpoint(note)
            kept += accepted is not None and accepted.new
            if accepted is not None:
                _keep_cosignatures(store, accepted.checkpoint.size, note, cosignatures)
    except ReplicaHalted as halted:
        found = halted.violation
        raise RecoveryRefused(
            f"{name} holds something this ledger cannot take: {found.kind} at entry {found.seq}:"
            f" {found.message}. The ledger now holds {replica.size} entries ({replica.size - held}"
            " recovered), every one verified"
        ) from halted
    except NotThisLedger as exc:
        raise RecoveryRefused(f"{name} holds another ledger than this one: {exc}") from exc
    except NeedsNewerDfg as exc:
        raise RecoveryRefused(
            f"{name}: {exc}. The ledger now holds {replica.size} entries ({replica.size - held}"
            " recovered), every one verified"
        ) from exc
    finally:
        verifier.close()
    newest = store.latest_checkpoint()
    covered = max(held, newest.size if newest is not None else 0)
    short = compared if compared < held else None
    return Recovered(held, replica.size, kept, max(0, replica.size - covered), short)


def _keep_cosignatures(store: LedgerStore, size: int, note: str, lines: Iterable[str]) -> None:
    """The witnesses' cosignatures a bundle carries with a checkpoint, those that count
    (as the relay keeps them from their topic): a checkpoint final before the loss is
    final again."""
    for line in lines:
        try:
            name = parse_signature_line(line).name
        except NoteError:
            continue
        if cosignature_problem(store, CosignatureMessage(name, size, line), note) is None:
            store.save_cosignature(size, name, line)


def _same_entries(store: LedgerStore, source: Iterator[StoredEntry], held: int, name: str) -> int:
    """Every entry the ledger holds must be the source's at its place, byte for byte
    (consumes those from ``source``); the source may hold fewer. How many it compared."""
    seq = 1
    while seq <= held:
        page = store.read_entries(seq, min(PAGE, held - seq + 1))
        for own in page:
            theirs = next(source, None)
            if theirs is None:
                return own.seq - 1
            if theirs.seq != own.seq or theirs.canonical != own.canonical:
                raise RecoveryRefused(
                    f"entry {own.seq} of this ledger is not the one {name} holds there: the ledger"
                    " accepted transactions after it was restored (it has forked from what it"
                    " published), or the source is another ledger's. Nothing was written. Restore"
                    " the backup again and recover before `dfg serve` accepts anything"
                )
        seq += len(page)
    return held


def _entry(record: Any) -> StoredEntry:
    try:
        entry = entry_from_record(record.key, record.value, record.headers)
    except MessageError as exc:
        raise RecoveryRefused(f"the record at offset {record.offset} is not an entry: {exc}") from exc
    if entry.seq != record.offset + 1:
        raise RecoveryRefused(f"the record at offset {record.offset} claims to be entry {entry.seq}")
    return entry


def _records(consumer: Any, topic: str, end: int) -> Iterator[Any]:
    """The records at offsets 0 to ``end`` - 1 of a one-partition topic, in order."""
    tp = partition(topic)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    position, heard = 0, time.monotonic()
    while position < end:
        batch = consumer.poll(timeout_ms=500, max_records=PAGE).get(tp, [])
        if not batch and time.monotonic() - heard > _SILENCE_S:
            raise RecoveryRefused(f"the broker sent nothing of {topic} after offset {position} for 30 s")
        for record in batch:
            if record.offset >= end:
                return
            heard, position = time.monotonic(), record.offset + 1
            yield record


def _notes(consumer: Any, topic: str) -> Iterator[str]:
    end, _ = topic_end(consumer, topic)
    for record in _records(consumer, topic, end):
        try:
            note = checkpoint_from_record(record.value)
        except MessageError as exc:
            where = f"the record at offset {record.offset} of {topic}"
            raise RecoveryRefused(f"{where} is not a checkpoint: {exc}") from exc
        yield note
