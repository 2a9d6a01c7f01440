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
