"""Canonical JSON is one byte string per value, whichever encoder writes it: the fast
path (orjson) must equal the standard library's definition on every ledger value."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import canonical_json, reference_canonical_json

_text = st.text(alphabet=st.characters(codec="utf-8"))  # every code point UTF-8 can carry
_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _text
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_text, inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=500)
@given(_values)
def test_the_fast_encoder_writes_the_reference_bytes(value: Any) -> None:
    assert canonical_json(value) == reference_canonical_json(value)


def test_control_characters_separators_and_non_ascii_are_written_alike() -> None:
    tricky = {"b": '\x00\x1f\x7f\u2028\u2029"\\/é漢字🙂', "a": [2**64, -(2**63), 2**53 + 1], "c": {}}
    assert canonical_json(tricky) == reference_canonical_json(tricky)
    assert canonical_json({1: "x"}) == reference_canonical_json({1: "x"})  # via the fallback
