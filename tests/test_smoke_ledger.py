"""The basic life of a consent on both engines, and a clean audit afterwards."""

from __future__ import annotations

import uuid

from conftest import TERMS, Ledger

from ledger.audit import audit_store
from ledger.errors import Rejected


def test_level1_consent_life_and_audit(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    cid = str(uuid.uuid4())
    body = {
        "consent_id": cid,
        "controller": "sp:app",
        "subject": "p-1",
        "level": 1,
        "method": "app",
        "terms": TERMS,
    }
    use = {
        "consent_id": cid,
        "purpose": "dpv:ServiceProvision",
        "data_categories": ["dpv-pd:HeartRate"],
    }
    given, used, withdrawn = any_ledger.accept(
        any_ledger.sign(app, "consent.give", body),
        any_ledger.sign(app, "consent.utilize", use),
        any_ledger.sign(
            app, "consent.withdraw", {"consent_id": cid, "controller": "sp:app", "subject": "p-1"}
        ),
    )
    assert (given.seq, used.seq, withdrawn.seq) == (3, 4, 5)
    (refused,) = any_ledger.submit(any_ledger.sign(app, "consent.utilize", use))
    assert isinstance(refused, Rejected) and refused.code == "consent_withdrawn"
    assert any_ledger.head()[0] == 5
    any_ledger.sequencer.checkpoint_now()
    store = any_ledger.sequencer.store
    report = audit_store(store)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (5, 2)
