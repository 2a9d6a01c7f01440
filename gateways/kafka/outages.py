"""What the relay and followers wait out, and how long: a broker that is down and their
own database that cannot answer (PostgreSQL restarting, SQLite locked past its busy
time-out) are outages, retried with a back-off; anything else is a bug, raised."""

from __future__ import annotations

import threading

from kafka.errors import KafkaError

from gateways.kafka.client import why_disconnected
from infra.storage.errors import storage_unavailable
from infra.storage.postgres import check_pools

FIRST_WAIT_S = 0.2
LONGEST_WAIT_S = 5.0


def outage(exc: Exception, database: str) -> str | None:
    """What to log before trying again, or None when ``exc`` is no outage. ``database``
    names whose database it is ("the ledger's"). A database outage also has the pools'
    dead connections replaced, so that the next attempt does not meet one."""
    if isinstance(exc, KafkaError):
        return why_disconnected(exc)
    if storage_unavailable(exc):
        check_pools()
        return f"{database} database cannot be used now ({' '.join(str(exc).split())})"
    return None


class Backoff:
    """Waits that double from ``FIRST_WAIT_S`` to ``LONGEST_WAIT_S``, until a step succeeds."""

    def __init__(self) -> None:
        self.delay = FIRST_WAIT_S

    def succeeded(self) -> None:
        self.delay = FIRST_WAIT_S

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.delay)
        self.delay = min(self.delay * 2, LONGEST_WAIT_S)
