"""Test harness for replication: a ledger, its relay and followers on a real broker.

Everything runs in this process, in threads, against a real Tansu broker: the relay
publishes from the ledger's database, each follower keeps its own SQLite replica and
views under its own directory.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateways.kafka.client import KafkaSettings
from gateways.kafka.follower import Follower, Witness
from gateways.kafka.relay import Relay
from gateways.kafka.topics import Topics
from infra.node import open_node
from infra.settings import Settings
from ledger.store import LedgerStore
from ledger.verifier import ParallelVerifier

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Running:
    """A component running in a thread until stopped."""

    stop: threading.Event
    thread: threading.Thread
    result: list[int] = field(default_factory=list)

    def halt(self, timeout: float = 20.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "component did not stop"


def dfg_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """A ``dfg`` command in its own process, as an operator runs it; what it logs
    (stderr) goes to ``log``, where a test can read it without the pipe filling up."""
    with open(log, "ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "gateways.cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink
        )


def replica_size(node_dir: Path) -> int:
    """How many entries the replica a ``dfg node`` process writes in ``node_dir`` holds."""
    from infra.bootstrap import open_store

    if not (node_dir / "ledger.sqlite").exists():
        return 0
    store = open_store(Settings(data_dir=node_dir))
    try:
        return store.head()[0]
    finally:
        store.close()


def start_relay(
    store: LedgerStore, kafka: KafkaSettings, topics: Topics, *, recheck_every: float = 10.0
) -> tuple[Relay, Running]:
    relay = Relay(store, kafka, topics, batch=500, recheck_every=recheck_every)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"idle_wait": 0.05}, daemon=True)
    thread.start()
    return relay, Running(stop, thread)


@dataclass
class Node:
    """One node operator's follower with its own replica and views."""

    directory: Path
    kafka: KafkaSettings
    topics: Topics
    witness: Witness | None = None
    follower: Follower | None = None
    running: Running | None = None

    def start(self, *, exit_on_violation: bool = False) -> Follower:
        node = open_node(
            Settings(data_dir=self.directory),
            ledger_key=None,
            chain=None,
            verifier=ParallelVerifier(workers=0),
        )
        follower = Follower(
            node.replica, node.views, node.view_list, self.kafka, self.topics, witness=self.witness
        )
        stop = threading.Event()
        running = Running(stop, threading.Thread(daemon=True, target=lambda: None))

        def target() -> None:
            running.result.append(follower.run(stop, exit_on_violation=exit_on_violation))

        running.thread = threading.Thread(target=target, daemon=True)
        running.thread.start()
        self.follower, self.running = follower, running
        return follower

    def stop(self) -> None:
        assert self.running is not None and self.follower is not None
        self.running.halt()
        self.follower.replica.store.close()
        self.follower.views.close()

    @property
    def size(self) -> int:
        return 0 if self.follower is None else self.follower.replica.size


@contextmanager
def nodes(
    base: Path, kafka: KafkaSettings, topics: Topics, count: int, *, witnesses: list[Witness] | None = None
) -> Iterator[list[Node]]:
    """``count`` followers; with ``witnesses``, one per witness identity instead."""
    started = []
    identities: list[Witness | None] = list(witnesses) if witnesses else [None] * count
    try:
        for index, witness in enumerate(identities):
            node = Node(base / f"node{index}", kafka, topics, witness)
            node.start()
            started.append(node)
        yield started
    finally:
        for node in started:
            if node.running is not None and node.running.thread.is_alive():
                node.stop()
