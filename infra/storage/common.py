"""What both storage engines share: the event store and repository wiring, and
turning library notifications into ledger ``StoredEntry`` rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from eventsourcing.application import AggregateNotFoundError, Repository
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder, EventStore

from domain.times import format_time
from ledger.entry import Entry, EntryMapper
from ledger.merkle import EMPTY_ROOT
from ledger.store import StoredEntry, WriterLockHandle

EVENTS_TABLE = "ledger_entries"
#: Above every sequence number (a range query's open end).
NO_END = 2**63 - 1
__all__ = ["EMPTY_ROOT", "EVENTS_TABLE", "EntryStoreMixin", "utc_now_text"]


class EntryStoreMixin:
    """Reads through eventsourcing: aggregates via its Repository, entries via its
    notification log (notification id == ledger sequence number)."""

    recorder: ApplicationRecorder

    def _wire(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder
        self._on_close: list[Callable[[], None]] = []
        self.events = EventStore(mapper=EntryMapper(), recorder=recorder)
        self.repository: Repository[uuid.UUID] = Repository(event_store=self.events)

    def hold_writer_lock(self, lock: WriterLockHandle) -> None:
        self._on_close.append(lock.release)
        self._confirm_writes_with(lock)

    def _confirm_writes_with(self, lock: WriterLockHandle) -> None:
        """Engines whose lock can be lost while the process lives confirm it per append."""

    def _released(self) -> None:
        """The writer lock (and what else was to be released), once, after the store's own closing."""
        hooks, self._on_close = self._on_close, []
        for release in hooks:
            release()

    def load_aggregate(self, aggregate_id: uuid.UUID) -> Aggregate | None:
        try:
            aggregate: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(aggregate, Aggregate)
        return aggregate

    def load_aggregate_before(self, aggregate_id: uuid.UUID, seq: int) -> Aggregate | None:
        aggregate: Aggregate | None = None
        for state in self._states_before(aggregate_id, seq):
            aggregate = Entry.decode(state).to_event().mutate(aggregate)
        return aggregate

    def _states_before(self, aggregate_id: uuid.UUID, seq: int) -> Sequence[bytes]:
        raise NotImplementedError

    def read_entries(self, start: int, limit: int) -> Sequence[StoredEntry]:
        notifications = self.recorder.select_notifications(start, limit)
        return [
            StoredEntry(
                seq=n.id,
                aggregate_id=n.originator_id
                if isinstance(n.originator_id, uuid.UUID)
                else uuid.UUID(str(n.originator_id)),
                version=n.originator_version,
                event_type=n.topic,
                canonical=bytes(n.state),
            )
            for n in notifications
        ]


def utc_now_text() -> str:
    """When a violation was recorded (operational metadata, not ledger time)."""
    return format_time(datetime.now(UTC))
