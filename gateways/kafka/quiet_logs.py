"""kafka-python's own log lines, once per minute each.

While a broker is down, kafka-python logs the same few errors and warnings several
times a second (measured: 226 lines in 35 s of outage for one relay; 11 with this), and dfg's own
line -- "broker unavailable ...; reconnecting" -- is lost among them. Its first line
of each kind stays (a failed TLS handshake, say, is worth reading once); repeats of
the same message within the window are dropped and counted on the next one shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WINDOW_S = 60.0


class RepeatedKafkaLines(logging.Filter):
    """Attach to a handler: drops a ``kafka.*`` record whose logger and message format
    were shown less than ``window_s`` ago."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._shown: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (when, dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == "kafka" or record.name.startswith("kafka.")):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        shown = self._shown.get(key)
        if shown is not None and now - shown[0] < self.window_s:
            self._shown[key] = (shown[0], shown[1] + 1)
            return False
        if shown is not None and shown[1]:
            record.msg = f"{record.msg} (and {shown[1]} more like it in the last {now - shown[0]:.0f} s)"
        if len(self._shown) > 1000:  # formats are few; bound it all the same
            self._shown.clear()
        self._shown[key] = (now, 0)
        return True


def quiet_kafka_repeats(window_s: float = WINDOW_S) -> None:
    """Install the filter on the root logger's handlers (a logger's own filters do not
    see its children's records)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatedKafkaLines) for f in handler.filters):
            handler.addFilter(RepeatedKafkaLines(window_s))
