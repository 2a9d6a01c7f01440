"""Checkpoints: every N entries, and no later than T ms after the newest entry."""

from __future__ import annotations

import time
import uuid

import pytest
from conftest import TERMS, Ledger, assert_outage_then_fault_logged

from infra.bootstrap import checkpoint_key
from ledger.checkpoint import open_checkpoint
from ledger.note import Verifier
from ledger.sequencer import CheckpointPolicy, Sequencer
from ledger.store import LedgerStore, StoredCheckpoint


def _give(ledger: Ledger, app: object, n: int) -> list[str]:
    return [
        ledger.sign(
            app,
            "consent.give",
            {
                "consent_id": str(uuid.uuid4()),
                "controller": "sp:app",  # type: ignore[arg-type]
                "subject": f"p-{i}",
                "level": 1,
                "method": "app",
                "terms": TERMS,
            },
        )
        for i in range(n)
    ]


def _sequencer(ledger: Ledger, every: int, interval_ms: int) -> tuple[LedgerStore, object, Sequencer]:
    """The ledger's store, an admitted app, and a sequencer with this policy."""
    store = ledger.sequencer.store
    app = ledger.admit("sp:app", "service_provider")
    policy = CheckpointPolicy(every=every, interval_ms=interval_ms)
    return store, app, Sequencer(store, checkpoint_key=checkpoint_key(ledger.settings), policy=policy)


def _wait_until_covered(store: LedgerStore, timeout: float) -> StoredCheckpoint | None:
    size = store.head()[0]
    deadline = time.monotonic() + timeout
    while (latest := store.latest_checkpoint()) is None or latest.size != size:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return latest


def test_checkpoint_every_n_entries(ledger: Ledger) -> None:
    store, app, sequencer = _sequencer(ledger, 5, 3_600_000)
    tokens = _give(ledger, app, 24)
    for token in tokens[:12]:
        sequencer.submit([token])
    sequencer.submit(tokens[12:])  # one batch spanning two intervals
    sizes = [c.size for c in store.checkpoints()]
    assert sizes == [1, 6, 11, 16, 21, 26]  # genesis, then exactly every 5 entries


def test_time_based_checkpoint_follows_the_newest_entry(ledger: Ledger) -> None:
    store, app, sequencer = _sequencer(ledger, 10_000, 200)
    stop = sequencer.start_checkpointer()
    try:
        sequencer.submit(_give(ledger, app, 3))
        latest = _wait_until_covered(store, 5)
        assert latest is not None and latest.size == store.head()[0]
        verifier = Verifier.from_string(sequencer.ledger["checkpoint_key"])  # type: ignore[index]
        assert open_checkpoint(latest.note, verifier).root_hash == store.head()[1]
    finally:
        stop.set()


class _Monotonic:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_steady_traffic_gets_a_checkpoint_within_the_interval(ledger: Ledger, monkeypatch: object) -> None:
    """One entry every 0.3 s with an interval of 1 s: each entry is covered within about
    1 s. Checkpoints used to wait for a quiet second (or ``every`` entries): at two
    transactions a second, an entry waited for the thousandth after it."""
    import pytest

    import ledger.sequencer as sequencer_module

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    clock = _Monotonic()
    monkeypatch.setattr(sequencer_module.time, "monotonic", clock)
    store, app, sequencer = _sequencer(ledger, 1000, 1000)
    clock.t += 1.0  # the admission, left uncovered, is one interval old
    sequencer.tick()
    covered = store.head()[0]
    assert store.latest_checkpoint().size == covered  # type: ignore[union-attr]
    for token in _give(ledger, app, 10):
        sequencer.submit([token])
        clock.t += 0.3
        sequencer.tick()
        latest = store.latest_checkpoint()
        assert latest is not None
        # what was appended a full interval ago (or more) is covered
        assert latest.size >= store.head()[0] - 3, (latest.size, store.head()[0])
    assert [c.size for c in store.checkpoints(covered)] == [covered + 4, covered + 8]


def test_a_failing_checkpoint_write_does_not_stop_the_checkpointer(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The database locked for longer than its timeout once, then a fault: the next tick
    signs it. The outage is logged in one line (it was a traceback), the fault with its
    traceback."""
    store, app, sequencer = _sequencer(ledger, 1000, 50)
    real_save = store.save_checkpoint
    failures = iter([RuntimeError("database is locked"), ValueError("a bug")])

    def save_failing_once(size: int, root: bytes, note: str) -> None:
        for failure in failures:
            raise failure
        real_save(size, root, note)

    store.save_checkpoint = save_failing_once  # type: ignore[method-assign]
    caplog.set_level("WARNING", logger="dfg.sequencer")
    sequencer.is_outage = lambda exc: "locked" in str(exc)
    stop = sequencer.start_checkpointer()
    try:
        sequencer.submit(_give(ledger, app, 2))
        latest = _wait_until_covered(store, 10)
        assert latest is not None and latest.size == store.head()[0]
        assert next(failures, None) is None  # it did fail twice
    finally:
        stop.set()
        store.save_checkpoint = real_save  # type: ignore[method-assign]
    assert_outage_then_fault_logged(caplog, "dfg.sequencer", "database is locked")


def test_a_checkpoint_a_commit_could_not_sign_in_an_outage_is_logged_in_one_line(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint a commit makes due, failing in a database outage: its entries are
    durable, and the failure was logged with a traceback (the checkpointer's path is
    tested above)."""
    store, app, sequencer = _sequencer(ledger, 1, 60_000)
    real_save = store.save_checkpoint
    failures = iter([RuntimeError("database is locked")])

    def save_failing_once(size: int, root: bytes, note: str) -> None:
        for failure in failures:
            raise failure
        real_save(size, root, note)

    store.save_checkpoint = save_failing_once  # type: ignore[method-assign]
    sequencer.is_outage = lambda exc: "locked" in str(exc)
    caplog.set_level("WARNING", logger="dfg.sequencer")
    try:
        sequencer.submit(_give(ledger, app, 2))
    finally:
        store.save_checkpoint = real_save  # type: ignore[method-assign]
    (record,) = [r for r in caplog.records if r.name == "dfg.sequencer"]
    assert "the checkpointer will sign later" in record.getMessage() and record.exc_info is None


def test_the_newest_cosigned_checkpoints_are_those_of_a_quorum_newest_first(any_ledger: Ledger) -> None:
    """Final receipts (``GET /v1/entries/{seq}?checkpoint=final``) and ``GET
    /v1/checkpoint/witnessed`` ask for them. The query counts the newest checkpoints'
    cosignatures first instead of every cosignature the ledger ever kept (0.1-0.3 s per
    request on the event loop at 300,000 checkpoints; not timed here)."""
    store = any_ledger.sequencer.store
    first = store.head()[0] + 10
    cosigners = {}
    for size in range(first, first + 60):
        store.save_checkpoint(size, size.to_bytes(4, "big"), f"note {size}")
        cosigners[size] = "abc"[: size % 4]  # 0 to 3 witnesses
        for witness in cosigners[size]:
            store.save_cosignature(size, witness, f"line {size} {witness}")
    for quorum in (1, 2, 3):
        found = store.cosigned_checkpoints(quorum, 5)
        expected = sorted((n for n, ws in cosigners.items() if len(ws) >= quorum), reverse=True)[:5]
        assert [c.size for c in found] == expected
        assert all(len(c.cosignatures) == len(cosigners[c.size]) for c in found)
