"""The base of the ledger's aggregates: eventsourcing's ``Aggregate``, created leaner.

Why: every consent entry creates an aggregate, in the sequencer, in the audit and in
every follower, and the library's generic ``_create`` spends most of its time on
what it must find out for any class (the id's factory, the topic of the class, which
of the event's attributes each ``__init__`` takes, by signature inspection). Here the
class, the id and the ``__init__`` parameters are known, so creation does only what
the library's own path does with them, in the same order: the created event is built
by its dataclass constructor (which still refuses a missing or unknown field), then
``__base_init__``, ``__init__`` with the event's attributes it names, the event's
``apply``, and the event is left pending. Aggregates loaded from stored events are
still built by the library (``CanInitAggregate.mutate``); tests check both agree.
"""

from __future__ import annotations

import inspect
from datetime import datetime
from functools import cache
from typing import Any, Self
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic


class LedgerAggregate(Aggregate):
    @classmethod
    def _create(  # type: ignore[override]
        cls,
        event_class: type[Aggregate.Created],
        *,
        id: UUID,
        timestamp: datetime,
        **kwargs: Any,
    ) -> Self:
        version = cls.INITIAL_VERSION
        event = event_class(
            originator_topic=_topic(cls),
            originator_id=id,
            originator_version=version,
            timestamp=timestamp,
            **kwargs,
        )
        aggregate = cls.__new__(cls)
        aggregate.__base_init__(id, version, timestamp)
        takes = _init_parameters(cls)
        aggregate.__init__(**{name: value for name, value in kwargs.items() if name in takes})  # type: ignore[misc]
        event.apply(aggregate)
        aggregate.pending_events.append(event)
        return aggregate


@cache
def _topic(cls: type[Aggregate]) -> str:
    return get_topic(cls)


#: What the library would pass an ``__init__`` from the event besides its own fields.
_LIBRARY_ARGUMENTS = frozenset({"id", "timestamp", "originator_id", "originator_version", "originator_topic"})


@cache
def _init_parameters(cls: type[Aggregate]) -> frozenset[str]:
    """The names ``cls.__init__`` takes; refused when the library would give it more than
    the caller's arguments (``_LIBRARY_ARGUMENTS``), which this creation does not."""
    parameters = inspect.signature(cls.__init__).parameters
    extra = _LIBRARY_ARGUMENTS.intersection(parameters)
    if extra:
        raise TypeError(f"{cls.__name__}.__init__ must not take {', '.join(sorted(extra))}")
    return frozenset(name for name in parameters if name != "self")
