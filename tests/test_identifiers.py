"""Aggregate ids are in the log forever: the derivations must be exactly RFC 9562 UUIDv5."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from domain.identifiers import (
    DFG_NAMESPACE,
    consent_aggregate_id,
    could_be_principal,
    entity_aggregate_id,
    is_principal_id,
    principal_aggregate_id,
)


@given(st.text(), st.uuids())
def test_the_derived_ids_are_the_standard_uuid5_of_their_names(name: str, some_id: uuid.UUID) -> None:
    assert principal_aggregate_id(name) == uuid.uuid5(DFG_NAMESPACE, f"principal\n{name}")
    assert consent_aggregate_id(name, some_id) == uuid.uuid5(DFG_NAMESPACE, f"consent\n{name}\n{some_id}")
    assert entity_aggregate_id(name, some_id) == uuid.uuid5(DFG_NAMESPACE, f"{name}\n{some_id}")
    derived = consent_aggregate_id(name, some_id)
    assert consent_aggregate_id(name, str(some_id)) == derived  # the id's text names it too
    assert derived.version == 5 and derived.variant == uuid.RFC_4122
    assert str(derived) == str(uuid.UUID(str(derived)))


@given(st.from_regex(r"[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9._~-]{1,96}", fullmatch=True))
def test_every_principal_id_could_name_a_principal(principal: str) -> None:
    assert is_principal_id(principal) and could_be_principal(principal)


def test_a_pseudonym_without_a_colon_never_names_a_principal() -> None:
    assert not could_be_principal("p-1-4498") and not is_principal_id("p-1-4498")


def test_a_principal_id_followed_by_a_newline_is_none() -> None:
    """``$`` also matches before a final newline: ``re.match`` took "sp:app\\n" for a
    principal id, which the transactions' pattern (pydantic's) refuses."""
    assert not is_principal_id("sp:app\n") and is_principal_id("sp:app")
