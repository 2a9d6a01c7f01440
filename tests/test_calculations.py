"""The calculation language: filters, functions, precise errors, checks against a data view."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.calculations import (
    AllOf,
    AnyOf,
    CalculationError,
    Compare,
    Constant,
    Function,
    Not,
    Variable,
    check_calculation,
    filter_variables,
    parse_filter,
    parse_function,
)


def test_precedence_not_binds_tighter_than_and_than_or() -> None:
    tree = parse_filter("a < 1 | b > 2 & !c == 3")
    assert tree == AnyOf(
        (
            Compare(Variable("a"), "<", Constant(Decimal(1))),
            AllOf(
                (
                    Compare(Variable("b"), ">", Constant(Decimal(2))),
                    Not(Compare(Variable("c"), "==", Constant(Decimal(3)))),
                )
            ),
        )
    )


def test_nesting_up_to_the_limit_parses() -> None:
    deepest = "(" * 250 + "!" * 250 + "a < 1" + ")" * 250
    assert filter_variables(parse_filter(deepest)) == {"a"}
    with pytest.raises(CalculationError, match="nested too deeply"):
        parse_filter("!" + deepest)


@pytest.mark.parametrize(
    "text",
    [
        "!" * 490 + "a < 1",  # the deepest a ledger could hold: accepted before the limit
        "(" * 245 + "a < 1" + ")" * 245,
        "a<1&(" * 245 + "b>2" + ")" * 245,
    ],
)
def test_filters_accepted_before_the_nesting_limit_still_parse(text: str) -> None:
    """Filters are checked in transaction bodies: one that an older version accepted
    (it built within Python's stack) must replay under dfg audit verify, however deep
    the stack of the caller (the audit's is not the sequencer's)."""

    def deep(frames: int) -> set[str]:
        if frames:
            return deep(frames - 1)
        return filter_variables(parse_filter(text))

    assert deep(600) <= {"a", "b"}


def test_parentheses_and_every_comparison() -> None:
    tree = parse_filter("(age >= 18 & age <= 65) & (bmi != 0 | -1.5 < score) & x == y")
    assert isinstance(tree, AllOf)
    assert filter_variables(tree) == {"age", "bmi", "score", "x", "y"}
    ops = {"<", ">", "<=", ">=", "==", "!="}
    for op in ops:
        assert parse_filter(f"v {op} 2") == Compare(Variable("v"), op, Constant(Decimal(2)))


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("age >", "incomplete: expected a number or a variable name at the end", 6),
        ("(a < 1", "incomplete: expected ')' at the end", 7),
        ("a = 1", "a comparison (<, >, <=, >=, ==, !=)", 3),
        ("a < 1 && b > 2", "found '&'", 8),
        ("a $ 3", "unexpected character '$'", 3),
        ("a < 1.5.3", "unexpected character '.'", 8),
        ("a < 01", "found '1'", 6),
        ("", "the filter is empty", None),
        ("a < 1\n| b > 2", "one line", None),
        ("(" * 501 + "a < 1" + ")" * 501, "nested too deeply", None),
        ("!" * 1500 + "a < 1", "nested too deeply", None),
    ],
)
def test_bad_filters_say_what_where_and_what_was_found(text: str, message: str, column: int | None) -> None:
    with pytest.raises(CalculationError) as raised:
        parse_filter(text)
    assert raised.value.code == "filter_syntax"
    assert message in raised.value.message
    if column is not None:
        assert raised.value.column == column


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("count()", Function("count", ())),
        ("count(x)", Function("count", ("x",))),
        ("mean( bp )", Function("mean", ("bp",))),
        ("stddev(bp)", Function("stddev", ("bp",))),
        ("histogram(age, 10)", Function("histogram", ("age",), 10)),
        ("histogram(age, bins=20)", Function("histogram", ("age",), 20)),
        ("correlation(hr, steps)", Function("correlation", ("hr", "steps"))),
        ("linear_regression(y ~ x1 + x2)", Function("linear_regression", ("y", "x1", "x2"))),
    ],
)
def test_functions(text: str, expected: Function) -> None:
    parsed = parse_function(text)
    assert parsed == expected
    assert parse_function(parsed.text) == parsed  # the canonical text reads back the same


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("median(x)", "unknown_function", "unknown function 'median'"),
        ("mean()", "wrong_arguments", "mean takes 1 variable"),
        ("mean(x, y)", "wrong_arguments", "mean takes 1 variable"),
        ("sum(3)", "wrong_arguments", "sum takes 1 variable"),
        ("count(x, y)", "wrong_arguments", "count takes 0 or 1"),
        ("histogram(age)", "wrong_arguments", "a variable and a number of bins"),
        ("histogram(age, 0)", "wrong_arguments", "bins is a whole number"),
        ("histogram(age, 2.5)", "wrong_arguments", "bins is a whole number"),
        ("histogram(age, 1001)", "wrong_arguments", "bins is a whole number"),
        ("histogram(age, bims=20)", "wrong_arguments", "no parameter 'bims'"),
        ("correlation(x, x)", "wrong_arguments", "two different variables"),
        ("linear_regression(y)", "wrong_arguments", "takes a formula"),
        ("linear_regression(y ~ x + y)", "wrong_arguments", "each variable once"),
        ("mean(x", "function_syntax", "incomplete"),
        ("mean x", "function_syntax", "expected '('"),
    ],
)
def test_bad_functions_are_refused_with_a_code(text: str, code: str, message: str) -> None:
    with pytest.raises(CalculationError) as raised:
        parse_function(text)
    assert raised.value.code == code
    assert message in raised.value.message


def test_calculation_is_checked_against_the_data_view() -> None:
    view = {"age": "integer", "bmi": "decimal", "systolic_bp": "integer"}
    calculation = check_calculation("age >= 18 & bmi > 25", ["count()", "mean(systolic_bp)"], view)
    assert calculation.variables == {"age", "bmi", "systolic_bp"}
    with pytest.raises(CalculationError) as raised:
        check_calculation("age >= 18", ["mean(diastolic_bp)"], view)
    assert raised.value.code == "unknown_variable"
    assert "'diastolic_bp'" in raised.value.message and "age, bmi, systolic_bp" in raised.value.message
    with pytest.raises(CalculationError) as raised:
        check_calculation("weight > 3", ["count()"], view)
    assert raised.value.code == "unknown_variable"
    with pytest.raises(CalculationError):
        check_calculation(None, [], view)
    assert check_calculation("", ["count()"], view).filter is None


_names = st.sampled_from(["a", "b", "age", "x_1"])
_numbers = st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)
_ops = st.sampled_from(["<", ">", "<=", ">=", "==", "!="])


def _render(tree: object) -> str:
    if isinstance(tree, Compare):
        side = [o.name if isinstance(o, Variable) else _number(o.value) for o in (tree.left, tree.right)]
        return f"{side[0]} {tree.op} {side[1]}"
    if isinstance(tree, Not):
        return f"!({_render(tree.inner)})"
    assert isinstance(tree, AllOf | AnyOf)
    joiner = " & " if isinstance(tree, AllOf) else " | "
    return joiner.join(f"({_render(p)})" for p in tree.parts)


def _number(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


_compares = st.builds(
    Compare,
    _names.map(Variable),
    _ops,
    _numbers.map(lambda d: Constant(Decimal(_number(d)))),
)
_trees = st.recursive(
    _compares,
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda p: AllOf(tuple(p))),
        st.lists(inner, min_size=2, max_size=3).map(lambda p: AnyOf(tuple(p))),
    ),
    max_leaves=8,
)


@given(_trees)
def test_any_filter_reads_back_as_the_same_tree(tree: object) -> None:
    assert parse_filter(_render(tree)) == tree
