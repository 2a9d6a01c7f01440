"""The calculation language of analyses: a filter, and functions over what passes it.

Why a language of its own: a calculation is signed by an analyst, approved by every
node organisation and then evaluated under MPC, so it must be small, total and
unambiguous -- something a node operator can read before approving it, and the MPC
engine can compile without surprises. It follows the Partisia Confidential Computing
query style: a filter of comparisons combined with ``& | !``, then aggregate functions.

Filter (optional)::

    age >= 18 & (smoker == 1 | bmi > 30) & !(sex == 2)

Comparisons are ``< > <= >= == !=`` between a variable and a number (either side) or
two variables; ``!`` binds tighter than ``&``, which binds tighter than ``|``.

Functions, one per line of a calculation::

    count()                      records passing the filter
    count(x)                     ... with a value for x
    sum(x) mean(x) variance(x) stddev(x) min(x) max(x)
    histogram(x, 10)             10 equal bins over x's allowed range (also bins=10)
    correlation(x, y)            Pearson's r
    linear_regression(y ~ x1 + x2)   least squares with an intercept

Variables are names of the analysis' data view (letters, digits, ``_``). Every error
says what was expected, where (1-based column) and what was found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final, cast

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.visitors import Transformer_NonRecursive

from domain.errors import DomainError

MAX_TEXT: Final = 2000
MAX_BINS: Final = 1000
MAX_REGRESSORS: Final = 16
#: Levels of parentheses and ``!`` around a comparison. Before there was a limit, a
#: filter was accepted as long as building it did not exhaust Python's stack (1,000
#: frames): at most ~490 ``!`` (two frames each) or ~245 parentheses (four each), so no
#: filter recorded on a ledger nests 500 levels. A lower limit would refuse entries
#: that ``dfg audit verify`` must replay as they were accepted.
MAX_NESTING: Final = 500

_GRAMMAR = r"""
?filter: or_expr
?or_expr: and_expr ("|" and_expr)*      -> any_of
?and_expr: not_expr ("&" not_expr)*     -> all_of
?not_expr: "!" not_expr                 -> negation
         | "(" or_expr ")"
         | comparison
comparison: operand COMPARATOR operand
?operand: NAME -> variable
        | NUMBER -> constant

function: NAME "(" [arguments] ")"
arguments: argument ("," argument)*
?argument: NAME -> variable
         | NUMBER -> constant
         | NAME "=" NUMBER -> keyword
         | NAME "~" NAME ("+" NAME)* -> formula

COMPARATOR: "<=" | ">=" | "==" | "!=" | "<" | ">"
NAME: /[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?/
%ignore /[ \t]+/
"""

_PARSER = Lark(_GRAMMAR, start=["filter", "function"], parser="lalr", maybe_placeholders=False)

_EXPECTED_WORDS: Final = {
    "NAME": "a variable name",
    "NUMBER": "a number",
    "COMPARATOR": "a comparison (<, >, <=, >=, ==, !=)",
    "LPAR": "'('",
    "RPAR": "')'",
    "AMPERSAND": "'&'",
    "VBAR": "'|'",
    "BANG": "'!'",
    "COMMA": "','",
    "TILDE": "'~'",
    "PLUS": "'+'",
    "EQUAL": "'='",
    "$END": "the end",
}


class CalculationError(DomainError):
    """A filter or function that does not parse, or does not fit the data view."""

    def __init__(self, code: str, message: str, column: int | None = None) -> None:
        where = f" (column {column})" if column is not None else ""
        super().__init__(code, f"{message}{where}")
        self.column = column


# --- the tree -----------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class Constant:
    value: Decimal


Operand = Variable | Constant


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str
    right: Operand


@dataclass(frozen=True)
class Not:
    inner: Filter


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Filter, ...]


Filter = Compare | Not | AllOf | AnyOf


@dataclass(frozen=True)
class Function:
    """One aggregate: ``name`` over ``variables`` (for a regression: response first)."""

    name: str
    variables: tuple[str, ...]
    bins: int | None = None

    @property
    def text(self) -> str:
        if self.name == "linear_regression":
            return f"linear_regression({self.variables[0]} ~ {' + '.join(self.variables[1:])})"
        args = list(self.variables) + ([str(self.bins)] if self.bins is not None else [])
        return f"{self.name}({', '.join(args)})"


@dataclass(frozen=True)
class _Keyword:
    name: str
    value: Decimal
    column: int


@dataclass(frozen=True)
class _Formula:
    response: str
    regressors: tuple[str, ...]


@v_args(inline=True)
class _Build(Transformer[Token, object]):
    def variable(self, name: Token) -> Variable:
        return Variable(str(name))

    def constant(self, number: Token) -> Constant:
        return Constant(Decimal(str(number)))

    def keyword(self, name: Token, number: Token) -> _Keyword:
        return _Keyword(str(name), Decimal(str(number)), number.column or 0)

    def formula(self, response: Token, *regressors: Token) -> _Formula:
        return _Formula(str(response), tuple(str(r) for r in regressors))

    def comparison(self, left: Operand, op: Token, right: Operand) -> Compare:
        return Compare(left, str(op), right)

    def negation(self, inner: Filter) -> Not:
        return Not(inner)

    def all_of(self, *parts: Filter) -> Filter:
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def any_of(self, *parts: Filter) -> Filter:
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def arguments(self, *items: object) -> tuple[object, ...]:
        return items

    def function(
        self, name: Token, arguments: tuple[object, ...] = ()
    ) -> tuple[str, tuple[object, ...], int]:
        return str(name), arguments, name.column or 0


class _BuildFilter(Transformer_NonRecursive[Token, object], _Build):
    """The filter's tree built without recursion, so that any nesting up to
    ``MAX_NESTING`` builds whatever the caller's stack depth (the sequencer's and the
    audit's differ)."""


def _syntax_error(code: str, text: str, exc: UnexpectedInput) -> CalculationError:
    column = getattr(exc, "column", None)
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        found = repr(text[position]) if position < len(text) else "the end"
        return CalculationError(code, f"unexpected character {found}", column)
    expected: Iterable[str] = getattr(exc, "expected", ()) or ()
    words = sorted({_EXPECTED_WORDS.get(e, e.lower()) for e in expected})
    if isinstance(exc, UnexpectedEOF):
        return CalculationError(code, f"incomplete: expected {' or '.join(words)} at the end", len(text) + 1)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    if token.type == "$END":
        return CalculationError(code, f"incomplete: expected {' or '.join(words)} at the end", len(text) + 1)
    return CalculationError(code, f"expected {' or '.join(words)}, found {str(token)!r}", column)


def _check_text(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise CalculationError(f"{what}_syntax", f"the {what} is empty")
    if len(text) > MAX_TEXT or "\n" in text:
        raise CalculationError(f"{what}_syntax", f"a {what} is one line of at most {MAX_TEXT} characters")
    return text


def _nesting(tree: Tree[Token]) -> int:
    """The most parentheses and negations around any comparison, counted without
    recursion."""
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        depth += node.data in ("negation", "any_of")
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in node.children if isinstance(child, Tree))
    return deepest - 1  # the whole filter is one any_of


def parse_filter(text: str) -> Filter:
    """Parse a filter expression, or raise ``CalculationError('filter_syntax', ...)``."""
    try:
        tree = _PARSER.parse(_check_text(text, "filter"), start="filter")
    except UnexpectedInput as exc:
        raise _syntax_error("filter_syntax", text, exc) from None
    if _nesting(tree) > MAX_NESTING:
        message = f"nested too deeply: at most {MAX_NESTING} levels of parentheses and '!'"
        raise CalculationError("filter_syntax", message)
    result = _BuildFilter().transform(tree)
    assert isinstance(result, Compare | Not | AllOf | AnyOf)
    return result


_ONE_VARIABLE: Final = frozenset({"sum", "mean", "variance", "stddev", "min", "max"})
FUNCTIONS: Final = frozenset({"count", "histogram", "correlation", "linear_regression", *_ONE_VARIABLE})


def parse_function(text: str) -> Function:
    """Parse one function call, or raise ``CalculationError`` with code
    ``function_syntax``, ``unknown_function`` or ``wrong_arguments``."""
    try:
        tree = _PARSER.parse(_check_text(text, "function"), start="function")
    except UnexpectedInput as exc:
        raise _syntax_error("function_syntax", text, exc) from None
    name, arguments, column = cast(tuple[str, tuple[object, ...], int], _Build().transform(tree))
    if name not in FUNCTIONS:
        known = ", ".join(sorted(FUNCTIONS))
        raise CalculationError("unknown_function", f"unknown function {name!r}; known: {known}", column)
    return _signature(name, list(arguments), column)


def _variables(name: str, arguments: list[object], count: tuple[int, int], column: int) -> tuple[str, ...]:
    low, high = count
    if not all(isinstance(a, Variable) for a in arguments) or not low <= len(arguments) <= high:
        wanted = f"{low}" if low == high else f"{low} or {high}"
        raise CalculationError("wrong_arguments", f"{name} takes {wanted} variable name(s)", column)
    return tuple(a.name for a in arguments if isinstance(a, Variable))


def _signature(name: str, arguments: list[object], column: int) -> Function:
    if name == "count":
        return Function(name, _variables(name, arguments, (0, 1), column))
    if name in _ONE_VARIABLE:
        return Function(name, _variables(name, arguments, (1, 1), column))
    if name == "correlation":
        x, y = _variables(name, arguments, (2, 2), column)
        if x == y:
            raise CalculationError("wrong_arguments", "correlation needs two different variables", column)
        return Function(name, (x, y))
    if name == "histogram":
        if len(arguments) != 2 or not isinstance(arguments[0], Variable):
            raise CalculationError(
                "wrong_arguments", "histogram takes a variable and a number of bins", column
            )
        bins = arguments[1]
        value = bins.value if isinstance(bins, Constant | _Keyword) else None
        if isinstance(bins, _Keyword) and bins.name != "bins":
            raise CalculationError(
                "wrong_arguments", f"histogram has no parameter {bins.name!r}", bins.column
            )
        if value is None or value != value.to_integral_value() or not 1 <= value <= MAX_BINS:
            raise CalculationError("wrong_arguments", f"bins is a whole number from 1 to {MAX_BINS}", column)
        return Function(name, (arguments[0].name,), int(value))
    # linear_regression
    if len(arguments) != 1 or not isinstance(arguments[0], _Formula):
        raise CalculationError("wrong_arguments", "linear_regression takes a formula: y ~ x1 + x2", column)
    formula = arguments[0]
    names = (formula.response, *formula.regressors)
    if len(set(names)) != len(names):
        raise CalculationError("wrong_arguments", "a regression formula names each variable once", column)
    if len(formula.regressors) > MAX_REGRESSORS:
        raise CalculationError("wrong_arguments", f"at most {MAX_REGRESSORS} regressors", column)
    return Function(name, names)


# --- checking against a data view ---------------------------------------------------------


def filter_variables(tree: Filter) -> set[str]:
    """The variables a filter compares, found without recursion (a filter may nest
    ``MAX_NESTING`` levels, which recursing on would come close to the stack's limit)."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Compare):
            names.update(o.name for o in (node.left, node.right) if isinstance(o, Variable))
        elif isinstance(node, Not):
            stack.append(node.inner)
        else:
            stack.extend(node.parts)
    return names


@dataclass(frozen=True)
class Calculation:
    """A parsed, checked calculation: what nodes approve and the MPC engine evaluates."""

    filter: Filter | None
    functions: tuple[Function, ...]

    @property
    def variables(self) -> set[str]:
        used = filter_variables(self.filter) if self.filter is not None else set()
        return used.union(*(set(f.variables) for f in self.functions))


def check_calculation(
    filter_text: str | None, functions: Iterable[str], available: Mapping[str, object]
) -> Calculation:
    """Parse a calculation and check it against the data view's variables (name ->
    description); ``unknown_variable`` names the first variable the view lacks."""
    parsed_filter = parse_filter(filter_text) if filter_text not in (None, "") else None
    parsed = tuple(parse_function(text) for text in functions)
    if not parsed:
        raise CalculationError("wrong_arguments", "a calculation has at least one function")
    calculation = Calculation(parsed_filter, parsed)
    missing = sorted(calculation.variables - set(available))
    if missing:
        known = ", ".join(sorted(available)) or "none"
        raise CalculationError(
            "unknown_variable", f"the data view has no variable {missing[0]!r} (it has: {known})"
        )
    return calculation


def decimal(text: str) -> Decimal:
    """A number as the language reads it (for ranges given elsewhere)."""
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise CalculationError("wrong_arguments", f"{text!r} is not a number") from exc
