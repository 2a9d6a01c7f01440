"""The relay: publishes a ledger's entries and checkpoints to Kafka, in order, once.

Invariant: on the entries topic, the record at offset ``o`` is entry ``o + 1`` (one
partition, idempotent producer, one relay per ledger). What has been published is
kept as a marker in the ledger's own database; the topic is the other half of the
truth. At start and after every broker error the relay reads where the topic really
ends and checks its last record: if the topic holds *less* than was published (a
broker that lost data, an unclean leader election) it publishes again from there; if
it holds more (the relay died after sending, before noting it) it adopts the topic's
end. While it has nothing to send it reads where the topics end every
``recheck_every`` seconds, since no send fails to tell it that the broker lost what it
holds. Checkpoints follow the same rule with their own marker. Witnesses' cosignatures
come back on a third topic; the relay verifies each against the witness's key on the
ledger and keeps the valid ones with the checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from domain.identifiers import principal_aggregate_id
from domain.principal import Principal
from gateways.kafka.client import (
    KafkaSettings,
    Record,
    Stopped,
    TopicsChanged,
    TopicTruncated,
    chunks,
    flush_until_stopped,
    partition,
    topic_end,
)
from gateways.kafka.outages import Backoff, outage
from gateways.kafka.topics import (
    PARTITION,
    CosignatureMessage,
    MessageError,
    Topics,
    checkpoint_from_record,
    checkpoint_record,
    entry_record,
    record_seq,
)
from infra.storage.errors import storage_unavailable
from infra.writer_lock import WriterLock
from ledger.note import verify_cosignature_line
from ledger.replica import claimed_size
from ledger.store import LedgerStore
from ledger.witness import WITNESS_KIND, checkpoint_body, witness_verifier

log = logging.getLogger("dfg.relay")

ENTRIES_MARKER = "relay.entries"
CHECKPOINTS_MARKER = "relay.checkpoints"
CHECKPOINT_SIZE_MARKER = "relay.checkpoints.size"
COSIGNATURES_MARKER = "relay.cosignatures"


class RelayError(RuntimeError):
    """The topic does not hold what this ledger published, or is not fit to hold it:
    refuse to go on blindly."""


class OffsetUnknown(KafkaError):  # type: ignore[misc]  # kafka-python has no types
    """The broker took a record without saying at which offset: it answers a retried
    send it had already written (the first answer was lost, e.g. while the broker
    stalled) as a duplicate, and the client reports offset -1. Where the topic ends is
    read again (``reconcile``), as after any broker error."""


@dataclass
class RelayStats:
    entries_published: int = 0
    checkpoints_published: int = 0
    cosignatures_kept: int = 0
    cosignatures_refused: int = 0
    republished_from: list[int] = field(default_factory=list)


class LockTakenAgain(Exception):
    """The relay lock's session ended and the lock was taken again: another relay may
    have held it and published in between, so what this one knows of the topics is
    stale. It connects again, which reads where they end (``reconcile``), before it
    sends anything more."""


class Relay:
    def __init__(
        self,
        store: LedgerStore,
        kafka: KafkaSettings,
        topics: Topics,
        *,
        batch: int = 2000,
        clock: Callable[[], float] = time.time,
        recheck_every: float = 10.0,
        lock: WriterLock | None = None,
    ) -> None:
        self.store = store
        #: The relay lock (``take_relay_lock``), confirmed before the topics are read and each send.
        self.lock = lock
        self.kafka = kafka
        self.topics = topics
        self.batch = batch
        self.clock = clock
        #: Seconds between two readings of where the topics end while nothing is sent.
        self.recheck_every = recheck_every
        self._checked_at = float("-inf")
        self.stats = RelayStats()
        self._producer: KafkaProducer | None = None
        self._reader: KafkaConsumer | None = None
        self._cosignatures: KafkaConsumer | None = None
        self._stop = threading.Event()

    # --- lifecycle -----------------------------------------------------------------

    def run(self, stop: threading.Event, *, idle_wait: float = 0.2) -> None:
        """Publish until ``stop`` is set; survive broker outages by reconnecting."""
        self._stop = stop
        backoff = Backoff()
        while not stop.is_set():
            try:
                if self._producer is None:
                    self.connect()
                busy = self.step()
                backoff.succeeded()
                if not busy:
                    self.check_topics()
                    self.store.wait_for_append(idle_wait)
            except LockTakenAgain as exc:
                log.warning("%s", exc)
                self.close()  # and connect again at once
            except Stopped:
                break
            except Exception as exc:
                # the ledger's database: start again from what the topics hold (``reconcile``)
                why = outage(exc, "the ledger's")
                if why is None:
                    raise
                log.warning("%s; trying again in %.1fs", why, backoff.delay)
                self.close()
                backoff.wait(stop)
        self.close()

    def connect(self) -> None:
        if self.lock is not None:  # before ``reconcile`` writes the markers another relay may be moving
            self.lock.hold()
        unfit = self.kafka.ensure_topics(self.topics.all())
        if any(unfit.values()):
            raise RelayError(
                "; ".join(f"{name}: {', '.join(problems)}" for name, problems in unfit.items() if problems)
                + " (change it with kafka-configs.sh --alter; see the README's topics)"
            )
        self._reader = self.kafka.consumer()
        for name in self.topics.all():
            found = self._reader.partitions_for_topic(name)
            if found and found != {PARTITION}:  # e.g. created with a broker's defaults
                # Not refused: every dfg client reads and writes partition 0 only, so the
                # order holds; some brokers (Tansu) create missing topics with several
                # partitions when a follower polls them before the relay made them.
                log.warning(
                    "%s has %d partitions; dfg uses partition %d only (the README's topics have one)",
                    name,
                    len(found),
                    PARTITION,
                )
        self._producer = self.kafka.producer()
        lost = self.reconcile()
        self._checked_at = time.monotonic()
        self._cosignatures = self.kafka.consumer()
        self._cosignatures.seek(partition(self.topics.cosignatures), self._cosignatures_from(lost))

    def close(self) -> None:
        for client in (self._producer, self._reader, self._cosignatures):
            if client is not None:
                try:
                    client.close(timeout=2) if isinstance(client, KafkaProducer) else client.close()
                except Exception:
                    log.debug("error while closing a Kafka client", exc_info=True)
        self._producer = self._reader = self._cosignatures = None

    def step(self) -> bool:
        """One round: entries, then checkpoints, then cosignatures. True if it did work."""
        published = self.publish_entries()
        published += self.publish_checkpoints()
        kept = self.collect_cosignatures()
        return bool(published or kept)

    # --- where the topics stand ----------------------------------------------------

    def check_topics(self) -> None:
        """While the ledger is idle: every ``recheck_every`` seconds, that the entries and
        checkpoints topics still end where the relay left them. Nothing else would tell:
        a broker that lost data (restarted empty, an unclean leader election) fails no
        send while there is none, so the topics stayed short, and new nodes could not
        start from them, until the ledger's next entry. ``TopicsChanged`` makes ``run``
        reconnect: a new producer (the broker forgot the old one's id), and
        ``reconcile`` publishes again what was lost, or stops on a stranger's record."""
        now = time.monotonic()
        if now - self._checked_at < self.recheck_every:
            return
        self._checked_at = now
        for topic, marker in (
            (self.topics.entries, ENTRIES_MARKER),
            (self.topics.checkpoints, CHECKPOINTS_MARKER),
        ):
            end, _ = self._topic_end(topic)
            published = self.store.marker(marker)
            if end != published:
                raise TopicsChanged(
                    f"{topic} holds {end} records but {published} were published; reading it again"
                )

    def _cosignatures_from(self, lost: bool) -> int:
        """Where to read cosignatures from: after the last one read, unless the broker
        lost data (the entries topic showed it, or this topic ends before that point):
        it numbers new records from where it ends again, so the position means nothing
        and the topic is read from its start (keeping a cosignature twice is harmless)."""
        assert self._cosignatures is not None
        read = self.store.marker(COSIGNATURES_MARKER)
        end, _ = topic_end(self._cosignatures, self.topics.cosignatures, stop=self._stop)
        if read and (lost or end < read):
            log.warning("%s may have lost records: reading it again from its start", self.topics.cosignatures)
            self.store.set_marker(COSIGNATURES_MARKER, 0)
            return 0
        return read

    def reconcile(self) -> bool:
        """Align the markers with what the topics really hold (see the module docstring).
        True when a topic holds less than was published (the broker lost data)."""
        assert self._reader is not None
        end, last = self._topic_end(self.topics.entries)
        head = self.store.head()[0]
        if end > head:
            raise RelayError(
                f"{self.topics.entries} holds {end} entries but this ledger has only {head}: was its"
                " database restored from an older backup? Do not delete the topics, they hold what it"
                " published since. Stop `dfg serve` before it accepts anything more, run `dfg recover"
                ' --kafka ...` (the README\'s "Backups and recovery"), then start the relay again'
            )
        if last is not None:
            self._check_last_entry(end, last)
        lost = self._adopt(ENTRIES_MARKER, end, self.topics.entries)
        end, last = self._topic_end(self.topics.checkpoints)
        lost = self._adopt(CHECKPOINTS_MARKER, end, self.topics.checkpoints) or lost
        self.store.set_marker(CHECKPOINT_SIZE_MARKER, self._published_size(last, end))
        return lost

    def _topic_end(self, topic: str) -> tuple[int, Any | None]:
        assert self._reader is not None
        try:
            return topic_end(self._reader, topic, stop=self._stop)
        except TopicTruncated as exc:  # retrying would not bring the records back
            raise RelayError(str(exc)) from exc

    def _check_last_entry(self, end: int, last: Any) -> None:
        """The topic's last record must be this ledger's entry ``end``, byte for byte: its
        end is adopted as what was published, so a stranger's record there (a header
        is anyone's to write) would pass for it."""
        try:
            seq = record_seq(last.headers)
        except MessageError as exc:
            raise RelayError(f"{self.topics.entries} ends with a record that is not an entry: {exc}") from exc
        if seq != end:
            raise RelayError(
                f"{self.topics.entries} does not hold this ledger's entries in order: offset"
                f" {end - 1} holds entry {seq}, expected {end}"
            )
        (held,) = self.store.read_entries(end, 1)
        if last.value != held.canonical:
            raise RelayError(
                f"{self.topics.entries} ends (offset {end - 1}) with a record that is not this"
                f" ledger's entry {end}"
            )

    def _published_size(self, last: Any, end: int) -> int:
        """The size of the newest checkpoint on the topic, which must be one of this
        ledger's (the next to publish follows it): read from the note, which is what
        the ledger signed, never from a key anyone could have written."""
        if last is None:
            return 0
        try:
            note = checkpoint_from_record(last.value)
        except MessageError:
            note = None
        size = claimed_size(note) if note is not None else None
        held = self.store.checkpoints(size - 1, 1) if size else []
        if size is None or not held or held[0].size != size or held[0].note != note:
            raise RelayError(
                f"{self.topics.checkpoints} ends (offset {end - 1}) with a record that is not"
                " one of this ledger's checkpoints"
            )
        return size

    def _adopt(self, marker: str, end: int, topic: str) -> bool:
        """Take the topic's end as what was published; True if it holds less."""
        published = self.store.marker(marker)
        lost = end < published
        if lost:
            log.warning(
                "%s holds %d records but %d were published: it lost data; publishing again from there",
                topic,
                end,
                published,
            )
            self.stats.republished_from.append(end)
        if end != published:
            self.store.set_marker(marker, end)
        return lost

    # --- publishing ----------------------------------------------------------------

    def publish_entries(self) -> int:
        assert self._producer is not None
        published = self.store.marker(ENTRIES_MARKER)
        head = self.store.head()[0]
        sent = 0
        while published < head and not self._stop.is_set():  # a backlog is no reason to ignore a stop
            page = self.store.read_entries(published + 1, min(self.batch, head - published))
            for run in chunks([entry_record(stored) for stored in page]):
                first = published + 1
                what = f"entries {first}-{published + len(run)}"
                offsets = self._send_and_wait(self.topics.entries, run, what)
                for seq, offset in enumerate(offsets, start=first):
                    if offset != seq - 1:
                        raise RelayError(
                            f"entry {seq} landed at offset {offset} of {self.topics.entries}:"
                            " another producer writes to this topic"
                        )
                published += len(run)
                self.store.set_marker(ENTRIES_MARKER, published)
                sent += len(run)
        self.stats.entries_published += sent
        return sent

    def _send_and_wait(self, topic: str, run: Sequence[Record], what: str) -> list[int]:
        """Send one run of records (``chunks``) and wait until the broker has them all;
        the offsets they landed at. The relay lock is confirmed first: on PostgreSQL it
        ends with its session (a server restart), and another relay may have taken it
        since; sending then would put every new entry on the topic twice."""
        assert self._producer is not None
        if self.lock is not None and not self.lock.hold():
            raise LockTakenAgain(
                "the relay lock was taken again after its database session ended: reading where"
                " the topics end before sending more (another relay may have published meanwhile)"
            )
        futures = [
            self._producer.send(topic, key=key, value=value, headers=headers, partition=PARTITION)
            for key, value, headers in run
        ]
        flush_until_stopped(self._producer, self._stop)
        offsets = []
        for future in futures:
            metadata = future.get(timeout=self.kafka.request_timeout_ms / 1000)  # done: flushed
            if metadata.offset < 0:
                raise OffsetUnknown(f"the broker did not say where {what} of {topic} landed")
            offsets.append(metadata.offset)
        return offsets

    def publish_checkpoints(self) -> int:
        assert self._producer is not None
        published = self.store.marker(CHECKPOINTS_MARKER)
        after = self.store.marker(CHECKPOINT_SIZE_MARKER)
        entries = self.store.marker(ENTRIES_MARKER)
        # A checkpoint goes out after the entries it covers.
        pending = [c for c in self.store.checkpoints(after, 1000) if c.size <= entries]
        if not pending:
            return 0
        done = 0
        for run in chunks([checkpoint_record(c.size, c.note) for c in pending]):
            sizes = f"checkpoints {pending[done].size}-{pending[done + len(run) - 1].size}"
            offsets = self._send_and_wait(self.topics.checkpoints, run, sizes)
            if offsets != list(range(published + done, published + done + len(run))):
                raise RelayError(f"{self.topics.checkpoints}: another producer writes to this topic")
            done += len(run)
            self.store.set_marker(CHECKPOINTS_MARKER, published + done)
            self.store.set_marker(CHECKPOINT_SIZE_MARKER, pending[done - 1].size)
            self.stats.checkpoints_published += len(run)
        return done

    # --- cosignatures --------------------------------------------------------------

    def collect_cosignatures(self) -> int:
        """Keep the valid cosignatures witnesses sent back; count the rest as refused."""
        if self._cosignatures is None:
            return 0
        tp = partition(self.topics.cosignatures)
        records = self._cosignatures.poll(timeout_ms=0, max_records=1000).get(tp, [])
        kept = 0
        for record in records:
            if self.keep_cosignature(record.value):
                kept += 1
        if records:
            self.store.set_marker(COSIGNATURES_MARKER, records[-1].offset + 1)
        return kept

    def keep_cosignature(self, value: bytes | None) -> bool:
        try:
            message = CosignatureMessage.from_record(value)
        except MessageError as exc:
            log.warning("ignoring a cosignature record: %s", exc)
            self.stats.cosignatures_refused += 1
            return False
        checkpoint = next(iter(self.store.checkpoints(message.size - 1, 1)), None)
        if checkpoint is None or checkpoint.size != message.size:
            log.warning("%s cosigned size %d, which has no checkpoint here", message.witness, message.size)
            self.stats.cosignatures_refused += 1
            return False
        try:
            problem = cosignature_problem(self.store, message, checkpoint.note)
        except Exception as exc:  # whatever a hostile record holds, it must not stop the relay
            if storage_unavailable(exc):  # the ledger's database, not the record: ``run`` waits it
                raise  # out and reads the cosignature again, which refused was skipped for good
            log.warning(
                "refusing a cosignature of size %d: it cannot be checked", message.size, exc_info=True
            )
            problem = "it cannot be checked"
        if problem is not None:
            log.warning("refusing a cosignature of size %d by %s: %s", message.size, message.witness, problem)
            self.stats.cosignatures_refused += 1
            return False
        # Kept as a whole signature line, ending in its newline, as bundles carry it and
        # readers append it to the note: a witness may send it without (the line parses).
        line = message.cosignature if message.cosignature.endswith("\n") else message.cosignature + "\n"
        if self.store.save_cosignature(message.size, message.witness, line):
            self.stats.cosignatures_kept += 1
        return True


def cosignature_problem(store: LedgerStore, message: CosignatureMessage, note: str) -> str | None:
    """Why a cosignature does not count, or None when it does: it counts if its key is
    a current Ed25519 key of a principal that is a node operator on this ledger: one the
    ledger would let sign now (a key past its ``not_after``, or before its
    ``not_before``, counted as long as it was not revoked)."""
    aggregate = store.load_aggregate(principal_aggregate_id(message.witness))
    if not isinstance(aggregate, Principal):
        return f"{message.witness} is not admitted on this ledger"
    if WITNESS_KIND not in aggregate.roles:
        return f"{message.witness} is not a node operator (it lacks the role {WITNESS_KIND})"
    body = checkpoint_body(note)
    now = datetime.now(UTC)
    for key in aggregate.keys.values():
        if key.usable_at(now) is not None:
            continue
        verifier = witness_verifier(message.witness, key.jwk)
        if verifier is not None and verify_cosignature_line(body, message.cosignature, verifier) is not None:
            return None
    return (
        f"no current key of {message.witness} verifies it"
        " (signed with a key revoked, expired or not yet valid, or never added)"
    )


def witness_remedy(store: LedgerStore, witness: str) -> str:
    """What makes a witness's cosignatures count, by the problem ``cosignature_problem``
    names: admitting a principal that is admitted already is refused."""
    aggregate = store.load_aggregate(principal_aggregate_id(witness))
    if not isinstance(aggregate, Principal):
        return (
            f"until the operator admits it (dfg principals admit {witness} --kind {WITNESS_KIND} --jwk,"
            " with what `dfg node keygen` printed)"
        )
    if WITNESS_KIND not in aggregate.roles:
        return f"until the operator grants it the role (dfg principals grant-role {witness} {WITNESS_KIND})"
    return (
        f"until this node cosigns with a current key of {witness} (--witness-key), or the operator adds"
        f" this one (dfg principals add-key {witness} --jwk, with what `dfg node keygen` printed)"
    )
