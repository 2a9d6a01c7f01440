"""Replication through a real Kafka-protocol broker (Tansu): relay, followers, witnesses."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner
from conftest import CHAIN, Ledger, give_level1, make_ledger
from joserfc.jwk import OKPKey
from kafka import KafkaProducer
from kafka.errors import KafkaError
from pg_sessions import end_session, lock_sessions
from replication import Node, dfg_process, nodes, replica_size, start_relay, wait_for

import gateways.kafka.follower as follower_module
from gateways.cli.main import cli
from gateways.http.node_status import serve_status
from gateways.kafka.client import KafkaSettings
from gateways.kafka.follower import Follower, FollowerStatus, Witness
from gateways.kafka.relay import Relay, RelayError
from gateways.kafka.topics import Topics, checkpoint_record, entry_record
from infra.node import open_node
from infra.settings import Settings
from infra.tansu import TansuBroker, free_port
from infra.writer_lock import WriterLock
from ledger.canonical import canonical_json
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.merkle import leaf_hash
from ledger.signing import TransactionSigner, public_jwk
from ledger.store import StoredCheckpoint
from ledger.verifier import ParallelVerifier
from ledger.witness import WitnessPolicy, cosign, with_cosignatures, witness_verifier

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix() -> str:
    """A fresh topic prefix per test: the broker is shared by the module."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topics(prefix: str) -> Topics:
    return Topics.for_ledger(CHAIN, prefix)


def give(ledger: Ledger, app: Any, subject: str) -> str:
    return give_level1(ledger, app, subject)


def consent_rows(node_dir: Path) -> int:
    import sqlite3

    with sqlite3.connect(node_dir / "views.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM consent_state").fetchone()[0])


def test_entries_reach_three_followers_verified_with_their_projections(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(40)])
    relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 3) as started:
            ledger.accept(*[give(ledger, app, f"q-{i}") for i in range(60)])
            ledger.sequencer.checkpoint_now()
            size = ledger.head()[0]
            wait_for(lambda: all(n.size == size for n in started), what="followers to catch up")
            source = [e.canonical for e in ledger.sequencer.store.read_entries(1, 1000)]
            for node in started:
                assert node.follower is not None
                store = node.follower.replica.store
                assert store.head() == ledger.head()
                assert [e.canonical for e in store.read_entries(1, 1000)] == source
                wait_for(lambda n=node: consent_rows(n.directory) == 100, what="the node's consent view")
                wait_for(lambda n=node: n.follower.status.last_checkpoint == size, what="checkpoint")
                assert node.follower.status.halted is None
    finally:
        relay_running.halt()
    assert relay.stats.entries_published == ledger.head()[0]


# --- faults ------------------------------------------------------------------------------


def _converged(ledger: Ledger, started: list[Any]) -> None:
    size = ledger.head()[0]
    wait_for(lambda: all(n.size == size for n in started), timeout=60, what=f"replicas to reach {size}")
    source = [e.canonical for e in ledger.sequencer.store.read_entries(1, 100_000)]
    for node in started:
        store = node.follower.replica.store
        assert [e.canonical for e in store.read_entries(1, 100_000)] == source  # no gap, no duplicate
        assert store.head() == ledger.head()
        assert node.follower.status.halted is None


def _topic_is_exact(kafka: KafkaSettings, topic: str, size: int) -> None:
    """Offset o holds entry o + 1, for every record: nothing duplicated or skipped."""
    from gateways.kafka.client import partition
    from gateways.kafka.topics import record_seq

    consumer = kafka.consumer()
    tp = partition(topic)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while len(seen) < size and time.monotonic() < deadline:
        for record in consumer.poll(timeout_ms=200).get(tp, []):
            assert record_seq(record.headers) == record.offset + 1
            seen.append(record.offset)
    consumer.close()
    assert seen == list(range(size))


@pytest.mark.slow
def test_broker_lost_everything_mid_stream_and_replicas_still_equal_the_log(
    ledger: Ledger, broker: TansuBroker, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 2) as started:
            for batch in range(6):
                ledger.accept(*[give(ledger, app, f"b{batch}-{i}") for i in range(50)])
                if batch == 2:
                    wait_for(lambda: started[0].size > 50, what="replication to start")
                    broker.restart(kill=True)  # memory storage: every topic is gone
            _converged(ledger, started)
        _topic_is_exact(kafka, topics.entries, ledger.head()[0])
    finally:
        relay_running.halt()
    assert relay.stats.republished_from, "the relay never noticed the broker lost its topic"


@pytest.mark.slow
def test_a_relay_publishes_again_what_the_broker_lost_while_the_ledger_was_idle(
    ledger: Ledger, broker: TansuBroker, kafka: KafkaSettings, topics: Topics
) -> None:
    """The relay read where the topics end only at start and after a send failed: with
    no new entry, nothing failed, and topics a broker had lost stayed empty (no new
    node could start from them) until the ledger's next entry."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(30)])
    ledger.sequencer.checkpoint_now()
    size = ledger.head()[0]
    relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics, recheck_every=0.5)
    try:
        wait_for(lambda: relay.stats.entries_published == size, what="published")
        wait_for(lambda: relay.stats.checkpoints_published >= 1, what="checkpoint published")
        broker.restart(kill=True)  # memory storage: every topic is gone; no entry comes after
        wait_for(lambda: bool(relay.stats.republished_from), timeout=60, what="the relay to notice")
        _topic_is_exact(kafka, topics.entries, size)
    finally:
        relay_running.halt()
    assert ledger.head()[0] == size


@pytest.mark.slow
def test_a_broker_that_stalls_mid_stream_leaves_the_relay_running(
    ledger: Ledger, broker: TansuBroker, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """A broker that stops answering for longer than a request may take (a long pause
    of its process, a network partition): the producer retries a batch the broker
    wrote, and the broker answers the retry as a duplicate, without an offset. The
    relay used to read that as another producer writing the topic, and stopped."""
    app = ledger.admit("sp:app", "service_provider")
    _relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 1) as started:
            ledger.accept(*[give(ledger, app, f"a-{i}") for i in range(50)])
            wait_for(lambda: started[0].size == ledger.head()[0], what="replication to start")
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                ledger.accept(*[give(ledger, app, f"b-{i}") for i in range(300)])
                time.sleep(kafka.request_timeout_ms / 1000 * 2)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            ledger.accept(*[give(ledger, app, f"c-{i}") for i in range(50)])
            _converged(ledger, started)
            assert relay_running.thread.is_alive(), "the relay stopped"
        _topic_is_exact(kafka, topics.entries, ledger.head()[0])
    finally:
        relay_running.halt()


def test_a_second_relay_of_one_ledger_is_refused_at_start(
    any_ledger: Ledger, kafka: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    """Two relays each published the next entry: the topic held it twice, which stopped
    both relays and every follower until the topics were recreated."""
    ledger = any_ledger
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(give(ledger, app, "p-1"))
    place = ["--data", str(ledger.settings.data_dir)]
    if ledger.settings.database_url:
        place += ["--database-url", ledger.settings.database_url]
    relay_args = ("relay", *place, "--kafka", kafka.bootstrap, "--topic-prefix", prefix)
    store = ledger.sequencer.store
    first = dfg_process(*relay_args, log=tmp_path / "relay.log")
    try:
        wait_for(lambda: store.marker("relay.entries") == ledger.head()[0], what="published")
        second = dfg_process(*relay_args, log=tmp_path / "second.log")
        try:
            assert second.wait(30) == 1
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(10)
        assert "another dfg relay publishes the ledger" in (tmp_path / "second.log").read_text()
        assert first.poll() is None
        ledger.accept(give(ledger, app, "p-2"))
        wait_for(lambda: store.marker("relay.entries") == ledger.head()[0], what="published")
        _topic_is_exact(kafka, Topics.for_ledger(CHAIN, prefix).entries, ledger.head()[0])
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(20)
    assert first.returncode == 0, (tmp_path / "relay.log").read_text()


def _relay_lock_sessions(schema: str) -> list[int]:
    """The PostgreSQL sessions holding the relay lock of the ledger in ``schema``."""
    from infra.writer_lock import _lock_key

    return lock_sessions(_lock_key(schema, "relay"))


@pytest.mark.postgres
def test_a_relay_whose_lock_session_ended_takes_it_again_or_stops(
    pg_schema_url: str, kafka: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    """The relay lock on PostgreSQL is a session's, and ends with it (a server restart,
    pg_terminate_backend); the relay never looked again, so a second relay started
    then, and both published the next entry: the topic held it twice, which stopped
    both relays and every follower until the topics were recreated. The relay now
    confirms its lock before each send: taken again if free, else it stops."""
    from infra.storage.postgres import database_url_schema

    ledger = make_ledger(Settings(data_dir=tmp_path / "data", database_url=pg_schema_url))
    schema = database_url_schema(pg_schema_url)
    store = ledger.sequencer.store
    app = ledger.admit("sp:app", "service_provider")
    place = ("--data", str(ledger.settings.data_dir), "--database-url", pg_schema_url)
    relay_args = ("relay", *place, "--kafka", kafka.bootstrap, "--topic-prefix", prefix)
    first = dfg_process(*relay_args, log=tmp_path / "relay.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: store.marker("relay.entries") == ledger.head()[0], what="published")
        (session,) = _relay_lock_sessions(schema)
        end_session(session)
        ledger.accept(give(ledger, app, "p-1"))  # nobody took the lock: the relay takes it again
        wait_for(lambda: store.marker("relay.entries") == ledger.head()[0], what="published after")
        assert len(_relay_lock_sessions(schema)) == 1, "the relay did not take its lock again"
        (session,) = _relay_lock_sessions(schema)
        end_session(session)
        second = dfg_process(*relay_args, log=tmp_path / "second.log")  # finds the lock free
        wait_for(lambda: _relay_lock_sessions(schema) != [], what="the second relay's lock")
        ledger.accept(give(ledger, app, "p-2"))
        assert first.wait(30) == 1
        assert "another dfg relay holds it now" in (tmp_path / "relay.log").read_text()
        wait_for(lambda: store.marker("relay.entries") == ledger.head()[0], what="published by the second")
        _topic_is_exact(kafka, Topics.for_ledger(CHAIN, prefix).entries, ledger.head()[0])
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(20)
        ledger.sequencer.store.close()
    assert second is not None and second.returncode == 0, (tmp_path / "second.log").read_text()


@pytest.mark.postgres
def test_a_follower_whose_lock_another_process_took_stops_with_the_reason(
    ledger: Ledger, kafka: KafkaSettings, prefix: str, pg_schema_url: str, tmp_path: Path
) -> None:
    """The replica's writer lock on PostgreSQL ended with its session, and another
    process took it: the follower's next append is refused, which ended `dfg node
    follow` with a traceback instead of the reason."""
    from infra.bootstrap import open_store
    from infra.storage.postgres import database_url_schema
    from infra.writer_lock import _lock_key, take_writer_lock

    app = ledger.admit("sp:app", "service_provider")
    chain_topics = Topics.for_ledger(CHAIN, prefix)
    _, relay_running = start_relay(ledger.sequencer.store, kafka, chain_topics)
    assert ledger.sequencer.ledger is not None
    node = Settings(data_dir=tmp_path / "node", database_url=pg_schema_url)
    follow = ("node", "follow", "--data", str(node.data_dir), "--database-url", pg_schema_url)
    follow += ("--kafka", kafka.bootstrap, "--topic-prefix", prefix, "--chain", CHAIN)
    follow += ("--ledger-key", ledger.sequencer.ledger["checkpoint_key"])
    log = tmp_path / "follower.log"
    follower = dfg_process(*follow, log=log)
    other = None
    try:

        def size() -> int:
            store = open_store(node, read_only=True)
            try:
                return store.head()[0]
            except Exception:  # the follower has not made its tables yet
                return 0
            finally:
                store.close()

        wait_for(lambda: size() == ledger.head()[0], timeout=60, what="the follower to catch up")
        sessions = lock_sessions(_lock_key(database_url_schema(pg_schema_url)))
        assert len(sessions) == 1
        end_session(sessions[0])
        other = take_writer_lock(node, doing="testing")  # the free lock, as a second follower would
        ledger.accept(give(ledger, app, "p-1"))
        assert follower.wait(30) == 1
        text = log.read_text()
        assert "another process holds it now" in text and "Traceback" not in text, text
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
        if other is not None:
            other.release()
        relay_running.halt()


@pytest.mark.slow
def test_relay_killed_mid_batch_resumes_without_gap_or_duplicate(
    ledger: Ledger, kafka: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    for batch in range(8):
        ledger.accept(*[give(ledger, app, f"k{batch}-{i}") for i in range(500)])
    data, log = str(ledger.settings.data_dir), tmp_path / "relay.log"
    chain_topics = Topics.for_ledger(CHAIN, prefix)
    relay_args = ("relay", "--data", data, "--kafka", kafka.bootstrap, "--topic-prefix", prefix)
    relay = dfg_process(*relay_args, log=log)
    try:
        store = ledger.sequencer.store
        wait_for(lambda: 0 < store.marker("relay.entries") < ledger.head()[0] - 500, what="relay mid-way")
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
        killed_at = store.marker("relay.entries")
        relay = dfg_process(*relay_args, log=log)
        with nodes(tmp_path, kafka, chain_topics, 1) as started:
            _converged(ledger, started)
        assert killed_at < ledger.head()[0]
        _topic_is_exact(kafka, chain_topics.entries, ledger.head()[0])
    finally:
        relay.send_signal(signal.SIGINT)
        relay.wait(20)


@pytest.mark.slow
def test_follower_killed_and_restarted_resumes_to_an_equal_replica(
    ledger: Ledger, kafka: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    for batch in range(6):
        ledger.accept(*[give(ledger, app, f"f{batch}-{i}") for i in range(500)])
    chain_topics = Topics.for_ledger(CHAIN, prefix)
    _, relay_running = start_relay(ledger.sequencer.store, kafka, chain_topics)
    node_dir = tmp_path / "node"
    assert ledger.sequencer.ledger is not None
    follow = (
        "node",
        "follow",
        "--data",
        str(node_dir),
        "--kafka",
        kafka.bootstrap,
        "--topic-prefix",
        prefix,
        "--chain",
        CHAIN,
        "--ledger-key",
        ledger.sequencer.ledger["checkpoint_key"],
    )
    follower = dfg_process(*follow, log=tmp_path / "follower.log")
    try:
        from infra.bootstrap import open_store
        from infra.settings import Settings

        wait_for(lambda: replica_size(node_dir) > 200, timeout=60, what="the follower to start")
        follower.send_signal(signal.SIGKILL)
        follower.wait(10)
        assert replica_size(node_dir) < ledger.head()[0]
        follower = dfg_process(*follow, log=tmp_path / "follower.log")
        size = ledger.head()[0]
        wait_for(lambda: replica_size(node_dir) == size, timeout=90, what="the restarted follower")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(20) == 0
        store = open_store(Settings(data_dir=node_dir))
        try:
            source = [e.canonical for e in ledger.sequencer.store.read_entries(1, 100_000)]
            assert [e.canonical for e in store.read_entries(1, 100_000)] == source
        finally:
            store.close()
        status = subprocess.run(
            [sys.executable, "-m", "gateways.cli", "node", "status", "--data", str(node_dir), "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["size"] == ledger.head()[0]
    finally:
        if follower.poll() is None:
            follower.kill()
        relay_running.halt()


# --- attacks on the topics ---------------------------------------------------------------


def _send(
    kafka: KafkaSettings, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = kafka.producer()
    producer.send(topic, key=key, value=value, headers=headers, partition=0).get(timeout=10)
    producer.close()


def _http(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _flip_signature(canonical: bytes) -> bytes:
    doc = json.loads(canonical)
    head, payload, sig = doc["tx"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[3] ^= 0x40
    doc["tx"] = f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    return canonical_json(doc)


def _change_subject(canonical: bytes) -> bytes:
    doc = json.loads(canonical)
    doc["data"]["subject"] = "p-mallory"
    return canonical_json(doc)


def _with_leaf(headers: list[tuple[str, bytes]], value: bytes) -> list[tuple[str, bytes]]:
    return [(n, leaf_hash(value).hex().encode() if n == "leaf" else v) for n, v in headers]


def _signed_checkpoint(ledger: Ledger, size: int, root: bytes) -> str:
    key = ledger.sequencer._checkpoint_key
    assert key is not None and ledger.sequencer.ledger is not None
    return sign_checkpoint(
        Checkpoint(ledger.sequencer.ledger["origin"], size, root), key.name, key.private_key
    )


@pytest.mark.parametrize(
    "attack",
    [
        "bad-signature",
        "altered-in-flight",
        "checkpoint-root",
        "fork",
        "wrong-seq-header",
        "garbage-after-good",
    ],
)
def test_attacks_on_the_topics_are_named_and_nothing_after_them_is_accepted(
    attack: str, ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"a-{i}") for i in range(30)])
    ledger.sequencer.checkpoint_now()
    _, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    size = ledger.head()[0]
    try:
        with nodes(tmp_path, kafka, topics, 1) as started:
            wait_for(lambda: started[0].size == size, what="the honest history")
            relay_running.halt()  # the attacker now writes to the topics instead
            follower = started[0].follower
            assert follower is not None
            port = serve_status(follower, "127.0.0.1", 0)  # a port the system chose, as --status-port 0
            assert _http(port, "/status")[0] == 200
            nxt = ledger.accept(give(ledger, app, "a-next"))[0].entry
            stored = ledger.sequencer.store.read_entries(nxt.seq, 1)[0]
            key, value, headers = entry_record(stored)
            held = size
            if attack == "bad-signature":  # (headers made to match: the replay must catch it)
                forged = _flip_signature(value)
                _send(kafka, topics.entries, key, forged, _with_leaf(headers, forged))
                expected = ("bad_entry", nxt.seq, "signature")
            elif attack == "altered-in-flight":
                forged = _change_subject(value)
                _send(kafka, topics.entries, key, forged, _with_leaf(headers, forged))
                expected = ("bad_entry", nxt.seq, "altered")
            elif attack == "checkpoint-root":
                note = _signed_checkpoint(ledger, size - 5, b"\x01" * 32)
                _send(kafka, topics.checkpoints, *checkpoint_record(size - 5, note))
                expected = ("checkpoint_root_mismatch", size - 5, "root")
            elif attack == "fork":
                note = _signed_checkpoint(ledger, size, b"\x02" * 32)  # a second root for a size
                _send(kafka, topics.checkpoints, *checkpoint_record(size, note))
                expected = ("equivocation", size, "disagree")
            elif attack == "wrong-seq-header":  # the offset says which entry, not a header
                lying = [(n, str(nxt.seq + 1).encode() if n == "seq" else v) for n, v in headers]
                _send(kafka, topics.entries, key, value, lying)
                expected = ("bad_entry", nxt.seq, "claims to be entry")
            else:  # the good entry before a record that is not one is kept
                _send(kafka, topics.entries, key, value, headers)
                _send(kafka, topics.entries, key, b"not an entry", headers)
                expected, held = ("bad_entry", nxt.seq + 1, "not an entry"), size + 1
            wait_for(lambda: follower.status.halted is not None, what="the violation to be found")
            halted = follower.status.halted
            assert (halted["kind"], halted["seq"]) == expected[:2], halted
            assert expected[2] in halted["message"]
            # the genuine next entry is not accepted after a violation
            _send(kafka, topics.entries, *entry_record(stored))
            time.sleep(1.0)
            assert started[0].size == held
            evidence = json.loads(follower.replica.store.violations()[0].evidence)
            assert evidence
            code, body = _http(port, "/status")
            assert code == 409 and json.loads(body)["halted"]["kind"] == expected[0]
            assert "dfg_replica_violations 1.0" in _http(port, "/metrics")[1]
            status = CliRunner().invoke(cli, ["node", "status", "--data", str(started[0].directory)])
            assert status.exit_code == 3 and f"VIOLATION {expected[0]}" in status.output
    finally:
        if relay_running.thread.is_alive():
            relay_running.halt()


@pytest.mark.parametrize("stray_key", [b"1000000", b"oops"])
def test_a_relay_refuses_a_checkpoints_topic_that_ends_with_a_stranger(
    stray_key: bytes, ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """The relay resumes after the newest checkpoint on the topic, read from the signed
    note: a record it did not publish stops it with its reason, whatever its key says
    (a key of 1000000 used to make it skip every checkpoint up to that size)."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(give(ledger, app, "p-1"))
    ledger.sequencer.checkpoint_now()
    relay = Relay(ledger.sequencer.store, kafka, topics)
    relay.connect()
    while relay.step():
        pass
    relay.close()
    _send(kafka, topics.checkpoints, stray_key, b"not a checkpoint of this ledger", [])
    with pytest.raises(RelayError, match="not one of this ledger's checkpoints"):
        Relay(ledger.sequencer.store, kafka, topics).connect()


def test_a_relay_that_lost_its_lock_leaves_the_markers_as_they_are(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """A relay reconnecting after its lock went to another relay (its database
    restarted meanwhile) set the markers to where the topics ended when it read them,
    behind what the other relay had published since, which then sent those entries
    again. It now confirms the lock before it reads the topics."""
    from infra.writer_lock import WriterLockLost

    class Lost(WriterLock):
        def hold(self) -> None:
            raise WriterLockLost("another dfg relay holds it now")

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(give(ledger, app, "p-1"))
    store = ledger.sequencer.store
    store.set_marker("relay.entries", ledger.head()[0])  # published by the other relay
    relay = Relay(store, kafka, topics, lock=Lost(lambda: None))
    with pytest.raises(WriterLockLost):
        relay.connect()
    relay.close()
    assert store.marker("relay.entries") == ledger.head()[0]


def test_a_relay_that_took_its_lock_again_reads_the_topics_before_sending_more(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """A relay whose lock session ended took the lock again and went on sending the
    page it was on: had another relay held the lock and published in between, those
    entries went on the topic twice (then both relays stopped, the topic spoiled)."""
    from infra.bootstrap import open_store

    app = ledger.admit("sp:app", "service_provider")
    for i in range(6):
        ledger.accept(give(ledger, app, f"p-{i}"))
    size = ledger.head()[0]
    ledger.sequencer.store.close()  # each relay, and this test, reads through a store of its own
    stores = [open_store(ledger.settings) for _ in range(3)]

    class TakenAgain(WriterLock):
        holds = 0

        def hold(self) -> bool:
            self.holds += 1
            if self.holds != 3:  # connecting, the first page, then: taken again
                return True
            other, running = start_relay(stores[1], kafka, topics)  # which had it meanwhile
            wait_for(lambda: other.stats.entries_published > 0, what="the other relay's publishing")
            running.halt()
            return False

    relay = Relay(stores[0], kafka, topics, batch=2, lock=TakenAgain(lambda: None))
    stop, failed = threading.Event(), []

    def run() -> None:
        try:
            relay.run(stop, idle_wait=0.05)
        except Exception as exc:  # e.g. RelayError: another producer writes to this topic
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: failed or stores[2].marker("relay.entries") == size, what="the topic's end read")
    finally:
        stop.set()
        thread.join(timeout=30)
        for store in stores:
            store.close()
    assert not failed, failed
    _topic_is_exact(kafka, topics.entries, size)


def test_a_relay_waits_for_each_batch_before_sending_the_next(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """The idempotent producer makes each batch exactly-once, not a run of them: when a
    batch failed for good, kafka-python sent the ones queued behind it under a new
    epoch, so later entries landed where the failed ones belonged (a gap no topic can
    lose). The relay sent a whole page (2,000 entries, several batches) before waiting;
    it now sends at most one batch's worth at a time, and waits for it."""
    from gateways.kafka.client import CHUNK_BYTES

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(400)])
    relay = Relay(ledger.sequencer.store, kafka, topics)
    relay.connect()
    assert relay._producer is not None
    producer = relay._producer
    outstanding: list[int] = []  # bytes sent since the last flush
    runs: list[int] = []
    real_send, real_flush = producer.send, producer.flush

    def send(topic: str, **record: Any) -> Any:
        outstanding.append(len(record["value"]))
        return real_send(topic, **record)

    def flush(*args: Any, **kwargs: Any) -> None:
        real_flush(*args, **kwargs)
        if outstanding:
            runs.append(sum(outstanding))
            outstanding.clear()

    try:
        with mock.patch.object(producer, "send", send), mock.patch.object(producer, "flush", flush):
            while relay.step():
                pass
    finally:
        relay.close()
    assert relay.stats.entries_published == ledger.head()[0]
    assert len(runs) > 1 and max(runs) <= CHUNK_BYTES, runs  # one batch's worth at most


def test_chunks_keep_the_order_and_one_batchs_worth_at_most() -> None:
    from gateways.kafka.client import CHUNK_BYTES, chunks

    sizes = [900] * 500 + [300_000, 10]
    records = [(b"k", bytes(size), [("seq", str(i).encode())]) for i, size in enumerate(sizes)]
    runs = list(chunks(records))
    assert [r for run in runs for r in run] == records
    assert all(sum(len(v) for _, v, _ in run) <= CHUNK_BYTES for run in runs if len(run) > 1)
    assert [len(run) for run in runs][-2:] == [1, 1]  # a record larger than a batch goes alone
    assert list(chunks([])) == []


def test_a_relay_refuses_topics_that_would_delete_or_compact_entries(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """Topics created beforehand, by hand or by a broker's defaults, were taken as they
    were: a compacted entries topic keeps only each aggregate's newest entry, and a
    retention limit (Kafka's default is seven days) deletes the history new followers
    start from. The relay now reads their settings and names what is wrong. (Tansu
    describes no settings, so the broker's answer is stood in for here.)"""
    from gateways.kafka import client

    assert client.topic_config_problems({}) == []  # settings a broker does not describe are not judged
    fit = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1", "segment.ms": "8640"}
    assert client.topic_config_problems(fit) == []
    unfit = {"cleanup.policy": "compact,delete", "retention.ms": "604800000", "retention.bytes": "-1"}
    problems = client.topic_config_problems(unfit)
    assert len(problems) == 2 and "compaction" in problems[0] and "retention.ms is 604800000" in problems[1]

    Relay(ledger.sequencer.store, kafka, topics).connect()  # creates the topics
    described = lambda _admin, name: unfit if name == topics.entries else fit  # noqa: E731
    with mock.patch.object(client, "_described", described):
        relay = Relay(ledger.sequencer.store, kafka, topics)
        with pytest.raises(RelayError, match=f"{topics.entries}: cleanup.policy is 'compact,delete'"):
            relay.connect()
    assert KafkaSettings("x", replication_factor=3).topic_configs()["min.insync.replicas"] == "2"
    assert "min.insync.replicas" not in KafkaSettings("x").topic_configs()


def test_a_relay_refuses_an_entries_topic_that_ends_with_a_stranger_under_the_right_header(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """The relay adopts the topic's end as published after checking its last record's
    `seq` header, which anyone can write: a stranger's record there passed for the
    ledger's entry. Its bytes are now compared with the entry."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(give(ledger, app, "p-1"))
    relay = Relay(ledger.sequencer.store, kafka, topics)
    relay.connect()
    while relay.step():
        pass
    relay.close()
    (accepted,) = ledger.accept(give(ledger, app, "p-2"))
    (stored,) = ledger.sequencer.store.read_entries(accepted.seq, 1)
    key, _value, headers = entry_record(stored)
    _send(kafka, topics.entries, key, b'{"not": "this ledger\'s entry"}', headers)
    with pytest.raises(RelayError, match=f"is not this ledger's entry {accepted.seq}"):
        Relay(ledger.sequencer.store, kafka, topics).connect()


def test_a_follower_whose_topic_lost_its_first_records_says_so_and_stops(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """A topic whose retention deleted its first records: a new replica's consumer was
    reset to the topic's start, the entries came with a gap, and the follower read
    them again and again for ever, saying nothing above INFO. It now stops (exit
    status 2) and says how to start the replica instead. (Tansu deletes no records, so
    the broker's answer for the topic's start is stood in for.)"""
    from kafka import KafkaConsumer

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(5)])
    _publish_all(ledger, kafka, topics)
    follower = _manual_follower(tmp_path / "node", kafka, topics, None)
    deleted = mock.patch.object(
        KafkaConsumer, "beginning_offsets", lambda _c, tps, **_: dict.fromkeys(tps, 3)
    )
    try:
        stop = threading.Event()  # set only if the follower never stops by itself
        timer = threading.Timer(30, stop.set)
        timer.start()
        with deleted:
            assert follower.run(stop) == 2
        timer.cancel()
        refused = follower.cannot_follow
        assert refused is not None and "starts at offset 3, after entry 1" in refused
        assert follower.replica.size == 0 and follower.replica.halted is None  # nothing recorded
    finally:
        follower.replica.store.close()
        follower.views.close()

    with deleted, pytest.raises(RelayError, match="holds no record: they were deleted"):
        Relay(ledger.sequencer.store, kafka, topics).connect()  # all of them, as far as the relay sees


# --- witnesses ---------------------------------------------------------------------------


def test_a_relay_warns_of_topics_with_more_than_one_partition(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    """Topics created beforehand with a broker's defaults (often several partitions)
    used to be taken without a word. They still work (every dfg client uses partition
    0), so the relay says so rather than stopping."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(topics.entries, num_partitions=4, replication_factor=1)])
    finally:
        admin.close()
    relay = Relay(ledger.sequencer.store, kafka, topics)
    try:
        relay.connect()
    finally:
        relay.close()
    assert f"{topics.entries} has 4 partitions; dfg uses partition 0 only" in caplog.text


def test_a_refusal_by_the_brokers_acls_is_logged_as_one_not_as_an_outage(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay or node without the ACLs it needs used to log "broker unavailable" while
    it retried. It still retries (an administrator may grant them), but says what is
    wrong. (Tansu enforces no ACLs: the refusal is kafka-python's error, raised here.)"""
    from kafka.errors import TopicAuthorizationFailedError

    refused = TopicAuthorizationFailedError(f"Write on {topics.entries}")

    def refusals() -> set[str]:
        return {r.name for r in caplog.records if "the brokers refused this client access" in r.getMessage()}

    with (
        mock.patch.object(KafkaSettings, "ensure_topics", side_effect=refused),
        mock.patch.object(KafkaSettings, "consumer", side_effect=refused),
    ):
        _, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
        try:
            with nodes(tmp_path, kafka, topics, 1):
                wait_for(lambda: {"dfg.relay", "dfg.follower"} <= refusals(), what="both to log the refusal")
        finally:
            relay_running.halt()
    assert "check its ACLs" in caplog.text
    assert "broker unavailable" not in caplog.text


def test_topics_not_there_are_named_not_taken_for_an_outage(
    kafka: KafkaSettings, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node given a --chain or --topic-prefix no relay publishes to waits for the
    topics, and says so: it used to log "broker unavailable" while the broker answered."""
    with nodes(tmp_path, kafka, Topics.for_ledger(CHAIN, prefix), 1) as started:
        wait_for(lambda: "are --chain and --topic-prefix right?" in caplog.text, what="the warning")
        assert started[0].follower is not None and not started[0].follower.status.connected
    assert f"no topic {prefix}." in caplog.text
    assert "broker unavailable" not in caplog.text


def _witness_identity(ledger: Ledger, name: str, *, register: bool) -> tuple[Witness, str]:
    """A node key; admitted on the ledger as a node operator when ``register``."""
    key = OKPKey.generate_key("Ed25519")
    jwk = public_jwk(key).as_dict()
    if register:
        ledger.accept(
            ledger.sign(
                ledger.operator,
                "principal.admit",
                {"principal": name, "kind": "node_operator", "display_name": name, "jwk": jwk},
            )
        )
    verifier = witness_verifier(name, jwk)
    assert verifier is not None
    return Witness(name, key.private_key), verifier.to_string()


def _registered_witness_cosigns_newest_checkpoint(ledger: Ledger) -> tuple[Witness, StoredCheckpoint, str]:
    """node:w0 admitted, a checkpoint signed after it, and w0's cosignature line of it."""
    witness, _ = _witness_identity(ledger, "node:w0", register=True)
    ledger.sequencer.checkpoint_now()
    checkpoint = ledger.sequencer.store.latest_checkpoint()
    assert checkpoint is not None
    return witness, checkpoint, cosign(checkpoint.note, witness.name, witness.key, int(time.time()))


def test_k_of_n_witnesses_make_a_checkpoint_final_and_unregistered_keys_do_not_count(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registered = [_witness_identity(ledger, f"node:w{i}", register=True) for i in range(3)]
    rogue, rogue_vkey = _witness_identity(ledger, "node:rogue", register=False)
    app = ledger.admit("sp:app", "service_provider")
    relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    store = ledger.sequencer.store
    try:
        with nodes(tmp_path, kafka, topics, 0, witnesses=[w for w, _ in registered] + [rogue]) as started:
            ledger.accept(*[give(ledger, app, f"w-{i}") for i in range(20)])
            ledger.sequencer.checkpoint_now()
            size = ledger.head()[0]
            wait_for(lambda: len(store.cosignatures(size)) == 3, what="three cosignatures")
            wait_for(lambda: relay.stats.cosignatures_refused >= 1, what="the rogue cosignature refused")
            # each node knows, from its own replica, whether its cosignatures count
            wait_for(lambda: all(n.follower.status.cosigned for n in started), what="all cosigned")
            assert [n.follower.status.witness_registered for n in started] == [True, True, True, False]
    finally:
        relay_running.halt()
    # the relay and the rogue node each say why its cosignatures do not count
    assert "by node:rogue: node:rogue is not admitted on this ledger" in caplog.text
    assert "dfg principals admit node:rogue --kind node_operator" in caplog.text
    checkpoint = store.latest_checkpoint()
    assert checkpoint is not None and checkpoint.size == size
    assert {line.split()[1] for line in checkpoint.cosignatures} == {"node:w0", "node:w1", "node:w2"}
    vkeys = [vkey for _, vkey in registered]
    note = with_cosignatures(checkpoint.note, checkpoint.cosignatures)
    assert WitnessPolicy.from_keys(vkeys, 3).is_final(note)
    one = with_cosignatures(checkpoint.note, checkpoint.cosignatures[:1])
    assert not WitnessPolicy.from_keys(vkeys, 2).is_final(one)
    assert WitnessPolicy.from_keys(vkeys, 1).is_final(one)
    # a cosignature by a key nobody registered counts for nothing, even appended by hand
    rogue_line = cosign(checkpoint.note, rogue.name, rogue.key, int(time.time()))
    assert not WitnessPolicy.from_keys(vkeys, 2).is_final(with_cosignatures(one, [rogue_line]))
    # ... unless a reader chose to trust it: the policy is the reader's
    assert WitnessPolicy.from_keys([*vkeys, rogue_vkey], 2).is_final(with_cosignatures(one, [rogue_line]))

    # the auditor's view: dfg audit verify with the witnesses' keys
    witness_args = [a for vkey in vkeys for a in ("--witness", vkey)]
    data = ["--data", str(ledger.settings.data_dir)]
    result = CliRunner().invoke(cli, ["audit", "verify", *data, *witness_args, "--witness-quorum", "3"])
    assert result.exit_code == 0, result.output
    assert f"newest final size {size}" in result.output
    strict = [*witness_args[:2], "--witness", rogue_vkey, "--witness-quorum", "2"]
    result = CliRunner().invoke(cli, ["audit", "verify", *data, *strict])
    assert result.exit_code == 1 and "no checkpoint carries cosignatures of 2" in result.output


def test_a_cosignature_line_sent_without_its_newline_is_kept_with_it(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """A witness of another implementation may send the line without its final newline
    (it parses); the relay kept it so, and the audit bundle then carried an element
    that is not a whole line, to be appended to the note as it is."""
    import io

    from gateways.kafka.topics import CosignatureMessage
    from infra.bundle import export_bundle

    witness, checkpoint, line = _registered_witness_cosigns_newest_checkpoint(ledger)
    store = ledger.sequencer.store
    _, value, _ = CosignatureMessage(witness.name, checkpoint.size, line.rstrip("\n")).record()
    assert Relay(store, kafka, topics).keep_cosignature(value)
    assert store.cosignatures(checkpoint.size) == (line,)
    out = io.BytesIO()
    export_bundle(store, out)
    kept = [
        json.loads(row)["cosignatures"] for row in out.getvalue().splitlines() if b'"cosignatures"' in row
    ]
    assert kept == [[line]]


def test_a_cosignature_the_ledgers_database_could_not_check_is_not_refused(
    ledger: Ledger, topics: Topics
) -> None:
    """The relay's check of a witness's key reads the ledger's database: that read failing
    (PostgreSQL restarting, SQLite locked) refused the cosignature and the relay read on
    past it, so it was never kept, though the relay now waits such an outage out."""
    import sqlite3

    from gateways.kafka.topics import CosignatureMessage

    witness, checkpoint, line = _registered_witness_cosigns_newest_checkpoint(ledger)
    store = ledger.sequencer.store
    _, value, _ = CosignatureMessage(witness.name, checkpoint.size, line).record()
    relay = Relay(store, KafkaSettings("127.0.0.1:1"), topics)
    locked = sqlite3.OperationalError("database is locked")
    with (
        mock.patch.object(store, "load_aggregate", side_effect=locked),
        pytest.raises(sqlite3.OperationalError),
    ):
        relay.keep_cosignature(value)
    assert relay.stats.cosignatures_refused == 0
    assert relay.keep_cosignature(value) and store.cosignatures(checkpoint.size) == (line,)


def test_why_a_cosignature_does_not_count_is_named(ledger: Ledger) -> None:
    """The relay's log used to say "not a valid witness signature" for a node nobody
    admitted, which reads as a forgery."""
    from gateways.kafka.relay import cosignature_problem
    from gateways.kafka.topics import CosignatureMessage

    witness, _ = _witness_identity(ledger, "node:w0", register=True)
    ledger.admit("sp:app", "service_provider")
    ledger.sequencer.checkpoint_now()
    checkpoint = ledger.sequencer.store.latest_checkpoint()
    assert checkpoint is not None
    store, note, size = ledger.sequencer.store, checkpoint.note, checkpoint.size

    def problem(name: str, key: Any) -> str | None:
        line = cosign(note, name, key, int(time.time()))
        return cosignature_problem(store, CosignatureMessage(name, size, line), note)

    assert problem("node:w0", witness.key) is None
    stranger = OKPKey.generate_key("Ed25519").private_key
    assert problem("node:w0", stranger) == (
        "no current key of node:w0 verifies it"
        " (signed with a key revoked, expired or not yet valid, or never added)"
    )
    assert problem("sp:app", stranger) == "sp:app is not a node operator (it lacks the role node_operator)"
    assert problem("node:nobody", stranger) == "node:nobody is not admitted on this ledger"


def test_a_witness_key_outside_its_validity_does_not_count(ledger: Ledger) -> None:
    """A node operator's key before its not_before (or after its not_after) may sign no
    transaction, but its cosignatures were kept and counted towards finality: only a
    revoked key was left out."""
    from gateways.kafka.relay import cosignature_problem
    from gateways.kafka.topics import CosignatureMessage

    _witness_identity(ledger, "node:w0", register=True)
    later = OKPKey.generate_key("Ed25519")
    body = {"principal": "node:w0", "jwk": public_jwk(later).as_dict(), "not_before": "2099-01-01T00:00:00Z"}
    ledger.accept(ledger.sign(ledger.operator, "key.add", body))
    ledger.sequencer.checkpoint_now()
    checkpoint = ledger.sequencer.store.latest_checkpoint()
    assert checkpoint is not None
    line = cosign(checkpoint.note, "node:w0", later.private_key, int(time.time()))
    message = CosignatureMessage("node:w0", checkpoint.size, line)
    assert cosignature_problem(ledger.sequencer.store, message, checkpoint.note) is not None


def test_a_witness_whose_key_was_rotated_is_told_to_cosign_with_its_current_key(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node still cosigning with a key the ledger rotated was told to have itself
    admitted (dfg principals admit), which the ledger refuses: it is admitted already."""
    signer = ledger.admit("node:w0", "node_operator")
    assert isinstance(signer.key, OKPKey)
    old = Witness("node:w0", signer.key.private_key)
    new_jwk = OKPKey.generate_key("Ed25519").as_dict(private=False)
    ledger.accept(
        ledger.sign(
            ledger.operator, "key.rotate", {"principal": "node:w0", "old_kid": signer.kid, "jwk": new_jwk}
        )
    )
    ledger.sequencer.checkpoint_now()
    _, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 0, witnesses=[old]) as started:
            wait_for(lambda: started[0].follower.status.witness_registered is False, what="the warning")
    finally:
        relay_running.halt()
    assert "dfg principals admit node:w0" not in caplog.text
    assert "current key of node:w0 (--witness-key)" in caplog.text
    assert "dfg principals add-key node:w0" in caplog.text


@pytest.mark.slow
def test_cosignatures_sent_after_the_broker_lost_everything_are_kept(
    ledger: Ledger, broker: TansuBroker, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """The relay reads the cosignatures topic from where it stopped; a broker that lost
    its topics numbers new cosignatures from 0 again, and the relay used to wait at its
    old position, keeping none of them."""
    witness, _ = _witness_identity(ledger, "node:w0", register=True)
    app = ledger.admit("sp:app", "service_provider")
    store = ledger.sequencer.store
    relay, relay_running = start_relay(store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 0, witnesses=[witness]):
            for round_ in range(4):
                if round_ == 2:
                    broker.restart(kill=True)  # memory storage: every topic is gone
                ledger.accept(*[give(ledger, app, f"r{round_}-{i}") for i in range(20)])
                ledger.sequencer.checkpoint_now()
                size = ledger.head()[0]
                wait_for(lambda s=size: len(store.cosignatures(s)) == 1, timeout=60, what=f"cosigned {size}")
    finally:
        relay_running.halt()
    assert relay.stats.republished_from, "the relay never noticed the broker lost its topics"


def _publish_all(ledger: Ledger, kafka: KafkaSettings, topics: Topics) -> None:
    """Run a relay until everything the ledger holds is on ``topics``, then stop it."""
    relay, running = start_relay(ledger.sequencer.store, kafka, topics)
    wait_for(lambda: relay.stats.entries_published == ledger.head()[0], what="published")
    running.halt()


def _manual_follower(
    directory: Path, kafka: KafkaSettings, topics: Topics, witness: Witness | None
) -> Follower:
    """A follower driven step by step by the test (no thread)."""
    node = open_node(Settings(data_dir=directory), ledger_key=None, chain=None, verifier=ParallelVerifier(0))
    return Follower(node.replica, node.views, node.view_list, kafka, topics, witness=witness)


def _step_until(follower: Follower, condition: Callable[[], bool], what: str) -> None:
    for _ in range(100):
        follower.step(timeout_ms=100)
        if condition():
            return
    raise AssertionError(f"the follower never reached {what}")


def test_a_replica_pointed_at_another_ledger_with_its_chain_id_stops_and_records_nothing(
    ledger: Ledger, kafka: KafkaSettings, tmp_path: Path
) -> None:
    """Two ledgers may be given one chain id. A replica of ledger A pointed at the
    topics of ledger B, which is longer, used to skip B's entries up to its own size
    unread, verify B's next entries against A's keys and record a violation against A
    (after which it accepted nothing, for good)."""
    other = make_ledger(Settings(data_dir=tmp_path / "b"))
    try:
        topics_a, topics_b = Topics.for_ledger(CHAIN, "a"), Topics.for_ledger(CHAIN, "b")
        for led, topics, n in ((ledger, topics_a, 5), (other, topics_b, 30)):
            app = led.admit("sp:app", "service_provider")
            led.accept(*[give(led, app, f"p-{i}") for i in range(n)])
            relay, running = start_relay(led.sequencer.store, kafka, topics)
            wait_for(lambda r=relay, led=led: r.stats.entries_published == led.head()[0], what="published")
            running.halt()
        replica = tmp_path / "node"
        follower = _manual_follower(replica, kafka, topics_a, None)
        follower.connect()
        _step_until(follower, lambda: follower.replica.size == ledger.head()[0], "ledger A's size")
        follower.close()
        held = follower.replica.size
        follower.topics = topics_b
        stop = threading.Event()
        assert follower.run(stop, exit_on_violation=True) == 2
        refused = follower.cannot_follow
        assert refused is not None and "is not this replica's entry" in refused
        assert follower.replica.halted is None and follower.replica.size == held
        follower.replica.store.close()
        follower.views.close()
    finally:
        other.sequencer.store.close()


def test_an_entry_the_topic_holds_twice_stops_a_follower_without_evidence_against_the_ledger(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, prefix: str, tmp_path: Path
) -> None:
    """A producer that gave up on a batch the cluster committed later, after the relay
    sent it again, leaves an entry twice in the topic. Followers used to record it as a
    bad entry, a violation of the ledger that halted the replica for good, although the
    signed history is sound. Now the node stops as for topics it cannot follow, records
    nothing, and goes on from its replica once the topics are recreated."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(5)])
    _publish_all(ledger, kafka, topics)
    follower = _manual_follower(tmp_path / "node", kafka, topics, None)
    try:
        follower.connect()
        held = ledger.head()[0]
        _step_until(follower, lambda: follower.replica.size == held, "the honest history")
        follower.close()
        (repeated,) = ledger.sequencer.store.read_entries(3, 1)
        _send(kafka, topics.entries, *entry_record(repeated))  # lands at offset `held`
        assert follower.run(threading.Event(), exit_on_violation=True) == 2
        refused = follower.cannot_follow
        assert refused is not None and f"offset {held} of {topics.entries} repeats entry 3" in refused
        assert follower.replica.halted is None and follower.replica.size == held
        assert not follower.replica.store.violations()

        # the operator recreates the topics (here: new ones) and the relay republishes
        (next_one,) = ledger.accept(give(ledger, app, "p-next"))
        recreated = Topics.for_ledger(CHAIN, f"{prefix}r")
        _publish_all(ledger, kafka, recreated)
        follower.topics, follower.cannot_follow = recreated, None
        follower.connect()
        _step_until(follower, lambda: follower.replica.size == next_one.seq, "the entry after the copy")
        assert follower.replica.halted is None and not follower.replica.store.violations()
    finally:
        follower.close()
        follower.replica.store.close()
        follower.views.close()


def test_a_follower_that_cannot_see_its_topics_says_so_and_how_long(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """Topics missing (a wrong --chain or --topic-prefix, or no relay yet) or a broker
    away: the status used to say lag 0, with a fresh time, while the node followed
    nothing. It now says it is not connected, and how long it has not seen the topic."""
    node = tmp_path / "node"
    follower = _manual_follower(node, kafka, topics, None)
    with pytest.raises(KafkaError, match="are --chain and --topic-prefix right"):
        follower.connect()
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: follower.status.updated_at > 0 and follower.status.lag_seconds >= 0.5, what="lag")
        assert not follower.status.connected and follower.status.topic_end_seen_at is None
        app = ledger.admit("sp:app", "service_provider")
        ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(5)])
        _relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
        try:
            wait_for(lambda: follower.replica.size == ledger.head()[0], what="the follower to catch up")
            wait_for(lambda: follower.status.connected and follower.status.lag_seconds == 0, what="no lag")
            assert follower.status.topic_end_seen_at is not None
        finally:
            relay_running.halt()
    finally:
        stop.set()
        thread.join(20)
        follower.replica.store.close()
        follower.views.close()
    result = CliRunner().invoke(cli, ["node", "status", "--data", str(node), "--json"])
    report = json.loads(result.output)
    assert report["size"] == ledger.head()[0] and report["topic_end_seen_age_s"] < 60


@contextmanager
def _caught_up_follower(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> Iterator[Follower]:
    """A follower driven by the test, caught up with three consents the relay published."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(3)])
    _relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    follower = _manual_follower(tmp_path / "node", kafka, topics, None)
    try:
        follower.connect()
        _step_until(follower, lambda: follower.replica.size == ledger.head()[0], "the ledger's size")
        yield follower
    finally:
        relay_running.halt()
        follower.close()
        follower.replica.store.close()
        follower.views.close()


def test_entries_after_an_idle_night_are_not_reported_hours_behind(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lag was the newest verified entry's age while newer ones waited: after a night
    without entries, the first of the morning made it hours for a moment, and an alert on
    it fired. The replica was caught up a moment before: that bounds the lag too."""
    with _caught_up_follower(ledger, kafka, topics, tmp_path) as follower:
        night = time.time() + 10 * 3600
        follower.clock = lambda: night  # ten idle hours on, the replica still caught up
        follower.step(timeout_ms=100)
        assert follower.status.connected and follower.status.lag_seconds == 0
        consumer = follower._consumer
        assert consumer is not None  # the morning's first entries are on the topic, not yet read
        monkeypatch.setattr(consumer, "highwater", lambda tp: follower.replica.size + 2)
        follower.clock = lambda: night + 5
        follower._refresh_status()
        assert follower.status.lag_entries == 2
        assert 4 <= follower.status.lag_seconds <= 6


def test_a_follower_reconnected_after_hours_is_not_taken_for_caught_up_before_it_reads_the_topic(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new consumer knows no topic end until its first fetch: the follower's last known
    one (from before it was stopped, or lost the broker) said it was caught up, and the
    lag of the entries that arrived meanwhile was then counted from that moment, seconds,
    instead of hours."""
    with _caught_up_follower(ledger, kafka, topics, tmp_path) as follower:
        follower.close()  # stopped, or the broker lost, for ten hours; entries came meanwhile
        later = time.time() + 10 * 3600
        follower.clock = lambda: later
        follower.connect()
        consumer = follower._consumer
        assert consumer is not None
        monkeypatch.setattr(consumer, "highwater", lambda tp: None)  # nothing fetched yet
        follower._refresh_status()
        monkeypatch.setattr(consumer, "highwater", lambda tp: follower.replica.size + 2)  # fetched
        follower.clock = lambda: later + 5
        follower._refresh_status()
        assert follower.status.lag_entries == 2
        assert follower.status.lag_seconds >= 10 * 3600


@pytest.mark.slow
def test_a_follower_whose_broker_went_away_says_it_is_not_connected(ledger: Ledger, tmp_path: Path) -> None:
    """kafka-python's poll logs a broker that went away and returns nothing, and its
    highwater stays where it was: the status said connected, lag 0 and the topic's end
    seen just now for as long as the broker was down, so no alert on it could fire."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(5)])
    topics = Topics.for_ledger(CHAIN, "away")
    with TansuBroker(log_dir=tmp_path / "tansu") as own:  # its own: this test stops it
        kafka = KafkaSettings(bootstrap=own.bootstrap, request_timeout_ms=5000)
        _relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
        try:
            with nodes(tmp_path, kafka, topics, 1) as started:
                follower = started[0].follower
                assert follower is not None
                size = ledger.head()[0]
                wait_for(lambda: follower.replica.size == size and follower.status.connected, what="up")
                own.kill()
                down_at = time.time()
                wait_for(lambda: not follower.status.connected, timeout=60, what="the outage seen")
                wait_for(lambda: follower.status.lag_seconds >= 1, what="the lag to grow")
                seen = follower.status.topic_end_seen_at
                assert seen is not None and seen <= down_at
                own.start()
                wait_for(lambda: follower.status.connected, timeout=60, what="connected again")
                wait_for(lambda: follower.status.lag_seconds == 0, what="no lag once connected")
        finally:
            relay_running.halt()


def test_a_witness_sends_its_cosignature_again_when_the_broker_did_not_take_it(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """A cosignature kept but not acknowledged by the broker goes out again when the
    follower reconnects; a checkpoint verified while the node was not yet a witness (or
    kept just before it stopped) is cosigned when it connects as one. Before, a failed
    send left the checkpoint without this witness for good, on an idle ledger."""
    witness, _ = _witness_identity(ledger, "node:w0", register=True)
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"c-{i}") for i in range(5)])
    ledger.sequencer.checkpoint_now()
    first = ledger.head()[0]
    relay = Relay(ledger.sequencer.store, kafka, topics)
    relay.connect()
    while relay.step():
        pass
    store = ledger.sequencer.store

    def relay_has(size: int) -> bool:
        relay.collect_cosignatures()
        return len(store.cosignatures(size)) == 1

    # 1. verified while not a witness: cosigned on connecting as one
    plain = _manual_follower(tmp_path / "node", kafka, topics, None)
    plain.connect()
    _step_until(plain, lambda: plain.store.latest_checkpoint() is not None, "the checkpoint")
    plain.close()
    follower = Follower(plain.replica, plain.views, plain.view_list, kafka, topics, witness=witness)
    follower.connect()
    wait_for(lambda: relay_has(first), what="the cosignature made on connecting")

    # 2. the broker does not take the next cosignature: it is kept, and sent again
    ledger.accept(give(ledger, app, "c-late"))
    ledger.sequencer.checkpoint_now()
    second = ledger.head()[0]
    while relay.step():
        pass
    with (
        mock.patch.object(KafkaProducer, "send", side_effect=KafkaError("the broker went away")),
        pytest.raises(KafkaError),
    ):
        _step_until(follower, lambda: False, "a failed send")
    assert follower.store.cosignatures(second)  # kept before it was sent
    time.sleep(0.5)
    assert not relay_has(second)
    follower.close()
    follower.connect()
    wait_for(lambda: relay_has(second), what="the cosignature sent again")
    follower.close()
    follower.store.close()
    follower.views.close()
    relay.close()


def test_a_witness_whose_broker_goes_away_as_it_cosigns_says_so_and_stops_when_told(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The broker gone between a checkpoint read and its cosignature sent: the witness
    waited for the producer's delivery time-out (ten minutes), deaf to SIGTERM, its
    status frozen as it was (connected, lag 0). It now gives the send up after the
    request time-out, says it is not connected, and stops when told; the cosignature is
    kept, and goes out again on reconnecting."""
    witness, _ = _witness_identity(ledger, "node:w0", register=True)
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"c-{i}") for i in range(5)])
    ledger.sequencer.checkpoint_now()
    size = ledger.head()[0]
    topics = Topics.for_ledger(CHAIN, "cosigning")
    with TansuBroker(log_dir=tmp_path / "tansu") as own:  # its own: this test kills it
        kafka = KafkaSettings(bootstrap=own.bootstrap, request_timeout_ms=5000)
        relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
        wait_for(lambda: relay.stats.checkpoints_published >= 1, what="the checkpoint published")
        relay_running.halt()
        follower = _manual_follower(tmp_path / "node", kafka, topics, witness)
        cosign_now = follower_module.cosign

        def broker_gone_first(*args: Any) -> str:
            own.kill()
            return cosign_now(*args)

        stop = threading.Event()
        thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
        with mock.patch.object(follower_module, "cosign", broker_gone_first):
            thread.start()
            wait_for(
                lambda: follower.status.size == size and not follower.status.connected,
                timeout=30,
                what="the witness to say it is not connected",
            )
        stop.set()
        thread.join(20)
        assert not thread.is_alive(), "the witness did not stop when told"
        assert follower.store.cosignatures(size)  # kept, for the next connection
        follower.store.close()
        follower.views.close()


def test_a_node_catching_up_reads_the_checkpoints_no_further_ahead_than_it_may_keep(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node started on a long log read the checkpoints topic (small records, quick to
    check) far ahead of the entries and kept every checkpoint beyond its replica in
    memory until its entries came: on a ledger that signs one a second, millions. It
    now stops reading them at ``MAX_WAITING_CHECKPOINTS`` and reads on as entries come."""
    monkeypatch.setattr(follower_module, "MAX_WAITING_CHECKPOINTS", 100)
    ledger.sequencer.policy = replace(ledger.sequencer.policy, every=2)
    app = ledger.admit("sp:app", "service_provider")
    for start in range(0, 6000, 500):
        ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(start, start + 500)])
    signed = len(ledger.sequencer.store.checkpoints(0, 10_000))
    relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    wait_for(lambda: relay.stats.checkpoints_published == signed, timeout=120, what="everything published")
    relay_running.halt()
    follower = _manual_follower(tmp_path / "node", kafka, topics, None)
    follower.max_records = 500
    follower.connect()
    most = 0
    for _ in range(1000):
        follower.step(timeout_ms=200)
        most = max(most, len(follower.replica.waiting_checkpoints()))
        if len(follower.store.checkpoints(0, 10_000)) == signed:
            break
    assert follower.replica.size == ledger.head()[0]
    assert len(follower.store.checkpoints(0, 10_000)) == signed  # every one read, in the end
    assert most <= 100 + follower.max_records, most  # at most one poll beyond the limit
    follower.close()
    follower.store.close()
    follower.views.close()


def test_node_keygen_prints_a_jwk_and_a_witness_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "node.jwk"
    result = CliRunner().invoke(cli, ["node", "keygen", "--out", str(out), "--name", "node:alpha"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["jwk"]["kty"] == "OKP" and "d" not in printed["jwk"]
    assert printed["witness_key"].startswith("node:alpha+")
    assert WitnessPolicy.from_keys([printed["witness_key"]], 1).quorum == 1
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    again = CliRunner().invoke(cli, ["node", "keygen", "--out", str(out), "--name", "node:alpha"])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
    for bad in ("", "node:a b+c"):
        other = tmp_path / "other.jwk"
        refused = CliRunner().invoke(cli, ["node", "keygen", "--out", str(other), "--name", bad])
        assert refused.exit_code == 2 and "not a principal id" in refused.output
        assert not other.exists()  # nothing written


def _node_serving(node_dir: Path, key: str, port: int, kafka: KafkaSettings, prefix: str) -> Any:
    """``dfg node serve --kafka`` in a process of its own; its stderr is piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateways.cli", "node", "serve", "--data", str(node_dir),
         "--coordinator", "http://127.0.0.1:9", "--chain", CHAIN, "--ledger-key", key, "--port", str(port),
         "--kafka", kafka.bootstrap, "--topic-prefix", prefix],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip


def test_a_computation_node_follows_the_topics_when_kafka_is_configured(
    ledger: Ledger, kafka: KafkaSettings, prefix: str, topics: Topics, tmp_path: Path
) -> None:
    """``dfg node serve --kafka``: its replica comes from the topics (the coordinator
    URL it is given does not answer), verified, and its GraphQL and /healthz show it."""
    import urllib.request

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"k-{i}") for i in range(25)])
    assert ledger.sequencer.ledger is not None
    key = ledger.sequencer.ledger["checkpoint_key"]
    _, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateways.cli", "node", "serve", "--data", str(tmp_path / "node"),
         "--coordinator", "http://127.0.0.1:9", "--chain", CHAIN, "--ledger-key", key, "--port", str(port),
         "--kafka", kafka.bootstrap, "--topic-prefix", prefix],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        size = ledger.head()[0]

        def caught_up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    return int(json.loads(response.read())["size"]) >= size
            except OSError:
                return False

        wait_for(caught_up, timeout=60, what="the node to follow the topics")
        # /healthz counts verified, stored entries; the read models follow just after
        wait_for(lambda: consent_rows(tmp_path / "node") == 25, what="the node's consent view")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
        relay_running.halt()


def test_a_computation_node_given_another_ledgers_topics_stops_with_the_reason(
    ledger: Ledger, kafka: KafkaSettings, prefix: str, topics: Topics, tmp_path: Path
) -> None:
    """``dfg node serve --kafka`` whose topics cannot be followed into its replica (here:
    another ledger's, by its checkpoint key) used to log it and go on serving GraphQL
    from a replica that never moved again. It now stops, as ``dfg node follow`` does
    (exit status 2, the reason on stderr), so that its supervisor sees it."""
    other = make_ledger(Settings(data_dir=tmp_path / "other"))
    try:
        assert other.sequencer.ledger is not None
        wrong_key = other.sequencer.ledger["checkpoint_key"]
    finally:
        other.sequencer.store.close()
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(give(ledger, app, "k-1"))
    _publish_all(ledger, kafka, topics)
    process = _node_serving(tmp_path / "node", wrong_key, free_port(), kafka, prefix)
    stderr = _ended(process)
    assert process.returncode == 2, stderr
    assert "cannot be followed into this replica" in stderr and "checkpoint key" in stderr, stderr


def _ended(process: subprocess.Popen[str]) -> str:
    """The stderr of a ``dfg`` process that should stop by itself, killed if it has not
    within a minute."""
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return str(stderr)


def test_a_computation_node_whose_follower_fails_stops_instead_of_serving_a_frozen_replica(
    ledger: Ledger, kafka: KafkaSettings, prefix: str, topics: Topics, tmp_path: Path
) -> None:
    """``dfg node serve --kafka`` whose follower thread ended on an error (on PostgreSQL:
    the database restarted under it) went on serving GraphQL and a healthy /healthz from a
    replica that never moved again. It now stops (exit status 1, the error on stderr),
    as ``dfg node follow`` does, so that its supervisor starts it again."""
    import sqlite3
    import urllib.request

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(give(ledger, app, "k-1"))
    _publish_all(ledger, kafka, topics)
    assert ledger.sequencer.ledger is not None
    port, node_dir = free_port(), tmp_path / "node"
    process = _node_serving(node_dir, ledger.sequencer.ledger["checkpoint_key"], port, kafka, prefix)
    try:

        def serving() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    return int(json.loads(answer.read())["size"]) == ledger.head()[0]
            except OSError:
                return False

        wait_for(serving, timeout=60, what="the node to follow the topics")
        with sqlite3.connect(node_dir / "ledger.sqlite", timeout=10) as db:  # a fault under the follower
            db.execute("ALTER TABLE violations RENAME TO violations_gone")
    finally:
        stderr = _ended(process)
    assert process.returncode == 1, stderr
    assert "the node stopped: following" in stderr and "no such table: violations" in stderr, stderr


@contextmanager
def _one_node_caught_up(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> Iterator[tuple[Node, TransactionSigner]]:
    """A relay and one node that holds five consents of sp:app (given back, to add more)."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"d-{i}") for i in range(5)])
    _relay, relay_running = start_relay(ledger.sequencer.store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 1) as started:
            follower = started[0].follower
            assert follower is not None
            wait_for(lambda: follower.replica.size == ledger.head()[0], what="caught up")
            yield started[0], app
    finally:
        relay_running.halt()


def test_a_follower_goes_on_after_its_own_database_was_unavailable(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """Its PostgreSQL restarted, or its SQLite file stayed locked past the busy time-out:
    the follower ended with a traceback (``dfg node follow`` exit 1) where a broker's
    outage is waited out. It now waits its database out too, and reads on from its store."""
    import sqlite3

    with _one_node_caught_up(ledger, kafka, topics, tmp_path) as (node, app):
        follower = node.follower
        assert follower is not None and node.running is not None
        store = follower.replica.store
        append, failures = store.append, []

        def unavailable_twice(batch: Any) -> None:
            if len(failures) < 2:
                failures.append(batch.new_size)
                raise sqlite3.OperationalError("database is locked")
            append(batch)

        store.append = unavailable_twice  # type: ignore[method-assign]
        ledger.accept(*[give(ledger, app, f"e-{i}") for i in range(5)])
        wait_for(lambda: follower.replica.size == ledger.head()[0], timeout=60, what="caught up again")
        assert len(failures) == 2 and node.running.thread.is_alive()
        assert follower.status.halted is None and store.head() == ledger.head()


def test_a_follower_whose_database_failed_between_replica_and_views_brings_its_views_up_to_date(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica stored a batch and the views' transaction failed (the database
    restarted between them): the follower went on with its views behind its replica,
    until the next entry came, on an idle ledger for ever (GraphQL, /healthz and the
    node's task queue read them). It now brings them up to date as it reconnects."""
    import sqlite3

    with _one_node_caught_up(ledger, kafka, topics, tmp_path) as (node, app):
        follower = node.follower
        assert follower is not None
        apply_new, failures = follower_module.apply_new, []

        def unavailable_once(*args: Any) -> Any:
            if not failures:
                failures.append(1)
                raise sqlite3.OperationalError("database is locked")
            return apply_new(*args)

        monkeypatch.setattr(follower_module, "apply_new", unavailable_once)
        ledger.accept(*[give(ledger, app, f"e-{i}") for i in range(5)])
        wait_for(lambda: follower.replica.size == ledger.head()[0], timeout=60, what="caught up again")

        def positions() -> set[int]:
            return {follower.views.position(v.name) for v in follower.view_list}

        wait_for(lambda: positions() == {ledger.head()[0]}, timeout=15, what="the views up to date")
        assert failures == [1] and node.running is not None and node.running.thread.is_alive()


def test_a_relay_goes_on_after_the_ledgers_database_was_unavailable(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    """The ledger's PostgreSQL restarted, or its SQLite file stayed locked past the busy
    time-out: ``dfg relay`` ended with a traceback. It now waits it out and starts again
    from what the topics hold, with no gap and no duplicate."""
    import sqlite3

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"r-{i}") for i in range(5)])
    store = ledger.sequencer.store
    read, failures = store.read_entries, []

    def unavailable_to_the_relay(start: int, limit: int) -> Any:
        if threading.current_thread() is not threading.main_thread() and len(failures) < 2:
            failures.append(start)
            raise sqlite3.OperationalError("database is locked")
        return read(start, limit)

    store.read_entries = unavailable_to_the_relay  # type: ignore[method-assign]
    _relay, relay_running = start_relay(store, kafka, topics)
    try:
        with nodes(tmp_path, kafka, topics, 1) as started:
            _converged(ledger, started)
        assert len(failures) == 2 and relay_running.thread.is_alive()
        _topic_is_exact(kafka, topics.entries, ledger.head()[0])
    finally:
        relay_running.halt()
        store.read_entries = read  # type: ignore[method-assign]


def test_a_relay_told_to_stop_while_publishing_a_backlog_stops_after_the_batch_in_flight(
    ledger: Ledger, kafka: KafkaSettings, topics: Topics
) -> None:
    """After a long outage it published the whole backlog before it looked at its stop
    (SIGTERM): minutes, or hours, for a supervisor to wait."""
    from gateways.kafka.relay import ENTRIES_MARKER, Relay

    app = ledger.admit("sp:app", "service_provider")
    for batch in range(4):
        ledger.accept(*[give(ledger, app, f"b{batch}-{i}") for i in range(250)])
    store = ledger.sequencer.store
    relay, stop = Relay(store, kafka, topics, batch=100), threading.Event()
    send = relay._send_and_wait

    def stop_once_sent(topic: str, run: Any, what: str) -> list[int]:
        offsets = send(topic, run, what)
        if topic == topics.entries:
            stop.set()  # SIGTERM arrives while the first batch is in flight
        return offsets

    relay._send_and_wait = stop_once_sent  # type: ignore[method-assign]
    running = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    running.start()
    running.join(60)
    assert not running.is_alive()
    assert 0 < store.marker(ENTRIES_MARKER) <= 100 < ledger.head()[0]


def test_a_status_document_leaves_out_the_recent_lags_and_copies_what_it_shows() -> None:
    """The status is served while the follower verifies: it must not copy (or expose)
    the up to 200,000 lag samples kept for the benchmark, nor share mutable state."""
    status = FollowerStatus(size=7, topic_end=9, lag_entries=2, halted={"kind": "equivocation", "seq": 3})
    status.recent_lags.extend([0.1] * 1000)
    shown = status.as_json()
    assert "recent_lags" not in shown
    assert shown["size"] == 7 and shown["lag_entries"] == 2
    assert set(shown) == {f for f in FollowerStatus.__dataclass_fields__ if f != "recent_lags"}
    assert shown["halted"] == {"kind": "equivocation", "seq": 3}
    shown["halted"]["seq"] = 99
    assert status.halted == {"kind": "equivocation", "seq": 3}
    json.dumps(shown)


@pytest.mark.parametrize("command", [["relay"], ["node", "follow"], ["node", "serve"], ["recover"]])
def test_help_lists_the_environment_variable_of_every_kafka_option(command: list[str]) -> None:
    """The README says each TLS and SASL option has a DFG_KAFKA_ variable that --help
    lists; it listed DFG_KAFKA_SECURITY_PROTOCOL only."""
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    options = ("SECURITY_PROTOCOL", "CA_FILE", "CERT_FILE", "KEY_FILE", "SASL_MECHANISM", "SASL_USERNAME")
    for name in (*options, "SASL_PASSWORD_FILE"):
        assert f"DFG_KAFKA_{name}" in result.output


def test_tls_and_sasl_options_reach_every_kafka_client(tmp_path: Path) -> None:
    """A production cluster takes clients over TLS with SASL: the producer, the consumers
    and the admin client must all present the same credentials. (Tansu 0.6 with
    authentication on refuses the request that would create its first user, and its
    memory storage cannot be seeded beforehand, so SASL cannot be tried against it
    here: the clients' options are what this shows. TLS with client certificates is tried for
    real, through a TLS front, in test_kafka_tls.py.)"""
    from gateways.cli.kafka_security import kafka_security
    from gateways.kafka import client

    password = tmp_path / "password"
    password.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    security = kafka_security("SASL_SSL", ca, None, None, "SCRAM-SHA-512", "relay", password)
    assert security == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(ca),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        "sasl_plain_password": "s3cret",
    }
    seen: list[dict[str, Any]] = []

    class Client:
        def __init__(self, **options: Any) -> None:
            seen.append(options)

        def list_topics(self) -> list[str]:
            return []

        def create_topics(self, _topics: Any) -> None:
            pass

        def close(self) -> None:
            pass

    settings = KafkaSettings("broker:9093", security=security)
    with (
        mock.patch.object(client, "KafkaProducer", Client),
        mock.patch.object(client, "KafkaConsumer", Client),
        mock.patch.object(client, "KafkaAdminClient", Client),
    ):
        settings.producer()
        settings.consumer()
        settings.ensure_topics(("t",))
    assert len(seen) == 3 and all(options.items() >= security.items() for options in seen)


def test_a_relay_told_to_stop_while_the_broker_does_not_answer_stops_without_waiting_it_out(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The broker gone while the relay asked where a topic ends: kafka-python waits for
    the answer for the consumer's whole request time-out (30 s by default, here five
    minutes), deaf to SIGTERM. It now looks at its stop between short waits."""
    import gateways.kafka.relay as relay_module

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give(ledger, app, f"c-{i}") for i in range(5)])
    topics = Topics.for_ledger(CHAIN, "deaf")
    asking, armed = threading.Event(), threading.Event()
    real_topic_end = relay_module.topic_end
    with TansuBroker(log_dir=tmp_path / "tansu") as own:  # its own: this test kills it
        kafka = KafkaSettings(bootstrap=own.bootstrap, request_timeout_ms=300_000)

        def broker_gone_first(*args: Any, **kwargs: Any) -> Any:
            if armed.is_set() and not asking.is_set():
                own.kill()
                asking.set()
            return real_topic_end(*args, **kwargs)

        with mock.patch.object(relay_module, "topic_end", broker_gone_first):
            relay, running = start_relay(ledger.sequencer.store, kafka, topics, recheck_every=0)
            wait_for(lambda: relay.stats.entries_published == ledger.head()[0], what="the entries published")
            armed.set()
            wait_for(asking.is_set, what="the relay to ask where a topic ends")
            running.stop.set()
            running.thread.join(60)
            assert not running.thread.is_alive(), "the relay did not stop when told"


def test_where_a_topic_ends_is_asked_in_short_waits_until_the_request_time_out() -> None:
    """Each wait for the broker's answer is short enough for a stop to be heard; a slow
    answer is asked for again, up to the consumer's request time-out, then the time-out
    is raised as kafka-python raised it; told to stop, it gives up after one wait."""
    from kafka import TopicPartition
    from kafka.errors import KafkaTimeoutError

    from gateways.kafka import client

    now = [0.0]
    waits: list[int] = []

    def no_answer(partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        waits.append(timeout_ms)
        now[0] += timeout_ms / 1000
        raise KafkaTimeoutError("no answer")

    consumer = mock.Mock(config={"request_timeout_ms": 15_000})
    tp = TopicPartition("t", 0)
    with mock.patch.object(client.time, "monotonic", lambda: now[0]):
        with pytest.raises(KafkaTimeoutError):
            client.offset_of(no_answer, tp, consumer, threading.Event())
        assert waits == [1000, 2000, 4000, 4000, 4000]
        waits.clear()
        stop = threading.Event()
        stop.set()
        with pytest.raises(client.Stopped):
            client.offset_of(no_answer, tp, consumer, stop)
        assert waits == [1000]

        answers = iter([KafkaTimeoutError("slow"), {tp: 42}])

        def answered_second(partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        assert client.offset_of(answered_second, tp, consumer, None) == 42


def test_a_relay_told_to_stop_while_no_broker_can_be_reached_stops_without_waiting_it_out(
    ledger: Ledger,
) -> None:
    """A new Kafka client tries to reach a broker for kafka-python's 30 s before it
    gives up, and the relay looks at its stop only between tries: the clients now give
    up after ``bootstrap_timeout_ms`` (5 s), and the relay tries again with a back-off."""
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    relay, running = start_relay(ledger.sequencer.store, kafka, Topics.for_ledger(CHAIN, "unreached"))
    time.sleep(0.5)  # trying to reach it
    running.stop.set()
    running.thread.join(20)
    assert not running.thread.is_alive(), "the relay did not stop when told"
    assert relay.stats.entries_published == 0
