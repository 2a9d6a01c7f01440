"""Will an analysis' numbers fit its field? Checked when the analysis is defined.

MPC arithmetic is modular: a value that leaves (-p/2, p/2) silently wraps around into
another number. The largest value a calculation builds is a sum, over all rows, of a
product of two fixed-point values (before truncation), and probabilistic truncation
adds a statistical-security margin on top. An analysis whose modulus cannot hold that
is refused, naming the bound, instead of computing a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal
from typing import Final

from domain.errors import DomainError

#: Statistical security of probabilistic truncation: masks hide values to 2^-40.
TRUNCATION_SECURITY_BITS: Final = 40
#: Rows assumed when no datasource of the view has uploaded its shares yet.
DEFAULT_MAX_ROWS: Final = 10_000_000


def largest_intermediate(magnitudes: Iterable[Decimal], precision: int, rows: int) -> int:
    """rows * (max |x| * 2^precision + 1)^2: a sum of products before truncation."""
    magnitude = max(magnitudes, default=Decimal(1))
    one = int((magnitude * (1 << precision)).to_integral_value(rounding=ROUND_CEILING)) + 1
    return rows * one * one


def required_bits(magnitudes: Iterable[Decimal], precision: int, rows: int) -> int:
    """Bits the modulus needs (sign bit and truncation margin included)."""
    return largest_intermediate(magnitudes, precision, rows).bit_length() + TRUNCATION_SECURITY_BITS + 2


#: Largest decimal exponent of a magnitude whose exact bound is always computed (on
#: numbers of a few thousand bits at most: microseconds).
_EXACT_EXPONENT: Final = 1000


def _bits_at_least(magnitudes: list[Decimal], precision: int, rows: int) -> int:
    """A lower bound of ``required_bits`` for a magnitude of decimal exponent ``a`` over
    ``_EXACT_EXPONENT`` (else 0): ``M >= 10^a > 2^(3a)``, so ``rows * (M * 2^f + 1)^2 >
    2^(2(3a + f))`` for one row or more. A range of 40 characters such as ``1e999990``
    made the exact bound a product of numbers of millions of digits, a minute of the
    sequencer's thread per transaction (and ``9e999999`` overflowed ``Decimal``,
    failing every transaction of its batch)."""
    magnitude = max(magnitudes, default=Decimal(1))
    if rows < 1 or not magnitude or magnitude.adjusted() <= _EXACT_EXPONENT:
        return 0
    return 2 * (3 * magnitude.adjusted() + precision) + TRUNCATION_SECURITY_BITS + 2


def check_capacity(modulus: int, magnitudes: Iterable[Decimal], precision: int, rows: int) -> None:
    """Refuse (``modulus_too_small``) when values could wrap around. The exact bound is
    not computed for an astronomic magnitude that the modulus cannot hold anyway (its
    lower bound does not fit): the decision is the same, the work bounded."""
    listed = list(magnitudes)
    needed = _bits_at_least(listed, precision, rows)
    if modulus.bit_length() >= needed:
        needed = required_bits(listed, precision, rows)
    if modulus.bit_length() < needed:
        raise DomainError(
            "modulus_too_small",
            f"the modulus ({modulus.bit_length()} bits) is too small: sums of products over {rows:,} rows"
            f" with {precision} fractional bits need a modulus of at least {needed} bits (including"
            f" {TRUNCATION_SECURITY_BITS} bits of truncation margin); use a larger modulus, a lower"
            " fixedPointPrecision or narrower variable ranges",
        )


def variable_magnitude(spec: dict[str, object]) -> Decimal:
    """The largest absolute value a data view variable can take (categories are coded
    0..k-1, booleans 0/1)."""
    kind = spec.get("type")
    if kind == "boolean":
        return Decimal(1)
    if kind == "category":
        categories = spec.get("categories") or []
        return Decimal(len(categories) if isinstance(categories, list) else 1)
    return max(_abs(Decimal(str(spec["min"]))), _abs(Decimal(str(spec["max"]))))


def _abs(number: Decimal) -> Decimal:
    """``abs``, as analyses were always decided (rounded to the context's 28 digits), but
    past ``_EXACT_EXPONENT`` the exact ``copy_abs``: ``abs`` overflowed past the context's
    largest exponent (1e1000000, 9 characters), failing every transaction of the batch,
    where such a magnitude is refused from its exponent alone (``_bits_at_least``)."""
    return abs(number) if number.adjusted() <= _EXACT_EXPONENT else number.copy_abs()
