"""Every read model the ledger maintains, by name."""

from __future__ import annotations

from projections.analyses import AnalysesView
from projections.base import View
from projections.consent_state import ConsentStateView
from projections.keys import PrincipalsView
from projections.timeline import TimelineView


def all_views() -> list[View]:
    return [ConsentStateView(), TimelineView(), PrincipalsView(), AnalysesView()]
