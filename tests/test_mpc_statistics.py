"""Every calculation function evaluated by three parties on shared columns, against a
plaintext NumPy computation on the same rows (within the fixed-point error)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.calculations import check_calculation
from mpc.field import MERSENNE_127, FixedPoint, PrimeField
from mpc.protocols import input_values
from mpc.runtime import Party, run_local
from mpc.shamir import Scheme
from mpc.statistics import PRESENT, Ranges, SharedTable, evaluate

FIELD = PrimeField(MERSENNE_127)
SCHEME = Scheme(FIELD, parties=3, threshold=1)
FIXED = FixedPoint(12)
RANGES = Ranges(
    low={"age": Fraction(0), "sbp": Fraction(60), "hrv": Fraction(0)},
    high={"age": Fraction(120), "sbp": Fraction(260), "hrv": Fraction(200)},
)
VIEW = {"age": "integer", "sbp": "decimal", "hrv": "decimal"}


def run(
    rows: list[dict[str, float | None]], filter_text: str | None, functions: list[str], *, stack: int = 0
) -> list[dict[str, Any]]:
    """The parties' results; ``stack``: frames each party's program runs below."""
    calculation = check_calculation(filter_text, functions, VIEW)
    columns: dict[str, list[int]] = {}
    for name in VIEW:
        columns[name] = [
            FIELD.element(FIXED.encode(Decimal(str(r[name]))) if r[name] is not None else 0) for r in rows
        ]
        columns[name + PRESENT] = [1 if r[name] is not None else 0 for r in rows]

    def program(party: Party) -> list[dict[str, Any]]:
        shared = {
            name: input_values(party, 1, values if party.index == 1 else None)
            for name, values in columns.items()
        }
        return evaluate(party, calculation, SharedTable(shared, len(rows)), fixed=FIXED, ranges=RANGES)

    def below(party: Party, frames: int) -> list[dict[str, Any]]:
        return below(party, frames - 1) if frames else program(party)

    results = run_local(SCHEME, lambda party: below(party, stack))
    assert results[0] == results[1] == results[2]
    return results[0]


ROWS: list[dict[str, float | None]] = [
    {"age": 34, "sbp": 118.5, "hrv": 61.25},
    {"age": 71, "sbp": 151.0, "hrv": 22.5},
    {"age": 17, "sbp": 109.75, "hrv": 88.0},
    {"age": 55, "sbp": None, "hrv": 40.5},
    {"age": 48, "sbp": 133.25, "hrv": None},
    {"age": 62, "sbp": 142.5, "hrv": 30.75},
    {"age": 29, "sbp": 121.0, "hrv": 70.0},
    {"age": 80, "sbp": 160.5, "hrv": 18.25},
]
TOLERANCE = 1e-3  # 12 fractional bits


def _plain(name: str, where: Any = None) -> np.ndarray:
    rows = [r for r in ROWS if (where is None or where(r)) and r[name] is not None]
    return np.array([r[name] for r in rows], dtype=float)


def test_count_sum_mean_variance_stddev_with_a_filter_and_missing_values() -> None:
    adults = lambda r: r["age"] >= 18  # noqa: E731
    results = run(
        ROWS, "age >= 18", ["count()", "count(sbp)", "sum(sbp)", "mean(sbp)", "variance(sbp)", "stddev(sbp)"]
    )
    sbp = _plain("sbp", adults)
    assert results[0]["count"] == 7 and results[1]["count"] == len(sbp) == 6
    assert float(results[2]["value"]) == pytest.approx(sbp.sum(), abs=TOLERANCE)
    assert float(results[3]["value"]) == pytest.approx(sbp.mean(), abs=TOLERANCE)
    assert float(results[4]["value"]) == pytest.approx(sbp.var(ddof=1), rel=1e-4)
    assert results[5]["value"] == pytest.approx(sbp.std(ddof=1), rel=1e-4)


def test_correlation_and_regression_over_rows_with_both_values() -> None:
    results = run(ROWS, None, ["correlation(sbp, hrv)", "linear_regression(hrv ~ sbp + age)"])
    both = [r for r in ROWS if r["sbp"] is not None and r["hrv"] is not None]
    sbp, hrv, age = (np.array([r[k] for r in both], dtype=float) for k in ("sbp", "hrv", "age"))
    assert results[0]["value"] == pytest.approx(np.corrcoef(sbp, hrv)[0, 1], abs=1e-6)
    design = np.column_stack([np.ones(len(both)), sbp, age])
    coefficients = np.linalg.lstsq(design, hrv, rcond=None)[0]
    assert results[1]["intercept"] == pytest.approx(coefficients[0], rel=1e-6)
    assert results[1]["slopes"] == pytest.approx(list(coefficients[1:]), rel=1e-6)


def test_min_max_and_a_histogram_over_the_declared_range() -> None:
    results = run(ROWS, "sbp > 115 | !(age < 60)", ["min(hrv)", "max(sbp)", "histogram(age, 4)"])
    keep = [r for r in ROWS if (r["sbp"] is not None and r["sbp"] > 115) or not (r["age"] < 60)]
    assert float(results[0]["value"]) == min(r["hrv"] for r in keep if r["hrv"] is not None)
    assert float(results[1]["value"]) == max(r["sbp"] for r in keep if r["sbp"] is not None)
    counts, _ = np.histogram([r["age"] for r in keep], bins=4, range=(0, 120))
    assert results[2]["counts"] == list(counts)


def test_a_comparison_on_a_missing_value_is_false_and_its_negation_true() -> None:
    results = run(ROWS, "sbp > 150", ["count()"])
    negated = run(ROWS, "!(sbp > 150)", ["count()"])
    assert results[0]["count"] == 2 and negated[0]["count"] == len(ROWS) - 2


@given(st.lists(st.tuples(st.integers(0, 120), st.decimals(60, 260, places=2)), min_size=2, max_size=6))
@settings(max_examples=4, deadline=None)
def test_means_match_plaintext_on_generated_data_at_the_range_extremes(
    pairs: list[tuple[int, Decimal]],
) -> None:
    rows: list[dict[str, float | None]] = [{"age": a, "sbp": float(s), "hrv": None} for a, s in pairs]
    rows += [{"age": 0, "sbp": 60.0, "hrv": 0.0}, {"age": 120, "sbp": 260.0, "hrv": 200.0}]
    results = run(rows, None, ["mean(sbp)", "mean(age)"])
    assert float(results[0]["value"]) == pytest.approx(np.mean([r["sbp"] for r in rows]), abs=TOLERANCE)
    assert float(results[1]["value"]) == pytest.approx(np.mean([r["age"] for r in rows]), abs=TOLERANCE)


def _run_with_min_cell(filter_text: str | None, functions: list[str], min_cell: int) -> list[dict[str, Any]]:
    calculation = check_calculation(filter_text, functions, VIEW)
    columns: dict[str, list[int]] = {}
    for name in VIEW:
        columns[name] = [
            FIELD.element(FIXED.encode(Decimal(str(r[name])))) if r[name] is not None else 0 for r in ROWS
        ]
        columns[name + PRESENT] = [1 if r[name] is not None else 0 for r in ROWS]

    def program(party: Party) -> list[dict[str, Any]]:
        shared = {n: input_values(party, 1, v if party.index == 1 else None) for n, v in columns.items()}
        table = SharedTable(shared, len(ROWS))
        return evaluate(party, calculation, table, fixed=FIXED, ranges=RANGES, min_cell=min_cell)

    return run_local(SCHEME, program)[0]


def test_statistics_over_fewer_than_k_records_are_suppressed_without_revealing_the_count() -> None:
    results = _run_with_min_cell("age >= 70", ["count()", "mean(sbp)"], min_cell=3)
    assert results == [
        {"function": "count()", "suppressed": "fewer than 3 records"},
        {"function": "mean(sbp)", "suppressed": "fewer than 3 records"},
    ]
    allowed = _run_with_min_cell("age >= 18", ["count()"], min_cell=3)
    assert allowed == [{"function": "count()", "count": 7}]


def test_histogram_bins_below_k_are_suppressed_one_by_one() -> None:
    (histogram,) = _run_with_min_cell(None, ["histogram(age, 4)"], min_cell=3)
    plain, _ = np.histogram([r["age"] for r in ROWS], bins=4, range=(0, 120))
    assert histogram["counts"] == [int(c) if c >= 3 else None for c in plain]


@pytest.mark.parametrize(
    ("filter_text", "keep"),
    [
        ("!" * 490 + "age < 60", lambda r: r["age"] < 60),
        pytest.param(  # 245 secure comparisons one after the other: ~10 s
            "age>1&(" * 245 + "age<60" + ")" * 245, lambda r: r["age"] < 60, marks=pytest.mark.slow
        ),
    ],
    ids=["negations", "conjunctions"],
)
def test_a_filter_nested_as_deep_as_the_ledger_accepts_is_evaluated(filter_text: str, keep: Any) -> None:
    """The ledger accepts filters nested up to 500 levels (within 2,000 characters); the
    nodes must evaluate them however deep the caller's stack (a node's is deeper than a
    test's): a recursive evaluation ran out of Python's stack and crashed the task."""
    results = run(ROWS, filter_text, ["count()"], stack=500)
    assert results[0]["count"] == sum(1 for r in ROWS if keep(r))


def test_a_correlation_or_regression_on_a_constant_variable_has_no_value_instead_of_crashing() -> None:
    """Every kept record with the same age (a filter on it, or a study of one age group):
    the analyst's reconstruction divided by a zero variance, or solved a singular system,
    and ``dfg analyst results`` ended with a traceback, losing every other result too."""
    rows: list[dict[str, float | None]] = [
        {"age": 50, "sbp": 120.0, "hrv": 40.0},
        {"age": 50, "sbp": 130.5, "hrv": 45.25},
        {"age": 50, "sbp": 141.0, "hrv": 52.0},
    ]
    results = run(rows, None, ["correlation(sbp, age)", "linear_regression(sbp ~ age)", "mean(sbp)"])
    assert results[0] == {"function": "correlation(sbp, age)", "count": 3, "value": None}
    assert results[1] == {"function": "linear_regression(sbp ~ age)", "count": 3, "value": None}
    assert float(results[2]["value"]) == pytest.approx(130.5, abs=TOLERANCE)
