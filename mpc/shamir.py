"""Shamir secret sharing over a prime field: n shares, any t + 1 reconstruct, any t
learn nothing.

Shares of party i (1-based) are the values at x = i of a random polynomial of degree
t whose constant term is the secret. Reconstruction is Lagrange interpolation at 0
with coefficients computed once per set of parties. With n = 2t + 1 (3 nodes, t = 1)
an opening has one share more than it needs: ``open_checked`` uses it to detect a
single wrong share instead of returning a wrong value.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mpc.field import PrimeField
from mpc.vectors import Vec

RandomBelow = Callable[[int], int]


class SharingError(ValueError):
    """Bad parameters, or shares that do not lie on one polynomial of degree t."""


@dataclass(frozen=True)
class Scheme:
    field: PrimeField
    parties: int
    threshold: int

    def __post_init__(self) -> None:
        if not self.threshold >= 1 or 2 * self.threshold >= self.parties:
            raise SharingError(
                f"an honest majority needs 1 <= t < n/2 (n = {self.parties}, t = {self.threshold})"
            )
        if self.parties >= self.field.modulus:
            raise SharingError("more parties than field elements")

    @property
    def points(self) -> range:
        return range(1, self.parties + 1)

    def share(self, secret: int, random_below: RandomBelow = secrets.randbelow) -> list[int]:
        """Shares of ``secret`` (a field element), one per party, in party order."""
        p = self.field.modulus
        coefficients = [secret % p] + [random_below(p) for _ in range(self.threshold)]
        return [_evaluate(coefficients, x, p) for x in self.points]

    def reconstruct(self, shares: Mapping[int, int]) -> int:
        """The secret from at least t + 1 shares (party number -> share)."""
        if len(shares) < self.threshold + 1:
            raise SharingError(f"{len(shares)} shares cannot open a degree-{self.threshold} sharing")
        chosen = tuple(sorted(shares)[: self.threshold + 1])
        weights = lagrange_at_zero(chosen, self.field.modulus)
        return self.field.inner([weights[x] for x in chosen], [shares[x] for x in chosen])

    def open_checked(self, shares: Mapping[int, int]) -> int:
        """Reconstruct from t + 1 shares and check every other share lies on the same
        polynomial; a wrong share raises instead of yielding a wrong value."""
        value = self.reconstruct(shares)
        chosen = sorted(shares)
        base = chosen[: self.threshold + 1]
        for extra in chosen[self.threshold + 1 :]:
            expected = _interpolate({x: shares[x] for x in base}, extra, self.field.modulus)
            if expected != shares[extra] % self.field.modulus:
                raise SharingError(
                    f"party {extra}'s share is inconsistent with the others: an opening was tampered with"
                )
        return value

    # --- whole vectors (mpc.vectors) -------------------------------------------------------

    def share_vector(self, values: Vec) -> list[Vec]:
        """Shares of every element, one vector per party (x = 1..n): Horner's rule with
        the small public points as additions."""
        ops = self.field.vectors
        n = ops.length(values)
        coefficients = [ops.random(n) for _ in range(self.threshold)]
        if self.threshold == 1:  # f(x) = v + r x: each next point is one addition away
            return ops.line(values, coefficients[0], self.parties)
        shares = []
        for x in self.points:
            acc = coefficients[-1]
            for coefficient in reversed(coefficients[:-1]):
                acc = ops.add(coefficient, ops.scale(acc, x))
            shares.append(ops.add(values, ops.scale(acc, x)))
        return shares

    def combine(self, vectors: Mapping[int, Vec], at: int = 0) -> Vec:
        """The degree-(len - 1) interpolation of the parties' vectors, evaluated at ``at``."""
        ops = self.field.vectors
        weights = lagrange_at(tuple(sorted(vectors)), at, self.field.modulus)
        if at == 0 and tuple(weights) == (1, 2, 3):  # three nodes: 3 v1 - 3 v2 + v3
            return ops.three_point_zero(vectors[1], vectors[2], vectors[3])
        total: Vec | None = None
        for x, weight in weights.items():
            term = ops.scale(vectors[x], weight)
            total = term if total is None else ops.add(total, term)
        assert total is not None
        return total

    def open_checked_vector(self, vectors: Mapping[int, Vec]) -> Vec:
        """Reconstruct every element from t + 1 parties' vectors and check each other
        party's against the same polynomials; a wrong share raises, naming the party
        and the first element it got wrong."""
        chosen = sorted(vectors)
        base = {x: vectors[x] for x in chosen[: self.threshold + 1]}
        value = self.combine(base)
        for extra in chosen[self.threshold + 1 :]:
            expected = self.combine(base, at=extra)
            unequal = np.asarray(expected != vectors[extra])
            differs = unequal.any(axis=0) if unequal.ndim == 2 else unequal
            if differs.any():
                index = int(np.argmax(differs))
                raise SharingError(
                    f"party {extra}'s share of value {index} is inconsistent with the others:"
                    " an opening was tampered with"
                )
        return value


def _evaluate(coefficients: Sequence[int], x: int, p: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % p
    return result


@lru_cache(maxsize=1024)
def lagrange_at(points: tuple[int, ...], at: int, p: int) -> dict[int, int]:
    """Weights w_i with f(at) = sum w_i f(x_i) for any polynomial of degree < len(points)."""
    weights = {}
    for i in points:
        numerator, denominator = 1, 1
        for j in points:
            if j != i:
                numerator = numerator * (at - j) % p
                denominator = denominator * (i - j) % p
        weights[i] = numerator * pow(denominator, -1, p) % p
    return weights


def lagrange_at_zero(points: tuple[int, ...], p: int) -> dict[int, int]:
    return lagrange_at(points, 0, p)


def _interpolate(shares: Mapping[int, int], at: int, p: int) -> int:
    total = 0
    for i, y in shares.items():
        numerator, denominator = 1, 1
        for j in shares:
            if j != i:
                numerator = numerator * (at - j) % p
                denominator = denominator * (i - j) % p
        total = (total + y * numerator * pow(denominator, -1, p)) % p
    return total
