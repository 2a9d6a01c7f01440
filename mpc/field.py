"""The prime field an analysis computes in, and fixed-point numbers inside it.

Every secret-shared value is an element of GF(p), p the analysis' ``modulus``
(default the Mersenne prime 2^127 - 1). Signed integers use the centred
representation: x in [0, p) stands for x when x <= (p - 1) / 2, else x - p. Real
numbers are fixed-point: v is encoded as round(v * 2^f) with f =
``fixedPointPrecision`` fractional bits.

Nothing in a field warns about wrap-around: a sum that leaves (-p/2, p/2) silently
becomes another number; ``FieldCapacity`` applies the domain's capacity rule
(``domain.field_capacity``) before anything is computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Final

import gmpy2

from domain.errors import DomainError
from domain.field_capacity import check_capacity
from mpc.vectors import VectorOps, ops_for

MERSENNE_127: Final = 2**127 - 1


class FieldError(ValueError):
    """A value or a modulus the field cannot represent faithfully."""


@dataclass(frozen=True)
class PrimeField:
    modulus: int

    def __post_init__(self) -> None:
        if self.modulus < 3 or not gmpy2.is_prime(self.modulus, 50):
            raise FieldError(f"{self.modulus} is not an odd prime")

    @property
    def vectors(self) -> VectorOps:
        """Vector arithmetic in this field (numpy limbs for the Mersenne primes)."""
        return ops_for(self.modulus)

    @property
    def bits(self) -> int:
        return int(self.modulus).bit_length()

    @property
    def half(self) -> int:
        """Largest magnitude a signed value may have: (p - 1) / 2."""
        return (self.modulus - 1) // 2

    # --- elements --------------------------------------------------------------------

    def element(self, value: int) -> int:
        """A signed integer as a field element; refused when it does not fit."""
        if not -self.half <= value <= self.half:
            raise FieldError(f"{value} does not fit a field of {self.bits} bits (|x| <= (p-1)/2)")
        return value % self.modulus

    def signed(self, element: int) -> int:
        """The signed integer a field element stands for (centred representation)."""
        element %= self.modulus
        return element - self.modulus if element > self.half else element

    def add(self, a: int, b: int) -> int:
        return int(gmpy2.f_mod(gmpy2.mpz(a) + b, self.modulus))

    def sub(self, a: int, b: int) -> int:
        return int(gmpy2.f_mod(gmpy2.mpz(a) - b, self.modulus))

    def mul(self, a: int, b: int) -> int:
        return int(gmpy2.f_mod(gmpy2.mpz(a) * b, self.modulus))

    def neg(self, a: int) -> int:
        return (-a) % self.modulus

    def inverse(self, a: int) -> int:
        if a % self.modulus == 0:
            raise ZeroDivisionError("0 has no inverse")
        return int(gmpy2.invert(a, self.modulus))

    def inner(self, xs: Sequence[int], ys: Sequence[int]) -> int:
        """sum(x * y) mod p with one reduction: big integers make the sum exact first."""
        total = gmpy2.mpz(0)
        for x, y in zip(xs, ys, strict=True):
            total += gmpy2.mpz(x) * y
        return int(gmpy2.f_mod(total, self.modulus))


@dataclass(frozen=True)
class FixedPoint:
    """Reals as integers scaled by 2^precision (round half to even)."""

    precision: int

    def __post_init__(self) -> None:
        if not 0 <= self.precision <= 64:
            raise FieldError("fixed-point precision is 0 to 64 fractional bits")

    @property
    def scale(self) -> int:
        return 1 << self.precision

    def encode(self, value: Decimal | int | str | Fraction) -> int:
        """round(value * 2^precision), ties to even (Fraction keeps it exact)."""
        exact = Fraction(Decimal(value)) if isinstance(value, str) else Fraction(value)
        return round(exact * self.scale)

    def decode(self, scaled: int, extra_bits: int = 0) -> Fraction:
        """The exact rational a scaled integer stands for (``extra_bits`` more
        fractional bits, e.g. after a product before truncation)."""
        return Fraction(scaled, 1 << (self.precision + extra_bits))

    @property
    def resolution(self) -> Fraction:
        """The encoding error bound of one value: half a unit in the last place."""
        return Fraction(1, 2 * self.scale)


@dataclass(frozen=True)
class Range:
    """A variable's allowed range, as its datasource declares it."""

    low: Decimal
    high: Decimal

    @property
    def magnitude(self) -> Decimal:
        return max(abs(self.low), abs(self.high))


@dataclass(frozen=True)
class FieldCapacity:
    """Whether a field, a precision, value ranges and a row count leave room for the
    largest value a calculation builds (the rule is the domain's, applied when an
    analysis is defined; the engine checks it again before computing)."""

    field: PrimeField
    fixed: FixedPoint

    def check(self, ranges: Iterable[Range], rows: int) -> None:
        """Raise FieldError, naming the bound, if wrap-around is possible."""
        try:
            check_capacity(self.field.modulus, [r.magnitude for r in ranges], self.fixed.precision, rows)
        except DomainError as exc:
            raise FieldError(exc.message) from exc
