"""The audit cut into segments replayed in parallel processes reports what one pass
reports: the same figures on a good ledger, and the same first bad entry on a bad one,
including the two checks that cross a segment boundary (nonces and timestamps)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest
from conftest import Ledger, give_level1, new_witness

from infra.bootstrap import open_store
from infra.storage.sqlite import CACHE_KIB, SCAN_CACHE_KIB, WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT
from ledger import segmented_audit
from ledger.audit import Auditor, AuditReport, audit, audit_store, batched
from ledger.segmented_audit import (
    MIN_SEGMENT,
    PREFIX_SHARE,
    PROCESS_START,
    SegmentFailed,
    audit_in_segments,
    plan_segments,
    stagger,
)
from ledger.sequencer import Sequencer
from ledger.store import LedgerStore, StoredEntry, all_checkpoints
from ledger.verifier import ParallelVerifier
from ledger.witness import WitnessPolicy, cosign


def test_plan_covers_every_entry_once_and_leaves_the_end_open() -> None:
    assert plan_segments(100_000, 4, 10_000) == [
        (1, 25_000),
        (25_001, 50_000),
        (50_001, 75_000),
        (75_001, None),
    ]
    assert plan_segments(301, 3, 1) == [(1, 100), (101, 200), (201, None)]
    assert plan_segments(15_000, 8, 10_000) == [(1, None)]  # too small to be worth a process
    assert plan_segments(0, 2, 1) == [(1, None)]


def test_processes_get_shorter_segments_by_what_they_spend_starting() -> None:
    plan = stagger(plan_segments(1_000_000, 2), 1_000_000, MIN_SEGMENT)
    (first, first_end), (second, second_end) = plan
    assert (first, second, second_end) == (1, first_end + 1, None)
    delay = PROCESS_START + (second - 1) // PREFIX_SHARE  # the process's start, in entries
    assert abs(first_end - (1_000_000 - first_end) - delay) <= 2  # both would end together
    four = stagger(plan_segments(100_000, 4), 100_000, MIN_SEGMENT)
    lengths = [(end or 100_000) - start + 1 for start, end in four]
    assert sum(lengths) == 100_000 and lengths == sorted(lengths, reverse=True)
    assert [s for s, _ in four[1:]] == [(end or 0) + 1 for _, end in four[:-1]]
    small = plan_segments(20_000, 2)
    assert stagger(small, 20_000, MIN_SEGMENT) == small  # the second would be under the minimum


def _populate(ledger: Ledger, consents: int) -> None:
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*(give_level1(ledger, app, f"p-{i}") for i in range(consents)))
    ledger.sequencer.checkpoint_now()


def _both(ledger: Ledger, segments: int = 3) -> tuple[object, object]:
    store = ledger.sequencer.store
    one_pass = audit_store(store)
    segmented = audit_in_segments(store, partial(open_store, ledger.settings), segments=segments, minimum=1)
    return one_pass, segmented


def test_a_good_ledger_gives_the_same_report(any_ledger: Ledger) -> None:
    _populate(any_ledger, 60)
    one_pass, segmented = _both(any_ledger)
    assert one_pass.ok and segmented.ok, (one_pass.problems, segmented.problems)  # type: ignore[attr-defined]
    for name in ("entries", "checkpoints", "root", "chain", "origin", "checkpoint_key", "operator_kid"):
        assert getattr(segmented, name) == getattr(one_pass, name), name


def _append_unchecked(sequencer: Sequencer, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Append as a faulty sequencer would: without looking at the signer's last nonce."""
    with monkeypatch.context() as patch:
        patch.setattr(Sequencer, "_last_nonce", lambda self, signer: 0)
        patch.setattr(sequencer, "_nonces", {})
        (outcome,) = sequencer.submit([token])
    assert outcome.__class__.__name__ == "Accepted", outcome


def test_a_nonce_reused_across_a_segment_boundary_is_named(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    other = ledger.admit("sp:other", "service_provider")
    ledger.accept(give_level1(ledger, app, "p-first"))  # app's nonce 1 ...
    app.nonce = 5
    (sixth,) = ledger.accept(give_level1(ledger, app, "p-sixth"))  # ... then 6
    ledger.accept(*(give_level1(ledger, other, f"q-{i}", controller="sp:other") for i in range(20)))
    app.nonce = 2  # nonce 3 after nonce 6: only a faulty sequencer appends it
    _append_unchecked(ledger.sequencer, give_level1(ledger, app, "p-late"), monkeypatch)
    bad = ledger.head()[0]
    (_, _), (second, _) = plan_segments(bad, 2, 1)
    assert sixth.seq < second < bad  # app's first entry in the second segment is the bad one
    one_pass, segmented = _both(ledger, segments=2)
    for report in (one_pass, segmented):
        problem = report.first_problem  # type: ignore[attr-defined]
        assert problem.seq == bad and "nonce 3 of sp:app" in problem.message, problem


def test_a_timestamp_going_back_at_a_segment_boundary_is_named(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*(give_level1(ledger, app, f"p-{i}") for i in range(10)))
    sequencer = ledger.sequencer
    earlier = sequencer.now() - timedelta(hours=1)
    with monkeypatch.context() as patch:  # a sequencer whose clock jumped back
        patch.setattr(sequencer, "_last_ts", None)
        patch.setattr(sequencer, "clock", lambda: earlier)
        ledger.accept(give_level1(ledger, app, "p-earlier"))
    bad = ledger.head()[0]
    # Entries after it until the second of two segments starts exactly at it.
    ledger.accept(*(give_level1(ledger, app, f"p-after-{i}") for i in range(bad - 2)))
    (_, _), (second, _) = plan_segments(ledger.head()[0], 2, 1)
    assert second == bad
    one_pass, segmented = _both(ledger, segments=2)
    for report in (one_pass, segmented):
        problem = report.first_problem  # type: ignore[attr-defined]
        assert problem.seq == bad and "timestamp is earlier" in problem.message, problem


def _unreachable_store() -> LedgerStore:
    raise ConnectionError("database is unreachable")


def test_a_segment_that_cannot_run_fails_the_audit_with_its_reason(ledger: Ledger) -> None:
    _populate(ledger, 5)
    with pytest.raises(SegmentFailed, match="could not run: ConnectionError: database is unreachable"):
        audit_in_segments(ledger.sequencer.store, _unreachable_store, segments=2, minimum=1)


def test_witnessed_checkpoints_are_counted_alike(ledger: Ledger) -> None:
    key, verifier = new_witness("node:alpha")
    policy = WitnessPolicy({"node:alpha": [verifier]}, quorum=1)
    _populate(ledger, 30)
    store = ledger.sequencer.store
    checkpoints = list(all_checkpoints(store))
    cosigned = checkpoints[0]  # the newest stays unwitnessed
    store.save_cosignature(
        cosigned.size, "node:alpha", cosign(cosigned.note, "node:alpha", key, 1_700_000_000)
    )
    one_pass = audit_store(store, witnesses=policy)
    segmented = audit_in_segments(
        store, partial(open_store, ledger.settings), segments=3, minimum=1, witnesses=policy
    )
    assert one_pass.ok and segmented.ok, (one_pass.problems, segmented.problems)
    assert (segmented.final_size, segmented.final_checkpoints) == (one_pass.final_size, 1)
    assert one_pass.final_size == cosigned.size < checkpoints[-1].size


def test_a_trusted_witness_cosignature_that_does_not_verify_is_named_alike(ledger: Ledger) -> None:
    """The ledger keeps only cosignatures that verified when they came: one under a
    trusted witness's key that does not verify now was damaged or forged since. It
    counted for nothing, and the audit said only that no checkpoint was final (C2SP
    signed notes: a known key's signature that fails is an error, not to be ignored)."""
    key, verifier = new_witness("node:alpha")
    policy = WitnessPolicy({"node:alpha": [verifier]}, quorum=1)
    _populate(ledger, 30)
    store = ledger.sequencer.store
    first, second = list(all_checkpoints(store))[:2]
    store.save_cosignature(first.size, "node:alpha", cosign(first.note, "node:alpha", key, 1_700_000_000))
    line = cosign(second.note, "node:alpha", key, 1_700_000_000)
    store.save_cosignature(
        second.size, "node:alpha", line[:-6] + ("B" if line[-6] == "A" else "A") + line[-5:]
    )
    one_pass = audit_store(store, witnesses=policy)
    segmented = audit_in_segments(
        store, partial(open_store, ledger.settings), segments=3, minimum=1, witnesses=policy
    )
    for report in (one_pass, segmented):
        assert report.first_problem is not None, report
        assert (report.first_problem.seq, report.first_problem.message) == (
            second.size,
            "the cosignature of trusted witness node:alpha does not verify (damaged or forged)",
        )
    # a policy without that witness reads it as any unknown key's line: ignored
    assert audit_store(store).ok


def test_a_proof_path_that_disagrees_with_the_stored_nodes_is_named(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stored node is compared with the recomputed tree, and one consistency proof
    from the first checkpoint to the newest checks the proof path itself: a store whose
    proof reads disagree with its node pages fails there."""
    app = ledger.admit("sp:app", "service_provider")
    for batch in range(3):
        ledger.accept(*(give_level1(ledger, app, f"p-{batch}-{i}") for i in range(20)))
        ledger.sequencer.checkpoint_now()
    store = ledger.sequencer.store
    assert len(list(all_checkpoints(store))) >= 3 and audit_store(store).ok
    honest = store.read_nodes
    monkeypatch.setattr(store, "read_nodes", lambda keys: [b"\x00" * 32 for _ in honest(keys)])
    report = audit_store(store)
    problem = report.first_problem
    assert problem is not None and "does not prove consistency" in problem.message, report.problems
    assert problem.seq == store.head()[0]


# --- hand-over: a process that finishes early takes over half of the busiest segment --


def _slow_replay() -> None:
    """``setup`` for the segment processes (the first segment runs in a thread of the
    calling process, without it): 3 ms per entry, so that a segment of a few hundred
    entries is still running when the short first one has finished."""
    original = Auditor.feed

    def feed(self: Auditor, stored: StoredEntry) -> None:
        time.sleep(0.003)
        original(self, stored)

    Auditor.feed = feed  # type: ignore[method-assign]


def _skewed(size: int, segments: int, minimum: int) -> list[tuple[int, int | None]]:
    """Nearly everything in the second segment: the first finishes almost at once."""
    return [(1, 10), (11, None)]


def _audit_skewed(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, setup: Callable[[], None] = _slow_replay
) -> AuditReport:
    monkeypatch.setattr(segmented_audit, "plan_segments", _skewed)
    return audit_in_segments(
        ledger.sequencer.store,
        partial(open_store, ledger.settings),
        segments=2,
        minimum=1,
        page=10,
        setup=setup,
    )


def test_a_segment_finished_early_takes_over_half_of_the_busiest_one(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(ledger, 300)
    one_pass = audit_store(ledger.sequencer.store)
    report = _audit_skewed(ledger, monkeypatch)
    assert one_pass.ok and report.ok, (one_pass.problems, report.problems)
    assert report.segments > 2  # at least one hand-over happened
    for name in ("entries", "checkpoints", "root", "chain", "checkpoint_key", "operator_kid"):
        assert getattr(report, name) == getattr(one_pass, name), name


def test_an_entry_altered_in_a_handed_over_part_is_named(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(ledger, 300)
    bad = ledger.head()[0] - 40  # in the second segment's second half: handed over
    path = ledger.settings.ledger_file
    with sqlite3.connect(path) as db:
        (state,) = db.execute("SELECT state FROM ledger_entries WHERE rowid = ?", (bad,)).fetchone()
        changed = state.replace(b'"method":"app"', b'"method":"web"')
        assert changed != state
        db.execute("UPDATE ledger_entries SET state = ? WHERE rowid = ?", (changed, bad))
    report = _audit_skewed(ledger, monkeypatch)
    assert report.segments > 2
    problem = report.first_problem
    assert problem is not None and problem.seq == bad, report.problems


def test_a_cut_segment_leaves_its_later_checkpoints_and_the_head_to_the_next(ledger: Ledger) -> None:
    """In one process: the last segment cut at a page boundary (as a hand-over cuts it)
    and the rest replayed as a segment of its own give the one-pass figures."""
    app = ledger.admit("sp:app", "service_provider")
    for batch in range(3):
        ledger.accept(*(give_level1(ledger, app, f"p-{batch}-{i}") for i in range(20)))
        ledger.sequencer.checkpoint_now()
    store = ledger.sequencer.store
    head = store.head()
    cut = 30
    first = Auditor.segment(store, 1, None, head=head, verifier=ParallelVerifier(0))
    assert first.first_nonces is not None
    first.end_at(cut)
    with pytest.raises(ValueError, match="already replayed"):
        Auditor.segment(store, 1, None).end_at(-1)
    left = audit(batched(store.read_entries, start=1, stop=cut), first)
    right = audit(
        batched(store.read_entries, start=cut + 1),
        Auditor.segment(store, cut + 1, None, head=head, verifier=ParallelVerifier(0)),
    )
    assert left.ok and right.ok, (left.problems, right.problems)
    one_pass = audit_store(store)
    assert left.entries + right.entries == one_pass.entries == head[0]
    assert left.checkpoints + right.checkpoints == one_pass.checkpoints
    assert right.root == one_pass.root


def test_a_segment_is_cut_only_from_beyond_its_next_page() -> None:
    handover = segmented_audit._Handover(multiprocessing.get_context("spawn"), 1)
    task = segmented_audit._Task(1, 10_000, {}, None, 100)
    handover.start(0, task)
    assert handover.publish(0, 1000) is None  # no limit yet
    boundary = handover.split(0, 10_000, 100)
    start_cost = 1100 // PREFIX_SHARE + 100  # the new segment's reading of what precedes it
    assert boundary == 10_000 - (10_000 - 1100 - start_cost) // 2
    assert handover.publish(0, 1100) == boundary  # the next page boundary sees the cut
    handover.start(0, task)
    handover.publish(0, 9_700)
    assert handover.split(0, 10_000, 100) is None  # what is left would not pay for a start


def test_a_cancelled_segment_stops_at_its_next_page(ledger: Ledger) -> None:
    _populate(ledger, 30)
    store = ledger.sequencer.store
    handover = segmented_audit._Handover(multiprocessing.get_context("spawn"), 1)
    task = segmented_audit._Task(1, None, {}, None, 10)
    handover.start(0, task)
    auditor = Auditor.segment(store, 1, None, verifier=ParallelVerifier(0))
    pages = segmented_audit._pages(store, task, auditor, handover, 0)
    assert [next(pages).seq for _ in range(10)] == list(range(1, 11))
    handover.cancel(0)
    with pytest.raises(segmented_audit._Cancelled):
        next(pages)


def test_entries_missing_at_the_end_of_a_segment_are_named(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every entry after the 40th deleted: the segment that should have held the
    41st names it, as one pass does."""
    _populate(ledger, 58)
    head = ledger.head()[0]
    monkeypatch.setattr(segmented_audit, "plan_segments", lambda size, n, m: [(1, 30), (31, 50), (51, None)])
    with sqlite3.connect(ledger.settings.ledger_file) as db:
        assert db.execute("DELETE FROM ledger_entries WHERE rowid > 40").rowcount == head - 40
    store = ledger.sequencer.store
    for report in (
        audit_store(store),
        audit_in_segments(store, partial(open_store, ledger.settings), segments=3, minimum=1),
    ):
        problem = report.first_problem
        assert problem is not None and problem.seq == 41 and "is missing" in problem.message, report


def test_a_lock_held_by_a_stopped_process_fails_the_audit_instead_of_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segmented_audit, "_LOCK_TIMEOUT_S", 0.1)
    handover = segmented_audit._Handover(multiprocessing.get_context("spawn"), 1)
    handover._lock.acquire()  # as a process terminated inside the lock leaves it
    with pytest.raises(SegmentFailed, match="stopped while holding"):
        handover.publish(0, 10)


def _die_after_five_entries() -> None:
    """``setup`` for the segment processes: slow, then killed mid-segment (as the
    kernel's out-of-memory killer would)."""
    original = Auditor.feed
    fed = [0]

    def feed(self: Auditor, stored: StoredEntry) -> None:
        fed[0] += 1
        if fed[0] > 5:
            os._exit(9)
        time.sleep(0.003)
        original(self, stored)

    Auditor.feed = feed  # type: ignore[method-assign]


def test_a_segment_process_killed_mid_segment_fails_the_audit(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(ledger, 300)
    with pytest.raises(SegmentFailed, match=r"stopped \(exit code 9\)"):
        _audit_skewed(ledger, monkeypatch, setup=_die_after_five_entries)


def test_the_ledger_checkpoints_its_write_ahead_log_seldom(ledger: Ledger) -> None:
    """Commits leave up to ``WAL_CHECKPOINT_PAGES`` pages in the log before one copies
    them into the file (SQLite's default is 1,000), and the log's file is cut back to
    ``WAL_SIZE_LIMIT`` after a checkpoint."""
    store = open_store(ledger.settings)
    try:
        with store.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
            c.execute("PRAGMA wal_autocheckpoint")
            pages = int(c.fetchone()[0])
            c.execute("PRAGMA journal_size_limit")
            limit = int(c.fetchone()[0])
        assert (pages, limit) == (WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT)
    finally:
        store.close()


def test_a_store_opened_to_scan_keeps_a_small_page_cache(ledger: Ledger) -> None:
    """The audit reads the log once, in order: a small SQLite page cache (see
    ``SCAN_CACHE_KIB``); the sequencer's store keeps its large one."""

    def cache_kib(store: LedgerStore) -> int:
        with store.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
            c.execute("PRAGMA cache_size")
            return -int(c.fetchone()[0])

    scanning, writing = open_store(ledger.settings, scan=True), open_store(ledger.settings)
    try:
        assert (cache_kib(scanning), cache_kib(writing)) == (SCAN_CACHE_KIB, CACHE_KIB)
        report = audit_in_segments(scanning, partial(open_store, ledger.settings, scan=True), minimum=1)
        assert report.ok and report.entries == ledger.head()[0]
    finally:
        scanning.close()
        writing.close()
