"""Catalogs and datasources: what data providers offer for analysis.

A catalog groups a provider's datasources. A datasource describes one dataset -- its
origin (FHIR resources or a table), the pseudonymous subject keys its records carry,
its variables with types, units and allowed ranges -- and, once uploaded, a commitment
to the shares the nodes hold. No record, share or value is ever on the ledger.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.errors import DomainError


def _require_owner(owner: str, by: str, what: str) -> None:
    if by != owner:
        raise DomainError("not_owner", f"{what} belongs to {owner}")


class Catalog(LedgerAggregate):
    class Created(Aggregate.Created):
        catalog_id: str
        owner: str
        name: str
        description: str

    class Updated(Aggregate.Event):
        changes: dict[str, Any]

        def apply(self, aggregate: Catalog) -> None:
            for key, value in self.changes.items():
                setattr(aggregate, key, value)

    def __init__(self, catalog_id: str, owner: str, name: str, description: str) -> None:
        self.catalog_id = catalog_id
        self.owner = owner
        self.name = name
        self.description = description

    @classmethod
    def create(
        cls,
        *,
        aggregate_id: uuid.UUID,
        catalog_id: uuid.UUID,
        owner: str,
        name: str,
        description: str,
        at: datetime,
    ) -> Catalog:
        return cls._create(
            cls.Created,
            id=aggregate_id,
            timestamp=at,
            catalog_id=str(catalog_id),
            owner=owner,
            name=name,
            description=description,
        )

    def update(self, *, by: str, changes: dict[str, Any], at: datetime) -> None:
        _require_owner(self.owner, by, f"catalog {self.catalog_id}")
        if not changes:
            raise DomainError("nothing_to_change", "the update changes nothing")
        self.trigger_event(self.Updated, timestamp=at, changes=changes)


class Datasource(LedgerAggregate):
    class Created(Aggregate.Created):
        datasource_id: str
        catalog_id: str
        owner: str
        name: str
        description: str
        origin: dict[str, Any]
        keys: list[str]
        data_categories: list[str]

    class Updated(Aggregate.Event):
        changes: dict[str, Any]

        def apply(self, aggregate: Datasource) -> None:
            for key, value in self.changes.items():
                setattr(aggregate, key, value)

    class VariableSet(Aggregate.Event):
        variable: dict[str, Any]

        def apply(self, aggregate: Datasource) -> None:
            aggregate.variables = {**aggregate.variables, self.variable["name"]: self.variable}

    class SharesCommitted(Aggregate.Event):
        commitments: dict[str, str]
        records: int
        fixed_point_precision: int

        def apply(self, aggregate: Datasource) -> None:
            aggregate.commitments = self.commitments
            aggregate.records = self.records
            aggregate.fixed_point_precision = self.fixed_point_precision

    def __init__(
        self,
        datasource_id: str,
        catalog_id: str,
        owner: str,
        name: str,
        description: str,
        origin: dict[str, Any],
        keys: list[str],
        data_categories: list[str],
    ) -> None:
        self.datasource_id = datasource_id
        self.catalog_id = catalog_id
        self.owner = owner
        self.name = name
        self.description = description
        self.origin = origin
        self.keys = tuple(keys)
        self.data_categories = tuple(data_categories)
        self.variables: dict[str, dict[str, Any]] = {}
        self.commitments: dict[str, str] = {}
        self.records: int | None = None
        self.fixed_point_precision: int | None = None

    @classmethod
    def create(cls, *, aggregate_id: uuid.UUID, at: datetime, **fields: Any) -> Datasource:
        return cls._create(cls.Created, id=aggregate_id, timestamp=at, **fields)

    def update(self, *, by: str, changes: dict[str, Any], at: datetime) -> None:
        _require_owner(self.owner, by, f"datasource {self.datasource_id}")
        if not changes:
            raise DomainError("nothing_to_change", "the update changes nothing")
        self.trigger_event(self.Updated, timestamp=at, changes=changes)

    def set_variable(self, *, by: str, variable: dict[str, Any], create: bool, at: datetime) -> None:
        _require_owner(self.owner, by, f"datasource {self.datasource_id}")
        name = variable["name"]
        if name in self.keys:
            raise DomainError(
                "variable_is_a_key", f"{name} is a subject key of this datasource, not a variable"
            )
        if create and name in self.variables:
            raise DomainError("variable_exists", f"datasource {self.datasource_id} already has {name}")
        if not create and name not in self.variables:
            raise DomainError("unknown_variable", f"datasource {self.datasource_id} has no variable {name}")
        self.trigger_event(self.VariableSet, timestamp=at, variable=variable)

    def commit_shares(
        self, *, by: str, commitments: dict[str, str], records: int, precision: int, at: datetime
    ) -> None:
        _require_owner(self.owner, by, f"datasource {self.datasource_id}")
        if not self.variables:
            raise DomainError("no_variables", "describe the datasource's variables before uploading shares")
        self.trigger_event(
            self.SharesCommitted,
            timestamp=at,
            commitments=commitments,
            records=records,
            fixed_point_precision=precision,
        )
