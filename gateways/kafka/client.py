"""kafka-python clients configured the way the ledger's topics need them.

Why here: every process that touches a ledger topic (relay, followers, benchmark)
must agree on the same few settings -- one partition, keep records forever, an
idempotent producer that waits for all in-sync replicas -- and on how to find where a
topic really ends (see ``topic_end``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)

from gateways.kafka.topics import PARTITION, Headers

log = logging.getLogger("dfg.kafka")

#: Largest record the relay sends: Kafka's default, 1 MiB. The sequencer appends no
#: entry over ``ledger.entry.MAX_ENTRY_BYTES``, which leaves room for its key and headers.
MAX_RECORD_BYTES = 1024 * 1024
#: The producer's batch for one partition (a batch is appended whole, or not at all).
BATCH_BYTES = 256 * 1024
#: Records sent before waiting for them: at most one batch's worth, with room for the
#: batch's framing, so that one batch at most is ever outstanding (see ``chunks``).
CHUNK_BYTES = BATCH_BYTES * 3 // 4
#: Per record, above its key, value and headers: the record's framing in a batch.
_RECORD_FRAMING = 64

#: Settings a ledger topic must have, with the value that is wrong for each: its
#: records are the only copy new followers can start from, so they are kept for ever
#: and never compacted (compaction keeps one record per key, an aggregate's newest).
REQUIRED_TOPIC_CONFIGS = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


class TopicsMissing(KafkaError):  # type: ignore[misc]  # kafka-python has no types
    """The ledger's topics are not on the broker (yet): retried, as the relay may not
    have created them; logged as what it is (``why_disconnected``)."""


class TopicsChanged(KafkaError):  # type: ignore[misc]  # kafka-python has no types
    """A ledger topic no longer ends where the relay left it while it had nothing to
    send (a broker that lost data, a record someone else wrote): it reconnects, which
    reads where the topics end again and publishes what they lost."""


def why_disconnected(exc: KafkaError) -> str:
    """What a relay or a node logs before reconnecting: a refusal by the brokers'
    ACLs or SASL, or topics not there, is named as such (it lasts until someone changes
    something), not as a broker that is down."""
    if isinstance(exc, AuthorizationError):
        return f"the brokers refused this client access ({exc}): check its ACLs (the README's Security)"
    if isinstance(exc, (TopicsMissing, TopicsChanged)):  # the broker answered
        return str(exc.args[0]) if exc.args else "the ledger's topics are missing"
    if isinstance(exc, SaslAuthenticationFailedError):
        return f"the brokers refused this client's SASL credentials ({exc}): check --kafka-sasl-*"
    return f"broker unavailable ({exc})"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    client_id: str = "dfg"
    replication_factor: int = 1
    request_timeout_ms: int = 15_000
    #: How long a new client tries to reach a broker before giving up (the relay and
    #: followers then try again, with a back-off). kafka-python's 30 s would also be how
    #: long a relay or node told to stop during an outage takes to notice.
    bootstrap_timeout_ms: int = 5_000
    #: How long the producer retries a batch (same producer id and sequence, so the
    #: broker drops a copy it already has) before failing it. Long, so that it outlasts
    #: a leader election or a stalled replica: a new producer could not be deduplicated.
    delivery_timeout_ms: int = 600_000
    #: TLS and SASL client options (``security_protocol``, ``ssl_cafile``,
    #: ``sasl_mechanism``...), the same for the producer, consumers and admin client.
    security: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def producer(self, **overrides: Any) -> KafkaProducer:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "batch_size": BATCH_BYTES,
            "max_request_size": MAX_RECORD_BYTES,
            "request_timeout_ms": self.request_timeout_ms,
            "delivery_timeout_ms": self.delivery_timeout_ms,
            "retry_backoff_ms": 200,
            "allow_auto_create_topics": False,  # auto-created topics get several partitions
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        options.update(self.security)
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
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        options.update(self.security)
        options.update(overrides)
        return KafkaConsumer(**options)

    def topic_configs(self) -> dict[str, str]:
        """The settings of a topic the relay creates: kept for ever, never compacted;
        never a replica that missed acknowledged records as leader; and, with three
        replicas or more, a write acknowledged only once two hold it (``acks=all`` waits
        for the in-sync replicas only, which may be the leader alone)."""
        configs = dict(REQUIRED_TOPIC_CONFIGS)
        configs["unclean.leader.election.enable"] = "false"
        if self.replication_factor >= 3:
            configs["min.insync.replicas"] = "2"
        return configs

    def ensure_topics(self, names: tuple[str, ...]) -> dict[str, list[str]]:
        """Create missing topics (one partition, ``topic_configs``); return what is wrong
        with the settings of those that exist, by topic (``topic_config_problems``)."""
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            bootstrap_timeout_ms=self.bootstrap_timeout_ms,
            **self.security,
        )
        try:
            existing = set(admin.list_topics())
            wanted = [
                NewTopic(
                    name,
                    num_partitions=1,
                    replication_factor=self.replication_factor,
                    topic_configs=self.topic_configs(),
                )
                for name in names
                if name not in existing
            ]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile elsewhere
                    admin.create_topics(wanted)
            return {n: topic_config_problems(_described(admin, n)) for n in names if n in existing}
        finally:
            admin.close()


def _described(admin: KafkaAdminClient, name: str) -> dict[str, str | None]:
    """A topic's effective settings, as far as the broker describes them (some, such as
    Tansu, describe none)."""
    try:
        answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all")
    except KafkaError as exc:
        log.warning("could not read the settings of %s (%s): check them yourself", name, exc)
        return {}
    configs = answer.get("topic", {}).get(name, {})
    return {key: (value or {}).get("value") for key, value in configs.items()}


def topic_config_problems(configs: Mapping[str, str | None]) -> list[str]:
    """What makes a ledger topic unfit, one sentence each, from its effective settings.
    A setting the broker did not describe is not judged."""
    problems = []
    for key, wanted in REQUIRED_TOPIC_CONFIGS.items():
        value = configs.get(key)
        if key == "cleanup.policy" and value is not None and "compact" in value.split(","):
            problems.append(f"cleanup.policy is {value!r}: compaction keeps only an aggregate's newest entry")
        elif key != "cleanup.policy" and value is not None and value != wanted:
            problems.append(f"{key} is {value}: records would be deleted; it must be -1 (kept for ever)")
    return problems


Record = tuple[bytes, bytes, Headers]


def chunks(records: Sequence[Record]) -> Iterator[Sequence[Record]]:
    """The records cut into runs that fit one producer batch each, to be sent one run at
    a time, each waited for before the next.

    Why: the idempotent producer only makes each *batch* exactly-once. When a batch fails
    for good (a broker that lost data answers out-of-order, the delivery timeout runs
    out) kafka-python starts a new producer epoch and sends the batches still queued,
    so a later run of entries would land where the failed one should have: a gap that
    Kafka cannot remove (it deletes records only from a topic's start). With one batch
    outstanding, nothing is queued behind a failure."""
    run: list[Record] = []
    size = 0
    for record in records:
        key, value, headers = record
        cost = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers) + _RECORD_FRAMING
        if run and size + cost > CHUNK_BYTES:
            yield run
            run, size = [], 0
        run.append(record)
        size += cost
    if run:
        yield run


class TopicTruncated(RuntimeError):
    """A ledger topic no longer holds records it held (its retention deleted them): a
    configuration error, which retrying does not mend."""


class TopicRepeatsEntry(RuntimeError):
    """The entries topic holds an entry twice (a producer sent a batch again after it had
    given up on it), so every record after the copy is one place off: the topic's
    fault, not the ledger's, and only recreating the topics mends it."""


def partition(topic: str) -> TopicPartition:
    return TopicPartition(topic, PARTITION)


def topic_end(
    consumer: KafkaConsumer,
    topic: str,
    *,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
) -> tuple[int, Any | None]:
    """(offset after the last record, the last record or None) of a one-partition topic.

    The reported end offset is only a hint: some brokers (Tansu) answer the base offset
    of the last batch plus one. Reading from just before the hint to the real end
    gives the exact end, and the last record lets the caller check what it holds.
    Told to ``stop`` meanwhile, it gives up (``Stopped``) instead of waiting out a
    broker that does not answer.
    """
    tp = partition(topic)
    consumer.assign([tp])
    hint = offset_of(consumer.end_offsets, tp, consumer, stop)
    if hint == 0:
        return 0, None
    if offset_of(consumer.beginning_offsets, tp, consumer, stop) >= hint:
        raise TopicTruncated(
            f"{topic} ends at offset {hint} but holds no record: they were deleted (retention, or"
            " kafka-delete-records); its records must be kept for ever"
        )
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
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped while reading the end of {topic}")
        if time.monotonic() > deadline:
            raise KafkaError(f"could not read the end of {topic} (reported end offset {hint})")


class Stopped(KafkaError):  # type: ignore[misc]  # kafka-python has no types
    """Told to stop while waiting for the brokers: the caller's loop ends; no outage."""


#: The first wait for an offsets answer before looking at the stop event again; each
#: further wait is twice as long, up to the longest: an answer slower than that (a
#: broker that is up answers in milliseconds) is not waited for, the request is asked
#: again. A stop is heard within the longest wait.
FIRST_OFFSETS_WAIT_MS = 1000
LONGEST_OFFSETS_WAIT_MS = 4000


def offset_of(
    ask: Callable[..., dict[TopicPartition, int]],
    tp: TopicPartition,
    consumer: KafkaConsumer,
    stop: threading.Event | None,
) -> int:
    """``ask([tp])`` (``end_offsets``, ``beginning_offsets``) within the consumer's request
    time-out, as kafka-python does, but asked in waits of 1, 2, then 4 s with the stop
    event looked at after each: a broker that is down would otherwise hold a relay or
    node told to stop for the whole time-out (30 s)."""
    deadline = time.monotonic() + consumer.config["request_timeout_ms"] / 1000
    wait_ms = FIRST_OFFSETS_WAIT_MS
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        try:
            return int(ask([tp], timeout_ms=max(1, min(wait_ms, left_ms)))[tp])
        except KafkaTimeoutError:
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped while asking where {tp.topic} ends") from None
            if time.monotonic() >= deadline:
                raise
        wait_ms = min(wait_ms * 2, LONGEST_OFFSETS_WAIT_MS)


def flush_until_stopped(producer: KafkaProducer, stop: threading.Event) -> None:
    """Wait until the broker has every record sent: the producer retries each batch until
    its delivery time-out (``KafkaTimeoutError`` then), or, told to stop, give up within a
    second instead of waiting that out."""
    while True:
        try:
            producer.flush(timeout=1.0)
            return
        except KafkaTimeoutError:
            if stop.is_set():
                raise
