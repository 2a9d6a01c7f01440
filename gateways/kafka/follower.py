"""A node operator's follower: consumes a ledger's topics into a verified replica.

Entries are handed to the ``Replica`` (which verifies and stores them), then applied
to the node's own read models; checkpoints are verified against the replica's tree and,
when the node is a witness, cosigned and sent back on the cosignatures topic. The
follower keeps no offsets of its own: the record at offset ``o`` is entry ``o + 1``,
so the replica's size is its position, and a restart or a broker that lost data costs
at most skipping records it already holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from gateways.kafka.client import (
    KafkaSettings,
    TopicRepeatsEntry,
    TopicsMissing,
    TopicTruncated,
    flush_until_stopped,
    partition,
)
from gateways.kafka.outages import Backoff, outage
from gateways.kafka.relay import cosignature_problem, witness_remedy
from gateways.kafka.topics import (
    PARTITION,
    CosignatureMessage,
    MessageError,
    Topics,
    checkpoint_from_record,
    entry_from_record,
)
from ledger.entry import Entry
from ledger.note import parse_signature_line
from ledger.replica import (
    AcceptedCheckpoint,
    NeedsNewerDfg,
    NotThisLedger,
    OutOfOrder,
    Replica,
    ReplicaHalted,
    ViolationKind,
    claimed_size,
)
from ledger.store import LedgerStore, StoredEntry, newest_entry_time
from ledger.witness import cosign
from projections.base import View, ViewDatabase, apply_new, catch_up

log = logging.getLogger("dfg.follower")

CHECKPOINTS_MARKER = "follower.checkpoints"
TOPIC_END_MARKER = "follower.topic_end"
SEEN_AT_MARKER = "follower.seen_at_ms"
#: The size of the newest checkpoint whose cosignature the broker acknowledged.
COSIGNED_MARKER = "follower.cosigned"
#: While no record comes, the broker is asked where the entries topic ends this often
#: (seconds), and given this long to answer (ms): a poll says nothing of a broker gone.
PROBE_EVERY = 2.0
PROBE_TIMEOUT_MS = 5000
#: Checkpoints read ahead of the replica's entries, kept in memory until their entries
#: come, beyond which the checkpoints topic is read no further for now.
MAX_WAITING_CHECKPOINTS = 1000


@dataclass(frozen=True)
class Witness:
    """This node's cosigning identity: its principal id and Ed25519 key."""

    name: str
    key: Ed25519PrivateKey


@dataclass
class FollowerStatus:
    size: int = 0
    topic_end: int = 0
    lag_entries: int = 0
    #: While connected: how old the newest verified entry is when newer ones wait (0
    #: when none wait). While not: how long since the node last saw where the topic
    #: ends, since it cannot know what it misses.
    lag_seconds: float = 0.0
    #: The broker answers and the entries topic exists.
    connected: bool = False
    #: When the node last read where the entries topic ends (Unix seconds).
    topic_end_seen_at: float | None = None
    last_checkpoint: int | None = None
    cosigned: int = 0
    #: Whether this witness's key is a node operator's current key in the replica (None:
    #: not a witness, or nothing cosigned yet). The relay keeps only such cosignatures.
    witness_registered: bool | None = None
    halted: dict[str, Any] | None = None
    updated_at: float = 0.0
    #: Seconds from append (the entry's timestamp) to verified here, of recent entries.
    recent_lags: list[float] = field(default_factory=list, repr=False)

    def as_json(self) -> dict[str, Any]:
        # Not ``asdict``: it would deep-copy up to 200,000 recent lags on every status
        # request, which held the GIL for 14 % of a catching-up follower's time.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "recent_lags"}
        data["halted"] = dict(self.halted) if self.halted is not None else None
        return data


class Follower:
    def __init__(
        self,
        replica: Replica,
        views: ViewDatabase,
        view_list: Sequence[View],
        kafka: KafkaSettings,
        topics: Topics,
        *,
        witness: Witness | None = None,
        clock: Callable[[], float] = time.time,
        max_records: int = 2000,
    ) -> None:
        self.replica = replica
        self.store: LedgerStore = replica.store
        self.views = views
        self.view_list = view_list
        self.kafka = kafka
        self.topics = topics
        self.witness = witness
        self.clock = clock
        self.max_records = max_records
        self.status = FollowerStatus(size=replica.size)
        # what it noted last, until it sees the topic again (a halted node never does)
        self.status.topic_end = max(self.store.marker(TOPIC_END_MARKER), replica.size)
        seen_ms = self.store.marker(SEEN_AT_MARKER)
        self.status.topic_end_seen_at = seen_ms / 1000 if seen_ms else None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        #: Offsets of checkpoint records that wait for their entries, by size.
        self._waiting_at: dict[int, int] = {}
        #: Why it stopped, when the topics hold another ledger's entries.
        #: Why these topics cannot be followed into this replica, if so (exit status 2).
        self.cannot_follow: str | None = None
        #: (offset, bytes) of the newest entry held, which the topic must hold too
        #: before anything after it is taken from there (``_same_log``).
        self._check_held: tuple[int, bytes] | None = None
        self._checkpoints_read: int | None = None
        self._started_at = clock()
        self._noted_at = float("-inf")
        #: When the broker last answered this follower (Unix seconds).
        self._answered_at: float | None = None
        #: When the replica was last seen to hold every entry on the topic (Unix seconds).
        self._caught_up_at: float | None = None
        self._checkpoints_saved: int | None = None
        self._stop = threading.Event()

    # --- lifecycle -----------------------------------------------------------------

    def run(self, stop: threading.Event, *, exit_on_violation: bool = False) -> int:
        """Follow until ``stop`` is set. Returns 0; 3 when it stopped on a violation and
        ``exit_on_violation`` (otherwise it keeps serving its status, idle); 2 when the
        topics hold another ledger than the one it was told to follow, or no longer the
        entries it needs next (``cannot_follow`` says which)."""
        self._stop = stop
        for view in self.view_list:  # a crash between replica and views: finish applying
            catch_up(self.views, view, self.store.read_entries)
        self._refresh_status()
        if self.status.halted is not None:
            log.error("this replica holds evidence of a violation, accepts nothing: %s", self.status.halted)
        backoff = Backoff()
        while not stop.is_set():
            if self.status.halted is not None:
                if exit_on_violation:
                    return 3
                stop.wait(1.0)
                continue
            try:
                if self._consumer is None:
                    self.connect()
                self.step()
                backoff.succeeded()
            except ReplicaHalted as halted:
                log.error("stopped accepting: %s", halted)
                self._refresh_status()
            except (NotThisLedger, NeedsNewerDfg, TopicTruncated, TopicRepeatsEntry) as exc:  # not evidence
                log.error("these topics cannot be followed into this replica: %s", exc)
                self.cannot_follow = str(exc)
                self.close()
                return 2
            except Exception as exc:
                why = outage(exc, "the replica's")  # then it replays from its store again
                if why is None:
                    raise
                log.warning("%s; trying again in %.1fs", why, backoff.delay)
                self.close()
                if isinstance(exc, KafkaError):
                    self._refresh_status()
                backoff.wait(stop)
        self.close()
        return 0

    def connect(self) -> None:
        for view in self.view_list:  # a failure between replica and views (an outage): finish
            catch_up(self.views, view, self.store.read_entries)  # applying, not at the next entry
        size = self.replica.size
        if size and self._check_held is None:  # the database first: no consumer left open
            (newest,) = self.store.read_entries(size, 1)
            self._check_held = (size - 1, newest.canonical)
        consumer = self.kafka.consumer()
        missing = [
            t for t in (self.topics.entries, self.topics.checkpoints) if not consumer.partitions_for_topic(t)
        ]
        if missing:
            consumer.close()
            raise TopicsMissing(
                f"no topic {', '.join(missing)} on the broker: the relay creates them; are --chain and"
                " --topic-prefix right?"
            )
        entries, checkpoints = partition(self.topics.entries), partition(self.topics.checkpoints)
        consumer.assign([entries, checkpoints])
        self._consumer = consumer  # from here on, a failure closes it (``close``)
        self._seek_entries()
        consumer.seek(checkpoints, self.store.marker(CHECKPOINTS_MARKER))
        self._answered_at = self.clock()
        if self.witness is not None:
            # A cosignature is kept before it is sent, and sent again on reconnecting: its
            # producer gives a send up after twice the request time-out, not after the
            # relay's ten minutes, for which a broker gone held the node, deaf to its stop.
            self._producer = self.kafka.producer(delivery_timeout_ms=2 * self.kafka.request_timeout_ms)
            self._cosign_newest()

    def _seek_entries(self) -> None:
        """Read from the replica's size on, or from the newest entry held while the topic
        has not been seen to hold it."""
        assert self._consumer is not None
        held = self._check_held
        tp = partition(self.topics.entries)
        offset = held[0] if held else self.replica.size
        start = self._consumer.beginning_offsets([tp])[tp]
        if start > offset:  # the consumer would start at the topic's start, after a gap
            raise TopicTruncated(
                f"{self.topics.entries} starts at offset {start}, after entry {offset + 1} that this"
                " replica needs next: its records were deleted (a retention limit). Start the"
                " replica from an audit bundle or the ledger's API (--from-bundle, --from-url),"
                " and have the topic keep its records for ever"
            )
        self._consumer.seek(tp, offset)

    def _same_log(self, record: Any) -> None:
        """The topic must hold the newest entry this replica holds, byte for byte, before
        anything after it is taken from there. Skipped unread, the entries before the
        replica's size let a node pointed at another ledger with the same chain id
        (two ledgers given one `--chain`) verify that ledger's next entries against its
        own and record a violation against the ledger it follows. Not evidence (records
        are not signed by the ledger), so it stops as for another ledger's topics."""
        assert self._check_held is not None
        offset, held = self._check_held
        if record.value != held:
            raise NotThisLedger(
                f"the record at offset {offset} of {self.topics.entries} is not this replica's entry"
                f" {offset + 1}: the topics hold another ledger's log (or the one named by --chain"
                " was rewritten); nothing was recorded"
            )
        self._check_held = None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception:
                log.debug("error while closing the producer", exc_info=True)
        self._consumer = self._producer = None

    # --- one round -----------------------------------------------------------------

    def step(self, timeout_ms: int = 500) -> int:
        """Poll once and apply what came; returns the number of entries appended."""
        assert self._consumer is not None
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        entries_tp, checkpoints_tp = partition(self.topics.entries), partition(self.topics.checkpoints)
        self._check_answering(bool(polled))
        appended = self._entries(polled.get(entries_tp, []))
        for record in polled.get(checkpoints_tp, []):
            self._checkpoint(record)
            self._checkpoints_read = record.offset + 1
        self._save_checkpoints_position()
        self._pace_checkpoints()
        self._cosign(self.replica.take_verified_checkpoints())
        self._refresh_status()
        return len(appended)

    def _pace_checkpoints(self) -> None:
        """Read the checkpoints topic no further ahead of the entries than
        ``MAX_WAITING_CHECKPOINTS``. Its records are smaller and quicker to check than
        entries, so a node catching up read it to its end first and kept every checkpoint
        beyond its replica in memory: millions, on a ledger that signed one a second for
        months. (Not ``pause``: kafka-python 3.0 may never fetch a paused partition again.)"""
        assert self._consumer is not None
        entries, checkpoints = partition(self.topics.entries), partition(self.topics.checkpoints)
        reading = checkpoints in self._consumer.assignment()
        if reading and len(self._waiting_at) >= MAX_WAITING_CHECKPOINTS:
            self._consumer.assign([entries])  # keeps the entries' position
        elif not reading and len(self._waiting_at) < MAX_WAITING_CHECKPOINTS // 2:
            assert self._checkpoints_read is not None  # it read some, or would not have stopped
            self._consumer.assign([entries, checkpoints])
            self._consumer.seek(checkpoints, self._checkpoints_read)

    def _check_answering(self, got_records: bool) -> None:
        """Note when the broker last answered. kafka-python's poll only logs a broker
        that went away, and keeps its last highwater: without asking, the node would say
        it is connected and sees the topic's end for as long as the broker is down. No
        answer raises ``KafkaTimeoutError``, and the run loop reconnects."""
        assert self._consumer is not None
        if got_records:
            self._answered_at = self.clock()
        elif self._answered_at is None or self.clock() - self._answered_at >= PROBE_EVERY:
            self._consumer.end_offsets([partition(self.topics.entries)], timeout_ms=PROBE_TIMEOUT_MS)
            self._answered_at = self.clock()

    def _entries(self, records: Sequence[Any]) -> list[Entry]:
        if not records:
            return []
        incoming = []
        bad: tuple[Any, str] | None = None
        misplaced: StoredEntry | None = None
        for record in records:
            if self._check_held is not None and record.offset == self._check_held[0]:
                self._same_log(record)
            if record.offset < self.replica.size:
                continue  # an entry already held (verified)
            if self._check_held is not None:  # the topic no longer holds the one to compare
                raise NotThisLedger(
                    f"{self.topics.entries} starts after offset {self._check_held[0]}: it does not"
                    " hold this replica's newest entry to compare (is its retention unlimited?)"
                )
            try:
                entry = entry_from_record(record.key, record.value, record.headers)
            except MessageError as exc:
                bad = (record, f"the record at offset {record.offset} is not an entry: {exc}")
                break
            if entry.seq != record.offset + 1:  # the offset, not a header, says which entry
                bad = (record, f"the record at offset {record.offset} claims to be entry {entry.seq}")
                misplaced = entry
                break
            incoming.append(entry)
        try:
            appended = self.replica.accept_entries(incoming)  # the good ones before a bad record
        except OutOfOrder as exc:
            log.info("%s; reading again from entry %d", exc, self.replica.size + 1)
            self._seek_entries()
            return []
        if appended:
            apply_new(self.views, self.view_list, appended, self.store.read_entries)
            now = self.clock()
            with self._lock:
                self.status.recent_lags.extend(now - e.ts.timestamp() for e in appended)
                del self.status.recent_lags[:-200_000]
        if bad is not None:
            record, message = bad
            if misplaced is not None:
                self._refuse_a_repeat(misplaced, record.offset)
            self.replica.report_violation(
                ViolationKind.BAD_ENTRY,
                record.offset + 1,
                message,
                {"record": (record.value or b"").decode("utf-8", "replace")},
            )
        return appended

    def _refuse_a_repeat(self, entry: StoredEntry, offset: int) -> None:
        """A record at the wrong offset that is, byte for byte, an entry this replica
        holds: a producer sent it again (the relay stops on it too), which says nothing
        against the ledger's signed history, so nothing is recorded against the ledger
        and the node stops as for topics it cannot follow. Once the topics are created
        again and the relay has republished, it goes on from its replica."""
        if not 1 <= entry.seq <= self.replica.size:
            return
        (held,) = self.store.read_entries(entry.seq, 1)
        if held.canonical == entry.canonical:
            raise TopicRepeatsEntry(
                f"the record at offset {offset} of {self.topics.entries} repeats entry {entry.seq},"
                f" which this replica holds (the topic has it at offset {entry.seq - 1}): it holds an entry"
                " twice (a producer sent it again), so every record after it is one place off."
                " Nothing was recorded against the ledger. Recreate the topics and restart the"
                " relay, which publishes everything again; this replica then goes on from where"
                " it is"
            )

    def _checkpoint(self, record: Any) -> None:
        try:
            note = checkpoint_from_record(record.value)
        except MessageError as exc:
            self.replica.report_violation(
                ViolationKind.BAD_CHECKPOINT, 0, str(exc), {"record": repr(record.value)[:2000]}
            )
        if self.replica.accept_checkpoint(note) is None:  # it waits for its entries
            size = claimed_size(note)
            if size is not None:
                self._waiting_at.setdefault(size, record.offset)

    def _save_checkpoints_position(self) -> None:
        """Where to read checkpoints from after a restart: the first one still waiting
        for its entries (it is held in memory only), else after the last one read."""
        waiting = set(self.replica.waiting_checkpoints())
        self._waiting_at = {size: at for size, at in self._waiting_at.items() if size in waiting}
        position = min(self._waiting_at.values(), default=self._checkpoints_read)
        if position is not None and position != self._checkpoints_saved:
            self.store.set_marker(CHECKPOINTS_MARKER, position)
            self._checkpoints_saved = position

    def _cosign(self, verified: Sequence[AcceptedCheckpoint]) -> None:
        """Cosign what was verified, keep every cosignature, then send them."""
        if self.witness is None or not verified:
            return
        lines = []
        for accepted in verified:
            size = accepted.checkpoint.size
            line = cosign(accepted.note, self.witness.name, self.witness.key, int(self.clock()))
            self.store.save_cosignature(size, self.witness.name, line)
            lines.append((size, line))
        last = verified[-1]
        self._note_registration(last.note, last.checkpoint.size, lines[-1][1])
        self._send_cosignatures(lines)

    def _note_registration(self, note: str, size: int, line: str) -> None:
        """Whether the ledger, as this replica holds it, knows this witness's key: a
        node cosigning with a key nobody admitted would otherwise never find out (the
        relay refuses its cosignatures, in the relay's log)."""
        assert self.witness is not None
        problem = cosignature_problem(self.store, CosignatureMessage(self.witness.name, size, line), note)
        registered = problem is None
        if problem is not None and self.status.witness_registered is not False:
            log.warning(
                "%s's key is not a current key of a node operator on this ledger (as of entry %d: %s):"
                " its cosignatures do not count %s",
                self.witness.name,
                size,
                problem,
                witness_remedy(self.store, self.witness.name),
            )
        elif registered and self.status.witness_registered is False:
            log.info("%s's key is now registered on the ledger: its cosignatures count", self.witness.name)
        self.status.witness_registered = registered

    def _cosign_newest(self) -> None:
        """On connecting: the newest verified checkpoint's cosignature goes out if the
        broker has not acknowledged it. A send that failed, or a stop between keeping a
        checkpoint and sending its cosignature, would otherwise leave it without this
        witness until a newer checkpoint comes, and none comes while the ledger is
        idle. Older ones need no resending: the newest covers them (this witness
        verified that they are consistent with it). Sent twice, it is kept once."""
        assert self.witness is not None
        newest = self.store.latest_checkpoint()
        if newest is None or newest.size <= self.store.marker(COSIGNED_MARKER):
            return
        name = self.witness.name
        line = next((line for line in newest.cosignatures if parse_signature_line(line).name == name), None)
        if line is None:  # stopped after keeping the checkpoint, before cosigning it
            line = cosign(newest.note, self.witness.name, self.witness.key, int(self.clock()))
            self.store.save_cosignature(newest.size, self.witness.name, line)
        self._note_registration(newest.note, newest.size, line)
        self._send_cosignatures([(newest.size, line)])

    def _send_cosignatures(self, lines: Sequence[tuple[int, str]]) -> None:
        """Send (size, line) cosignatures; once the broker has them all, remember the
        newest size as acknowledged. A failure raises ``KafkaError``: the run loop
        reconnects, and ``connect`` sends the newest again."""
        assert self.witness is not None and self._producer is not None
        futures = []
        for size, line in lines:
            key, value, headers = CosignatureMessage(self.witness.name, size, line).record()
            futures.append(
                self._producer.send(
                    self.topics.cosignatures, key=key, value=value, headers=headers, partition=PARTITION
                )
            )
        flush_until_stopped(self._producer, self._stop)
        for future in futures:
            future.get(timeout=self.kafka.request_timeout_ms / 1000)
        self.status.cosigned += len(lines)
        self.store.set_marker(COSIGNED_MARKER, max(size for size, _ in lines))

    # --- status --------------------------------------------------------------------

    def _refresh_status(self) -> None:
        status = self.status
        status.size = self.replica.size
        status.connected = self._consumer is not None
        # Whether this consumer has said where the topic ends: a new one knows nothing
        # until its first fetch, and the end known before (from before a restart or a
        # reconnection) says nothing of the entries that came meanwhile.
        end_seen = False
        if self._consumer is not None:
            high = self._consumer.highwater(partition(self.topics.entries))
            if high is not None and self._answered_at is not None:
                end_seen = True
                status.topic_end = max(high, status.size)
                status.topic_end_seen_at = now = self._answered_at
                if now - self._noted_at >= 1.0:  # for `dfg node status`; a commit each, so seldom
                    self.store.set_marker(TOPIC_END_MARKER, status.topic_end)
                    self.store.set_marker(SEEN_AT_MARKER, int(now * 1000))
                    self._noted_at = now
        status.lag_entries = max(0, status.topic_end - status.size)
        latest = self.store.latest_checkpoint()
        status.last_checkpoint = latest.size if latest else None
        halted = self.replica.halted
        status.halted = (
            {
                "kind": halted.kind,
                "seq": halted.seq,
                "message": halted.message,
                "recorded_at": halted.recorded_at,
            }
            if halted
            else None
        )
        status.updated_at = self.clock()
        if end_seen and not status.lag_entries:
            self._caught_up_at = status.updated_at
        if status.connected:
            status.lag_seconds = self._lag_seconds() if status.lag_entries else 0.0
        else:
            seen = status.topic_end_seen_at or self._started_at
            status.lag_seconds = max(0.0, status.updated_at - seen)

    def _lag_seconds(self) -> float:
        """While newer entries wait, an upper bound on how old the oldest of them is: none
        is older than the newest verified entry, nor than the moment the replica was last
        seen caught up. (The newest entry's age alone said hours, for a moment, when
        entries came after an idle night: an alert on it fired at each such morning.)"""
        newest = newest_entry_time(self.store, self.replica.size)
        since = max(newest.timestamp() if newest else float("-inf"), self._caught_up_at or float("-inf"))
        return 0.0 if since == float("-inf") else max(0.0, self.clock() - since)

    def take_lags(self) -> list[float]:
        """Append-to-verified seconds of entries verified since the last call."""
        with self._lock:
            taken, self.status.recent_lags = self.status.recent_lags, []
        return taken

    def status_json(self) -> str:
        return json.dumps(self.status.as_json(), sort_keys=True)
