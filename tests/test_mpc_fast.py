"""The numpy fast path over 2^61 - 1 gives exactly what big integers give."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import fast

P = fast.P61
elements = st.lists(
    st.one_of(
        st.integers(0, P - 1), st.sampled_from([0, 1, P - 1, P - 2, 2**32 - 1, 2**32, 2**60, 2**61 - 2])
    ),
    min_size=1,
    max_size=64,
)


@given(elements, elements)
def test_modular_arithmetic_matches_big_integers(xs: list[int], ys: list[int]) -> None:
    n = min(len(xs), len(ys))
    a = np.array(xs[:n], dtype=np.uint64)
    b = np.array(ys[:n], dtype=np.uint64)
    assert fast.mul(a, b).tolist() == [x * y % P for x, y in zip(xs[:n], ys[:n], strict=True)]
    assert fast.add(a, b).tolist() == [(x + y) % P for x, y in zip(xs[:n], ys[:n], strict=True)]
    assert fast.sub(a, b).tolist() == [(x - y) % P for x, y in zip(xs[:n], ys[:n], strict=True)]


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=64))
def test_reduce_takes_any_64_bit_value(values: list[int]) -> None:
    assert fast.reduce(np.array(values, dtype=np.uint64)).tolist() == [v % P for v in values]


@given(st.lists(st.integers(-(2**29), 2**29), min_size=1, max_size=200), st.integers(0, 2**32))
@settings(max_examples=40)
def test_sharing_multiplication_and_reconstruction(values: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    secrets = fast.encode(np.array(values, dtype=np.int64))
    shares = fast.share(secrets, parties=3, threshold=1, rng=rng)
    for pair in ([1, 2], [1, 3], [2, 3]):
        opened = fast.reconstruct({x: shares[x - 1] for x in pair})
        assert fast.decode(opened).tolist() == values
    squares = fast.multiply(shares, shares, threshold=1, rng=rng)
    assert fast.decode(fast.reconstruct({1: squares[0], 3: squares[2]})).tolist() == [v * v for v in values]
