"""The analysis lifecycle on the ledger: every move a signed transaction, every forbidden
move refused with its code, and the result audits like any other ledger."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Ledger

from ledger.audit import audit_store
from ledger.errors import Rejected
from ledger.sequencer import Accepted
from ledger.signing import TransactionSigner

HEART = "dpv-pd:HeartRate"
HEALTH = "dpv-pd:HealthRecord"


def ids() -> str:
    return str(uuid.uuid4())


@dataclass
class Federation:
    ledger: Ledger
    provider_a: TransactionSigner
    provider_b: TransactionSigner
    analyst: TransactionSigner
    nodes: list[TransactionSigner]
    outsider_node: TransactionSigner
    datasource_a: str
    datasource_b: str
    catalog_a: str
    data_view: str

    def do(self, signer: TransactionSigner, tx_type: str, body: dict[str, Any]) -> Accepted:
        (outcome,) = self.ledger.submit(self.ledger.sign(signer, tx_type, body))
        assert isinstance(outcome, Accepted), outcome
        return outcome

    def refused(self, signer: TransactionSigner, tx_type: str, body: dict[str, Any], code: str) -> Rejected:
        before = self.ledger.head()
        (outcome,) = self.ledger.submit(self.ledger.sign(signer, tx_type, body))
        assert isinstance(outcome, Rejected), f"{tx_type} was accepted"
        assert outcome.code == code, outcome
        assert self.ledger.head() == before  # no trace in the log
        return outcome


def _datasource(
    fed_do: Any, provider: TransactionSigner, catalog: str, keys: list[str], variables: list[dict[str, Any]]
) -> str:
    datasource = ids()
    fed_do(
        provider,
        "datasource.create",
        {
            "datasource_id": datasource,
            "catalog_id": catalog,
            "name": f"{provider.principal} measurements",
            "origin": {"kind": "fhir", "resource": "Observation"},
            "keys": keys,
            "data_categories": [HEART, HEALTH],
        },
    )
    for variable in variables:
        fed_do(provider, "variable.create", {"datasource_id": datasource, **variable})
    return datasource


@pytest.fixture
def fed(ledger: Ledger) -> Federation:
    return make_federation(ledger)


def make_federation(ledger: Ledger) -> Federation:
    """Two data providers, an analyst organisation, three nodes and one more, with their
    catalogs, datasources and a data view."""
    provider_a = ledger.admit("dp:meteda", "data_provider")
    provider_b = ledger.admit("dp:cardiolyse", "data_provider")
    analyst = ledger.admit("ao:lab", "analyst_org")
    nodes = [ledger.admit(f"node:n{i}", "node_operator") for i in range(3)]
    outsider = ledger.admit("node:other", "node_operator")
    f = Federation(ledger, provider_a, provider_b, analyst, nodes, outsider, "", "", "", "")
    catalog_a, catalog_b = ids(), ids()
    f.do(provider_a, "catalog.create", {"catalog_id": catalog_a, "name": "Meteda diabetes"})
    f.do(provider_b, "catalog.create", {"catalog_id": catalog_b, "name": "Cardiolyse ECG"})
    f.catalog_a = catalog_a
    f.datasource_a = _datasource(
        f.do,
        provider_a,
        catalog_a,
        ["subject", "household"],
        [
            {"name": "age", "type": "integer", "unit": "a", "min": "0", "max": "120"},
            {"name": "hba1c", "type": "decimal", "unit": "mmol/mol", "min": "10", "max": "200"},
        ],
    )
    f.datasource_b = _datasource(
        f.do,
        provider_b,
        catalog_b,
        ["subject"],
        [{"name": "hrv", "type": "decimal", "unit": "ms", "min": "0", "max": "500"}],
    )
    f.data_view = ids()
    f.do(
        analyst,
        "data_view.create",
        {
            "data_view_id": f.data_view,
            "name": "Diabetes and HRV",
            "variables": [
                {"alias": "age", "datasource_id": f.datasource_a, "variable": "age"},
                {"alias": "hba1c", "datasource_id": f.datasource_a, "variable": "hba1c"},
                {"alias": "hrv", "datasource_id": f.datasource_b, "variable": "hrv"},
            ],
        },
    )
    return f


def _draft(f: Federation) -> str:
    analysis = ids()
    f.do(
        f.analyst,
        "analysis.create",
        {
            "analysis_id": analysis,
            "name": "HbA1c and heart rate variability",
            "data_view_id": f.data_view,
            "consent": {"purpose": "dpv:ScientificResearch", "data_categories": [HEART, HEALTH]},
        },
    )
    f.do(f.analyst, "analysis.set_merge", {"analysis_id": analysis, "merge": {"key": "subject"}})
    for name, flt, functions in [
        ("adults", "age >= 18", ["count()", "mean(hba1c)"]),
        ("hrv", "hba1c > 48 & !(age < 30)", ["histogram(hrv, 10)", "stddev(hrv)"]),
        ("model", "", ["linear_regression(hrv ~ hba1c + age)", "correlation(hrv, hba1c)"]),
    ]:
        f.do(
            f.analyst,
            "calculation.create",
            {
                "analysis_id": analysis,
                "calculation_id": ids(),
                "name": name,
                "filter": flt,
                "functions": functions,
            },
        )
    return analysis


def _send(f: Federation, analysis: str) -> None:
    f.do(f.analyst, "data_view.send", {"data_view_id": f.data_view})
    f.do(f.analyst, "analysis.send", {"analysis_id": analysis, "nodes": [n.principal for n in f.nodes]})


def test_the_whole_lifecycle_and_it_audits(fed: Federation) -> None:
    f = fed
    commitments = {node.principal: f"{i:02x}" * 32 for i, node in enumerate(f.nodes)}
    body = {"datasource_id": f.datasource_a, "commitments": commitments, "records": 1200}
    f.do(f.provider_a, "datasource.commit_shares", body)
    bad = {**body, "commitments": {**commitments, f.analyst.principal: "ff" * 32}}
    f.refused(f.provider_a, "datasource.commit_shares", bad, "not_a_node")
    analysis = _draft(f)
    f.do(f.analyst, "analysis.add_catalog", {"analysis_id": analysis, "catalog_id": f.catalog_a})
    f.do(f.analyst, "analysis.add_datasource", {"analysis_id": analysis, "datasource_id": f.datasource_a})
    f.do(f.analyst, "analysis.update", {"analysis_id": analysis, "note": "pilot"})
    _send(f, analysis)
    statuses = [
        f.do(node, "analysis.approve", {"analysis_id": analysis}).entry.data["status"] for node in f.nodes
    ]
    assert statuses == ["sent", "sent", "approved"]
    queued = f.do(f.analyst, "analysis.queue", {"analysis_id": analysis})
    assert queued.entry.data["status"] == "queued"
    tasks = queued.entry.data["tasks"]
    assert [t["task_id"] for t in tasks] == [1, 2, 3, 4]
    assert tasks[0]["stage"] == "merge" and {t["stage"] for t in tasks[1:]} == {"compute"}
    moves = []
    for node in f.nodes:
        for task in tasks:
            moves.append(f.do(node, "task.claim", {"analysis_id": analysis, "task_id": task["task_id"]}))
            finish = {"analysis_id": analysis, "task_id": task["task_id"], "commitment": "cd" * 32}
            moves.append(f.do(node, "task.finish", finish))
    assert [m.entry.data["status"] for m in moves] == ["computing"] * (len(moves) - 1) + ["computed"]
    results = [f.do(node, "results.approve", {"analysis_id": analysis}).entry for node in f.nodes]
    assert [e.data["status"] for e in results] == ["computed", "computed", "results_approved"]
    ec_key = {"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "B" * 43}  # rules version 2: refused
    f.refused(
        f.analyst,
        "results.request_access",
        {"analysis_id": analysis, "recipient_jwk": ec_key},
        "unusable_key",
    )
    released = f.do(
        f.analyst,
        "results.request_access",
        {"analysis_id": analysis, "recipient_jwk": {"kty": "OKP", "crv": "X25519", "x": "A" * 43}},
    )
    assert released.entry.event_type == "Analysis.AccessRequested"
    assert released.entry.data["status"] == "released"
    report = audit_store(f.ledger.sequencer.store)
    assert report.ok, report.first_problem


def test_duplicates_start_as_editable_drafts(fed: Federation) -> None:
    f = fed
    analysis = _draft(f)
    _send(f, analysis)
    copy = ids()
    created = f.do(f.analyst, "analysis.duplicate", {"analysis_id": analysis, "new_analysis_id": copy})
    assert created.entry.data["duplicated_from"] == analysis
    assert len(created.entry.data["calculations"]) == 3
    f.do(f.analyst, "analysis.update", {"analysis_id": copy, "name": "second try"})
    view = ids()
    f.do(f.analyst, "data_view.duplicate", {"data_view_id": f.data_view, "new_data_view_id": view})


# --- forbidden moves ---------------------------------------------------------------------


def test_editing_a_sent_analysis_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    _send(fed, analysis)
    fed.refused(fed.analyst, "analysis.update", {"analysis_id": analysis, "name": "x"}, "analysis_locked")
    calc = {"analysis_id": analysis, "calculation_id": ids(), "name": "n", "functions": ["count()"]}
    fed.refused(fed.analyst, "calculation.create", calc, "analysis_locked")
    merge = {"analysis_id": analysis, "merge": {"key": "subject"}}
    fed.refused(fed.analyst, "analysis.set_merge", merge, "analysis_locked")
    fed.refused(fed.analyst, "analysis.delete", {"analysis_id": analysis}, "analysis_locked")


def test_approving_twice_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    _send(fed, analysis)
    fed.do(fed.nodes[0], "analysis.approve", {"analysis_id": analysis})
    fed.refused(fed.nodes[0], "analysis.approve", {"analysis_id": analysis}, "already_approved")


def test_approving_as_a_non_node_organisation_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    _send(fed, analysis)
    fed.refused(fed.analyst, "analysis.approve", {"analysis_id": analysis}, "role_not_allowed")
    fed.refused(fed.provider_a, "analysis.approve", {"analysis_id": analysis}, "role_not_allowed")
    fed.refused(
        fed.outsider_node, "analysis.approve", {"analysis_id": analysis}, "not_a_node_of_this_analysis"
    )


def test_queueing_before_all_approvals_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    fed.refused(fed.analyst, "analysis.queue", {"analysis_id": analysis}, "not_approved")
    _send(fed, analysis)
    fed.do(fed.nodes[0], "analysis.approve", {"analysis_id": analysis})
    refusal = fed.refused(fed.analyst, "analysis.queue", {"analysis_id": analysis}, "approvals_missing")
    assert "node:n1" in refusal.message and "node:n2" in refusal.message


def test_releasing_results_before_results_approval_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    _send(fed, analysis)
    for node in fed.nodes:
        fed.do(node, "analysis.approve", {"analysis_id": analysis})
    fed.do(fed.analyst, "analysis.queue", {"analysis_id": analysis})
    jwk = {"kty": "OKP", "crv": "X25519", "x": "A" * 43}
    access = {"analysis_id": analysis, "recipient_jwk": jwk}
    fed.refused(fed.analyst, "results.request_access", access, "results_not_approved")
    for odd in ({**jwk, "ключ": "v"}, {**jwk, **{f"m{i}": "v" for i in range(14)}}):
        # a member name that is not ASCII would sort differently in RFC 8785's JSON
        fed.refused(fed.analyst, "results.request_access", {**access, "recipient_jwk": odd}, "invalid_body")
    fed.refused(fed.nodes[0], "results.approve", {"analysis_id": analysis}, "results_not_ready")
    fed.refused(fed.nodes[0], "task.claim", {"analysis_id": analysis, "task_id": 2}, "merge_first")
    fed.refused(
        fed.nodes[0],
        "task.finish",
        {"analysis_id": analysis, "task_id": 1, "commitment": "00" * 32},
        "task_not_claimed",
    )
    fed.refused(fed.nodes[0], "task.claim", {"analysis_id": analysis, "task_id": 9}, "unknown_task")


def test_a_filter_that_does_not_parse_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    calc = {
        "analysis_id": analysis,
        "calculation_id": ids(),
        "name": "bad",
        "filter": "age >",
        "functions": ["count()"],
    }
    refusal = fed.refused(fed.analyst, "calculation.create", calc, "filter_syntax")
    assert "column 6" in refusal.message


def test_a_calculation_over_a_variable_the_data_view_lacks_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    calc = {"analysis_id": analysis, "calculation_id": ids(), "name": "bad", "functions": ["mean(weight)"]}
    refusal = fed.refused(fed.analyst, "calculation.create", calc, "unknown_variable")
    assert "'weight'" in refusal.message


def test_a_merge_on_a_key_one_datasource_lacks_is_refused(fed: Federation) -> None:
    analysis = _draft(fed)
    merge = {"analysis_id": analysis, "merge": {"key": "household"}}
    refusal = fed.refused(fed.analyst, "analysis.set_merge", merge, "merge_key_missing")
    assert "household" in refusal.message


def test_sending_needs_a_sent_data_view_and_real_nodes(fed: Federation) -> None:
    analysis = _draft(fed)
    nodes = [n.principal for n in fed.nodes]
    fed.refused(fed.analyst, "analysis.send", {"analysis_id": analysis, "nodes": nodes}, "data_view_not_sent")
    fed.do(fed.analyst, "data_view.send", {"data_view_id": fed.data_view})
    bad = [*nodes[:2], fed.analyst.principal]
    fed.refused(fed.analyst, "analysis.send", {"analysis_id": analysis, "nodes": bad}, "not_a_node")


def test_only_owners_change_what_they_own(fed: Federation) -> None:
    fed.refused(
        fed.provider_b,
        "variable.create",
        {"datasource_id": fed.datasource_a, "name": "x", "type": "boolean"},
        "not_owner",
    )
    other_analyst = fed.ledger.admit("ao:other", "analyst_org")
    analysis = _draft(fed)
    fed.refused(other_analyst, "analysis.update", {"analysis_id": analysis, "name": "mine"}, "not_owner")
    fed.refused(fed.analyst, "catalog.create", {"catalog_id": ids(), "name": "x"}, "role_not_allowed")


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ({"name": "x", "type": "integer"}, "allowed range"),
        ({"name": "x", "type": "decimal", "min": "5", "max": "1"}, "min must be below max"),
        ({"name": "x", "type": "category"}, "lists its categories"),
        ({"name": "x", "type": "integer", "min": "0", "max": "1e400x"}, "not a decimal"),
        ({"name": "1x", "type": "boolean"}, "name"),
    ],
)
def test_variable_specifications_are_validated(
    fed: Federation, variable: dict[str, Any], message: str
) -> None:
    refusal = fed.refused(
        fed.provider_a, "variable.create", {"datasource_id": fed.datasource_a, **variable}, "invalid_body"
    )
    assert message in refusal.message


def test_an_analysis_whose_modulus_is_too_small_is_refused_when_defined(fed: Federation) -> None:
    body = {
        "analysis_id": ids(),
        "name": "too small",
        "data_view_id": fed.data_view,
        "consent": {"purpose": "dpv:ScientificResearch", "data_categories": [HEART]},
        "modulus": str(2**61 - 1),
    }
    refusal = fed.refused(fed.analyst, "analysis.create", body, "modulus_too_small")
    assert "61 bits" in refusal.message and "at least" in refusal.message
    body["fixed_point_precision"] = 0  # or fewer fractional bits: then it fits
    body["modulus"] = str(2**89 - 1)
    fed.do(fed.analyst, "analysis.create", body)
    raise_precision = {"analysis_id": body["analysis_id"], "fixed_point_precision": 32}
    fed.refused(fed.analyst, "analysis.update", raise_precision, "modulus_too_small")


@pytest.mark.parametrize("huge", ["9e999999", "1e999990", "1e1000000"])  # the last past Decimal's Emax
def test_a_range_of_astronomic_magnitude_is_refused_at_once_without_failing_its_batch(
    fed: Federation, huge: str
) -> None:
    """A 40-character range such as 1e999990 held the sequencer's thread for a minute
    per analysis over it (numbers of millions of digits), and 9e999999 overflowed
    Decimal: every transaction of the batch failed with it."""
    fed.do(
        fed.provider_a,
        "variable.create",
        {"datasource_id": fed.datasource_a, "name": "huge", "type": "decimal", "min": "0", "max": huge},
    )
    view = ids()
    variables = [{"alias": "huge", "datasource_id": fed.datasource_a, "variable": "huge"}]
    fed.do(fed.analyst, "data_view.create", {"data_view_id": view, "name": "huge", "variables": variables})
    body = {
        "analysis_id": ids(),
        "name": "huge",
        "data_view_id": view,
        "consent": {"purpose": "dpv:ScientificResearch", "data_categories": [HEART]},
    }
    other = fed.ledger.sign(fed.provider_b, "catalog.create", {"catalog_id": ids(), "name": "Other"})
    started = time.monotonic()
    refused, accepted = fed.ledger.submit(fed.ledger.sign(fed.analyst, "analysis.create", body), other)
    assert time.monotonic() - started < 5
    assert isinstance(refused, Rejected) and refused.code == "modulus_too_small"
    assert isinstance(accepted, Accepted)


def _wide_calculation(analysis: str) -> dict[str, Any]:
    """A calculation of about 3 KB as the ledger records it (its transaction: 4 KB)."""
    return {
        "analysis_id": analysis,
        "calculation_id": ids(),
        "name": "n" * 200,
        "filter": " | ".join(["age > 1"] * 200)[:1990].rsplit(" |", 1)[0],
        "functions": ["histogram(hba1c, 1000)"] * 32,
    }


def test_an_entry_larger_than_a_kafka_record_is_refused(fed: Federation) -> None:
    """analysis.duplicate copies every calculation into its entry: after 400 calculations
    a 500-byte transaction made an entry over 1 MiB, which the relay cannot publish (it
    retried it for ever, and replication stopped for every node)."""
    f = fed
    analysis = _draft(f)
    tokens = [f.ledger.sign(f.analyst, "calculation.create", _wide_calculation(analysis)) for _ in range(400)]
    f.ledger.accept(*tokens)
    duplicate = {"analysis_id": analysis, "new_analysis_id": ids()}
    refusal = f.refused(f.analyst, "analysis.duplicate", duplicate, "entry_too_large")
    assert "an entry is at most 1,000,000 bytes" in refusal.message
    f.do(f.analyst, "calculation.create", _wide_calculation(analysis))  # the draft goes on


def test_a_refused_entry_too_large_leaves_no_trace_in_the_batch(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler of the refused transaction changed its aggregate in place, and an
    earlier transaction of the same batch had changed it too: both are undone to exactly
    what was accepted."""
    import ledger.sequencer

    f = fed
    analysis = _draft(f)
    small, wide, after = (
        {"analysis_id": analysis, "calculation_id": ids(), "name": "small", "functions": ["count()"]},
        _wide_calculation(analysis),
        {"analysis_id": analysis, "calculation_id": ids(), "name": "after", "functions": ["count()"]},
    )
    monkeypatch.setattr(ledger.sequencer, "MAX_ENTRY_BYTES", 4000)
    outcomes = f.ledger.submit(
        *(f.ledger.sign(f.analyst, "calculation.create", c) for c in (small, wide, after))
    )
    assert [type(o).__name__ for o in outcomes] == ["Accepted", "Rejected", "Accepted"]
    assert outcomes[1].code == "entry_too_large"
    update = {**wide, "name": "now small", "filter": "", "functions": ["count()"]}
    f.refused(f.analyst, "calculation.update", update, "unknown_calculation")
    f.do(f.analyst, "calculation.update", {**small, "name": "small again"})
    report = audit_store(f.ledger.sequencer.store)
    assert report.ok, report.first_problem


def test_a_nonce_and_an_aggregate_an_entry_too_large_refusal_left_are_free_in_its_batch(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused first in its batch, on an aggregate the batch had not touched: its nonce
    is the signer's next one still, its calculation was never made, and the ledger the
    batch leaves verifies (the nonce index included)."""
    from click.testing import CliRunner

    import ledger.sequencer
    from gateways.cli.main import cli

    f = fed
    analysis = _draft(f)
    wide = _wide_calculation(analysis)
    small = {"analysis_id": analysis, "calculation_id": ids(), "name": "small", "functions": ["count()"]}
    narrowed = {**wide, "name": "narrowed", "filter": "", "functions": ["count()"]}
    monkeypatch.setattr(ledger.sequencer, "MAX_ENTRY_BYTES", 4000)
    refused = f.ledger.sign(f.analyst, "calculation.create", wide)
    tokens = [
        refused,
        f.ledger.sign(f.analyst, "calculation.create", small, nonce=f.analyst.nonce),  # the same nonce
        f.ledger.sign(f.analyst, "calculation.update", narrowed),
        f.ledger.sign(f.analyst, "calculation.create", narrowed),
        refused,
    ]
    outcomes = f.ledger.submit(*tokens)
    assert [getattr(o, "code", "accepted") for o in outcomes] == [
        "entry_too_large",
        "accepted",
        "unknown_calculation",
        "accepted",
        "nonce_reused",
    ]
    f.do(f.analyst, "calculation.update", {**narrowed, "name": "narrowed again"})
    result = CliRunner().invoke(
        cli, ["audit", "verify", "--data", str(f.ledger.settings.data_dir), "--no-progress"]
    )
    assert result.exit_code == 0, result.output


def test_nodes_register_an_encryption_key_for_their_share_bundles(fed: Federation) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "X25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
    done = fed.do(fed.nodes[0], "node.set_encryption_key", {"jwk": jwk})
    assert done.entry.event_type == "Principal.EncryptionKeySet"
    fed.refused(fed.nodes[0], "node.set_encryption_key", {"jwk": jwk}, "nothing_to_change")
    fed.refused(fed.analyst, "node.set_encryption_key", {"jwk": jwk}, "role_not_allowed")
    signing = {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]}
    fed.refused(fed.nodes[1], "node.set_encryption_key", {"jwk": signing}, "invalid_body")
    private = {**jwk, "d": jwk["x"]}
    fed.refused(fed.nodes[1], "node.set_encryption_key", {"jwk": private}, "invalid_body")


def test_node_organisations_record_their_output_policy(fed: Federation) -> None:
    policy = {"min_cell": 20, "release_extremes": False, "approval": "automatic"}
    done = fed.do(fed.nodes[0], "node.set_policy", policy)
    assert done.entry.event_type == "Principal.PolicySet" and done.entry.data["policy"] == policy
    fed.refused(fed.nodes[0], "node.set_policy", policy, "nothing_to_change")
    fed.refused(fed.analyst, "node.set_policy", policy, "role_not_allowed")
    fed.refused(fed.nodes[1], "node.set_policy", {"min_cell": 0}, "invalid_body")
    fed.refused(fed.nodes[1], "node.set_policy", {"approval": "sometimes"}, "invalid_body")


def test_catalogs_and_datasources_are_added_once_and_removed_only_if_present(fed: Federation) -> None:
    analysis = _draft(fed)
    for kind, member in (("catalog", fed.catalog_a), ("datasource", fed.datasource_a)):
        body = {"analysis_id": analysis, f"{kind}_id": member}
        fed.do(fed.analyst, f"analysis.add_{kind}", body)
        fed.refused(fed.analyst, f"analysis.add_{kind}", body, f"{kind}_already_added")
        fed.do(fed.analyst, f"analysis.remove_{kind}", body)
        fed.refused(fed.analyst, f"analysis.remove_{kind}", body, f"unknown_{kind}")
        fed.refused(fed.analyst, f"analysis.add_{kind}", {**body, f"{kind}_id": ids()}, f"unknown_{kind}")
