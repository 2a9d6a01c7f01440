"""Every calculation function, computed by three parties on generated data with
negative values and the extremes of the declared ranges, equals NumPy on the same
data within the fixed-point error."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from domain.calculations import check_calculation
from mpc.field import MERSENNE_127, FixedPoint, PrimeField
from mpc.protocols import input_values
from mpc.runtime import Party, run_local
from mpc.shamir import Scheme
from mpc.statistics import PRESENT, Ranges, SharedTable, evaluate

FIELD = PrimeField(MERSENNE_127)
SCHEME = Scheme(FIELD, parties=3, threshold=1)
FIXED = FixedPoint(16)
RANGES = Ranges(low={"x": Fraction(-100), "y": Fraction(-50)}, high={"x": Fraction(100), "y": Fraction(50)})
VIEW = {"x": "decimal", "y": "decimal"}
FUNCTIONS = [
    "count()", "sum(x)", "mean(x)", "variance(x)", "stddev(x)", "correlation(x, y)",
    "linear_regression(y ~ x)", "min(x)", "max(y)", "histogram(x, 4)",
]  # fmt: skip

xs = st.one_of(st.decimals(-100, 100, places=3), st.sampled_from([Decimal(-100), Decimal(100), Decimal(0)]))
ys = st.one_of(st.decimals(-50, 50, places=3), st.sampled_from([Decimal(-50), Decimal(50)]))


def _evaluate(rows: list[tuple[Decimal, Decimal]], filter_text: str | None) -> dict[str, dict[str, Any]]:
    calculation = check_calculation(filter_text, FUNCTIONS, VIEW)
    columns = {
        "x": [FIELD.element(FIXED.encode(x)) for x, _ in rows],
        "y": [FIELD.element(FIXED.encode(y)) for _, y in rows],
        "x" + PRESENT: [1] * len(rows),
        "y" + PRESENT: [1] * len(rows),
    }

    def program(party: Party) -> list[dict[str, Any]]:
        shared = {n: input_values(party, 1, v if party.index == 1 else None) for n, v in columns.items()}
        return evaluate(party, calculation, SharedTable(shared, len(rows)), fixed=FIXED, ranges=RANGES)

    opened = run_local(SCHEME, program)
    assert opened[0] == opened[1] == opened[2]
    return {r["function"]: r for r in opened[0]}


@given(st.lists(st.tuples(xs, ys), min_size=3, max_size=9), st.sampled_from([None, "x < 0", "y >= -10"]))
@settings(max_examples=12, deadline=None)
def test_every_function_matches_numpy(rows: list[tuple[Decimal, Decimal]], filter_text: str | None) -> None:
    keep = {None: lambda x, y: True, "x < 0": lambda x, y: x < 0, "y >= -10": lambda x, y: y >= -10}
    kept = [(float(x), float(y)) for x, y in rows if keep[filter_text](x, y)]
    x = np.array([a for a, _ in kept])
    y = np.array([b for _, b in kept])
    assume(len(kept) >= 3 and x.std() > 0.5 and y.std() > 0.5)
    got = _evaluate(rows, filter_text)
    unit = 2.0**-16  # one fixed-point unit; each encoded value is off by at most half of it
    assert got["count()"]["count"] == len(kept)
    assert float(got["sum(x)"]["value"]) == pytest.approx(x.sum(), abs=len(kept) * unit)
    assert float(got["mean(x)"]["value"]) == pytest.approx(x.mean(), abs=unit)
    assert float(got["variance(x)"]["value"]) == pytest.approx(x.var(ddof=1), rel=1e-4, abs=1e-3)
    assert float(got["stddev(x)"]["value"]) == pytest.approx(x.std(ddof=1), rel=1e-4, abs=1e-3)
    assert got["correlation(x, y)"]["value"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)
    slope, intercept = np.polyfit(x, y, 1)
    regression = got["linear_regression(y ~ x)"]
    # Fixed point with 16 fractional bits: the inputs' rounding and the division's move
    # the slope by up to ~1.5e-4 (hypothesis found 1.4e-4 at a slope of -1.36, and 2e-4 at
    # -36.66), and the intercept by that times the mean of x.
    slope_error = 1e-3 * max(1.0, abs(slope))
    assert regression["slopes"][0] == pytest.approx(slope, abs=slope_error)
    assert regression["intercept"] == pytest.approx(intercept, abs=1e-3 + abs(x.mean()) * slope_error)
    assert float(got["min(x)"]["value"]) == pytest.approx(x.min(), abs=unit)
    assert float(got["max(y)"]["value"]) == pytest.approx(y.max(), abs=unit)
    counts, _ = np.histogram(x, bins=[-100, -50, 0, 50, 100])
    assert got["histogram(x, 4)"]["counts"] == [int(c) for c in counts]
