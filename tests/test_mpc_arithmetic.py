"""The MPC arithmetic core against plain integers: fields, fixed point, Shamir sharing,
checked openings, multiplication and inner products with degree reduction."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.field import MERSENNE_127, FieldCapacity, FieldError, FixedPoint, PrimeField, Range
from mpc.protocols import inner, input_values, multiply, open_values
from mpc.runtime import Party, run_local
from mpc.shamir import Scheme, SharingError

F127 = PrimeField(MERSENNE_127)
F61 = PrimeField(2**61 - 1)
THREE = Scheme(F127, parties=3, threshold=1)
FIVE = Scheme(F61, parties=5, threshold=2)
signed = st.integers(min_value=-(2**60), max_value=2**60)
#: Products of two of these stay inside GF(2^61 - 1): what the fast field is for.
small = st.integers(min_value=-(2**29), max_value=2**29)


def test_fields_refuse_composites_and_values_that_do_not_fit() -> None:
    with pytest.raises(FieldError):
        PrimeField(2**127 - 3)  # not prime
    with pytest.raises(FieldError, match="does not fit"):
        F61.element(2**61)
    assert F61.signed(F61.element(-5)) == -5
    assert F127.bits == 127


@given(signed, signed)
def test_field_operations_match_integers(a: int, b: int) -> None:
    x, y = F127.element(a), F127.element(b)
    assert F127.signed(F127.add(x, y)) == a + b
    assert F127.signed(F127.sub(x, y)) == a - b
    assert F127.signed(F127.mul(x, y)) == a * b
    if b:
        assert F127.mul(F127.inverse(y), y) == 1


@given(st.decimals(min_value=-1000, max_value=1000, places=6, allow_nan=False), st.integers(0, 32))
def test_fixed_point_encoding_error_is_at_most_half_a_unit(value: Decimal, precision: int) -> None:
    fixed = FixedPoint(precision)
    assert abs(fixed.decode(fixed.encode(value)) - Fraction(value)) <= fixed.resolution


@pytest.mark.parametrize("scheme", [THREE, FIVE], ids=["n3t1", "n5t2"])
@given(secret=small, data=st.data())
def test_any_t_plus_one_shares_reconstruct(scheme: Scheme, secret: int, data: st.DataObject) -> None:
    shares = scheme.share(scheme.field.element(secret))
    parties = data.draw(st.permutations(list(scheme.points)))[: scheme.threshold + 1]
    opened = scheme.reconstruct({x: shares[x - 1] for x in parties})
    assert scheme.field.signed(opened) == secret


def test_t_shares_reveal_nothing_about_the_secret() -> None:
    """Exhaustively in GF(101), t = 1: over every choice of the random coefficient, each
    single party's share takes every value exactly once, whatever the secret -- so its
    distribution is the same for all secrets."""
    small_scheme = Scheme(PrimeField(101), parties=3, threshold=1)
    for party in range(3):
        for secret in (0, 1, 42, 100):
            seen = sorted(
                small_scheme.share(secret, random_below=lambda _p, r=r: r)[party] for r in range(101)
            )
            assert seen == list(range(101))


@given(secret=signed, wrong=st.integers(1, 2**64), who=st.integers(1, 3))
def test_a_wrong_share_is_detected_at_a_checked_opening(secret: int, wrong: int, who: int) -> None:
    shares = dict(zip(THREE.points, THREE.share(F127.element(secret)), strict=True))
    assert F127.signed(THREE.open_checked(shares)) == secret
    shares[who] = (shares[who] + wrong) % F127.modulus
    with pytest.raises(SharingError, match="inconsistent"):
        THREE.open_checked(shares)


def test_parameters_without_an_honest_majority_are_refused() -> None:
    with pytest.raises(SharingError):
        Scheme(F127, parties=3, threshold=2)
    with pytest.raises(SharingError):
        Scheme(F127, parties=4, threshold=2)


@pytest.mark.parametrize("scheme", [THREE, FIVE], ids=["n3t1", "n5t2"])
@given(a=small, b=small)
@settings(max_examples=20, deadline=None)
def test_multiplication_with_degree_reduction(scheme: Scheme, a: int, b: int) -> None:
    f = scheme.field

    def program(party: Party) -> tuple[list[int], list[int]]:
        x = input_values(party, 1, [f.element(a)] if party.index == 1 else None)
        y = input_values(party, 2, [f.element(b)] if party.index == 2 else None)
        product = multiply(party, x, y)  # a degree-t sharing again: every share checks out
        again = multiply(party, product, party.ops.of([f.element(-3)]))  # a public constant
        return open_values(party, product), open_values(party, again)

    for product, again in run_local(scheme, program):
        assert f.signed(product[0]) == a * b and f.signed(again[0]) == -3 * a * b


@given(st.lists(st.tuples(signed, signed), min_size=1, max_size=40))
@settings(max_examples=20, deadline=None)
def test_inner_product_needs_one_resharing(pairs: list[tuple[int, int]]) -> None:
    def program(party: Party) -> list[int]:
        xs = input_values(party, 1, [F127.element(x) for x, _ in pairs] if party.index == 1 else None)
        ys = input_values(party, 3, [F127.element(y) for _, y in pairs] if party.index == 3 else None)
        return open_values(party, inner(party, [xs], [ys]))

    for opened in run_local(THREE, program):
        assert F127.signed(opened[0]) == sum(x * y for x, y in pairs)


def test_an_analysis_whose_modulus_is_too_small_is_refused_with_the_bound() -> None:
    ranges = [Range(Decimal("-250"), Decimal("250")), Range(Decimal(0), Decimal(200))]
    FieldCapacity(F127, FixedPoint(16)).check(ranges, rows=1_000_000)  # fits comfortably
    with pytest.raises(FieldError) as raised:
        FieldCapacity(F61, FixedPoint(16)).check(ranges, rows=1_000_000)
    message = str(raised.value)
    assert "61 bits" in message and "1,000,000 rows" in message and "at least" in message
    needed = int(message.split("at least ")[1].split(" bits")[0])
    assert needed > 61
    # ... and the bound it names is enough
    assert needed <= 127
