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


@dataclass(frozen=True)
class Output:
    """One function's result as this party holds it: shares of its aggregates (nobody
    has seen them), and the public layout that says how to finish them.

    ``kind`` is ``moments`` (count, sums, upper triangle of cross-products),
    ``histogram`` (a count per shown bin) or ``extreme`` (one value); a suppressed
    function has no quantities."""

    function: str
    name: str
    kind: str
    quantities: list[int]
    layout: dict[str, Any]
    suppressed: str | None = None

    def public(self) -> dict[str, Any]:
        """Everything but the shares: what the analyst needs to finish the result."""
        return {
            "function": self.function,
            "name": self.name,
            "kind": self.kind,
            "layout": self.layout,
            "suppressed": self.suppressed,
        }


def evaluate(
    party: Party,
    calculation: Calculation,
    table: SharedTable,
    *,
    fixed: FixedPoint,
    ranges: Ranges,
    min_cell: int = 1,
    release_extremes: bool = True,
) -> list[dict[str, Any]]:
    """Every function of the calculation, opened to all parties and finished (tests and
    in-process use; the node engine keeps the aggregates shared, see ``aggregate``)."""
    outputs = aggregate(
        party, calculation, table, fixed=fixed, ranges=ranges, min_cell=min_cell,
        release_extremes=release_extremes,
    )  # fmt: skip
    flat = [q for o in outputs for q in o.quantities]
    field = party.scheme.field
    opened = iter([field.signed(v) for v in open_values(party, flat)] if flat else [])
    return [finish(o.public(), [next(opened) for _ in o.quantities], fixed) for o in outputs]


def aggregate(
    party: Party,
    calculation: Calculation,
    table: SharedTable,
    *,
    fixed: FixedPoint,
    ranges: Ranges,
    min_cell: int = 1,
    release_extremes: bool = True,
) -> list[Output]:
    """Shares of every function's aggregates. A function over fewer than ``min_cell``
    rows (a histogram bin, for histograms) is suppressed: only the bit "at least
    min_cell" is opened, never the count. ``min``/``max`` are suppressed unless the
    nodes' policies release extremes."""
    bits = ranges.bits(fixed)
    keep = (
        mask(party, calculation.filter, table, fixed, bits)
        if calculation.filter is not None
        else _ones(party, table.rows)
    )
    outputs = []
    for function in calculation.functions:
        if function.name in ("min", "max") and not release_extremes:
            refused = "the nodes' policies do not release min/max"
            outputs.append(Output(function.text, function.name, "extreme", [], {}, refused))
            continue
        rows = _rows_with(party, keep, table, function.variables)
        large = function.name == "histogram" or _large_enough(party, [rows], min_cell, table.rows)[0]
        if min_cell > 1 and not large:
            small = f"fewer than {min_cell} records"
            outputs.append(Output(function.text, function.name, "moments", [], {}, small))
            continue
        outputs.append(_function(party, function, rows, table, fixed, ranges, bits, min_cell))
    return outputs


def finish(output: Mapping[str, Any], values: Sequence[int], fixed: FixedPoint) -> dict[str, Any]:
    """A function's result from its opened aggregates (signed integers) and its public
    layout: divisions, square roots and regression happen here, on aggregates only."""
    function, name, layout = output["function"], output["name"], output["layout"]
    if output.get("suppressed"):
        return {"function": function, "suppressed": output["suppressed"]}
    if output["kind"] == "histogram":
        shown = iter(values)
        counts = [next(shown) if ok else None for ok in layout["shown"]]
        return {"function": function, "edges": layout["edges"], "counts": counts}
    if output["kind"] == "extreme":
        value = fixed.decode(values[0])
        low, high = Fraction(layout["low"]), Fraction(layout["high"])
        return {"function": function, "value": value if low <= value <= high else None}
    if name == "count":
        return {"function": function, "count": values[0]}
    k = layout["variables"]
    count, totals = values[0], [fixed.decode(v) for v in values[1 : 1 + k]]
    cross = [fixed.decode(v, extra_bits=fixed.precision) for v in values[1 + k :]]
    return {"function": function, **_from_moments(name, count, totals, cross, k)}


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
) -> Output:
    name, names = function.name, function.variables
    if name == "count":
        (count,) = inner(party, [list(rows)], [[1] * table.rows])
        return Output(function.text, name, "moments", [count], {"variables": 0})
    if name == "histogram":
        return _histogram(party, function, rows, table, fixed, ranges, bits, min_cell)
    if name in ("min", "max"):
        return _extreme(party, function, rows, table, fixed, ranges, bits)
    columns = [table.columns[n] for n in names]
    masked = [multiply(party, rows, column) for column in columns]  # m * x, per variable
    ones = [1] * table.rows
    sums = inner(party, [rows, *masked], [ones] * (1 + len(columns)))
    squares = inner(
        party,
        [masked[i] for i in range(len(columns)) for _ in range(i, len(columns))],
        [columns[j] for i in range(len(columns)) for j in range(i, len(columns))],
    )
    return Output(function.text, name, "moments", [*sums, *squares], {"variables": len(columns)})


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
) -> Output:
    """Counts per bin, from one batch of comparisons against every inner edge. Bins
    under ``min_cell`` are suppressed: their counts are never opened."""
    p = party.scheme.field.modulus
    name = function.variables[0]
    bins = function.bins or 1
    low, high = ranges.low[name], ranges.high[name]
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    column, n = table.columns[name], table.rows
    at_least = [list(rows)]  # x >= edge 0: every kept row (values lie in their range)
    inner_edges = [party.scheme.field.element(fixed.encode(edge)) for edge in edges[1:-1]]
    if inner_edges:
        below = less_than_zero(party, [(x - e) % p for e in inner_edges for x in column], bits)
        above = multiply(party, list(rows) * len(inner_edges), _not(party, below))
        at_least.extend(above[i * n : (i + 1) * n] for i in range(len(inner_edges)))
    at_least.append([0] * n)
    per_bin = [[(a - b) % p for a, b in zip(at_least[i], at_least[i + 1], strict=True)] for i in range(bins)]
    allowed = _large_enough(party, per_bin, min_cell, n)
    shown = [b for b, ok in zip(per_bin, allowed, strict=True) if ok]
    counts = inner(party, shown, [[1] * n] * len(shown)) if shown else []
    layout = {"edges": [str(e) for e in edges], "shown": allowed}
    return Output(function.text, "histogram", "histogram", counts, layout)


def _extreme(
    party: Party,
    function: Function,
    rows: Sequence[int],
    table: SharedTable,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
) -> Output:
    """min or max over kept rows: the others are replaced by a value beyond the range,
    so an empty selection finishes as "no value" without a count being opened."""
    p = party.scheme.field.modulus
    field = party.scheme.field
    name, variable = function.name, function.variables[0]
    low, high = ranges.low[variable], ranges.high[variable]
    beyond = field.element(fixed.encode(high + 1 if name == "min" else low - 1))
    kept = multiply(party, rows, table.columns[variable])
    values = [(a + beyond * (1 - m)) % p for a, m in zip(kept, rows, strict=True)]
    while len(values) > 1:
        pairs = len(values) // 2
        a, b = values[0 : 2 * pairs : 2], values[1 : 2 * pairs : 2]
        a_minus_b = [(x - y) % p for x, y in zip(a, b, strict=True)]
        a_smaller = less_than_zero(party, a_minus_b, bits + 1)
        choose_a = a_smaller if name == "min" else _not(party, a_smaller)
        picked = multiply(party, choose_a, a_minus_b)
        values = [(y + d) % p for y, d in zip(b, picked, strict=True)] + values[2 * pairs :]
    return Output(function.text, name, "extreme", values[:1], {"low": str(low), "high": str(high)})
