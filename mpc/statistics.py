"""Evaluating a calculation over secret-shared columns, from one party's point of view.

The filter becomes a shared 0/1 mask (comparisons, and products for ``&``); every
function then needs only sums of masked values and products, kept shared as
aggregates: counts, sums, sums of squares and cross-products, and counts per
histogram bin. Whoever opens them (the analyst) finishes the statistics: division,
square roots and the normal equations of a regression happen on aggregates, never
per row. ``min``/``max`` take a tournament of secure comparisons.

Values are fixed-point with ``precision`` fractional bits. A missing value is shared
as 0 with its presence flag at 0: it makes any comparison on it false, and it adds
nothing to a sum -- so a sum over the rows where its own variable is present needs
no multiplication. A mask that is the public all-ones vector (no filter) is ``None``
here, and multiplying by it is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from domain.calculations import AllOf, AnyOf, Calculation, Compare, Constant, Filter, Function, Not, Variable
from mpc.field import FixedPoint
from mpc.protocols import inner, less_than_zero, multiply, open_values, total
from mpc.runtime import Party
from mpc.vectors import Vec

PRESENT = "__present"

#: A 0/1 row mask; None is the public all-ones mask (every row).
Mask = Vec | None


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

    columns: Mapping[str, Vec]
    rows: int


def _not(party: Party, bits: Vec) -> Vec:
    ops = party.ops
    return ops.sub(ops.const(1, ops.length(bits)), bits)


def _and(party: Party, a: Mask, b: Mask) -> Mask:
    if a is None:
        return b
    if b is None:
        return a
    return multiply(party, a, b)


def _apply(party: Party, mask: Mask, values: Vec) -> Vec:
    return values if mask is None else multiply(party, mask, values)


def _count(party: Party, mask: Mask, rows: int) -> Vec:
    """Shares of the number of rows in the mask (local: a sum of shares)."""
    return party.ops.of([rows]) if mask is None else total(party, mask)


def _operand(party: Party, table: SharedTable, operand: Variable | Constant, fixed: FixedPoint) -> Vec:
    if isinstance(operand, Variable):
        return table.columns[operand.name]
    return party.ops.const(party.scheme.field.element(fixed.encode(operand.value)), table.rows)


def _presence(table: SharedTable, compare: Compare) -> list[Vec]:
    return [table.columns[o.name + PRESENT] for o in (compare.left, compare.right) if isinstance(o, Variable)]


def _compare(party: Party, tree: Compare, table: SharedTable, fixed: FixedPoint, bits: int) -> Vec:
    ops = party.ops
    a, b = _operand(party, table, tree.left, fixed), _operand(party, table, tree.right, fixed)
    a_minus_b, b_minus_a = ops.sub(a, b), ops.sub(b, a)
    if tree.op == "<":
        result = less_than_zero(party, a_minus_b, bits)
    elif tree.op == ">":
        result = less_than_zero(party, b_minus_a, bits)
    elif tree.op == "<=":
        result = _not(party, less_than_zero(party, b_minus_a, bits))
    elif tree.op == ">=":
        result = _not(party, less_than_zero(party, a_minus_b, bits))
    else:  # both comparisons in one batch
        n = table.rows
        both = less_than_zero(party, ops.concat([a_minus_b, b_minus_a]), bits)
        below, above = ops.take(both, 0, n), ops.take(both, n, 2 * n)
        equal = multiply(party, _not(party, below), _not(party, above))
        result = equal if tree.op == "==" else _not(party, equal)
    for present in _presence(table, tree):
        result = multiply(party, result, present)
    return result


def _combine(party: Party, tree: AllOf | AnyOf, parts: list[Vec]) -> Vec:
    ops = party.ops
    combined = parts[0]
    for part in parts[1:]:
        both = multiply(party, combined, part)
        combined = both if isinstance(tree, AllOf) else ops.sub(ops.add(combined, part), both)
    return combined


def mask(party: Party, tree: Filter, table: SharedTable, fixed: FixedPoint, bits: int) -> Vec:
    """Shares of 1 for rows the filter keeps, 0 for the others.

    Evaluated without recursion, children before their parent and left to right (every
    party runs the same protocol steps in the same order): a filter may be nested as
    deep as the ledger accepts (500 levels), deeper than the caller's stack allows."""
    done: list[Vec] = []
    todo: list[tuple[Filter, bool]] = [(tree, False)]
    while todo:
        node, children_done = todo.pop()
        if isinstance(node, Compare):
            done.append(_compare(party, node, table, fixed, bits))
        elif not children_done:
            todo.append((node, True))
            children = (node.inner,) if isinstance(node, Not) else node.parts
            todo.extend((child, False) for child in reversed(children))
        elif isinstance(node, Not):  # a comparison on a missing value is false, its negation true
            done.append(_not(party, done.pop()))
        else:
            parts = done[len(done) - len(node.parts) :]
            del done[len(done) - len(node.parts) :]
            done.append(_combine(party, node, parts))
    (result,) = done
    return result


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
    keep: Mask = None if calculation.filter is None else mask(party, calculation.filter, table, fixed, bits)
    outputs = []
    masks: dict[frozenset[str], Mask] = {}  # functions over the same variables share their
    enough: dict[frozenset[str], bool] = {}  # row mask and their minimum-cell-size check
    for function in calculation.functions:
        if function.name in ("min", "max") and not release_extremes:
            refused = "the nodes' policies do not release min/max"
            outputs.append(Output(function.text, function.name, "extreme", [], {}, refused))
            continue
        variables = frozenset(function.variables)
        if variables not in masks:
            masks[variables] = _rows_with(party, keep, table, sorted(variables))
        rows = masks[variables]
        if function.name != "histogram" and variables not in enough:  # bins are checked one by one
            enough[variables] = _large_enough(party, [rows], min_cell, table.rows)[0]
        large = function.name == "histogram" or enough[variables]
        if min_cell > 1 and not large:
            small = f"fewer than {min_cell} records"
            outputs.append(Output(function.text, function.name, "moments", [], {}, small))
            continue
        outputs.append(_function(party, function, keep, rows, table, fixed, ranges, bits, min_cell))
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


def _large_enough(party: Party, masks: Sequence[Mask], min_cell: int, rows: int) -> list[bool]:
    """Opens only [count(mask) >= min_cell] for each mask (the count stays shared)."""
    if min_cell <= 1:
        return [True] * len(masks)
    ops = party.ops
    counts = ops.concat([_count(party, m, rows) for m in masks])
    below = less_than_zero(party, ops.add_const(counts, -min_cell), rows.bit_length() + 3)
    return [bit == 0 for bit in open_values(party, below)]


def _rows_with(party: Party, keep: Mask, table: SharedTable, names: Sequence[str]) -> Mask:
    """The kept rows where every one of ``names`` is present."""
    result = keep
    for name in names:
        result = _and(party, result, table.columns[name + PRESENT])
    return result


def _function(
    party: Party,
    function: Function,
    keep: Mask,
    rows: Mask,
    table: SharedTable,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
    min_cell: int,
) -> Output:
    ops = party.ops
    name, names = function.name, function.variables
    if name == "count":
        return Output(
            function.text, name, "moments", ops.ints(_count(party, rows, table.rows)), {"variables": 0}
        )
    if name == "histogram":
        return _histogram(party, function, rows, table, fixed, ranges, bits, min_cell)
    if name in ("min", "max"):
        return _extreme(party, function, rows, table, fixed, ranges, bits)
    columns = [table.columns[n] for n in names]
    # w * x_i, where w = keep * (every presence): x_i is 0 where it is missing, so only
    # the other variables' presence (and the filter) need multiplying in
    masked = []
    for i, column in enumerate(columns):
        others = _rows_with(party, keep, table, [n for j, n in enumerate(names) if j != i])
        masked.append(_apply(party, others, column))
    sums = ops.concat([_count(party, rows, table.rows), *[total(party, m) for m in masked]])
    squares = inner(
        party,
        [masked[i] for i in range(len(columns)) for _ in range(i, len(columns))],
        [columns[j] for i in range(len(columns)) for j in range(i, len(columns))],
    )
    quantities = ops.ints(ops.concat([sums, squares]))
    return Output(function.text, name, "moments", quantities, {"variables": len(columns)})


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
    if name == "correlation":  # undefined, not a division by zero, when either variable is constant
        defined = cov[0][0] > 0 and cov[1][1] > 0
        value = float(cov[0][1]) / (float(cov[0][0]) * float(cov[1][1])) ** 0.5 if defined else None
        return {**result, "value": value}
    # linear_regression: y ~ x1 + ... + xm, normal equations on centred moments
    import numpy as np

    xs = np.array([[float(cov[i][j]) for j in range(1, k)] for i in range(1, k)])
    xy = np.array([float(cov[i][0]) for i in range(1, k)])
    try:
        slopes = np.linalg.solve(xs, xy)
    except np.linalg.LinAlgError:  # a constant predictor, or collinear ones: no single fit
        return {**result, "value": None}
    intercept = float(mean[0]) - float(sum(b * float(mean[i + 1]) for i, b in enumerate(slopes)))
    return {**result, "intercept": intercept, "slopes": [float(b) for b in slopes]}


def _histogram(
    party: Party,
    function: Function,
    rows: Mask,
    table: SharedTable,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
    min_cell: int,
) -> Output:
    """Counts per bin, from one batch of comparisons against every inner edge. Bins
    under ``min_cell`` are suppressed: their counts are never opened."""
    ops = party.ops
    name = function.variables[0]
    bins = function.bins or 1
    low, high = ranges.low[name], ranges.high[name]
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    column, n = table.columns[name], table.rows
    everything = rows if rows is not None else ops.const(1, n)
    at_least = [everything]  # x >= edge 0: every kept row (values lie in their range)
    inner_edges = [party.scheme.field.element(fixed.encode(edge)) for edge in edges[1:-1]]
    if inner_edges:
        below = less_than_zero(party, ops.concat([ops.add_const(column, -e) for e in inner_edges]), bits)
        above = _apply(party, None if rows is None else ops.tile(rows, len(inner_edges)), _not(party, below))
        at_least.extend(ops.take(above, i * n, (i + 1) * n) for i in range(len(inner_edges)))
    at_least.append(ops.zeros(n))
    per_bin: list[Mask] = [ops.sub(at_least[i], at_least[i + 1]) for i in range(bins)]
    allowed = _large_enough(party, per_bin, min_cell, n)
    shown = [b for b, ok in zip(per_bin, allowed, strict=True) if ok]
    counts = ops.ints(ops.concat([_count(party, b, n) for b in shown])) if shown else []
    layout = {"edges": [str(e) for e in edges], "shown": allowed}
    return Output(function.text, "histogram", "histogram", counts, layout)


def _extreme(
    party: Party,
    function: Function,
    rows: Mask,
    table: SharedTable,
    fixed: FixedPoint,
    ranges: Ranges,
    bits: int,
) -> Output:
    """min or max over kept rows: the others are replaced by a value beyond the range,
    so an empty selection finishes as "no value" without a count being opened."""
    ops = party.ops
    field = party.scheme.field
    name, variable = function.name, function.variables[0]
    low, high = ranges.low[variable], ranges.high[variable]
    beyond = field.element(fixed.encode(high + 1 if name == "min" else low - 1))
    column = table.columns[variable]
    if rows is None:
        values = column
    else:  # m * x + beyond * (1 - m)
        values = ops.add(multiply(party, rows, column), ops.scale(_not(party, rows), beyond))
    while ops.length(values) > 1:
        size = ops.length(values)
        pairs = size // 2
        a, b = ops.take(values, 0, pairs), ops.take(values, pairs, 2 * pairs)
        a_minus_b = ops.sub(a, b)
        a_smaller = less_than_zero(party, a_minus_b, bits + 1)
        choose_a = a_smaller if name == "min" else _not(party, a_smaller)
        winners = ops.add(b, multiply(party, choose_a, a_minus_b))
        values = ops.concat([winners, ops.take(values, 2 * pairs, size)])
    return Output(function.text, name, "extreme", ops.ints(values), {"low": str(low), "high": str(high)})
