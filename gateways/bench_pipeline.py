"""The pipeline part of ``dfg bench mpc``: a coordinator and three ``dfg node serve``
processes; two providers upload rows keyed by the same subjects; phases timed
separately -- ``sharing`` and ``upload`` (the providers'), ``join`` (the merge task)
and ``compute`` (the calculation task) from the nodes' signed task moves, and
``reveal`` (the analyst's fetch, checks and reconstruction)."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gateways.federation import analyst_key, federation
from gateways.provider_upload import UploadTimings


def pipeline(rows: int, say: Callable[[str], None] = lambda _: None) -> dict[str, float]:
    say(f"pipeline: a coordinator and three node processes, {rows:,} rows from two providers")
    rng = random.Random(5)
    subjects = [f"p-{i:07d}" for i in range(rows)]
    with (
        tempfile.TemporaryDirectory(prefix="dfg-bench-mpc-") as tmp,
        federation(Path(tmp), policy={"min_cell": 10, "release_extremes": False}, task_timeout=600) as fed,
    ):
        a = fed.admit("dp:a", "data_provider")
        b = fed.admit("dp:b", "data_provider")
        analyst = fed.admit("ao:bench", "analyst_org")
        ds_a = fed.datasource(a, "A", [("x", "decimal", "-100", "100")])
        ds_b = fed.datasource(b, "B", [("y", "decimal", "-100", "100")])
        timings = UploadTimings()
        fed.upload(a, ds_a, [{"subject": s, "x": f"{rng.uniform(-99, 99):.3f}"} for s in subjects], timings)
        fed.upload(b, ds_b, [{"subject": s, "y": f"{rng.uniform(-99, 99):.3f}"} for s in subjects], timings)
        fed.consent(analyst, subjects)
        analysis_id = fed.analysis(
            analyst, "bench", [("x", ds_a, "x"), ("y", ds_b, "y")],
            [("all", "x >= 0", ["mean(x)", "variance(x)", "correlation(x, y)"])],
        )  # fmt: skip
        fed.wait_for(analysis_id, ["results_approved"], timeout=3600)
        started = time.perf_counter()
        key, _ = analyst_key()
        fed.results(analyst, key, analysis_id)
        reveal = time.perf_counter() - started
        states = fed.task_states(analysis_id)
    return {
        "rows": float(rows),
        "sharing_s": timings.sharing_s,
        "upload_s": timings.upload_s,
        "join_s": _span([s for s in states if s["taskId"] == 1]),
        "compute_s": _span([s for s in states if s["taskId"] != 1]),
        "reveal_s": reveal,
    }


def _span(states: list[dict[str, Any]]) -> float:
    """From the first claim to the last finish, by the ledger's times."""
    starts = [datetime.fromisoformat(s["claimedTs"]) for s in states if s["claimedTs"]]
    ends = [datetime.fromisoformat(s["finishedTs"]) for s in states if s["finishedTs"]]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
