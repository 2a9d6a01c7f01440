"""How projections follow the log: each view applies a page of entries and records its
position in the same database transaction (eventsourcing's tracking records), so an
entry is applied exactly once and a restarted projection resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ledger.entry import Entry
from ledger.store import StoredEntry


class Cursor(Protocol):
    """The slice of DB-API the views use; SQL is written with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class ViewDatabase(Protocol):
    def transaction(self, *, commit: bool) -> AbstractContextManager[Cursor]: ...

    def position(self, view: str) -> int: ...

    def lock(self, cursor: Cursor, name: str) -> None:
        """Take the lock named ``name`` for the rest of this write transaction: several
        processes bring the same read models up to date (the server, ``dfg projections
        follow``, the read commands), and one must not apply what another has just
        applied, nor create tables another is creating."""
        ...

    def claim(self, cursor: Cursor, view: str) -> int:
        """The view's position, read after taking the view's lock (``lock``)."""
        ...

    def track(self, cursor: Cursor, view: str, position: int) -> None: ...

    def forget(self, cursor: Cursor, view: str) -> None: ...

    def close(self) -> None: ...


class View(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> Sequence[str]:
        """Dropped and recreated on rebuild."""
        ...

    @property
    def version(self) -> int:
        """The layout of the view's tables; raised when it changes, so that a view built
        with an older layout is dropped and built again from the log on first use."""
        ...

    def create(self, cursor: Cursor) -> None: ...

    def apply(self, cursor: Cursor, entries: Sequence[Entry]) -> None: ...


ReadEntries = Callable[[int, int], Sequence[StoredEntry]]


#: Which ledger each view was built from: the SHA-256 of its log's genesis entry.
LEDGERS_TABLE = "view_ledgers"
_LEDGERS_DDL = f"CREATE TABLE IF NOT EXISTS {LEDGERS_TABLE} (view TEXT PRIMARY KEY, genesis TEXT NOT NULL)"
#: Which layout of its tables each view was built with (no row: version 1, the first).
VERSIONS_TABLE = "view_versions"
_VERSIONS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (view TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)


def stored_text(value: str | None) -> str | None:
    """Free text (a display name, a name, a reason) as a view's column holds it: as JSON,
    whose escapes leave no U+0000. The ledger accepts that character in such text, and
    PostgreSQL's ``text`` refuses it: one such entry stopped the read models there, and
    every submission after it was answered 503. ``read_text`` reads it back."""
    return None if value is None else json.dumps(value)


def read_text(stored: str | None) -> str | None:
    return None if stored is None else str(json.loads(stored))


class ViewsNotOfThisLog(RuntimeError):
    """A read model does not belong to its log: it has applied entries the log does
    not hold, or was built from another ledger's genesis entry. Its answers would be
    another ledger's."""


#: Taken by whoever creates or drops a view's tables.
_TABLES_LOCK = "*tables*"


def prepare(db: ViewDatabase, view: View, read: ReadEntries) -> None:
    """Create the view's tables, and check that it was built from this log (or record
    that it is, on first use). A view built with an older layout of its tables is
    dropped here, and built again from the log by the next catch-up."""
    genesis = _genesis_of(read)
    with db.transaction(commit=True) as cursor:
        db.lock(cursor, _TABLES_LOCK)
        if _built_version(cursor, view) != view.version:
            _drop(db, cursor, view)
        view.create(cursor)
        _record_version(cursor, view)
        _belongs(cursor, view, genesis)


def _built_version(cursor: Cursor, view: View) -> int:
    cursor.execute(_VERSIONS_DDL)
    cursor.execute(f"SELECT version FROM {VERSIONS_TABLE} WHERE view = ?", (view.name,))
    row = cursor.fetchone()
    return int(row[0]) if row is not None else 1


def _record_version(cursor: Cursor, view: View) -> None:
    cursor.execute(
        f"INSERT INTO {VERSIONS_TABLE} (view, version) VALUES (?, ?)"
        " ON CONFLICT (view) DO UPDATE SET version = excluded.version",
        (view.name, view.version),
    )


def _drop(db: ViewDatabase, cursor: Cursor, view: View) -> None:
    """The view's tables and position, gone: it starts again from the first entry."""
    for table in view.tables:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    db.forget(cursor, view.name)


def _genesis_of(read: ReadEntries) -> str | None:
    first = read(1, 1)
    return hashlib.sha256(first[0].canonical).hexdigest() if first else None


def _belongs(cursor: Cursor, view: View, genesis: str | None, *, anew: bool = False) -> None:
    """Record the view's genesis entry, or refuse another; ``anew`` forgets the old one."""
    cursor.execute(_LEDGERS_DDL)
    if anew:
        cursor.execute(f"DELETE FROM {LEDGERS_TABLE} WHERE view = ?", (view.name,))
    if genesis is None:
        return
    cursor.execute(
        f"INSERT INTO {LEDGERS_TABLE} (view, genesis) VALUES (?, ?) ON CONFLICT (view) DO NOTHING",
        (view.name, genesis),
    )
    cursor.execute(f"SELECT genesis FROM {LEDGERS_TABLE} WHERE view = ?", (view.name,))
    row = cursor.fetchone()
    if row is not None and row[0] != genesis:
        raise ViewsNotOfThisLog(
            f"the read model {view.name!r} was built from another ledger (its genesis entry differs);"
            " run `dfg projections rebuild`"
        )


def catch_up(db: ViewDatabase, view: View, read: ReadEntries, *, page: int = 2000) -> int:
    """Apply every entry the view has not seen; returns the view's new position."""
    position = db.position(view.name)
    if position and not read(position, 1):
        raise ViewsNotOfThisLog(
            f"the read model {view.name!r} has applied {position} entries, but the log holds fewer:"
            " it was built from another ledger, or the log was cut back; run `dfg projections rebuild`"
        )
    while True:
        stored = read(position + 1, page)
        if not stored:
            return position
        entries = [Entry.decode(s.canonical) for s in stored]
        with db.transaction(commit=True) as cursor:
            position = db.claim(cursor, view.name)  # another may have gone ahead meanwhile
            fresh = _after(entries, position)
            if fresh:
                view.apply(cursor, fresh)
                db.track(cursor, view.name, fresh[-1].seq)
                position = fresh[-1].seq


def _after(entries: Sequence[Entry], position: int) -> list[Entry]:
    """The entries a view at ``position`` has not applied; none when the view is before
    the first of them (it was rebuilt meanwhile: what it lacks is read again)."""
    if not entries or position < entries[0].seq - 1:
        return []
    return [e for e in entries if e.seq > position]


def apply_new(db: ViewDatabase, views: Sequence[View], entries: Sequence[Entry], read: ReadEntries) -> int:
    """Apply entries just appended (already decoded) to every view in one transaction.

    Each view skips what it already has; a view that is behind the first of them
    catches up from the log first. Returns the lowest position afterwards."""
    if not entries:
        return min((db.position(v.name) for v in views), default=0)
    for view in views:
        if db.position(view.name) < entries[0].seq - 1:
            catch_up(db, view, read)
    behind = []
    with db.transaction(commit=True) as cursor:
        for view in views:
            position = db.claim(cursor, view.name)
            fresh = _after(entries, position)
            if fresh:
                view.apply(cursor, fresh)
                db.track(cursor, view.name, fresh[-1].seq)
            elif position < entries[0].seq - 1:
                behind.append(view)  # rebuilt meanwhile by another process
    for view in behind:
        catch_up(db, view, read)
    return entries[-1].seq


def rebuild(db: ViewDatabase, view: View, read: ReadEntries) -> int:
    """Drop the view and build it again from the first entry."""
    genesis = _genesis_of(read)
    with db.transaction(commit=True) as cursor:
        db.lock(cursor, _TABLES_LOCK)
        db.lock(cursor, view.name)
        cursor.execute(_VERSIONS_DDL)
        _drop(db, cursor, view)
        view.create(cursor)
        _record_version(cursor, view)
        _belongs(cursor, view, genesis, anew=True)
    return catch_up(db, view, read)
