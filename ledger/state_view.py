"""The typed look-ups the domain's handlers read state through (``domain.handlers.State``),
shared by the sequencer's batch state and the audit's replay state."""

from __future__ import annotations

import uuid

from eventsourcing.domain import Aggregate

from domain.consent import Consent
from domain.identifiers import could_be_principal, principal_aggregate_id
from domain.principal import Principal
from domain.rules import RULES_AGGREGATE_ID, in_effect


class AggregateLookups:
    """Subclasses provide ``_get`` (an aggregate by id, or None) and ``size``; their owner
    sets ``genesis_rules`` from the genesis entry (``domain.rules.genesis_version``)."""

    size: int
    genesis_rules: int = 1

    def rules(self) -> int:
        return in_effect(self._get(RULES_AGGREGATE_ID), self.genesis_rules)

    def _get(self, aggregate_id: uuid.UUID) -> Aggregate | None:
        raise NotImplementedError

    def principal(self, principal_id: str) -> Principal | None:
        if not could_be_principal(principal_id):  # e.g. the pseudonym of a level 1 subject
            return None
        aggregate = self._get(principal_aggregate_id(principal_id))
        return aggregate if isinstance(aggregate, Principal) else None

    def consent(self, aggregate_id: uuid.UUID) -> Consent | None:
        aggregate = self._get(aggregate_id)
        return aggregate if isinstance(aggregate, Consent) else None

    def aggregate(self, aggregate_id: uuid.UUID) -> Aggregate | None:
        return self._get(aggregate_id)

    def is_empty(self) -> bool:
        return self.size == 0
