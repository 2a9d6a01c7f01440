"""Versioned rules: an entry is decided, and replayed for ever, by the rules version in
effect before it -- the genesis entry's, then each one the operator adopts."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CHAIN, LEVEL1_TERMS, OPERATOR, Ledger, give_level1, make_ledger
from test_analysis_lifecycle import Federation, _draft, make_federation

from domain import rules
from gateways.cli.main import cli
from infra.bootstrap import create_ledger, open_sequencer, open_store, root_signer
from infra.settings import Settings
from ledger.audit import audit_store
from ledger.errors import Rejected
from ledger.replica import NeedsNewerDfg, Replica
from ledger.segmented_audit import audit_in_segments
from ledger.sequencer import Accepted
from ledger.signing import TransactionSigner


@pytest.fixture
def first_release(tmp_path: Path) -> Iterator[Ledger]:
    """A ledger whose genesis entry, as the first release wrote it, names no rules."""
    led = make_ledger(Settings(data_dir=tmp_path / "v1"), first_release=True)
    yield led
    led.sequencer.store.close()


def _ready(ledger: Ledger) -> tuple[Federation, TransactionSigner]:
    """The analysis federation with its data view sent, and a service provider."""
    f = make_federation(ledger)
    f.do(f.analyst, "data_view.send", {"data_view_id": f.data_view})
    return f, ledger.admit("sp:app", "service_provider")


def _send_to_two_nodes(f: Federation) -> Accepted | Rejected:
    body = {"analysis_id": _draft(f), "nodes": [node.principal for node in f.nodes[:2]]}
    (outcome,) = f.ledger.submit(f.ledger.sign(f.analyst, "analysis.send", body))
    return outcome


def _utilize_naming_a_category_twice(ledger: Ledger, app: TransactionSigner) -> Accepted | Rejected:
    (given,) = ledger.accept(give_level1(ledger, app, "p-rules"))
    category = LEVEL1_TERMS["data_categories"][0]
    body = {
        "consent_id": given.entry.data["consent_id"],
        "purpose": LEVEL1_TERMS["purposes"][0],
        "data_categories": [category, category],
    }
    (outcome,) = ledger.submit(ledger.sign(app, "consent.utilize", body))
    return outcome


def _adopt(ledger: Ledger, version: int, signer: TransactionSigner | None = None) -> Accepted | Rejected:
    (outcome,) = ledger.submit(
        ledger.sign(signer or ledger.operator, "ledger.adopt_rules", {"version": version})
    )
    return outcome


def _code(outcome: Accepted | Rejected) -> str:
    assert isinstance(outcome, Rejected), outcome
    return outcome.code


def test_a_first_release_ledger_follows_version_1_until_its_operator_adopts_version_2(
    first_release: Ledger,
) -> None:
    led = first_release
    f, app = _ready(led)
    # what the first release accepted stays accepted on its ledgers
    assert isinstance(_send_to_two_nodes(f), Accepted)
    assert isinstance(_utilize_naming_a_category_twice(led, app), Accepted)

    assert _code(_adopt(led, 2, f.analyst)) == "role_not_allowed"
    adopted = _adopt(led, 2)
    assert isinstance(adopted, Accepted) and adopted.entry.event_type == "LedgerRules.Adopted"
    assert _code(_send_to_two_nodes(f)) == "too_few_nodes"
    assert _code(_utilize_naming_a_category_twice(led, app)) == "repeated_category"
    assert _code(_adopt(led, 2)) == "rules_not_newer"
    assert _code(_adopt(led, rules.NEWEST + 1)) == "unknown_rules"

    # a sequencer started afresh reads the adopted version from the log
    led.sequencer.store.close()
    led.sequencer = open_sequencer(led.settings)
    assert _code(_send_to_two_nodes(f)) == "too_few_nodes"

    # replayed by the rules of their time: in one pass and in segments, each of which
    # starts from the state the entries before it left (after the adoption, or before)
    report = audit_store(led.sequencer.store)
    assert report.ok, report.first_problem
    store = led.sequencer.store
    segmented = audit_in_segments(store, partial(open_store, led.settings), segments=3, minimum=1)
    assert segmented.ok, segmented.first_problem
    assert segmented.entries == report.entries


def test_a_new_ledger_follows_the_newest_rules_from_its_genesis_entry(ledger: Ledger) -> None:
    f, app = _ready(ledger)
    assert ledger.sequencer.ledger is not None and ledger.sequencer.ledger["rules"] == rules.NEWEST
    assert _code(_send_to_two_nodes(f)) == "too_few_nodes"
    assert _code(_utilize_naming_a_category_twice(ledger, app)) == "repeated_category"
    assert _code(_adopt(ledger, rules.NEWEST)) == "rules_not_newer"
    store = ledger.sequencer.store
    segmented = audit_in_segments(store, partial(open_store, ledger.settings), segments=3, minimum=1)
    assert segmented.ok, segmented.first_problem


def test_an_entry_the_rules_in_effect_refuse_fails_the_audit(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequencer that decided by older rules than its ledger follows (a forged or buggy
    one) is caught: the audit and every segment read the genesis entry's version."""
    from ledger.state_view import AggregateLookups

    f, app = _ready(ledger)
    with monkeypatch.context() as lax:
        lax.setattr(AggregateLookups, "rules", lambda self: 1)
        sent = _send_to_two_nodes(f)
    assert isinstance(sent, Accepted)
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(9)])
    report = audit_store(ledger.sequencer.store)
    assert not report.ok and report.first_problem is not None
    assert (report.first_problem.seq, "too_few_nodes" in report.first_problem.message) == (sent.seq, True)
    store, reopen = ledger.sequencer.store, partial(open_store, ledger.settings)
    for segments in (2, 3):  # the bad entry in the second segment, then in the third
        segmented = audit_in_segments(store, reopen, segments=segments, minimum=1)
        assert segmented.first_problem is not None and segmented.first_problem.seq == sent.seq


def test_an_older_dfg_refuses_to_replay_a_ledger_that_follows_newer_rules(
    first_release: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deciding the entries after it by rules it does not have would be a guess."""
    led = first_release
    with monkeypatch.context() as newer:
        newer.setattr(rules, "NEWEST", 3)
        assert isinstance(_adopt(led, 3), Accepted)
    report = audit_store(led.sequencer.store)
    assert not report.ok and report.first_problem is not None
    assert report.first_problem.seq == led.head()[0]
    assert "this dfg knows versions up to 2: upgrade dfg" in report.first_problem.message
    led.sequencer.store.close()
    data = ["--data", str(led.settings.data_dir)]
    shown = CliRunner().invoke(cli, ["rules", "show", *data, "--json"])
    assert shown.exit_code == 1 and json.loads(shown.output)["version"] == 3
    shown = CliRunner().invoke(cli, ["rules", "show", *data])
    assert shown.exit_code == 1 and "newer than this dfg knows: upgrade dfg" in shown.output
    for layout in ([], ["--segments", "2"]):  # an auditor's script tells this from tampering
        audited = CliRunner().invoke(cli, ["audit", "verify", *data, *layout])
        assert audited.exit_code == 2, audited.output
        assert "NOT VERIFIED: entry" in audited.output and "upgrade dfg and audit again" in audited.output
        assert "FAILED" not in audited.output


def test_the_operator_sees_and_adopts_the_rules_from_the_command_line(first_release: Ledger) -> None:
    led = first_release
    led.sequencer.store.close()  # the commands take the ledger's writer lock
    data = ["--data", str(led.settings.data_dir)]
    shown = CliRunner().invoke(cli, ["rules", "show", *data, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) | {"changes": None} == {
        "version": 1,
        "genesis_version": 1,
        "newest_known": rules.NEWEST,
        "changes": None,
    }
    adopted = CliRunner().invoke(cli, ["rules", "adopt", "2", *data])
    assert adopted.exit_code == 0 and "rules version 2 decides the entries after entry" in adopted.output
    again = CliRunner().invoke(cli, ["rules", "adopt", "2", *data])
    assert again.exit_code == 1 and "refused (rules_not_newer)" in again.output
    assert CliRunner().invoke(cli, ["rules", "adopt", "1", *data]).exit_code == 2  # usage
    shown = CliRunner().invoke(cli, ["rules", "show", *data])
    assert shown.exit_code == 0 and shown.output.startswith("rules version 2 decides new entries")
    led.sequencer = open_sequencer(led.settings)
    assert audit_store(led.sequencer.store).ok


def test_init_names_the_newest_rules_or_the_version_asked_for(tmp_path: Path) -> None:
    for args, version in (([], rules.NEWEST), (["--rules", "1"], 1)):
        data = ["--data", str(tmp_path / f"v{version}")]
        made = CliRunner().invoke(cli, ["init", *data, *args])
        assert made.exit_code == 0, made.output
        shown = json.loads(CliRunner().invoke(cli, ["rules", "show", *data, "--json"]).output)
        assert (shown["version"], shown["genesis_version"]) == (version, version)
    too_new = CliRunner().invoke(
        cli, ["init", "--data", str(tmp_path / "x"), "--rules", str(rules.NEWEST + 1)]
    )
    assert too_new.exit_code == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("how", ["genesis", "adopted"])
def test_an_older_dfg_decides_nothing_on_a_ledger_that_follows_newer_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A ledger a newer release made, or moved on, then opened by this one (a release
    rolled back): the entries it would decide by the rules it has could be ones the
    ledger's version refuses, and the ledger would fail its own audit once upgraded."""
    settings = Settings(data_dir=tmp_path / how)
    with monkeypatch.context() as newer:
        newer.setattr(rules, "NEWEST", 3)
        if how == "genesis":
            create_ledger(settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="F", rules=3)
        else:
            led = make_ledger(settings)
            assert isinstance(_adopt(led, 3), Accepted)
            led.sequencer.store.close()
    operator = root_signer(settings, CHAIN, OPERATOR)
    operator.nonce = 2 if how == "adopted" else 1
    # this release, which knows versions up to 2
    led = Ledger(settings, open_sequencer(settings), operator)
    try:
        body = {"principal": "sp:app", "kind": "service_provider", "display_name": "App"}
        (outcome,) = led.submit(led.sign(led.operator, "principal.admit", body))
        assert _code(outcome) == "unknown_rules"
        assert "upgrade dfg" in outcome.message
    finally:
        led.sequencer.store.close()


def test_a_replica_that_meets_newer_rules_stops_without_evidence_against_the_ledger(
    first_release: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not knowing a version is this software's limit, not the ledger's fault: recorded
    as a violation, it would mark an honest ledger and stop the node for good, even
    after dfg is upgraded."""
    led = first_release
    led.admit("sp:app", "service_provider")
    with monkeypatch.context() as newer:
        newer.setattr(rules, "NEWEST", 3)
        adopted = _adopt(led, 3)
        assert isinstance(adopted, Accepted)
        led.admit("sp:other", "service_provider")
    entries = list(led.sequencer.store.read_entries(1, 100))
    store = open_store(Settings(data_dir=tmp_path / "node"))
    try:
        replica = Replica(store)
        with pytest.raises(NeedsNewerDfg, match="upgrade dfg"):
            replica.accept_entries(entries)
        assert replica.size == adopted.seq - 1  # the entries before it are kept
        assert replica.halted is None and store.violations() == []
        with monkeypatch.context() as upgraded:
            upgraded.setattr(rules, "NEWEST", 3)
            assert [e.seq for e in replica.accept_entries(entries)] == [adopted.seq, adopted.seq + 1]
    finally:
        store.close()


def test_init_with_rules_1_writes_the_genesis_entry_as_the_first_release_did(tmp_path: Path) -> None:
    """Version 1 is chosen for members whose tools are of the first release; that
    release refuses a ``ledger`` object with any other member than these three (its
    models forbid extra members), so its replicas and audits stopped at entry 1 of a
    ledger made with --rules 1, on a member that changed nothing."""
    data = ["--data", str(tmp_path / "v1")]
    assert CliRunner().invoke(cli, ["init", *data, "--rules", "1"]).exit_code == 0
    store = open_store(Settings(data_dir=tmp_path / "v1"), read_only=True)
    try:
        (genesis,) = store.read_entries(1, 1)
    finally:
        store.close()
    ledger = json.loads(genesis.canonical)["data"]["ledger"]
    assert set(ledger) == {"chain", "origin", "checkpoint_key"}
    token = json.loads(genesis.canonical)["tx"]
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert set(payload["body"]["ledger"]) == {"chain", "origin", "checkpoint_key"}


@pytest.mark.parametrize("x", ["é" * 43, "٣" * 43, "A" * 42 + "ß"])
def test_version_2_refuses_a_result_key_the_nodes_cannot_decode(ledger: Ledger, x: str) -> None:
    """A node seals results to a key whose x is 32 bytes of ASCII base64url, and refuses
    any other (recipient_not_x25519): version 2 is to refuse those on the ledger. Letters
    and digits of other scripts passed its check (str.isalnum is Unicode's)."""
    f, _ = _ready(ledger)
    analysis = _draft(f)
    good = {"kty": "OKP", "crv": "X25519", "x": "A" * 43}
    f.refused(
        f.analyst,
        "results.request_access",
        {"analysis_id": analysis, "recipient_jwk": good},
        "results_not_approved",
    )
    bad = {"kty": "OKP", "crv": "X25519", "x": x}
    f.refused(
        f.analyst, "results.request_access", {"analysis_id": analysis, "recipient_jwk": bad}, "unusable_key"
    )


@pytest.mark.parametrize("body", [{"version": "2"}, {"version": 1}, {"version": 2, "note": "x"}, {}])
def test_a_malformed_adoption_is_refused_and_leaves_no_trace(ledger: Ledger, body: dict[str, object]) -> None:
    before = ledger.head()
    (outcome,) = ledger.submit(ledger.sign(ledger.operator, "ledger.adopt_rules", body))
    assert _code(outcome) == "invalid_body"
    assert ledger.head() == before
