"""``dfg bench ledger`` runs and prints the documented figures (values are not judged)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gateways.cli.main import cli

KEYS = {
    "verify_per_s",
    "append_sqlite_per_s",
    "append_postgres_per_s",
    "audit_verify_per_s",
    "proofs_per_s",
    "peak_rss_mb",
}


@pytest.mark.slow
def test_bench_ledger_prints_its_figures_as_json() -> None:
    result = CliRunner().invoke(
        cli, ["bench", "ledger", "--events", "1000", "--signers", "20", "--no-postgres", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert set(figures) >= KEYS
    assert figures["events"] == 1000 and figures["append_postgres_per_s"] is None
    assert all(figures[k] > 0 for k in KEYS - {"append_postgres_per_s"})


def test_bench_refuses_nonsense() -> None:
    result = CliRunner().invoke(cli, ["bench", "ledger", "--events", "5"])
    assert result.exit_code == 2 and "--events" in result.output
    mpc = CliRunner().invoke(cli, ["bench", "mpc", "--rows", "5"])
    assert mpc.exit_code == 2 and "--rows" in mpc.output
    demo = CliRunner().invoke(cli, ["demo", "mpc", "--patients", "5"])
    assert demo.exit_code == 2 and "--patients" in demo.output


MPC_KEYS = {
    "mults_per_s",
    "mults_per_s_fast",
    "comparisons_per_s",
    "mean_1m_s",
    "correlation_1m_s",
    "speedup_vs_mpyc",
}


@pytest.mark.slow
def test_bench_mpc_prints_its_figures_as_json() -> None:
    result = CliRunner().invoke(
        cli,
        ["bench", "mpc", "--rows", "200", "--million", "10000", "--pipeline-rows", "300", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert set(figures) >= MPC_KEYS
    assert all(figures[k] > 0 for k in MPC_KEYS - {"speedup_vs_mpyc"})
    assert "extrapolated" in " ".join(figures["notes"])
    assert set(figures["pipeline"]) == {"rows", "sharing_s", "upload_s", "join_s", "compute_s", "reveal_s"}
    assert figures["pipeline"]["join_s"] > 0 and figures["pipeline"]["compute_s"] > 0
