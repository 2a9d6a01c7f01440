"""The vectorised fast path: Shamir sharing over the Mersenne prime 2^61 - 1 with numpy.

Why this prime: every element fits a uint64, and reduction modulo 2^61 - 1 needs only
shifts and masks (2^61 = 1). A product of two elements has up to 122 bits, so it is
computed from 32-bit halves whose partial products each fit 64 bits, then folded back
with the same identity. Whole columns of a dataset are shared, multiplied and reduced
at once, which is what makes per-row work affordable in Python.

Used where values and sums stay far below 2^60 (counts, sums of small integers, and
fixed-point values with few fractional bits); everything else takes the big-integer
path of ``mpc.field``. Results are identical to the big-integer path on the same
inputs (tested).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

P61: Final = (1 << 61) - 1
_P = np.uint64(P61)
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK61 = np.uint64(P61)

Vector = npt.NDArray[np.uint64]


def reduce(x: Vector) -> Vector:
    """x mod p for any uint64 x (two folds of 2^61 = 1, then one conditional subtract)."""
    x = (x & _MASK61) + (x >> np.uint64(61))
    x = (x & _MASK61) + (x >> np.uint64(61))
    return np.where(x >= _P, x - _P, x)


def add(a: Vector, b: Vector) -> Vector:
    return reduce(a + b)  # both < 2^61: the sum fits 62 bits


def sub(a: Vector, b: Vector) -> Vector:
    return reduce(a + (_P - b))


def mul(a: Vector, b: Vector) -> Vector:
    """a * b mod p for a, b < p, exactly.

    With a = ah * 2^32 + al and b = bh * 2^32 + bl (ah, bh < 2^29):
    a * b = ah*bh * 2^64 + (ah*bl + al*bh) * 2^32 + al*bl, and 2^64 = 8, 2^61 = 1 mod p.
    """
    ah, al = a >> np.uint64(32), a & _MASK32
    bh, bl = b >> np.uint64(32), b & _MASK32
    high = ah * bh  # < 2^58
    middle = ah * bl + al * bh  # < 2^62
    low = al * bl  # < 2^64
    # middle * 2^32 = (middle >> 29) * 2^61 + (middle & (2^29 - 1)) * 2^32 = (middle >> 29) + (...) << 32
    middle_part = (middle >> np.uint64(29)) + ((middle & np.uint64((1 << 29) - 1)) << np.uint64(32))
    total = reduce(high << np.uint64(3))  # 2^64 = 2^3 (mod p)
    total = reduce(total + reduce(middle_part))
    return reduce(total + reduce(low))


def encode(values: npt.NDArray[np.int64]) -> Vector:
    """Signed integers (|v| < 2^60) as field elements."""
    if values.size and int(np.max(np.abs(values))) >= 1 << 60:
        raise ValueError("the fast path takes values below 2^60 in magnitude")
    return np.where(values < 0, _P - (-values).astype(np.uint64), values.astype(np.uint64)).astype(np.uint64)


def decode(elements: Vector) -> npt.NDArray[np.int64]:
    """Field elements back to signed integers (centred representation)."""
    half = np.uint64(P61 >> 1)
    return np.where(elements > half, -(_P - elements).astype(np.int64), elements.astype(np.int64))


def share(secrets: Vector, parties: int, threshold: int, rng: np.random.Generator) -> list[Vector]:
    """Shares of each element of ``secrets``, one vector per party (x = 1..n)."""
    coefficients = [rng.integers(0, P61, size=secrets.shape, dtype=np.uint64) for _ in range(threshold)]
    shares = []
    for x in range(1, parties + 1):
        value = np.zeros_like(secrets)
        point = np.full_like(secrets, x)
        for coefficient in reversed(coefficients):
            value = add(mul(value, point), coefficient)
        shares.append(add(mul(value, point), secrets))
    return shares


def lagrange_weights(points: list[int]) -> list[int]:
    weights = []
    for i in points:
        numerator, denominator = 1, 1
        for j in points:
            if j != i:
                numerator = numerator * (-j) % P61
                denominator = denominator * (i - j) % P61
        weights.append(numerator * pow(denominator, -1, P61) % P61)
    return weights


def reconstruct(shares: dict[int, Vector]) -> Vector:
    """Secrets from the shares of any t + 1 (or more) parties, party -> vector."""
    points = sorted(shares)
    weights = lagrange_weights(points)
    total = np.zeros_like(shares[points[0]])
    for point, weight in zip(points, weights, strict=True):
        total = add(total, mul(shares[point], np.full_like(total, weight)))
    return total


def multiply(a: list[Vector], b: list[Vector], threshold: int, rng: np.random.Generator) -> list[Vector]:
    """Shares of a * b, element-wise, by local products and one degree-reduction resharing."""
    parties = len(a)
    weights = lagrange_weights(list(range(1, parties + 1)))
    sub_shares = [share(mul(x, y), parties, threshold, rng) for x, y in zip(a, b, strict=True)]
    result = []
    for j in range(parties):
        total = np.zeros_like(a[0])
        for i in range(parties):
            total = add(total, mul(sub_shares[i][j], np.full_like(total, weights[i])))
        result.append(total)
    return result
