"""Crash safety: SIGKILL the single writer while it appends, then check what it promised.

``tests/crash_writer.py`` appends signed demo activity through the real Sequencer on a
SQLite ledger and prints ``<seq> <leaf hash>`` for each entry only after
``Sequencer.submit`` returned. We kill it (SIGKILL, no chance to clean up) while it is
still writing, at three different moments, and then require:

* every acknowledged entry is stored, byte for byte what was acknowledged;
* the stored head equals the entries (no partial entry, no gap, same Merkle root);
* a new Sequencer opens on the same files and appends more;
* ``dfg audit verify`` exits 0 on the result.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TERMS
from joserfc.jwk import OKPKey

from infra.bootstrap import open_sequencer, open_store, root_signer
from infra.settings import Settings
from ledger.entry import Entry
from ledger.merkle import Frontier, leaf_hash
from ledger.sequencer import Accepted
from ledger.signing import TransactionSigner, public_jwk

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "crash_writer.py"
CHAIN = "dfg-crash"  # as in crash_writer.py
OPERATOR = "op:federation"
ACK_DEADLINE_S = 40.0
WAIT_S = 15.0

_CLI = "from gateways.cli.main import main; main()"

pytestmark = pytest.mark.slow


def _dfg(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "dfg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", _CLI]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class _Lines:
    """Reads a pipe on a thread so the test never blocks on it."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:  # type: ignore[no-untyped-def]
        try:
            for line in stream:
                self.lines.put(line)
        finally:
            self.lines.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _parse_ack(line: str) -> tuple[int, str] | None:
    """An acknowledgement line, or None for a line cut short by the kill."""
    if not line.endswith("\n"):
        return None
    seq, leaf = line.split()
    return int(seq), leaf


def _run_and_kill(data: Path, min_acks: int, max_batch: int, stderr_path: Path) -> dict[int, str]:
    """Start the writer, SIGKILL it once it acknowledged >= min_acks entries; all acks."""
    acks: dict[int, str] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(data), str(max_batch)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=True,  # its own process group: the verifier pool dies with it
        )
        try:
            reader = _Lines(proc.stdout)
            deadline = time.monotonic() + ACK_DEADLINE_S
            eof = False
            while len(acks) < min_acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"writer acknowledged {len(acks)} entries in {ACK_DEADLINE_S}s")
                try:
                    line = reader.lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    eof = True
                    break
                ack = _parse_ack(line)
                if ack is not None:
                    acks[ack[0]] = ack[1]
            if eof or proc.poll() is not None:
                why = stderr_path.read_text()
                pytest.fail(f"writer stopped by itself (exit {proc.poll()}): {why}")
            # The crash: SIGKILL mid-stream, no cleanup. The whole process group, so its
            # verifier workers (which share its stdout) die with it, as in a real crash.
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL
            # Lines written before the kill are acknowledgements too.
            reader.join(WAIT_S)
            while True:
                try:
                    line = reader.lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    break
                ack = _parse_ack(line)
                if ack is not None:
                    acks[ack[0]] = ack[1]
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftover verifier workers, if any
            proc.wait(timeout=WAIT_S)
            if proc.stdout is not None:
                proc.stdout.close()
    return acks


@pytest.mark.parametrize(
    ("min_acks", "max_batch"),
    [
        pytest.param(300, 8, id="early-small-batches"),
        pytest.param(1100, 60, id="around-first-checkpoint-mixed-batches"),
        pytest.param(2400, 200, id="later-large-batches"),
    ],
)
def test_sigkill_keeps_every_acknowledged_entry(tmp_path: Path, min_acks: int, max_batch: int) -> None:
    data = tmp_path / "data"
    acks = _run_and_kill(data, min_acks, max_batch, tmp_path / "writer.stderr")
    assert len(acks) >= min_acks

    settings = Settings(data_dir=data)
    store = open_store(settings)
    try:
        size, root = store.head()
        entries = list(store.read_entries(1, size + 1000))
        # No gap and no partial entry: the entries are exactly 1..head, nothing beyond.
        assert [e.seq for e in entries] == list(range(1, size + 1))
        assert max(acks) <= size
        # Every acknowledged entry is there, exactly as acknowledged.
        for seq, leaf in acks.items():
            assert leaf_hash(entries[seq - 1].canonical).hex() == leaf, f"entry {seq} changed"
        # Every stored entry is whole, numbered by its position, and the head's root is
        # the root of exactly these entries (Merkle nodes committed with them).
        frontier = Frontier.empty()
        for stored in entries:
            assert Entry.decode(stored.canonical).seq == stored.seq
            frontier.append(leaf_hash(stored.canonical))
        assert frontier.root() == root
        latest = store.latest_checkpoint()
        assert latest is not None and latest.size <= size

        # A new sequencer opens on the same files and appends more.
        sequencer = open_sequencer(settings, store)
        assert sequencer.size == size
        operator = root_signer(settings, CHAIN, OPERATOR)
        operator.nonce = store.last_nonce(OPERATOR)
        key = OKPKey.generate_key("Ed25519")
        now = time.time()
        admit = operator.sign(
            "principal.admit",
            {
                "principal": "sp:after-crash",
                "kind": "service_provider",
                "display_name": "After the crash",
                "jwk": public_jwk(key).as_dict(),
            },
            now=now,
        )
        app = TransactionSigner("sp:after-crash", key, CHAIN)
        give = app.sign(
            "consent.give",
            {
                "consent_id": "6f1c1d1e-0c7a-4d3e-9a5b-3c2d1e0f9a8b",
                "controller": "sp:after-crash",
                "subject": "p-after-crash",
                "level": 1,
                "method": "app",
                "terms": TERMS,
            },
            now=now,
        )
        outcomes = sequencer.submit([admit, give])
        assert all(isinstance(o, Accepted) and not o.duplicate for o in outcomes), outcomes
        assert [o.seq for o in outcomes] == [size + 1, size + 2]
        sequencer.checkpoint_now()
        assert store.head()[0] == size + 2
    finally:
        store.close()

    result = _dfg("audit", "verify", "--data", str(data), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {size + 2} entries" in result.stdout
