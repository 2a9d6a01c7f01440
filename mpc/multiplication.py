"""Multiplication of shared values: local products, then degree reduction by resharing.

The product of two degree-t sharings is a degree-2t sharing of the product; with
n >= 2t + 1 parties it is still determined, but one more product would not be. Each
party therefore reshares its local product with a fresh degree-t polynomial, and every
party combines the sub-shares it receives with the Lagrange weights at 0 of all n
points (the GRR/BGW degree reduction). An inner product costs the same single
resharing: parties sum their local products first (``inner_product``), which is why
second-order statistics cost almost no more than sums.

These functions compute what every party holds after the protocol, for all parties
at once; the node engine runs the same steps with the sub-shares sent over the wire.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from mpc.shamir import RandomBelow, Scheme, lagrange_at_zero


def reduce_degree(
    scheme: Scheme, local: Sequence[int], random_below: RandomBelow = secrets.randbelow
) -> list[int]:
    """From each party's share of a degree-2t sharing, degree-t shares of the same value."""
    if scheme.parties < 2 * scheme.threshold + 1:  # pragma: no cover - Scheme enforces t < n/2
        raise ValueError("degree reduction needs n >= 2t + 1")
    p = scheme.field.modulus
    weights = lagrange_at_zero(tuple(scheme.points), p)
    sub_shares = [scheme.share(value, random_below) for value in local]  # party i -> shares for all
    return [
        sum(weights[i + 1] * sub_shares[i][j] for i in range(scheme.parties)) % p
        for j in range(scheme.parties)
    ]


def multiply(
    scheme: Scheme, a: Sequence[int], b: Sequence[int], random_below: RandomBelow = secrets.randbelow
) -> list[int]:
    """Shares of a * b from shares of a and of b (one resharing round)."""
    p = scheme.field.modulus
    return reduce_degree(scheme, [x * y % p for x, y in zip(a, b, strict=True)], random_below)


def inner_product(
    scheme: Scheme,
    xs: Sequence[Sequence[int]],
    ys: Sequence[Sequence[int]],
    random_below: RandomBelow = secrets.randbelow,
) -> list[int]:
    """Shares of sum_k x_k * y_k from per-party share vectors (``xs[party][k]``), with
    a single resharing for the whole sum."""
    local = [scheme.field.inner(x, y) for x, y in zip(xs, ys, strict=True)]
    return reduce_degree(scheme, local, random_below)
