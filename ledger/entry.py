"""A ledger entry and its canonical bytes: the unit that is stored, hashed and proven.

An entry is the signed transaction verbatim, the domain event it caused, the
sequence number and the sequencer's timestamp. Its canonical JSON (``canonical``)
is exactly what the event store keeps as the event's state, what an audit bundle
carries one per line, and what the Merkle leaf hash covers:
``leaf = SHA-256(0x00 || canonical)``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Final, NamedTuple

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic

from domain.handlers import AGGREGATES, EVENT_TYPES
from domain.times import format_time, parse_time
from ledger.canonical import canonical_json
from ledger.merkle import leaf_hash

ENTRY_VERSION: Final = 1
#: Largest entry the sequencer appends, in canonical bytes: the relay publishes each
#: entry as one Kafka record, and a record is at most 1 MiB (Kafka's default, and the
#: relay's ``MAX_RECORD_BYTES``), with room here for its key and headers. A transaction
#: is at most 16 KiB, but its event may copy state (``analysis.duplicate`` copies every
#: calculation, ``data_view.create`` every variable's specification).
MAX_ENTRY_BYTES: Final = 1_000_000
_BASE_FIELDS: Final = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
_NAME_OF: Final = {cls: name for name, cls in EVENT_TYPES.items()}
_KEYS: Final = frozenset({"v", "seq", "ts", "tx", "aggregate", "version", "event", "data"})


class EntryFormatError(ValueError):
    """Stored bytes are not a canonical entry."""


class Entry(NamedTuple):
    """One entry (a named tuple: immutable, and built a few times faster than a frozen
    dataclass, once per entry in the sequencer, the audit and every replica)."""

    seq: int
    ts: datetime
    tx: str
    aggregate_id: uuid.UUID
    version: int
    event_type: str
    data: dict[str, Any]
    canonical: bytes

    # eventsourcing's DomainEventProtocol: an entry is stored as one event.
    @property
    def originator_id(self) -> uuid.UUID:
        return self.aggregate_id

    @property
    def originator_version(self) -> int:
        return self.version

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.canonical)

    @classmethod
    def build(
        cls,
        *,
        seq: int,
        ts: datetime,
        tx: str,
        aggregate_id: uuid.UUID,
        version: int,
        event_type: str,
        data: dict[str, Any],
    ) -> Entry:
        document = {
            "v": ENTRY_VERSION,
            "seq": seq,
            "ts": format_time(ts),
            "tx": tx,
            "aggregate": str(aggregate_id),
            "version": version,
            "event": event_type,
            "data": data,
        }
        return cls(seq, ts, tx, aggregate_id, version, event_type, data, canonical_json(document))

    @classmethod
    def from_event(cls, event: Aggregate.Event, *, seq: int, tx: str) -> Entry:
        fields = {k: v for k, v in vars(event).items() if k not in _BASE_FIELDS}
        return cls.build(
            seq=seq,
            ts=event.timestamp,
            tx=tx,
            aggregate_id=event.originator_id,
            version=event.originator_version,
            event_type=_NAME_OF[type(event)],
            data=fields,
        )

    @classmethod
    def decode(cls, canonical: bytes) -> Entry:
        """Parse stored bytes, refusing anything that is not exactly canonical."""
        try:
            doc = json.loads(canonical)
            if not isinstance(doc, dict) or set(doc) != _KEYS or doc["v"] != ENTRY_VERSION:
                raise EntryFormatError("not a version 1 entry")
            entry = cls.build(
                seq=doc["seq"],
                ts=parse_time(doc["ts"]),
                tx=doc["tx"],
                aggregate_id=uuid.UUID(doc["aggregate"]),
                version=doc["version"],
                event_type=doc["event"],
                data=doc["data"],
            )
        except EntryFormatError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise EntryFormatError(f"not a canonical entry: {exc}") from exc
        if entry.canonical != canonical:
            raise EntryFormatError("entry bytes are not in canonical form")
        if entry.event_type not in EVENT_TYPES:
            raise EntryFormatError(f"unknown event type {entry.event_type!r}")
        return entry

    def to_event(self) -> Aggregate.Event:
        """The domain event this entry recorded, as eventsourcing objects expect it."""
        event_class = EVENT_TYPES[self.event_type]
        state = dict(self.data)
        state["originator_id"] = self.aggregate_id
        state["originator_version"] = self.version
        state["timestamp"] = self.ts
        if issubclass(event_class, Aggregate.Created):
            state["originator_topic"] = get_topic(AGGREGATES[self.event_type.split(".")[0]])
        event = object.__new__(event_class)
        object.__setattr__(event, "__dict__", state)
        return event


class EntryMapper(Mapper[uuid.UUID]):
    """Stores an entry's canonical bytes verbatim as the event state.

    The library still owns persistence, aggregate versions (optimistic concurrency)
    and notification ids; the ledger owns the bytes, so that what is hashed is what
    is stored, in any storage engine.
    """

    def __init__(self) -> None:
        super().__init__(transcoder=JSONTranscoder())

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if not isinstance(domain_event, Entry):
            raise TypeError("the ledger stores Entry objects only")
        return StoredEvent(
            originator_id=domain_event.aggregate_id,
            originator_version=domain_event.version,
            topic=domain_event.event_type,
            state=domain_event.canonical,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return Entry.decode(bytes(stored_event.state)).to_event()
