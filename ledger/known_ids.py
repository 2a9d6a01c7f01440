"""Which aggregates exist: a compact set of 64-bit id prefixes.

Most lookups the sequencer and the audit make are for aggregates that do not exist
yet (a new consent, a pseudonym that is not a platform user). Absence is certain
when the prefix is not in the set, so those lookups cost no database query; a
prefix collision merely costs one query. About 60 bytes per aggregate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable


class KnownIds:
    def __init__(self, prefixes: Iterable[int] = ()) -> None:
        """``prefixes``: ``prefix`` of each id known (as stores read them)."""
        self._prefixes: set[int] = set(prefixes)

    @staticmethod
    def prefix(aggregate_id: uuid.UUID) -> int:
        """The id's first 64 bits."""
        return aggregate_id.int >> 64

    def add(self, aggregate_id: uuid.UUID) -> None:
        self._prefixes.add(aggregate_id.int >> 64)

    def may_exist(self, aggregate_id: uuid.UUID) -> bool:
        return (aggregate_id.int >> 64) in self._prefixes

    def __len__(self) -> int:
        return len(self._prefixes)
