"""Vector arithmetic on numpy equals Python integers, for every representation,
including the values next to the modulus and the limb boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.vectors import P61, P127, Generic, Mersenne61, Mersenne127, VectorOps

OPS: list[VectorOps] = [Mersenne127(), Mersenne61(), Generic(2**89 - 1), Generic(1_000_003)]


def _edges(p: int) -> list[int]:
    near = [0, 1, 2, p - 1, p - 2, p // 2, (p + 1) // 2]
    limbs = [(1 << k) - 1 for k in (32, 63, 64, 96)] + [1 << k for k in (32, 63, 64, 96)]
    return [v % p for v in near + limbs]


def elements(p: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.one_of(st.integers(0, p - 1), st.sampled_from(_edges(p))), min_size=1, max_size=40)


@pytest.mark.parametrize("ops", OPS, ids=lambda o: f"{type(o).__name__}-{o.modulus.bit_length()}")
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_arithmetic_equals_python_integers(ops: VectorOps, data: st.DataObject) -> None:
    p = ops.modulus
    xs = data.draw(elements(p))
    ys = data.draw(st.lists(st.integers(0, p - 1), min_size=len(xs), max_size=len(xs)))
    c = data.draw(
        st.one_of(st.integers(0, 20), st.integers(0, p - 1), st.sampled_from([p - 1, p - 3, p - 8]))
    )
    a, b = ops.of(xs), ops.of(ys)
    assert ops.ints(a) == xs
    assert ops.ints(ops.add(a, b)) == [(x + y) % p for x, y in zip(xs, ys, strict=True)]
    assert ops.ints(ops.sub(a, b)) == [(x - y) % p for x, y in zip(xs, ys, strict=True)]
    assert ops.ints(ops.neg(a)) == [(-x) % p for x in xs]
    assert ops.ints(ops.three_point_zero(a, b, a)) == [
        (4 * x - 3 * y) % p for x, y in zip(xs, ys, strict=True)
    ]
    assert ops.ints(ops.line(a, b, 3)[2]) == [(x + 3 * y) % p for x, y in zip(xs, ys, strict=True)]
    assert ops.ints(ops.mul(a, b)) == [x * y % p for x, y in zip(xs, ys, strict=True)]
    assert ops.ints(ops.mul(a, a)) == [x * x % p for x in xs]
    assert ops.ints(ops.scale(a, c)) == [x * c % p for x in xs]
    assert ops.total(a) == sum(xs) % p
    assert ops.ints(ops.three_point_zero(a, b, a)) == [
        (4 * x - 3 * y) % p for x, y in zip(xs, ys, strict=True)
    ]
    shares = ops.line(a, b, 3)
    assert [ops.ints(v) for v in shares] == [
        [(x + k * y) % p for x, y in zip(xs, ys, strict=True)] for k in (1, 2, 3)
    ]
    assert ops.ints(ops.loads(ops.dumps(a))) == xs
    assert ops.ints(ops.concat([a, b])) == xs + ys
    assert ops.ints(ops.take(ops.concat([a, b]), 1, len(xs) + 1)) == (xs + ys)[1 : len(xs) + 1]


def test_the_largest_products_fold_exactly() -> None:
    for ops in (Mersenne127(), Mersenne61()):
        p = ops.modulus
        xs = [p - 1, p - 1, (1 << (p.bit_length() - 1)) - 1, p - 2]
        ys = [p - 1, 2, p - 1, p - 2]
        assert ops.ints(ops.mul(ops.of(xs), ops.of(ys))) == [x * y % p for x, y in zip(xs, ys, strict=True)]


@pytest.mark.parametrize("ops", OPS, ids=lambda o: f"{type(o).__name__}-{o.modulus.bit_length()}")
def test_random_elements_are_in_range_and_masks_below_their_bound(ops: VectorOps) -> None:
    values = ops.ints(ops.random(2000))
    assert all(0 <= v < ops.modulus for v in values) and len(set(values)) > 1990
    masks = ops.ints(ops.random_below_power(13, 2000))
    assert all(0 <= v < 2**13 for v in masks) and max(masks) > 2**12
    assert set(ops.ints(ops.random_bits(500))) == {0, 1}


def test_a_received_vector_with_an_element_beyond_the_modulus_is_refused() -> None:
    for ops, raw in [
        (Mersenne127(), (P127).to_bytes(16, "little")),
        (Mersenne61(), (P61).to_bytes(8, "little")),
        (Generic(1_000_003), (1_000_003).to_bytes(3, "little")),
    ]:
        with pytest.raises(ValueError, match="not below the modulus"):
            ops.loads(raw)


@pytest.mark.parametrize("ops", OPS[:2], ids=lambda o: type(o).__name__)
def test_long_vectors_are_computed_piece_by_piece_with_the_same_results(ops: VectorOps) -> None:
    from mpc.vectors import CHUNK

    n = 2 * CHUNK + 123
    a, b = ops.random(n), ops.random(n)
    xs, ys = ops.ints(a), ops.ints(b)
    p = ops.modulus
    assert ops.ints(ops.mul(a, b)) == [x * y % p for x, y in zip(xs, ys, strict=True)]
    assert ops.ints(ops.add(a, b)) == [(x + y) % p for x, y in zip(xs, ys, strict=True)]
    assert ops.ints(ops.neg(a)) == [(-x) % p for x in xs]
    assert ops.ints(ops.three_point_zero(a, b, a)) == [
        (4 * x - 3 * y) % p for x, y in zip(xs, ys, strict=True)
    ]
    assert ops.ints(ops.line(a, b, 3)[2]) == [(x + 3 * y) % p for x, y in zip(xs, ys, strict=True)]
