"""How projections follow the log: each view applies a page of entries and records its
position in the same database transaction (eventsourcing's tracking records), so an
entry is applied exactly once and a restarted projection resumes where it stopped.
"""

from __future__ import annotations

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

    def create(self, cursor: Cursor) -> None: ...

    def apply(self, cursor: Cursor, entries: Sequence[Entry]) -> None: ...


ReadEntries = Callable[[int, int], Sequence[StoredEntry]]


def prepare(db: ViewDatabase, view: View) -> None:
    with db.transaction(commit=True) as cursor:
        view.create(cursor)


class ViewsAheadOfLog(RuntimeError):
    """A read model has applied entries its log does not hold: it was built from
    another ledger, or the log was replaced. Its answers would be another ledger's."""


def catch_up(db: ViewDatabase, view: View, read: ReadEntries, *, page: int = 2000) -> int:
    """Apply every entry the view has not seen; returns the view's new position."""
    position = db.position(view.name)
    if position and not read(position, 1):
        raise ViewsAheadOfLog(
            f"the read model {view.name!r} has applied {position} entries, but the log holds fewer:"
            " it was built from another ledger; run `dfg projections rebuild`"
        )
    while True:
        stored = read(position + 1, page)
        if not stored:
            return position
        entries = [Entry.decode(s.canonical) for s in stored]
        with db.transaction(commit=True) as cursor:
            view.apply(cursor, entries)
            db.track(cursor, view.name, entries[-1].seq)
        position = entries[-1].seq


def apply_new(db: ViewDatabase, views: Sequence[View], entries: Sequence[Entry], read: ReadEntries) -> int:
    """Apply entries just appended (already decoded) to every view in one transaction.

    Each view skips what it already has; a view that is behind the first of them
    catches up from the log first. Returns the lowest position afterwards."""
    if not entries:
        return min((db.position(v.name) for v in views), default=0)
    for view in views:
        if db.position(view.name) < entries[0].seq - 1:
            catch_up(db, view, read)
    with db.transaction(commit=True) as cursor:
        for view in views:
            position = db.position(view.name)
            fresh = [e for e in entries if e.seq > position]
            if fresh:
                view.apply(cursor, fresh)
                db.track(cursor, view.name, fresh[-1].seq)
    return entries[-1].seq


def rebuild(db: ViewDatabase, view: View, read: ReadEntries) -> int:
    """Drop the view and build it again from the first entry."""
    with db.transaction(commit=True) as cursor:
        for table in view.tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        db.forget(cursor, view.name)
        view.create(cursor)
    return catch_up(db, view, read)
