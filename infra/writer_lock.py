"""One writer per ledger: a lock held for as long as a process writes a ledger's log and
views (a sequencer, a node's replica) or rebuilds its views.

Why: the store's compare-and-set on the head keeps two writers from forking the log,
but not from harming each other. A second `dfg serve` on one data directory left the
first answering every submission with "resubmit" for good once the other appended,
and `dfg projections rebuild` under a running server left its views truncated. Now the
second one is refused at start, with its reason.

SQLite: an exclusive ``flock`` on ``<data>/ledger.lock`` (released by the kernel when
the process ends, however it ends). PostgreSQL: a session advisory lock keyed by the
ledger's schema, on a connection of its own (released when that session ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable
from urllib.parse import parse_qs, urlparse

from infra.settings import Settings

LOCK_FILE = "ledger.lock"


class LedgerBusy(RuntimeError):
    """Another process writes this ledger."""


class WriterLock:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Idempotent: the store's closing and an error path may both call it."""
        release, self._release = self._release, None
        if release is not None:
            release()


def take_writer_lock(settings: Settings, *, doing: str) -> WriterLock:
    """The ledger's writer lock, or ``LedgerBusy`` naming what to do."""
    if settings.database_url:
        return _postgres_lock(settings.database_url, doing)
    return _file_lock(settings, doing)


def _busy(where: str, doing: str) -> LedgerBusy:
    return LedgerBusy(
        f"another process writes the ledger in {where} (dfg serve, dfg demo populate, a node, or a"
        f" rebuild of its views): stop it before {doing}"
    )


def _file_lock(settings: Settings, doing: str) -> WriterLock:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    where = str(settings.data_dir)
    fd = os.open(settings.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(where, doing) from None
    return WriterLock(lambda: os.close(fd))


def _postgres_lock(url: str, doing: str) -> WriterLock:
    import psycopg

    schema = parse_qs(urlparse(url).query).get("schema", ["public"])[0]
    digest = hashlib.sha256(f"dfg-ledger-writer/{schema}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    connection = psycopg.connect(url.split("?", 1)[0], autocommit=True)
    row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    where = f"schema {schema!r} of the database"
    if not row or not row[0]:
        connection.close()
        raise _busy(where, doing)

    def release() -> None:
        # Unlocked before closing: closing alone returns before the server has ended the
        # session, and a writer started right after could still find the lock held.
        with contextlib.suppress(psycopg.Error):  # a lost connection has lost the lock too
            connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
        connection.close()

    return WriterLock(release)
