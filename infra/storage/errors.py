"""Which storage errors mean "the database cannot serve this now" (retry later) rather
than a fault in the program: the HTTP API answers the first with 503 and the second
with 500."""

from __future__ import annotations

import sqlite3

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

#: What SQLite says when another connection holds the lock past the busy timeout.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


def storage_unavailable(exc: BaseException) -> bool:
    """PostgreSQL unreachable, restarting or shutting down, a pool with no free
    connection, a lock wait past ``lock_timeout``; SQLite locked past its busy timeout.
    Not a query the database refuses (a missing table is a bug, not an outage)."""
    if isinstance(exc, OperationalError | InterfaceError) and exc.__cause__ is not None:
        exc = exc.__cause__  # eventsourcing wraps the driver's error
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(exc, sqlite3.OperationalError | OperationalError):
        return any(text in str(exc) for text in _SQLITE_BUSY)
    return False
