"""Evaluating a calculation over secret-shared columns, from one party's point of view.

The filter becomes a shared 0/1 mask (comparisons, and products for ``&``); every
function then needs only sums of masked values and products, revealed as aggregates:
counts, sums, sums of squares and cross-products, and counts per histogram bin.
Division, square roots and solving the normal equations of a regression happen on
those revealed aggregates, never per row. ``min``/``max`` take a tournament of
secure comparisons and reveal only the extreme.

Values are fixed-point with ``precision`` fractional bits; a missing value has its
presence flag at 0 and makes any comparison on it false.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from domain.calculations import AllOf, AnyOf, Calculation, Compare, Constant, Filter, Function, Not, Variable
from mpc.field import FixedPoint
from mpc.protocols import inner, less_than_zero, multiply, open_values
from mpc.runtime import Party

PRESENT = "__present"


@dataclass(frozen=True)
class Ranges:
    """What comparisons need to know: the declared range of each variable."""

    low: Mapping[str, Fraction]
    high: Mapping[str, Fraction]

    def bits(self, fixed: FixedPoint) -> int:
        """Bits of a difference of two values (sign included), for comparisons."""
        magnitude = max([abs(v) for v in (*self.low.values(), *self.high.values())] or [Fraction(1)])
        return int(2 * magnitude * fixed.scale).bit_length() + 2


@dataclass
class SharedTable:
    """One party's shares of a merged dataset: value columns and presence flags."""

    columns: Mapping[str, Sequence[int]]
    rows: int


def _ones(party: Party, n: int) -> list[int]:
    return [1] * n  # a public constant is its own share under Shamir (f(x) = c)


def _not(party: Party, bits: Sequence[int]) -> list[int]:
    p = party.scheme.field.modulus
    return [(1 - b) % p for b in bits]


def _operand(party: Party, table: SharedTable, operand: Variable | Constant, fixed: FixedPoint) -> list[int]:
    if isinstance(operand, Variable):
        return list(table.columns[operand.name])
    return [party.scheme.field.element(fixed.encode(operand.value))] * table.rows


def _presence(table: SharedTable, compare: Compare) -> list[Sequence[int]]:
    return [table.columns[o.name + PRESENT] for o in (compare.left, compare.right) if isinstance(o, Variable)]


def mask(party: Party, tree: Filter, table: SharedTable, fixed: FixedPoint, bits: int) -> list[int]:
    """Shares of 1 for rows the filter keeps, 0 for the others."""
    p = party.scheme.field.modulus
    if isinstance(tree, Compare):
        a, b = _operand(party, table, tree.left, fixed), _operand(party, table, tree.right, fixed)
        a_minus_b = [(x - y) % p for x, y in zip(a, b, strict=True)]
        b_minus_a = [(y - x) % p for x, y in zip(a, b, strict=True)]
        if tree.op == "<":
            result = less_than_zero(party, a_minus_b, bits)
        elif tree.op == ">":
            result = less_than_zero(party, b_minus_a, bits)
        elif tree.op == "<=":
            result = _not(party, less_than_zero(party, b_minus_a, bits))
        elif tree.op == ">=":
            result = _not(party, less_than_zero(party, a_minus_b, bits))
        else:
            below = less_than_zero(party, a_minus_b, bits)
            above = less_than_zero(party, b_minus_a, bits)
            equal = multiply(party, _not(party, below), _not(party, above))
            result = equal if tree.op == "==" else _not(party, equal)
        for present in _presence(table, tree):
            result = multiply(party, result, present)
        return result
    if isinstance(tree, Not):  # a comparison on a missing value is false, so its negation is true
        return _not(party, mask(party, tree.inner, table, fixed, bits))
    parts = [mask(party, part, table, fixed, bits) for part in tree.parts]
    combined = parts[0]
    for part in parts[1:]:
        both = multiply(party, combined, part)
        combined = (
            both
            if isinstance(tree, AllOf)
            else [(x + y - z) % p for x, y, z in zip(combined, part, both, strict=True)]
        )
    assert isinstance(tree, AllOf | AnyOf)
    return combined


def _reveal(party: Party, shares: Sequence[int]) -> list[int]:
    field = party.scheme.field
    return [field.signed(v) for v in open_values(party, list(shares))]


def evaluate(
    party: Party,
    calculation: Calculation,
    table: SharedTable,
    *,
    fixed: FixedPoint,
    ranges: Ranges,
    min_cell: int = 1,
) -> list[dict[str, Any]]:
    """Every function of the calculation, as revealed aggregates (same for all parties).

    A function over fewer than ``min_cell`` rows (a histogram bin, for histograms) is
    suppressed: only the bit "at least min_cell" is opened, never the count."""
    bits = ranges.bits(fixed)
    keep = (
        mask(party, calculation.filter, table, fixed, bits)
        if calculation.filter is not None
        else _ones(party, table.rows)
    )
    results = []
    for function in calculation.functions:
        rows = _rows_with(party, keep, table, function.variables)
        large = function.name == "histogram" or _large_enough(party, [rows], min_cell, table.rows)[0]
        if min_cell > 1 and not large:
            results.append({"function": function.text, "suppressed": f"fewer than {min_cell} records"})
            continue
        results.append(_function(party, function, rows, table, fixed, ranges, bits, min_cell))
    return results


def _large_enough(party: Party, masks: Sequence[Sequence[int]], min_cell: int, rows: int) -> list[bool]:
    """Opens only [sum(mask) >= min_cell] for each mask (the count stays shared)."""
    if min_cell <= 1:
        return [True] * len(masks)
    p = party.scheme.field.modulus
    counts = inner(party, [list(m) for m in masks], [[1] * rows] * len(masks))
    below = less_than_zero(party, [(c - min_cell) % p for c in counts], rows.bit_length() + 3)
    return [bit == 0 for bit in open_values(party, below)]


def _rows_with(party: Party, keep: Sequence[int], table: SharedTable, names: Sequence[str]) -> list[int]:
    result = list(keep)
    for name in names:
        result = multiply(party, result, table.columns[name + PRESENT])
    return result


def _function(
    party: Party,
    function: Function,
    rows: Sequence[int],
    table: SharedTable,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
    min_cell: int,
) -> dict[str, Any]:
    name, names = function.name, function.variables
    if name == "count":
        (count,) = _reveal(party, inner(party, [rows], [[1] * table.rows]))
        return {"function": function.text, "count": count}
    if name == "histogram":
        return {
            "function": function.text,
            **_histogram(party, function, rows, table, fixed, ranges, bits, min_cell),
        }
    if name in ("min", "max"):
        return {
            "function": function.text,
            "value": _extreme(party, name, rows, table, names[0], fixed, ranges, bits),
        }
    columns = [table.columns[n] for n in names]
    masked = [multiply(party, rows, column) for column in columns]  # m * x, per variable
    ones = [1] * table.rows
    sums = inner(party, [rows, *masked], [ones] * (1 + len(columns)))
    squares = inner(
        party,
        [masked[i] for i in range(len(columns)) for _ in range(i, len(columns))],
        [columns[j] for i in range(len(columns)) for j in range(i, len(columns))],
    )
    revealed = _reveal(party, [*sums, *squares])
    count, totals = revealed[0], [fixed.decode(v) for v in revealed[1 : 1 + len(columns)]]
    cross = [fixed.decode(v, extra_bits=fixed.precision) for v in revealed[1 + len(columns) :]]
    return {"function": function.text, **_from_moments(name, count, totals, cross, len(columns))}


def _from_moments(name: str, n: int, sums: list[Fraction], cross: list[Fraction], k: int) -> dict[str, Any]:
    """Statistics from n, the sums and the upper triangle of the cross-products."""

    def sxy(i: int, j: int) -> Fraction:
        a, b = min(i, j), max(i, j)
        index = a * k - a * (a - 1) // 2 + (b - a)
        return cross[index]

    result: dict[str, Any] = {"count": n}
    if n == 0:
        return {**result, "value": None}
    mean = [s / n for s in sums]
    if name == "sum":
        return {**result, "value": sums[0]}
    if name == "mean":
        return {**result, "value": mean[0]}
    if n < 2:
        return {**result, "value": None}
    cov = [[(sxy(i, j) - n * mean[i] * mean[j]) / (n - 1) for j in range(k)] for i in range(k)]
    if name == "variance":
        return {**result, "value": cov[0][0]}
    if name == "stddev":
        return {**result, "value": float(cov[0][0]) ** 0.5}
    if name == "correlation":
        return {**result, "value": float(cov[0][1]) / (float(cov[0][0]) * float(cov[1][1])) ** 0.5}
    # linear_regression: y ~ x1 + ... + xm, normal equations on centred moments
    import numpy as np

    xs = np.array([[float(cov[i][j]) for j in range(1, k)] for i in range(1, k)])
    xy = np.array([float(cov[i][0]) for i in range(1, k)])
    slopes = np.linalg.solve(xs, xy)
    intercept = float(mean[0]) - float(sum(b * float(mean[i + 1]) for i, b in enumerate(slopes)))
    return {**result, "intercept": intercept, "slopes": [float(b) for b in slopes]}


def _histogram(
    party: Party,
    function: Function,
    rows: Sequence[int],
    table: SharedTable,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
    min_cell: int,
) -> dict[str, Any]:
    p = party.scheme.field.modulus
    name = function.variables[0]
    bins = function.bins or 1
    low, high = ranges.low[name], ranges.high[name]
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    column = table.columns[name]
    at_least = [list(rows)]  # x >= edge 0: every kept row (values lie in their range)
    for edge in edges[1:-1]:
        encoded = party.scheme.field.element(fixed.encode(edge))
        below = less_than_zero(party, [(x - encoded) % p for x in column], bits)
        at_least.append(multiply(party, rows, _not(party, below)))
    at_least.append([0] * table.rows)
    per_bin = [[(a - b) % p for a, b in zip(at_least[i], at_least[i + 1], strict=True)] for i in range(bins)]
    if min_cell > 1:  # small bins are suppressed: their counts are never opened
        allowed = _large_enough(party, per_bin, min_cell, table.rows)
        shown = [b for b, ok in zip(per_bin, allowed, strict=True) if ok]
        opened = (
            iter(_reveal(party, inner(party, shown, [[1] * table.rows] * len(shown)))) if shown else iter([])
        )
        counts: list[int | None] = [next(opened) if ok else None for ok in allowed]
    else:
        counts = list(_reveal(party, inner(party, per_bin, [[1] * table.rows] * bins)))
    return {"edges": [str(e) for e in edges], "counts": counts}


def _extreme(
    party: Party,
    name: str,
    rows: Sequence[int],
    table: SharedTable,
    variable: str,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
) -> Fraction | None:
    """min or max over kept rows: others are replaced by a value beyond the range."""
    p = party.scheme.field.modulus
    field = party.scheme.field
    beyond = field.element(
        fixed.encode(ranges.high[variable] + 1 if name == "min" else ranges.low[variable] - 1)
    )
    column = table.columns[variable]
    kept = multiply(party, rows, column)
    others = [(beyond * (1 - m)) % p for m in rows]
    values = [(a + b) % p for a, b in zip(kept, others, strict=True)]
    (any_kept,) = _reveal(party, inner(party, [list(rows)], [[1] * table.rows]))
    if not any_kept:
        return None
    while len(values) > 1:
        pairs = len(values) // 2
        a, b = values[0 : 2 * pairs : 2], values[1 : 2 * pairs : 2]
        a_minus_b = [(x - y) % p for x, y in zip(a, b, strict=True)]
        a_smaller = less_than_zero(party, a_minus_b, bits + 1)
        choose_a = a_smaller if name == "min" else _not(party, a_smaller)
        picked = multiply(party, choose_a, a_minus_b)
        winners = [(y + d) % p for y, d in zip(b, picked, strict=True)]
        values = winners + values[2 * pairs :]
    (extreme,) = _reveal(party, values)
    return fixed.decode(extreme)
