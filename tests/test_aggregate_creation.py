"""``LedgerAggregate._create`` must build exactly what eventsourcing's own path builds:
the same aggregate state and the same pending event, for every kind of aggregate."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.analysis import Analysis
from domain.catalog import Catalog, Datasource
from domain.consent import Consent
from domain.data_view import DataView
from domain.handlers import AGGREGATES, EVENT_TYPES
from domain.principal import Principal
from domain.rules import LedgerRules

AT = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)
BASE_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic"}
TERMS = {
    "purposes": ["dpv:ServiceProvision"],
    "data_categories": ["dpv:HealthRecord"],
    "notice": {"url": "https://example.org/notice", "sha256": "ab" * 32},
    "valid_from": "2026-11-24T10:00:00Z",
    "valid_until": "2027-11-24T10:00:00Z",
}
KEY = {
    "kid": "sp:app#abc",
    "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    "not_before": None,
    "not_after": "2027-01-01T00:00:00Z",
}
#: Every created event, with the fields its aggregate's factory would give it.
SAMPLES: dict[type[Aggregate.Created], tuple[type[LedgerAggregate], dict[str, Any]]] = {
    LedgerRules.Adopted: (LedgerRules, {"version": 2, "adopted_by": "operator:federation"}),
    Consent.Requested: (
        Consent,
        {"consent_id": str(uuid.uuid4()), "controller": "sp:app", "subject": "p-1", "terms": TERMS},
    ),
    Consent.Given: (
        Consent,
        {
            "consent_id": str(uuid.uuid4()),
            "controller": "sp:app",
            "subject": "p-1",
            "terms": TERMS,
            "level": 1,
            "method": "app",
            "given_by": "sp:app",
        },
    ),
    Principal.Admitted: (
        Principal,
        {
            "principal": "sp:app",
            "kind": "service_provider",
            "roles": ["service_provider"],
            "display_name": "App",
            "custodian": None,
            "keys": [KEY],
            "admitted_by": "op:root",
            "ledger": None,
        },
    ),
    Catalog.Created: (
        Catalog,
        {"catalog_id": str(uuid.uuid4()), "owner": "dp:lab", "name": "Lab", "description": "tests"},
    ),
    Datasource.Created: (
        Datasource,
        {
            "datasource_id": str(uuid.uuid4()),
            "catalog_id": str(uuid.uuid4()),
            "owner": "dp:lab",
            "name": "Glucose",
            "description": "values",
            "origin": {"kind": "fhir"},
            "keys": ["patient"],
            "data_categories": ["dpv:HealthRecord"],
        },
    ),
    DataView.Created: (
        DataView,
        {
            "data_view_id": str(uuid.uuid4()),
            "owner": "ao:uni",
            "name": "View",
            "variables": [{"alias": "g", "datasource_id": str(uuid.uuid4()), "variable": "glucose"}],
            "duplicated_from": None,
        },
    ),
    Analysis.Created: (
        Analysis,
        {
            "analysis_id": str(uuid.uuid4()),
            "owner": "ao:uni",
            "name": "Mean",
            "note": "",
            "data_view_id": str(uuid.uuid4()),
            "analysts": ["ao:uni"],
            "consent": {"purpose": "dpv:ResearchAndDevelopment"},
            "modulus": "340282366920938463463374607431768211297",
            "fixed_point_precision": 16,
            "duplicated_from": None,
            "merge": None,
            "catalogs": [],
            "datasources": [],
            "calculations": [{"id": "c1", "kind": "mean"}],
        },
    ),
}


def _library_create(cls: type[LedgerAggregate], event_class: type[Aggregate.Created], **kw: Any) -> Any:
    return Aggregate._create.__func__(cls, event_class, **kw)  # type: ignore[attr-defined]


def _state(aggregate: Aggregate) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def test_every_created_event_has_a_sample() -> None:
    created = {e for e in EVENT_TYPES.values() if issubclass(e, Aggregate.Created)}
    assert created == set(SAMPLES)
    assert all(issubclass(cls, LedgerAggregate) for cls in AGGREGATES.values())
    # The library would also pass a field's default to __init__; the lean path passes
    # the caller's arguments only, so created events have no defaults (and samples give
    # every field).
    for event_class, (_, fields) in SAMPLES.items():
        own = [f for f in dataclasses.fields(event_class) if f.name not in BASE_FIELDS]
        assert all(f.default is dataclasses.MISSING for f in own), event_class
        assert {f.name for f in own} == set(fields), event_class


@pytest.mark.parametrize("event_class", list(SAMPLES), ids=lambda e: e.__qualname__)
def test_creation_matches_the_library(event_class: type[Aggregate.Created]) -> None:
    cls, fields = SAMPLES[event_class]
    aggregate_id = uuid.uuid4()
    lean = cls._create(event_class, id=aggregate_id, timestamp=AT, **fields)
    library = _library_create(cls, event_class, id=aggregate_id, timestamp=AT, **fields)
    assert type(lean) is type(library) is cls
    assert _state(lean) == _state(library)
    (lean_event,), (library_event,) = lean.collect_events(), library.collect_events()
    assert type(lean_event) is type(library_event) is event_class
    assert vars(lean_event) == vars(library_event)
    # and the aggregate the library rebuilds from the stored event is the one created
    assert _state(lean_event.mutate(None)) == _state(lean)


def test_a_missing_or_unknown_field_is_refused() -> None:
    cls, fields = SAMPLES[Consent.Given]
    missing = {k: v for k, v in fields.items() if k != "subject"}
    with pytest.raises(TypeError):
        cls._create(Consent.Given, id=uuid.uuid4(), timestamp=AT, **missing)
    with pytest.raises(TypeError):
        cls._create(Consent.Given, id=uuid.uuid4(), timestamp=AT, **fields, colour="blue")


def test_an_init_that_takes_the_id_is_refused() -> None:
    class Odd(LedgerAggregate):
        class Made(Aggregate.Created):
            name: str

        def __init__(self, id: uuid.UUID, name: str) -> None:
            self.name = name

    with pytest.raises(TypeError, match="must not take id"):
        Odd._create(Odd.Made, id=uuid.uuid4(), timestamp=AT, name="x")
