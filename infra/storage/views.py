"""Where read models live: a SQLite file beside the ledger, or the ledger's PostgreSQL
schema. Positions are eventsourcing tracking records written in the view's own
transaction; the library refuses a position that does not move forward."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL, Identifier, Literal

from infra.settings import READ_LOCK_TIMEOUT_S
from infra.storage.postgres import datastore_from_url
from infra.storage.sqlite import tuned_datastore


class SQLiteViews:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.datastore = tuned_datastore(path, durable=False)
        self.recorder = SQLiteTrackingRecorder(self.datastore)
        self.recorder.create_table()

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def position(self, view: str) -> int:
        return self.recorder.max_tracking_id(view) or 0

    def lock(self, cursor: Any, name: str) -> None:
        # SQLite has one lock, the database's: a write (deleting nothing) takes it now,
        # waiting for another writer's commit, and what is read after it is current.
        # (Reading first, SQLite could not upgrade to writing after another's commit.)
        cursor.execute("DELETE FROM tracking WHERE application_name = ? AND notification_id < 0", (name,))

    def claim(self, cursor: Any, view: str) -> int:
        self.lock(cursor, view)
        cursor.execute("SELECT MAX(notification_id) FROM tracking WHERE application_name = ?", (view,))
        return int(cursor.fetchone()[0] or 0)

    def track(self, cursor: Any, view: str, position: int) -> None:
        self.recorder._insert_tracking(cursor, Tracking(view, position))

    def forget(self, cursor: Any, view: str) -> None:
        cursor.execute("DELETE FROM tracking WHERE application_name = ?", (view,))

    def close(self) -> None:
        self.datastore.close()


class _PgCursor:
    """psycopg cursor speaking the views' ``?`` placeholders, rows as tuples."""

    def __init__(self, cursor: Any, schema: str) -> None:
        self._cursor = cursor
        self.raw = cursor
        self._schema = schema

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        return None if row is None else tuple(row.values())

    def fetchall(self) -> list[Any]:
        return [tuple(r.values()) for r in self._cursor.fetchall()]


class PostgresViews:
    def __init__(self, url: str) -> None:
        self.datastore = datastore_from_url(url)
        # one statement with the search path, so a read costs no extra round trip
        self._read_settings = SQL("SET LOCAL search_path TO {s}; SET LOCAL lock_timeout = {timeout}").format(
            s=Identifier(self.datastore.schema), timeout=Literal(f"{READ_LOCK_TIMEOUT_S}s")
        )
        self._write_settings = SQL("SET LOCAL search_path TO {s}").format(s=Identifier(self.datastore.schema))
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=Identifier(self.datastore.schema)))
        self.recorder = PostgresTrackingRecorder(self.datastore, tracking_table_name="view_tracking")
        self.recorder.create_table()

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            cursor.execute(self._write_settings if commit else self._read_settings)
            yield _PgCursor(cursor, self.datastore.schema)

    def position(self, view: str) -> int:
        return self.recorder.max_tracking_id(view) or 0

    def lock(self, cursor: Any, name: str) -> None:
        # Held until the transaction ends; what is read after it sees the other's commit.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext(?))", (f"dfg.views/{self.datastore.schema}/{name}",)
        )

    def claim(self, cursor: Any, view: str) -> int:
        self.lock(cursor, view)
        cursor.execute("SELECT MAX(notification_id) FROM view_tracking WHERE application_name = ?", (view,))
        return int(cursor.fetchone()[0] or 0)

    def track(self, cursor: Any, view: str, position: int) -> None:
        self.recorder._insert_tracking(cursor.raw, Tracking(view, position))

    def forget(self, cursor: Any, view: str) -> None:
        cursor.execute("DELETE FROM view_tracking WHERE application_name = ?", (view,))

    def close(self) -> None:
        self.datastore.close()
