"""An auditor reading a ledger while its sequencer appends: the audit covers the ledger
as it stood at the head it began from, and says how far it grew. Reads used to go past
that head (entries, the nonce index, newer checkpoints), and a live ledger failed as if
tampered with ("the recorded head does not match the entries")."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from conftest import Ledger, give_level1

from infra.bootstrap import open_store
from ledger.audit import AuditReport, audit_store
from ledger.segmented_audit import audit_in_segments
from ledger.store import LedgerStore
from ledger.verifier import ParallelVerifier


class _GrowsAfterItsHeadIsRead:
    """The auditor's store; the ledger's sequencer appends (and signs a checkpoint) the
    moment the audit has read the head, before any entry is read."""

    def __init__(self, store: LedgerStore, grow: Callable[[], None]) -> None:
        self._store, self._grow = store, grow

    def head(self) -> tuple[int, bytes]:
        head = self._store.head()
        grow, self._grow = self._grow, lambda: None
        grow()
        return head

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _fill(ledger: Ledger, count: int) -> None:
    name = f"sp:app{ledger.head()[0]}"
    app = ledger.admit(name, "service_provider")
    for start in range(0, count, 50):
        subjects = [f"p-{i}" for i in range(start, min(start + 50, count))]
        ledger.accept(*[give_level1(ledger, app, subject, controller=name) for subject in subjects])
    ledger.sequencer.checkpoint_now()


def _audit_one_pass(store: LedgerStore, ledger: Ledger) -> AuditReport:
    return audit_store(store, verifier=ParallelVerifier(0))


def _audit_in_segments(store: LedgerStore, ledger: Ledger) -> AuditReport:
    reopen = partial(open_store, ledger.settings, scan=True, read_only=True)
    return audit_in_segments(store, reopen, segments=2, minimum=20)


@pytest.mark.parametrize("run", [_audit_one_pass, _audit_in_segments], ids=["one-pass", "2-segments"])
def test_a_ledger_growing_during_its_audit_verifies_as_it_stood(any_ledger: Ledger, run: Any) -> None:
    _fill(any_ledger, 120)
    size = any_ledger.head()[0]
    store = open_store(any_ledger.settings, scan=True, read_only=True)
    try:
        growing = _GrowsAfterItsHeadIsRead(store, lambda: _fill(any_ledger, 60))
        report = run(growing, any_ledger)
    finally:
        store.close()
    assert report.ok, report.first_problem
    assert report.entries == size and report.signed_size == size
    assert report.grown_to == any_ledger.head()[0] > size


def test_an_entry_stored_beyond_the_head_is_named(ledger: Ledger) -> None:
    """Written behind the sequencer's back: no head covers it, and the head did not move."""
    _fill(ledger, 40)
    before = ledger.head()
    _fill(ledger, 1)
    ledger.sequencer.store.close()
    with sqlite3.connect(ledger.settings.ledger_file) as db:
        db.execute("UPDATE ledger_head SET size = ?, root = ? WHERE id = 1", before)
        db.execute("DELETE FROM checkpoints WHERE size > ?", (before[0],))
    store = open_store(ledger.settings, scan=True, read_only=True)
    try:
        report = audit_store(store, verifier=ParallelVerifier(0))
    finally:
        store.close()
    assert not report.ok and report.first_problem is not None
    assert report.first_problem.seq == before[0] + 1
    assert "is stored beyond the ledger's head" in report.first_problem.message
    ledger.sequencer = _reopened(ledger)  # for the fixture's teardown


def _reopened(ledger: Ledger) -> Any:
    from infra.bootstrap import open_sequencer

    return open_sequencer(ledger.settings)
