"""kafka-python's repeated lines while a broker is down are shown once a minute."""

from __future__ import annotations

import logging

from gateways.kafka.quiet_logs import RepeatedKafkaLines


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_kafka_line_is_shown_once_a_window_with_the_count_of_those_dropped() -> None:
    now = [0.0]
    keep = RepeatedKafkaLines(60, clock=lambda: now[0])
    lost = "%s: Connection lost: %s"
    assert keep.filter(_record("kafka.net.connection", lost, "node 1", "ECONNREFUSED"))
    for second in range(1, 31):  # several a second in practice
        now[0] = float(second)
        assert not keep.filter(_record("kafka.net.connection", lost, f"node {second}", "ECONNREFUSED"))
    # another message, or the same one at another level or from another logger, is its own
    assert keep.filter(_record("kafka.cluster", "Metadata refresh: failed %s", "x"))
    assert keep.filter(_record("kafka.net.connection", lost, "node 1", "x", level=logging.WARNING))
    now[0] = 61.0
    again = _record("kafka.net.connection", lost, "node 9", "ECONNREFUSED")
    assert keep.filter(again)
    expected = "node 9: Connection lost: ECONNREFUSED (and 30 more like it in the last 61 s)"
    assert again.getMessage() == expected
    now[0] = 200.0
    assert keep.filter(fresh := _record("kafka.net.connection", lost, "node 9", "x"))
    assert "more like it" not in fresh.getMessage()


def test_dfgs_own_lines_are_never_dropped() -> None:
    keep = RepeatedKafkaLines(60, clock=lambda: 0.0)
    for _ in range(3):
        assert keep.filter(_record("dfg.relay", "broker unavailable (%s); reconnecting", "x"))
        assert keep.filter(_record("kafkaesque", "not kafka-python's"))
