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


def check_capacity(modulus: int, magnitudes: Iterable[Decimal], precision: int, rows: int) -> None:
    """Refuse (``modulus_too_small``) when values could wrap around."""
    needed = required_bits(list(magnitudes), precision, rows)
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
    return max(abs(Decimal(str(spec["min"]))), abs(Decimal(str(spec["max"]))))
