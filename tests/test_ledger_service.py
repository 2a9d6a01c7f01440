"""The running ledger's sequencer thread outlives a batch that fails before it commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import psycopg
import pytest
from conftest import TERMS, Ledger, assert_outage_then_fault_logged

from infra.bootstrap import open_views
from infra.ledger_service import LedgerService
from ledger.sequencer import Accepted, Outcome, PreparedBatch
from ledger.signing import TransactionSigner
from ledger.store import HeadMoved
from projections.registry import all_views


def _give(ledger: Ledger, app: TransactionSigner, subject: str = "p-1") -> str:
    body = {
        "consent_id": str(uuid.uuid4()),
        "controller": "sp:app",
        "subject": subject,
        "level": 1,
        "method": "app",
        "terms": TERMS,
    }
    return ledger.sign(app, "consent.give", body)


def test_a_batch_that_cannot_be_prepared_fails_alone(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    app = ledger.admit("sp:app", "service_provider")

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
            service.submit([_give(ledger, app)]).result(timeout=30)
        (outcome,) = service.submit([_give(ledger, app)]).result(timeout=30)
        assert isinstance(outcome, Accepted) and outcome.seq == ledger.sequencer.size
        assert service.running  # what /healthz reports
    finally:
        service.stop()
        views.close()
    assert not service.running


def test_a_batch_failing_in_a_database_outage_is_logged_in_one_line(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage is expected in operation: it was logged with a 40-line traceback per
    batch (by the service and again by the HTTP API). A fault stays a traceback."""
    app = ledger.admit("sp:app", "service_provider")
    token = ledger.sign(
        app, "consent.request", {"consent_id": str(uuid.uuid4()), "subject": "p-1", "terms": TERMS}
    )
    views = open_views(ledger.settings)
    service = LedgerService(ledger.sequencer, views, all_views())
    failures = iter([psycopg.OperationalError("server closed the connection"), RuntimeError("a bug")])

    def commit_failing(batch: PreparedBatch) -> list[Outcome]:
        raise next(failures)

    monkeypatch.setattr(ledger.sequencer, "commit", commit_failing)
    caplog.set_level("WARNING", logger="infra.ledger_service")
    service.start()
    try:
        with pytest.raises(psycopg.OperationalError):
            service.submit([token]).result(timeout=30)
        with pytest.raises(RuntimeError):
            service.submit([token]).result(timeout=30)
    finally:
        service.stop()
        views.close()
    assert_outage_then_fault_logged(caplog, "infra.ledger_service", "server closed the connection")


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


def test_a_batch_whose_head_moved_as_the_server_stops_is_answered(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch still pending when stop() was asked is committed on the way out; a
    HeadMoved there escaped the sequencer thread: its submitters waited for ever, the
    views thread was never told to end (stop() waited 30 s for it) and stop() then
    signed a checkpoint with the stale head."""
    app = ledger.admit("sp:app", "service_provider")
    token = ledger.sign(
        app, "consent.request", {"consent_id": str(uuid.uuid4()), "subject": "p-1", "terms": TERMS}
    )
    views = open_views(ledger.settings)
    service = LedgerService(ledger.sequencer, views, all_views())

    def commit_moved(batch: PreparedBatch) -> list[Outcome]:
        raise HeadMoved("the ledger head moved: is another sequencer writing here?")

    monkeypatch.setattr(ledger.sequencer, "commit", commit_moved)
    checkpoints: list[int] = []

    def checkpoint_now() -> bool:
        checkpoints.append(ledger.sequencer.size)
        return True

    monkeypatch.setattr(ledger.sequencer, "checkpoint_now", checkpoint_now)
    future = service.submit([token])
    # what stop() puts first: the batch is prepared, then committed on the way out
    service._queue.put(None)
    service.start()
    try:
        assert isinstance(future.exception(timeout=10), HeadMoved)
        assert service.stopped is not None
    finally:
        service.stop()
        views.close()
    assert not service.running and not checkpoints


def test_a_submission_its_submitter_cancelled_is_left_out_and_the_rest_are_answered(ledger: Ledger) -> None:
    """A future cancelled before the sequencer took it (asyncio.wrap_future cancels it with
    the task that awaits it, e.g. a handler aiohttp cancels) made the views thread raise
    InvalidStateError as it answered it: the thread ended, and every later submitter
    waited for ever."""
    app = ledger.admit("sp:app", "service_provider")

    views = open_views(ledger.settings)
    service = LedgerService(ledger.sequencer, views, all_views())
    size = ledger.sequencer.size
    assert service.submit([_give(ledger, app, "p-cancelled")]).cancel()
    service.start()
    try:
        (outcome,) = service.submit([_give(ledger, app, "p-1")]).result(timeout=30)
        assert isinstance(outcome, Accepted) and outcome.seq == size + 1  # the cancelled one left out
        assert service.running
    finally:
        service.stop()
        views.close()
