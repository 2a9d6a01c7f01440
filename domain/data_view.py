"""Data views: the variables an analyst selects from several datasources, under aliases.

Calculations name variables by their alias in the analysis' data view. A view is
locked once sent: analyses compute over exactly what was sent. Each selected variable
keeps a snapshot of its specification (type, unit, range) as of the view's creation.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.errors import DomainError


class DataView(LedgerAggregate):
    class Created(Aggregate.Created):
        data_view_id: str
        owner: str
        name: str
        variables: list[dict[str, Any]]
        duplicated_from: str | None

    class Sent(Aggregate.Event):
        def apply(self, aggregate: DataView) -> None:
            aggregate.sent = True

    def __init__(
        self,
        data_view_id: str,
        owner: str,
        name: str,
        variables: list[dict[str, Any]],
        duplicated_from: str | None,
    ) -> None:
        self.data_view_id = data_view_id
        self.owner = owner
        self.name = name
        self.variables = {v["alias"]: v for v in variables}
        self.duplicated_from = duplicated_from
        self.sent = False

    @property
    def datasource_ids(self) -> list[str]:
        return sorted({v["datasource_id"] for v in self.variables.values()})

    @classmethod
    def create(
        cls,
        *,
        aggregate_id: uuid.UUID,
        data_view_id: uuid.UUID,
        owner: str,
        name: str,
        variables: list[dict[str, Any]],
        at: datetime,
        duplicated_from: str | None = None,
    ) -> DataView:
        return cls._create(
            cls.Created,
            id=aggregate_id,
            timestamp=at,
            data_view_id=str(data_view_id),
            owner=owner,
            name=name,
            variables=variables,
            duplicated_from=duplicated_from,
        )

    def send(self, *, by: str, at: datetime) -> None:
        if by != self.owner:
            raise DomainError("not_owner", f"data view {self.data_view_id} belongs to {self.owner}")
        if self.sent:
            raise DomainError("already_sent", f"data view {self.data_view_id} was already sent")
        self.trigger_event(self.Sent, timestamp=at)
