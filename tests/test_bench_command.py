"""``dfg bench ledger`` runs and prints the documented figures (values are not judged)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateways.cli.main import cli
from infra.benchmarks.baseline import VerifyBaseline
from infra.benchmarks.replication import highest_kept_up

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
    samples = figures["verify_per_s_samples"]  # before the appends, then after each phase
    assert len(samples) == 4  # each rounded, as the median is
    assert figures["verify_per_s"] == pytest.approx(statistics.median(samples), abs=0.1)
    assert "median of 4 samples" in result.output


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


def test_bench_api_submitters_each_send_their_own_signers_in_nonce_order(tmp_path: Path) -> None:
    """Two batches of one signer in flight may reach the ledger in either order, and
    the later nonces would then refuse the earlier: each signer has one submitter."""
    from infra.benchmarks.api import _lanes

    signers, total = 20, 2_500
    stream = tmp_path / "presigned.jws"
    stream.write_text("".join(f"{i % signers}:{i // signers}\n" for i in range(total)))
    lanes = _lanes(stream, signers, lanes=4)
    assert len(lanes) == 4
    owner: dict[str, int] = {}
    for lane_no, lane in enumerate(lanes):
        assert all(len(batch) <= 1000 for batch in lane)
        last: dict[str, int] = {}
        for token in (t for batch in lane for t in batch):
            signer, nonce = token.split(":")
            assert owner.setdefault(signer, lane_no) == lane_no
            assert int(nonce) > last.get(signer, -1)
            last[signer] = int(nonce)
    assert sum(len(b) for lane in lanes for b in lane) == total


def test_bench_replication_reports_the_highest_rate_kept_up_with() -> None:
    """On a saturated machine a higher offered rate can achieve less than the step
    before: the figure is the best kept-up step, not the last one."""

    def step(rate: int, achieved: float, kept: bool, p99: float) -> dict[str, object]:
        lags = {"lag_p50_s": p99 / 2, "lag_p99_s": p99}
        return {"rate": rate, "offered_per_s": achieved, "kept_up": kept, **lags}

    steps = [step(2000, 1999.5, True, 0.3), step(3000, 2951.7, True, 1.1), step(4000, 2909.2, True, 1.2)]
    assert highest_kept_up(steps) == steps[1]
    assert highest_kept_up([*steps[:1], step(3000, 2500.0, False, 2.5)]) == steps[0]
    assert highest_kept_up([step(500, 480.0, False, 3.0)]) is None


def test_the_verification_baseline_is_the_median_of_its_samples() -> None:
    """One slow or fast moment of a drifting host does not move (a)."""
    baseline = VerifyBaseline(seconds=0.05, openssl=[7_000.0, 4_400.0, 7_900.0], libsodium=[9.0, 15.0, 13.0])
    assert (baseline.verify_per_s, baseline.libsodium_per_s) == (7_000.0, 13.0)
    described = baseline.describe()
    assert "median of 3 samples of 0.05 s" in described and "4,400 to 7,900/s" in described
    baseline.sample()
    assert len(baseline.openssl) == len(baseline.libsodium) == 4 and baseline.openssl[-1] > 0
