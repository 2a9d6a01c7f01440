"""One writer per ledger: a lock held for as long as a process writes a ledger's log and
views (a sequencer, a node's replica) or rebuilds its views.

Why: the store's compare-and-set on the head keeps two writers from forking the log,
but not from harming each other. A second `dfg serve` on one data directory left the
first answering every submission with "resubmit" for good once the other appended,
and `dfg projections rebuild` under a running server left its views truncated. Now the
second one is refused at start, with its reason.

SQLite: an exclusive ``flock`` on ``<data>/ledger.lock`` (released by the kernel when
the process ends, however it ends). PostgreSQL: a session advisory lock keyed by the
ledger's schema, on a connection of its own (released when that session ends, which
each append checks, and the relay before each send: see ``_PostgresWriterLock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

from infra.settings import Settings
from ledger.store import StoreConflict

log = logging.getLogger("dfg.writer_lock")

LOCK_FILE = "ledger.lock"
#: The relay's own lock: it runs beside the ledger's writer, so it cannot take that one.
RELAY_LOCK_FILE = "relay.lock"


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

    def confirm(self, cursor: Any) -> None:
        """Inside an append's transaction: raise ``WriterLockLost`` if the lock is no
        longer this process's. A ``flock`` lasts as long as its descriptor."""

    def hold(self) -> bool:
        """``confirm`` outside any transaction, for a holder that appends nothing (the
        relay, before each send): True if the lock was held all along, False if it had
        to be taken again (nobody held it then, but somebody may have meanwhile)."""
        return True


class WriterLockLost(StoreConflict):
    """The lock's connection ended and another process holds the lock now."""


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


class RelayBusy(RuntimeError):
    """Another ``dfg relay`` publishes this ledger."""


def take_relay_lock(settings: Settings) -> WriterLock:
    """The ledger's relay lock, or ``RelayBusy``. Two relays of one ledger would each
    publish every new entry: the topic would hold it twice, which stops both relays and
    every follower until the topics are deleted and published again from entry 1. The
    relay only reads the ledger, so it runs beside the writer and takes a lock of its
    own (``DIR/relay.lock``, or a second advisory lock per schema)."""
    if settings.database_url:
        from infra.storage.postgres import database_url_schema

        schema = database_url_schema(settings.database_url)
        lock = _PostgresWriterLock(settings.database_url, _lock_key(schema, "relay"), kind="relay")
        if lock.take():
            return lock
        where = f"schema {schema!r} of the database"
    else:
        taken = _take_file_lock(settings, RELAY_LOCK_FILE)
        if taken is not None:
            return taken
        where = str(settings.data_dir)
    raise RelayBusy(
        f"another dfg relay publishes the ledger in {where}: two relays would publish every new"
        " entry twice, and a topic that holds an entry twice stops every relay and follower"
        " until the topics are recreated; stop it before starting another"
    )


def _take_file_lock(settings: Settings, name: str) -> WriterLock | None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.data_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return WriterLock(lambda: os.close(fd))


def _file_lock(settings: Settings, doing: str) -> WriterLock:
    taken = _take_file_lock(settings, LOCK_FILE)
    if taken is None:
        raise _busy(str(settings.data_dir), doing)
    return taken


def _lock_key(schema: str, kind: str = "writer") -> int:
    digest = hashlib.sha256(f"dfg-ledger-{kind}/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _postgres_lock(url: str, doing: str) -> WriterLock:
    from infra.storage.postgres import database_url_schema

    schema = database_url_schema(url)
    lock = _PostgresWriterLock(url, _lock_key(schema))
    if not lock.take():
        raise _busy(f"schema {schema!r} of the database", doing)
    return lock


#: What a holder that lost its lock to another process says, by the lock's kind.
_LOCK_LOST = {
    "writer": "this process lost the ledger's writer lock with its connection to the database, and"
    " another process holds it now: stop one of them",
    "relay": "this relay lost the ledger's relay lock with its connection to the database, and"
    " another dfg relay holds it now: this one stops, since two would publish every new entry twice",
}


class _PostgresWriterLock(WriterLock):
    """A session advisory lock, on a connection of its own. That session can end
    without this process knowing (a server restart, ``pg_terminate_backend``), and the
    lock with it: so each append confirms, in its own transaction, that the lock's
    session still holds it (the relay, before each send: ``hold``), and takes it again
    if nobody else did meanwhile."""

    def __init__(self, url: str, key: int, *, kind: str = "writer") -> None:
        super().__init__(self._unlock)
        self._url = url
        self._key = key
        self._kind = kind
        self._connection: Any = None
        self._pid = 0

    def take(self) -> bool:
        from infra.storage.postgres import connect

        connection = connect(self._url, autocommit=True)
        row = connection.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (self._key,)).fetchone()
        if not row or not row[0]:
            connection.close()
            return False
        self._connection, self._pid = connection, int(row[1])
        return True

    def confirm(self, cursor: Any) -> None:
        if not self._held(cursor):
            self._take_again()

    def hold(self) -> bool:
        import psycopg

        try:  # on the lock's own connection: a session that ended fails the query
            with self._connection.cursor() as cursor:
                if self._held(cursor):
                    return True
        except psycopg.Error:
            pass
        self._take_again()
        return False

    def _held(self, cursor: Any) -> bool:
        high, low = (self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF
        cursor.execute(
            "SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.pid = %s AND d.datname = current_database()"
            " AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1",
            (self._pid, high, low),
        )
        return cursor.fetchone() is not None

    def _take_again(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error):
            self._connection.close()
        if not self.take():
            raise WriterLockLost(_LOCK_LOST[self._kind])
        log.warning(
            "the ledger's %s lock was lost with its connection to the database; taken again", self._kind
        )

    def _unlock(self) -> None:
        import psycopg

        # Unlocked before closing: closing alone returns before the server has ended the
        # session, and a writer started right after could still find the lock held.
        with contextlib.suppress(psycopg.Error):  # a lost connection has lost the lock too
            self._connection.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        self._connection.close()
