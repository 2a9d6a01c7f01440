"""Which version of the ledger's rules decides each entry.

Why versions: a ledger's entries are replayed for ever (audits, replicas, recovery),
each decided by the rules as they stood when it was appended. A rule made stricter in
a later release would refuse, on replay, entries an earlier release rightly accepted,
and the honest ledger would fail its own audit. So each stricter rule belongs to a
numbered version, and a ledger follows a version from a known point on: the one its
genesis entry names (``ledger.rules``; a genesis entry without it follows version 1),
then each version its operator adopts with a ``ledger.adopt_rules`` transaction.
Replaying an entry asks for the version in effect before it, never the release's
newest. Software that meets a version newer than it knows refuses the entry, saying so,
rather than deciding it by rules it does not have.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.errors import DomainError
from domain.identifiers import DFG_NAMESPACE

#: The newest version this software decides entries by; ``dfg init`` starts new
#: ledgers on it.
NEWEST: Final = 2

#: What each version adds to the one before (docs/transactions.md, "Rule versions").
CHANGES: Final[Mapping[int, str]] = {
    1: "the rules of the first release",
    2: (
        "analysis.send names at least 3 nodes (an honest majority of 2 keeps nothing secret);"
        " results.request_access takes an X25519 key only (the nodes seal results to no other);"
        " consent.utilize names each data category once"
    ),
}

#: The one aggregate that records adopted versions: well known, so anyone can find it.
RULES_AGGREGATE_ID: Final = uuid.uuid5(DFG_NAMESPACE, "ledger-rules")


def genesis_version(ledger: Mapping[str, object] | None) -> int:
    """The version a genesis entry's ``ledger`` object names (1 when it names none)."""
    found = (ledger or {}).get("rules", 1)
    return found if isinstance(found, int) else 1


def in_effect(adopted: object, genesis: int) -> int:
    """The version deciding the next entry: the newest adopted (``adopted``: the
    ``LedgerRules`` aggregate, or None while none was), else the genesis entry's."""
    return adopted.version if isinstance(adopted, LedgerRules) else genesis


def require_known(version: int) -> None:
    if version > NEWEST:
        raise DomainError(
            "unknown_rules",
            f"this ledger follows rules version {version}; this dfg knows versions up to {NEWEST}:"
            " upgrade dfg to decide or replay its entries",
        )


class LedgerRules(LedgerAggregate):
    """The versions an operator adopted after the genesis entry's."""

    class Adopted(Aggregate.Created):
        version: int
        adopted_by: str

    class Upgraded(Aggregate.Event):
        version: int
        adopted_by: str

        def apply(self, aggregate: LedgerRules) -> None:
            aggregate.version = self.version

    def __init__(self, version: int, adopted_by: str) -> None:
        self.version = version

    @classmethod
    def adopt_first(cls, *, version: int, by: str, at: datetime) -> LedgerRules:
        return cls._create(cls.Adopted, id=RULES_AGGREGATE_ID, timestamp=at, version=version, adopted_by=by)

    def adopt(self, *, version: int, by: str, at: datetime) -> None:
        self.trigger_event(self.Upgraded, version=version, adopted_by=by, timestamp=at)
