"""Result shares: nodes keep aggregates shared, seal them to the analyst, and the
analyst reconstructs exactly what an in-MPC opening gives -- or detects a wrong share,
a commitment mismatch and a disagreement between nodes."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from domain.calculations import check_calculation
from mpc.protocols import input_values
from mpc.results import ResultError, ResultShares, open_result, reconstruct, seal_result
from mpc.runtime import Party, run_local
from mpc.statistics import PRESENT, SharedTable, aggregate, evaluate
from tests.test_mpc_statistics import FIELD, FIXED, RANGES, ROWS, SCHEME, VIEW

FUNCTIONS = [
    "count()",
    "mean(sbp)",
    "variance(hrv)",
    "correlation(sbp, hrv)",
    "histogram(age, 4)",
    "max(sbp)",
]


def _columns() -> dict[str, list[int]]:
    columns: dict[str, list[int]] = {}
    for name in VIEW:
        columns[name] = [
            FIELD.element(FIXED.encode(Decimal(str(r[name]))) if r[name] is not None else 0) for r in ROWS
        ]
        columns[name + PRESENT] = [1 if r[name] is not None else 0 for r in ROWS]
    return columns


def _run() -> tuple[list[ResultShares], list[dict[str, object]]]:
    calculation = check_calculation("age >= 18", FUNCTIONS, VIEW)
    columns = _columns()

    def program(party: Party) -> tuple[ResultShares, list[dict[str, object]]]:
        shared = {n: input_values(party, 1, v if party.index == 1 else None) for n, v in columns.items()}
        table = SharedTable(shared, len(ROWS))
        outputs = aggregate(party, calculation, table, fixed=FIXED, ranges=RANGES)
        result = ResultShares.of(
            analysis_id="a", task_id=2, calculation_id="c", node=f"node:{party.index}", party=party.index,
            parties=3, modulus=FIELD.modulus, precision=FIXED.precision, outputs=outputs,
        )  # fmt: skip
        opened = evaluate(party, calculation, table, fixed=FIXED, ranges=RANGES)
        return result, opened

    runs = run_local(SCHEME, program)
    return [r for r, _ in runs], runs[0][1]


def test_the_analyst_reconstructs_what_an_opening_gives() -> None:
    shares, opened = _run()
    analyst = X25519PrivateKey.generate()
    received = [
        open_result(seal_result(s, analyst.public_key()), analyst, expected_commitment=s.commitment())
        for s in shares
    ]
    assert reconstruct(received) == opened
    assert opened[0] == {"function": "count()", "count": sum(1 for r in ROWS if (r["age"] or 0) >= 18)}


def test_a_wrong_share_is_detected_not_believed() -> None:
    shares, _ = _run()
    bad = replace(shares[2], shares=(shares[2].shares[0] + 1, *shares[2].shares[1:]))
    with pytest.raises(ResultError, match="inconsistent"):
        reconstruct([shares[0], shares[1], bad])


def test_shares_that_differ_from_the_ledger_commitment_are_refused() -> None:
    shares, _ = _run()
    analyst = X25519PrivateKey.generate()
    other = replace(shares[0], shares=(0, *shares[0].shares[1:]))
    with pytest.raises(ResultError, match="commitment"):
        open_result(
            seal_result(other, analyst.public_key()), analyst, expected_commitment=shares[0].commitment()
        )


def test_another_key_cannot_open_result_shares() -> None:
    shares, _ = _run()
    sealed = seal_result(shares[0], X25519PrivateKey.generate().public_key())
    with pytest.raises(ResultError, match="cannot be opened"):
        open_result(sealed, X25519PrivateKey.generate(), expected_commitment=shares[0].commitment())


def test_nodes_that_disagree_on_the_outputs_are_refused() -> None:
    shares, _ = _run()
    changed = replace(shares[1], outputs=(*shares[1].outputs[:-1], {**shares[1].outputs[-1], "name": "min"}))
    with pytest.raises(ResultError, match="disagree"):
        reconstruct([shares[0], changed, shares[2]])


def test_a_histograms_last_bin_is_shown_closed_as_it_holds_the_top_of_the_range() -> None:
    from gateways.cli.analyst_commands import describe

    shown = describe({"function": "histogram(smoker, 2)", "edges": ["0", "1/2", "1"], "counts": [8, None]})
    assert shown == "[0, 0.5): 8  [0.5, 1]: <k"


def test_a_node_that_takes_the_connection_and_never_answers_is_named_after_the_time_out() -> None:
    """A hung node held dfg analyst results for 60 s, with no way to shorten it, and then
    said only "timed out"."""
    import socket

    from gateways.analyst_results import ResultsError, graphql

    with socket.create_server(("127.0.0.1", 0)) as hung:  # the kernel takes the connection
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        with pytest.raises(ResultsError) as refused:
            graphql(url, "{ __typename }", timeout=0.5)
    assert refused.value.code == "unreachable"
    assert str(refused.value) == f"{url} did not answer within 0.5 s"
