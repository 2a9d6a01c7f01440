"""Protocols with three parties as threads of one process, against plaintext."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.field import MERSENNE_127, FixedPoint, PrimeField
from mpc.protocols import (
    ProtocolError,
    inner,
    input_values,
    less_than,
    multiply,
    open_values,
    random_bits,
    truncate,
)
from mpc.runtime import Party, ProtocolTimeout, run_local
from mpc.shamir import Scheme

FIELD = PrimeField(MERSENNE_127)
SCHEME = Scheme(FIELD, parties=3, threshold=1)
values = st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=12)


@given(values, values)
@settings(max_examples=15, deadline=None)
def test_inputs_from_two_owners_multiply_and_open(xs: list[int], ys: list[int]) -> None:
    n = min(len(xs), len(ys))
    xs, ys = xs[:n], ys[:n]

    def program(party: Party) -> tuple[list[int], list[int]]:
        a = input_values(party, 1, [FIELD.element(x) for x in xs] if party.index == 1 else None)
        b = input_values(party, 2, [FIELD.element(y) for y in ys] if party.index == 2 else None)
        products = open_values(party, multiply(party, a, b))
        dot = open_values(party, inner(party, [a], [b]))
        return products, dot

    for products, dot in run_local(SCHEME, program):
        assert [FIELD.signed(v) for v in products] == [x * y for x, y in zip(xs, ys, strict=True)]
        assert FIELD.signed(dot[0]) == sum(x * y for x, y in zip(xs, ys, strict=True))


def test_random_bits_are_bits_and_not_all_alike() -> None:
    opened = run_local(SCHEME, lambda party: open_values(party, random_bits(party, 64)))
    assert opened[0] == opened[1] == opened[2]
    assert set(opened[0]) <= {0, 1} and 0 < sum(opened[0]) < 64


@given(
    st.decimals(min_value=-500, max_value=500, places=3, allow_nan=False),
    st.decimals(min_value=-500, max_value=500, places=3, allow_nan=False),
)
@settings(max_examples=8, deadline=None)
def test_fixed_point_products_are_truncated_within_one_unit(a: Decimal, b: Decimal) -> None:
    fixed = FixedPoint(16)
    ea, eb = fixed.encode(a), fixed.encode(b)

    def program(party: Party) -> list[int]:
        sa = input_values(party, 1, [FIELD.element(ea)] if party.index == 1 else None)
        sb = input_values(party, 1, [FIELD.element(eb)] if party.index == 1 else None)
        product = multiply(party, sa, sb)  # 32 fractional bits
        return open_values(party, truncate(party, product, fraction_bits=16, value_bits=64))

    (result,) = run_local(SCHEME, program)[0]
    exact = Fraction(ea * eb, 1 << 32)
    assert abs(fixed.decode(FIELD.signed(result)) - exact) <= Fraction(1, 1 << 16)


def test_a_wrong_share_at_an_opening_is_detected_by_every_party() -> None:
    def program(party: Party) -> str:
        shares = input_values(party, 1, [FIELD.element(7)] if party.index == 1 else None)
        if party.index == 2:
            shares = party.ops.add_const(shares, 1)  # a cheating or faulty node
        try:
            open_values(party, shares)
        except ProtocolError as exc:
            return str(exc)
        return "opened"

    outcomes = run_local(SCHEME, program)
    assert all("inconsistent" in outcome for outcome in outcomes)


def test_a_party_that_stops_makes_the_others_time_out_instead_of_hanging() -> None:
    def program(party: Party) -> str:
        if party.index == 3:
            return "stopped"
        try:
            open_values(party, [FIELD.element(1)])
        except ProtocolTimeout as exc:
            return str(exc)
        return "opened"

    outcomes = run_local(SCHEME, program, timeout=0.5)
    assert outcomes[2] == "stopped"
    assert all("party 3 did not answer" in o for o in outcomes[:2])


def test_truncation_refuses_a_field_too_small_for_its_statistical_mask() -> None:
    small = Scheme(PrimeField(2**61 - 1), parties=3, threshold=1)

    def program(party: Party) -> list[int]:
        return truncate(party, [0], fraction_bits=16, value_bits=32)

    with pytest.raises(ProtocolError, match="more than 75 bits"):
        run_local(small, program)


@given(
    st.lists(st.tuples(st.integers(-(2**30), 2**30), st.integers(-(2**30), 2**30)), min_size=1, max_size=6)
)
@settings(max_examples=6, deadline=None)
def test_secure_comparison_matches_plaintext(pairs: list[tuple[int, int]]) -> None:
    extremes = [(0, 0), (-1, 0), (0, -1), (2**30, -(2**30)), (-(2**30), 2**30)]
    pairs = pairs + extremes

    def program(party: Party) -> list[int]:
        a = input_values(party, 1, [FIELD.element(x) for x, _ in pairs] if party.index == 1 else None)
        b = input_values(party, 2, [FIELD.element(y) for _, y in pairs] if party.index == 2 else None)
        return open_values(party, less_than(party, a, b, value_bits=33))

    opened = run_local(SCHEME, program)
    assert opened[0] == opened[1] == opened[2]
    assert opened[0] == [int(x < y) for x, y in pairs]
