"""``dfg bench replication``: sequencer + relay + broker + followers on this machine.

1. A real Tansu broker; a fresh SQLite ledger whose sequencer runs in this process;
   ``dfg relay`` and three ``dfg node follow`` as separate processes (each follower
   verifies with its own worker process), all on loopback.
2. Sustained rates: transactions are offered at a fixed rate for a while, in rising
   steps; a step is kept up with when every follower has verified everything within
   2 s of the step's end and its p99 append-to-verified lag stayed within 2 s.
   ``keeps_up_per_s`` is the highest such rate; ``lag_p50_s`` / ``lag_p99_s`` are the
   worst follower's figures at that rate.
3. Catch-up: one more follower starts from offset 0 over the whole log, alone;
   ``catchup_verify_per_s`` is entries verified per second.
4. ``verify_per_s`` is (a), the median of samples taken before the steps, after them
   and after the catch-up (``infra.benchmarks.baseline``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.benchmarks.baseline import VerifyBaseline
from infra.benchmarks.ledger import (
    CHAIN,
    OPERATOR,
    _admit_signers,
    _count,
    _stream,
    presign,
)
from infra.bootstrap import create_ledger, open_sequencer
from infra.settings import Settings
from infra.tansu import TansuBroker, free_port

KEEP_UP_LAG_S = 2.0


@dataclass
class Figures:
    verify_per_s: float = 0.0
    verify_per_s_samples: list[float] = field(default_factory=list)
    keeps_up_per_s: float = 0.0
    lag_p50_s: float | None = None
    lag_p99_s: float | None = None
    catchup_verify_per_s: float = 0.0
    followers: int = 3
    steps: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _dfg(*args: str, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "gateways.cli", *args], stdout=handle, stderr=subprocess.STDOUT
    )


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


@dataclass
class _Follower:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    def size(self) -> int:
        try:
            return int(_get(self.port, "/status")["size"])
        except OSError:
            return 0

    def lags(self) -> dict[str, Any]:
        return _get(self.port, "/lags")


def _start_follower(directory: Path, bootstrap: str, ledger_key: str) -> _Follower:
    port = free_port()
    process = _dfg(
        "node", "follow", "--data", str(directory), "--kafka", bootstrap, "--chain", CHAIN,
        "--ledger-key", ledger_key, "--status-port", str(port),
        log=directory.with_suffix(".log"),
    )  # fmt: skip
    follower = _Follower(directory, port, process)
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(port, "/status")
            return follower
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the follower in {directory} did not start") from None
            time.sleep(0.1)


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _all_at(nodes: list[_Follower], size: int) -> Callable[[], bool]:
    return lambda: all(n.size() >= size for n in nodes)


def _offer(sequencer: Any, batches: Iterator[list[str]], rate: int, seconds: float) -> int:
    """Submit ``rate`` transactions per second for ``seconds``, in 10 slices a second."""
    per_slice = max(1, rate // 10)
    sent = 0
    started = time.monotonic()
    pending: list[str] = []
    slice_no = 0
    while time.monotonic() - started < seconds:
        while len(pending) < per_slice:
            pending.extend(next(batches))
        chunk, pending = pending[:per_slice], pending[per_slice:]
        sent += _count(sequencer.submit(chunk))
        slice_no += 1
        delay = started + slice_no / 10 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return sent


def highest_kept_up(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The kept-up step with the most transactions achieved. Not simply the last one: on
    a saturated machine a higher offered rate can achieve less than the step before."""
    kept = [step for step in steps if step["kept_up"]]
    return max(kept, key=lambda step: step["offered_per_s"]) if kept else None


def run(
    *,
    rates: tuple[int, ...] = (500, 1000, 2000, 3000, 4000),
    seconds: float = 10.0,
    followers: int = 3,
    signers: int = 200,
    say: Callable[[str], None] = print,
) -> Figures:
    figures = Figures(followers=followers)
    events = int(sum(rates) * seconds * 1.3) + 10_000
    with (
        tempfile.TemporaryDirectory(prefix="dfg-bench-repl-") as tmp,
        TansuBroker(log_dir=Path(tmp)) as broker,
    ):
        root = Path(tmp)
        say(f"pre-signing {events:,} transactions ...")
        presigned = root / "presigned.jws"
        presign(presigned, events, signers, 7, os.cpu_count() or 1)
        baseline = VerifyBaseline(seconds=1.0)
        say("measuring raw single-core Ed25519 verification (again after the steps and the catch-up) ...")
        baseline.sample()
        settings = Settings(data_dir=root / "ledger", checkpoint_every=1000, checkpoint_interval_ms=500)
        create_ledger(settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Bench")
        sequencer = open_sequencer(settings)
        stop_checkpointer = sequencer.start_checkpointer()
        assert sequencer.ledger is not None
        ledger_key = sequencer.ledger["checkpoint_key"]
        _admit_signers(sequencer, settings, signers, 7)
        relay = _dfg(
            "relay", "--data", str(settings.data_dir), "--kafka", broker.bootstrap, log=root / "relay.log"
        )
        nodes: list[_Follower] = []
        try:
            nodes = [
                _start_follower(root / f"node{i}", broker.bootstrap, ledger_key) for i in range(followers)
            ]
            if not _wait(_all_at(nodes, sequencer.size), 60):
                raise RuntimeError("the followers did not catch up with the admitted signers")
            for n in nodes:
                n.lags()  # reset
            batches = _stream(presigned)
            for rate in rates:
                say(f"offering {rate:,} transactions/s for {seconds:.0f}s ...")
                started = time.monotonic()
                sent = _offer(sequencer, batches, rate, seconds)
                offered = sent / (time.monotonic() - started)
                caught_up = _wait(_all_at(nodes, sequencer.size), KEEP_UP_LAG_S)
                if not caught_up:
                    _wait(_all_at(nodes, sequencer.size), 120)  # drain before the next step
                lags = [n.lags() for n in nodes]
                p50 = max((lag["p50_s"] or 0.0) for lag in lags)
                p99 = max((lag["p99_s"] or 0.0) for lag in lags)
                kept_up = caught_up and p99 <= KEEP_UP_LAG_S
                figures.steps.append(
                    {"rate": rate, "offered_per_s": round(offered, 1), "kept_up": kept_up,
                     "lag_p50_s": round(p50, 3), "lag_p99_s": round(p99, 3)}
                )  # fmt: skip
                say(f"  offered {offered:,.0f}/s: lag p50 {p50:.3f}s, p99 {p99:.3f}s, kept up: {kept_up}")
                if not kept_up:
                    break
            best = highest_kept_up(figures.steps)
            if best is not None:
                figures.keeps_up_per_s = best["offered_per_s"]
                figures.lag_p50_s, figures.lag_p99_s = best["lag_p50_s"], best["lag_p99_s"]
            for n in nodes:
                n.process.send_signal(2)
            for n in nodes:
                n.process.wait(30)
            baseline.sample()
            say(f"catching up a new follower from offset 0 over {sequencer.size:,} entries ...")
            target = sequencer.size
            started = time.monotonic()
            fresh = _start_follower(root / "fresh", broker.bootstrap, ledger_key)
            nodes = [fresh]
            _wait(lambda: fresh.size() >= target, 3600)
            figures.catchup_verify_per_s = fresh.size() / (time.monotonic() - started)
            baseline.sample()
        finally:
            for n in nodes:
                if n.process.poll() is None:
                    n.process.send_signal(2)
                    n.process.wait(30)
            relay.send_signal(2)
            relay.wait(30)
            stop_checkpointer.set()
            sequencer.verifier.close()
            sequencer.store.close()
    figures.verify_per_s = baseline.verify_per_s
    figures.verify_per_s_samples = [round(v, 1) for v in baseline.openssl]
    figures.notes.append(baseline.describe())
    return figures
