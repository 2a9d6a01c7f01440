"""kafka-python clients configured the way the ledger's topics need them.

Why here: every process that touches a ledger topic (relay, followers, benchmark)
must agree on the same few settings -- one partition, keep records forever, an
idempotent producer that waits for all in-sync replicas -- and on how to find where a
topic really ends (see ``topic_end``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from gateways.kafka.topics import PARTITION

#: Largest record the relay sends: an entry holds one transaction of at most 16 KiB,
#: base64 inside JSON, plus the event; 1 MiB leaves room and is Kafka's default.
MAX_RECORD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    client_id: str = "dfg"
    replication_factor: int = 1
    request_timeout_ms: int = 15_000

    def producer(self, **overrides: Any) -> KafkaProducer:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_request_size": MAX_RECORD_BYTES,
            "request_timeout_ms": self.request_timeout_ms,
            "retry_backoff_ms": 200,
            "allow_auto_create_topics": False,  # auto-created topics get several partitions
        }
        options.update(overrides)
        return KafkaProducer(**options)

    def consumer(self, **overrides: Any) -> KafkaConsumer:
        """A consumer without a group: followers assign the partition themselves and
        keep their position in their own database, with the entries."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 4 * MAX_RECORD_BYTES,
            "fetch_max_wait_ms": 200,
            "allow_auto_create_topics": False,
            "request_timeout_ms": max(self.request_timeout_ms, 30_000),
        }
        options.update(overrides)
        return KafkaConsumer(**options)

    def ensure_topics(self, names: tuple[str, ...]) -> None:
        """Create missing topics: one partition, never deleted, never compacted."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
        try:
            existing = set(admin.list_topics())
            wanted = [
                NewTopic(
                    name,
                    num_partitions=1,
                    replication_factor=self.replication_factor,
                    topic_configs={"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
                )
                for name in names
                if name not in existing
            ]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile elsewhere
                    admin.create_topics(wanted)
        finally:
            admin.close()


def partition(topic: str) -> TopicPartition:
    return TopicPartition(topic, PARTITION)


def topic_end(consumer: KafkaConsumer, topic: str, *, timeout: float = 10.0) -> tuple[int, Any | None]:
    """(offset after the last record, the last record or None) of a one-partition topic.

    The reported end offset is only a hint: some brokers (Tansu) answer the base offset
    of the last batch plus one. Reading from just before the hint to the real end
    gives the exact end, and the last record lets the caller check what it holds.
    """
    tp = partition(topic)
    consumer.assign([tp])
    hint = consumer.end_offsets([tp])[tp]
    if hint == 0:
        return 0, None
    consumer.seek(tp, hint - 1)
    last = None
    deadline = time.monotonic() + timeout
    while True:
        batch = consumer.poll(timeout_ms=200, max_records=10_000).get(tp, [])
        if batch:
            last = batch[-1]
            continue
        if last is not None and consumer.position(tp) >= consumer.highwater(tp):
            return last.offset + 1, last
        if time.monotonic() > deadline:
            raise KafkaError(f"could not read the end of {topic} (reported end offset {hint})")
