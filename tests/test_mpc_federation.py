"""Three real node processes over loopback compute analyses end to end: from signed
transactions to the analyst's decrypted results -- with consent enforced in each
node's own replica, output privacy below k, and faults (a node killed mid-task, a
node sending wrong shares, a tampered share bundle) detected and reported, never
turned into a wrong result."""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gateways.federation import Federation, analyst_key, federation
from gateways.sdk import TransactionBuilder

pytestmark = pytest.mark.slow

K = 5  # the nodes' minimum cell size in these tests


@dataclass
class Study:
    """A federation with two providers' data, consents given, withdrawn and never given."""

    fed: Federation
    analyst: TransactionBuilder
    provider_a: TransactionBuilder
    provider_b: TransactionBuilder
    ds_a: str
    ds_b: str
    rows_a: dict[str, dict[str, float]]
    rows_b: dict[str, dict[str, float]]
    consenting: set[str]
    withdrawn: set[str]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    root = tmp_path_factory.mktemp("federation")
    with federation(root, policy={"min_cell": K, "release_extremes": True}, task_timeout=6) as fed:
        a = fed.admit("dp:clinic", "data_provider")
        b = fed.admit("dp:wearables", "data_provider")
        uni = fed.admit("ao:university", "analyst_org")
        ds_a = fed.datasource(
            a,
            "Blood pressure",
            [
                ("age", "integer", "18", "100"),
                ("sbp", "decimal", "80", "220"),
                ("smoker", "boolean", None, None),
            ],
        )
        ds_b = fed.datasource(b, "Heart rate variability", [("hrv", "decimal", "5", "200")])
        rng = random.Random(7)
        subjects = [f"p-{i:04d}" for i in range(90)]
        rows_a = {
            s: {
                "age": rng.randint(20, 90),
                "sbp": round(rng.uniform(95, 185), 2),
                "smoker": rng.randint(0, 1),
            }
            for s in subjects[:70]
        }
        rows_b = {s: {"hrv": round(rng.uniform(10, 150), 2)} for s in subjects[20:]}
        fed.upload(
            a,
            ds_a,
            [{"subject": s, **{k: str(v) for k, v in r.items()}} for s, r in rows_a.items()],
        )
        fed.upload(b, ds_b, [{"subject": s, "hrv": str(r["hrv"])} for s, r in rows_b.items()])
        consenting = set(subjects[::3]) | set(subjects[1::3])  # a third never consents
        ids = fed.consent(uni, sorted(consenting))
        both = set(rows_a) & set(rows_b)
        withdrawn = sorted(consenting & both)[:6]  # subjects who would otherwise be computed on
        fed.submit_all([uni.withdraw_consent(consent_id=ids[s], subject=s) for s in withdrawn])
        consenting -= set(withdrawn)
        yield Study(fed, uni, a, b, ds_a, ds_b, rows_a, rows_b, consenting, set(withdrawn))


def _view(study: Study) -> list[tuple[str, str, str]]:
    return [
        ("age", study.ds_a, "age"), ("sbp", study.ds_a, "sbp"), ("smoker", study.ds_a, "smoker"),
        ("hrv", study.ds_b, "hrv"),
    ]  # fmt: skip


def _plain(study: Study, keep: object, subjects: set[str] | None = None) -> dict[str, np.ndarray]:
    chosen_subjects = study.consenting if subjects is None else subjects
    rows = [
        {**study.rows_a[s], **study.rows_b[s]}
        for s in sorted(chosen_subjects & set(study.rows_a) & set(study.rows_b))
    ]
    chosen = [r for r in rows if keep(r)]  # type: ignore[operator]
    return {
        name: np.array([r[name] for r in chosen], dtype=float) for name in ("age", "sbp", "smoker", "hrv")
    }


def test_an_analysis_is_computed_end_to_end_and_matches_plaintext_over_consenting_subjects(
    study: Study,
) -> None:
    fed = study.fed
    analysis_id = fed.analysis(
        study.analyst,
        "Blood pressure and HRV",
        _view(study),
        [
            (
                "older",
                "age >= 50",
                ["count()", "mean(sbp)", "variance(sbp)", "histogram(sbp, 3)", "max(hrv)"],
            ),
            ("association", None, ["correlation(sbp, hrv)", "mean(hrv)"]),
            ("smokers", "smoker == 1", ["count()", "mean(hrv)"]),
        ],
    )
    assert (
        fed.wait_for(analysis_id, ["results_approved", "failed", "results_rejected"])["status"]
        == "RESULTS_APPROVED"
    )
    key, _ = analyst_key()
    results = {
        r.name: {x["function"]: x for x in r.results} for r in fed.results(study.analyst, key, analysis_id)
    }

    older = _plain(study, lambda r: r["age"] >= 50)
    assert results["older"]["count()"]["count"] == len(older["sbp"])  # withdrawn and never-consented excluded
    everyone_everywhere = set(study.rows_a) | set(study.rows_b)
    with_withdrawn = _plain(study, lambda r: True, study.consenting | study.withdrawn)
    all_subjects = _plain(study, lambda r: True, everyone_everywhere)
    assert len(with_withdrawn["sbp"]) > len(_plain(study, lambda r: True)["sbp"])
    assert len(all_subjects["sbp"]) > len(with_withdrawn["sbp"])  # so both exclusions are exercised
    assert float(results["older"]["mean(sbp)"]["value"]) == pytest.approx(older["sbp"].mean(), abs=1e-3)
    assert float(results["older"]["variance(sbp)"]["value"]) == pytest.approx(
        older["sbp"].var(ddof=1), rel=1e-4
    )
    assert float(results["older"]["max(hrv)"]["value"]) == pytest.approx(older["hrv"].max(), abs=1e-4)
    counts, _ = np.histogram(older["sbp"], bins=[80, 80 + 140 / 3, 80 + 280 / 3, 220])
    shown = results["older"]["histogram(sbp, 3)"]["counts"]
    assert [c for c in shown if c is not None] == [int(c) for c in counts if c >= K]
    everyone = _plain(study, lambda r: True)
    correlation = np.corrcoef(everyone["sbp"], everyone["hrv"])[0, 1]
    assert results["association"]["correlation(sbp, hrv)"]["value"] == pytest.approx(correlation, abs=1e-4)
    assert float(results["association"]["mean(hrv)"]["value"]) == pytest.approx(
        everyone["hrv"].mean(), abs=1e-3
    )
    smokers = _plain(study, lambda r: r["smoker"] == 1)  # a boolean variable in a filter
    assert results["smokers"]["count()"]["count"] == len(smokers["hrv"])
    assert float(results["smokers"]["mean(hrv)"]["value"]) == pytest.approx(smokers["hrv"].mean(), abs=1e-3)
    _a_node_hands_shares_only_for_an_access_request_of_this_analysis(study, analysis_id)


def _a_node_hands_shares_only_for_an_access_request_of_this_analysis(study: Study, analysis_id: str) -> None:
    from strawberry.relay import to_base64

    from gateways.analyst_results import ANALYSIS, RESULT, ResultsError, graphql

    fed = study.fed
    terms = {
        "purposes": ["dpv:Marketing"],
        "data_categories": ["dpv-pd:HealthRecord"],
        "notice": {"url": "https://study.example/other", "sha256": "cd" * 32},
    }
    other = study.analyst.give_consent_copy(consent_id=str(uuid.uuid4()), subject="p-extra", terms=terms)
    seq = fed.client.submit(other).seq
    node = fed.nodes["node:a"]
    deadline = time.monotonic() + 30
    while json.loads(urllib.request.urlopen(f"{node.url}/healthz").read())["size"] < seq:
        assert time.monotonic() < deadline, "the node's replica did not catch up"
        time.sleep(0.1)
    gid = to_base64("Analysis", analysis_id)
    approvals = graphql(fed.url, ANALYSIS, id=gid)["analysis"]["approvals"]
    org = next(a["orgId"] for a in approvals if a["organization"] == "node:a")
    with pytest.raises(ResultsError) as refused:
        graphql(node.url, RESULT, id=gid, org=org, requests=[[other]])
    assert refused.value.code == "access_not_recorded"


def test_a_filter_selecting_fewer_than_k_subjects_gets_no_results_and_no_count_anywhere(study: Study) -> None:
    fed = study.fed
    analysis_id = fed.analysis(
        study.analyst, "Too few", _view(study), [("tiny", "sbp > 184", ["count()", "mean(hrv)"])]
    )
    found = fed.wait_for(analysis_id, ["results_approved", "failed", "results_rejected"])
    assert found["status"] == "RESULTS_REJECTED"
    declined = [a for a in found["approvals"] if a["resultsState"] == "DECLINED"]
    assert declined and not [a for a in found["approvals"] if a["resultsState"] == "APPROVED"]
    # the ledger takes no answer after the first decline: the others' are not awaited
    assert {a["resultsState"] for a in found["approvals"]} <= {"DECLINED", "NOT_READY"}
    assert all("minimum cell size" in a["resultsReason"] for a in declined)
    for node in fed.nodes.values():
        (stored,) = (node.data / "work" / analysis_id).glob("result-*.json")
        result = json.loads(stored.read_bytes())
        assert result["shares"] == []  # the count was never even opened to the node
        assert all(o["suppressed"] == f"fewer than {K} records" for o in result["outputs"])
        log = node.log.read_text()
        assert "count" not in log.lower().replace("count()", "")


def _fail_reason(fed: Federation, analysis_id: str) -> str:
    found = fed.wait_for(analysis_id, ["failed", "results_approved", "results_rejected"], timeout=120)
    assert found["status"] == "FAILED", found
    return str(found["failure"]["reason"])


def test_a_tampered_share_bundle_is_refused_against_its_ledger_commitment(study: Study) -> None:
    fed = study.fed
    (bundle,) = (fed.nodes["node:b"].data / "bundles" / study.ds_b).glob("*.sealed")  # kept by its hash
    original = bundle.read_bytes()
    bundle.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        analysis_id = fed.analysis(study.analyst, "Tampered", _view(study), [("all", None, ["mean(hrv)"])])
        assert "does not match the commitment" in _fail_reason(fed, analysis_id)
        # node:b told the others, which stopped waiting for it instead of timing out; a
        # node whose replica learnt of the analysis's failure before it claimed its task
        # did not start it (the ledger refused the claim), and says so
        for name in ("node:a", "node:c"):
            line = _task_end_logged(fed.nodes[name].log, analysis_id)
            told = "node:b gave up round 1" in line and "does not match the commitment" in line
            assert told or "not started: the analysis stopped computing" in line, line
    finally:
        bundle.write_bytes(original)


def _task_end_logged(log: Path, analysis_id: str) -> str:
    """The line where a node logged that its task of the analysis failed, or that it
    did not start it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if (
                f"of analysis {analysis_id} failed:" in line
                or f"of analysis {analysis_id} not started:" in line
            ):
                return line
        time.sleep(0.05)
    raise AssertionError(f"{log} never says how its task of {analysis_id} ended")


def test_a_node_sending_a_wrong_share_is_detected_at_opening(study: Study) -> None:
    fed = study.fed
    cheater = fed.nodes["node:c"]
    fed.kill_node("node:c")
    fed.start_node(cheater, {"DFG_MPC_FAULT": "corrupt-opening"})
    try:
        analysis_id = fed.analysis(
            study.analyst, "Cheating", _view(study), [("older", "age >= 50", ["mean(sbp)"])]
        )
        reason = _fail_reason(fed, analysis_id)
        assert "node:c's share of value" in reason and "is inconsistent" in reason
    finally:
        fed.kill_node("node:c")
        fed.start_node(cheater)


def test_a_node_killed_mid_task_fails_the_task_and_the_others_time_out(study: Study) -> None:
    fed = study.fed
    victim = fed.nodes["node:a"]
    assert victim.process is not None
    victim.process.send_signal(signal.SIGSTOP)  # hold it still, then kill it once it has claimed
    try:
        analysis_id = fed.analysis(
            study.analyst,
            "Interrupted",
            _view(study),
            [("hist", None, ["histogram(sbp, 12)", "histogram(hrv, 12)"])],
        )
        mark = victim.log.read_text().count("claimed")
        victim.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while victim.log.read_text().count("claimed") < mark + 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the merge task is claimed, then the computation
        fed.kill_node("node:a")
        reason = _fail_reason(fed, analysis_id)
        assert "did not answer" in reason or "restarted" in reason or "cannot reach" in reason
    finally:
        if victim.process is None:
            fed.start_node(victim)
    assert fed.status(analysis_id)["status"] == "FAILED"  # the restarted node did not resurrect it
