"""The running ledger's sequencer thread outlives a batch that fails before it commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from conftest import TERMS, Ledger

from infra.bootstrap import open_views
from infra.ledger_service import LedgerService
from ledger.sequencer import Accepted, PreparedBatch
from projections.registry import all_views


def test_a_batch_that_cannot_be_prepared_fails_alone(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    app = ledger.admit("sp:app", "service_provider")

    def give() -> str:
        body = {
            "consent_id": str(uuid.uuid4()),
            "controller": "sp:app",
            "subject": "p-1",
            "level": 1,
            "method": "app",
            "terms": TERMS,
        }
        return ledger.sign(app, "consent.give", body)

    views = open_views(ledger.settings)
    service = LedgerService(ledger.sequencer, views, all_views())
    real_prepare = ledger.sequencer.prepare
    failures = iter([RuntimeError("the verifier's pool broke")])

    def prepare_failing_once(tokens: Sequence[str]) -> PreparedBatch:
        for failure in failures:
            raise failure
        return real_prepare(tokens)

    monkeypatch.setattr(ledger.sequencer, "prepare", prepare_failing_once)
    service.start()
    try:
        with pytest.raises(RuntimeError, match="pool broke"):
            service.submit([give()]).result(timeout=30)
        (outcome,) = service.submit([give()]).result(timeout=30)
        assert isinstance(outcome, Accepted) and outcome.seq == ledger.sequencer.size
        assert service.running  # what /healthz reports
    finally:
        service.stop()
        views.close()
    assert not service.running


def test_a_resubmitted_entry_the_views_missed_is_in_the_next_answer(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views fail once to apply a committed withdrawal: its submitter is told to
    resubmit, and the resubmission (a duplicate) brings the views up to date. They used
    to stay behind until some other transaction came, granting the withdrawn consent."""
    from datetime import UTC, datetime

    from projections.consent_state import ConsentStateView, check

    app = ledger.admit("sp:app", "service_provider")
    cid = str(uuid.uuid4())
    body = {"consent_id": cid, "controller": "sp:app", "subject": "p-1"}
    give = ledger.sign(app, "consent.give", {**body, "level": 1, "method": "app", "terms": TERMS})
    views = open_views(ledger.settings)
    service = LedgerService(ledger.sequencer, views, all_views())
    service.start()

    def granted() -> bool:
        with views.transaction(commit=False) as cursor:
            answer = check(
                cursor, "p-1", "sp:app", TERMS["purposes"][0], TERMS["data_categories"], datetime.now(UTC)
            )
        return answer.granted

    try:
        service.submit([give]).result(timeout=30)
        assert granted()
        real_apply = ConsentStateView.apply
        failures = iter([RuntimeError("the views database hiccuped")])

        def apply_failing_once(self: ConsentStateView, cursor: object, entries: object) -> None:
            for failure in failures:
                raise failure
            real_apply(self, cursor, entries)  # type: ignore[arg-type]

        monkeypatch.setattr(ConsentStateView, "apply", apply_failing_once)
        withdraw = ledger.sign(app, "consent.withdraw", body)
        with pytest.raises(RuntimeError, match="hiccuped"):
            service.submit([withdraw]).result(timeout=30)
        (again,) = service.submit([withdraw]).result(timeout=30)
        assert isinstance(again, Accepted) and again.duplicate
        assert not granted()
        assert service.views_lag == 0
    finally:
        service.stop()
        views.close()
