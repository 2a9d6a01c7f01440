"""Checkpoints: every N entries, and no later than T ms after the newest entry."""

from __future__ import annotations

import time
import uuid

from conftest import TERMS, Ledger

from infra.bootstrap import checkpoint_key
from ledger.checkpoint import open_checkpoint
from ledger.note import Verifier
from ledger.sequencer import CheckpointPolicy, Sequencer


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


def test_checkpoint_every_n_entries(ledger: Ledger) -> None:
    store = ledger.sequencer.store
    app = ledger.admit("sp:app", "service_provider")
    sequencer = Sequencer(
        store,
        checkpoint_key=checkpoint_key(ledger.settings),
        policy=CheckpointPolicy(every=5, interval_ms=3_600_000),
    )
    tokens = _give(ledger, app, 24)
    for token in tokens[:12]:
        sequencer.submit([token])
    sequencer.submit(tokens[12:])  # one batch spanning two intervals
    sizes = [c.size for c in store.checkpoints()]
    assert sizes == [1, 6, 11, 16, 21, 26]  # genesis, then exactly every 5 entries


def test_time_based_checkpoint_follows_the_newest_entry(ledger: Ledger) -> None:
    store = ledger.sequencer.store
    key = checkpoint_key(ledger.settings)
    assert key is not None
    app = ledger.admit("sp:app", "service_provider")
    sequencer = Sequencer(store, checkpoint_key=key, policy=CheckpointPolicy(every=10_000, interval_ms=200))
    stop = sequencer.start_checkpointer()
    try:
        sequencer.submit(_give(ledger, app, 3))
        size = store.head()[0]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (store.latest_checkpoint() or object()).size != size:  # type: ignore[attr-defined]
            time.sleep(0.05)
        latest = store.latest_checkpoint()
        assert latest is not None and latest.size == size
        verifier = Verifier.from_string(sequencer.ledger["checkpoint_key"])  # type: ignore[index]
        assert open_checkpoint(latest.note, verifier).root_hash == store.head()[1]
    finally:
        stop.set()
