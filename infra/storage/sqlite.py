"""SQLite engine (the embedded default): one file per ledger, no server.

eventsourcing's SQLite recorder stores the entries; its insert hook runs our extra
statements in the same transaction, so an entry, its Merkle nodes, its nonce row and
the new head commit together or not at all. WAL mode with synchronous=FULL makes a
commit durable before the sequencer answers.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
)

from infra.settings import LOCK_TIMEOUT_S
from infra.storage.common import EMPTY_ROOT, EVENTS_TABLE, NO_END, EntryStoreMixin, utc_now_text
from infra.storage.sqlite_read_only import FileStamp, check_unchanged, read_only_uri
from ledger.store import (
    AppendBatch,
    HeadMoved,
    RecordedViolation,
    StoreConflict,
    StoredCheckpoint,
    StoredEntry,
)

CACHE_KIB = 64 * 1024
#: The page cache of a store that reads the log once, in order (an audit). Pages are
#: read once and then recycled: a small cache stays in the CPU's own cache, where a
#: large one hands each new page a cold buffer (measured: the audit's replay 2 us per
#: entry faster with 1 MiB than with 64 MiB, about 3 %). Its random reads (aggregates
#: loaded again) then go to the system's file cache more often: on `dfg demo
#: populate`'s ledger, whose consents are used again, both sizes measured alike.
SCAN_CACHE_KIB = 1024
#: Pages the write-ahead log may hold before a commit copies them into the database
#: file (SQLite's default is 1,000: 4 MB). Random-keyed index pages are rewritten by
#: most commits; a longer log copies each of them once per checkpoint instead of once
#: per few commits, and the file's fsync comes less often. Measured appending entries
#: 1,000,001 to 1,100,000: ~7,000/s with 1,000 pages, ~8,100-8,700/s with 10,000 and
#: ~8,400-8,900/s with 20,000. Durability is the log's (each commit syncs it); a longer
#: log only means more for SQLite to read on the next open after a crash (up to 64 MB
#: at the default 4 KiB page).
WAL_CHECKPOINT_PAGES = 16_384
#: The log's file is cut back to this size when a checkpoint lets it start over.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
_TABLES = [
    "CREATE TABLE IF NOT EXISTS ledger_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, root BLOB NOT NULL)",
    f"INSERT OR IGNORE INTO ledger_head VALUES (1, 0, x'{EMPTY_ROOT.hex()}')",
    "CREATE TABLE IF NOT EXISTS merkle_nodes ("
    " level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,"
    " PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS ledger_tx ("
    " signer TEXT NOT NULL, nonce INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (signer, nonce)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoint_cosignatures ("
    " size INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL,"
    " PRIMARY KEY (size, witness)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS markers (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS violations ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at TEXT NOT NULL, kind TEXT NOT NULL,"
    " seq INTEGER NOT NULL, message TEXT NOT NULL, evidence TEXT NOT NULL)",
]


def _hex(originator_id: uuid.UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, uuid.UUID) else uuid.UUID(originator_id).hex


class SQLiteLedgerRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *_TABLES]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        batch: AppendBatch | None = kwargs.get("ledger_batch")
        if batch is None:
            raise StoreConflict("ledger entries are appended only as a sequenced batch")
        c.execute(
            "UPDATE ledger_head SET size = ?, root = ? WHERE id = 1 AND size = ?",
            (batch.new_size, batch.new_root, batch.old_size),
        )
        if c.sqlite_cursor.rowcount != 1:
            raise HeadMoved("the ledger head moved: is another sequencer writing here?")
        # One executemany instead of the library's row-by-row inserts: the ids are known
        # (the head's compare-and-set above serialises writers) and checked right after.
        c.executemany(
            self.insert_events_statement,
            [(_hex(s.originator_id), s.originator_version, s.topic, s.state) for s in stored_events],
        )
        c.execute(f"SELECT MAX(rowid) FROM {self.events_table_name}")
        if c.fetchone()[0] != batch.new_size:
            raise StoreConflict("notification ids do not follow the ledger sequence")
        ids = [e.seq for e in batch.entries]
        c.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)", batch.nodes)
        c.executemany("INSERT INTO ledger_tx VALUES (?, ?, ?)", batch.tx_rows)
        return ids


class _TunedPool(SQLiteConnectionPool):
    """The library's pool with a page cache sized for ledgers of millions of entries
    (entries are keyed by random UUIDs, so their index is written all over; the default
    2 MB cache turns that into reads), an explicit synchronous level and a write-ahead
    log long enough to checkpoint seldom (``WAL_CHECKPOINT_PAGES``)."""

    synchronous = "FULL"
    cache_kib = CACHE_KIB

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        connection._sqlite_conn.execute(f"PRAGMA cache_size = -{self.cache_kib}")
        connection._sqlite_conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        connection._sqlite_conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        connection._sqlite_conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        return connection


class _ViewsPool(_TunedPool):
    # Read models are rebuilt from the log, which is durable: they need no fsync of
    # their own (WAL with NORMAL stays consistent; a crash loses only recent positions).
    synchronous = "NORMAL"


class _ScanPool(_TunedPool):
    cache_kib = SCAN_CACHE_KIB


def tuned_datastore(
    path: Path,
    *,
    durable: bool = True,
    scan: bool = False,
    read_only_uri: str | None = None,
    lock_timeout_s: int = LOCK_TIMEOUT_S,
) -> SQLiteDatastore:
    """``read_only_uri``: the file opened read-only, through this URI
    (``sqlite_read_only``). ``lock_timeout_s``: how long a write waits for another
    connection's write lock (SQLite's busy timeout)."""
    name = read_only_uri or str(path)
    datastore = SQLiteDatastore(name, lock_timeout=lock_timeout_s)
    datastore.pool.close()
    pool_class = _ViewsPool if not durable else _ScanPool if scan else _TunedPool
    datastore.pool = pool_class(db_name=name, lock_timeout=lock_timeout_s)
    if read_only_uri:  # the library would switch the file to WAL mode: a reader changes nothing
        datastore.pool.is_journal_mode_wal = True
    return datastore


class NotALedgerFile(sqlite3.DatabaseError):
    """A file opened read-only that does not hold a ledger's tables."""


class SQLiteLedgerStore(EntryStoreMixin):
    def __init__(
        self, path: Path, *, scan: bool = False, read_only: bool = False, lock_timeout_s: int = LOCK_TIMEOUT_S
    ) -> None:
        """``scan``: the store is opened to read the log once, in order (``SCAN_CACHE_KIB``).
        ``read_only``: an existing ledger that this process only reads (the audit tools),
        opened so that SQLite itself refuses any write. ``lock_timeout_s``: see
        ``LOCK_TIMEOUT_S``."""
        uri: str | None = None
        #: A file read as immutable: its stamp, checked at every page of entries read.
        self._immutable: FileStamp | None = None
        if read_only:
            uri, self._immutable = read_only_uri(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.datastore = tuned_datastore(path, scan=scan, read_only_uri=uri, lock_timeout_s=lock_timeout_s)
        recorder = SQLiteLedgerRecorder(self.datastore, events_table_name=EVENTS_TABLE)
        if not self._schema_ready():
            if read_only:
                self.datastore.close()
                raise NotALedgerFile(f"{path} holds no ledger (its tables are missing)")
            recorder.create_table()
        self._wire(recorder)

    def _schema_ready(self) -> bool:
        """Creating tables takes the write lock even when they exist; a second process
        (``dfg node status`` next to a running follower) only needs to read."""
        wanted = {EVENTS_TABLE, *(t.split()[5] for t in _TABLES if t.startswith("CREATE TABLE"))}
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return wanted <= {row[0] for row in c.fetchall()}

    def head(self) -> tuple[int, bytes]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT size, root FROM ledger_head WHERE id = 1")
            row = c.fetchone()
            return int(row[0]), bytes(row[1])

    def read_nodes(self, coords: Sequence[tuple[int, int]]) -> Sequence[bytes]:
        if not coords:
            return []
        found: dict[tuple[int, int], bytes] = {}
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(coords), 200):
                chunk = coords[start : start + 200]
                where = " OR ".join("(level = ? AND idx = ?)" for _ in chunk)
                c.execute(
                    f"SELECT level, idx, hash FROM merkle_nodes WHERE {where}",
                    [v for coord in chunk for v in coord],
                )
                for level, idx, value in c.fetchall():
                    found[(level, idx)] = bytes(value)
        missing = [coord for coord in coords if coord not in found]
        if missing:
            raise LookupError(f"Merkle nodes missing from storage: {missing[:5]}")
        return [found[coord] for coord in coords]

    def read_entries(self, start: int, limit: int) -> Sequence[StoredEntry]:
        """As the event store's notification log reads them (notification id = rowid),
        without its notification objects: a third less time per entry for the audit's
        and the relay's sequential reads."""
        if self._immutable is not None:
            check_unchanged(self.path, self._immutable)
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT rowid, originator_id, originator_version, topic, state FROM {EVENTS_TABLE}"
                " WHERE rowid >= ? ORDER BY rowid LIMIT ?",
                (start, limit),
            )
            rows = c.fetchall()
        return [StoredEntry(row[0], uuid.UUID(hex=row[1]), row[2], row[3], bytes(row[4])) for row in rows]

    def aggregate_id_prefixes(self, before: int | None = None) -> Iterator[int]:
        # "+rowid": the bound must not pick the rowid range over the table's 1.5 KB
        # rows; scanning the (originator_id, originator_version) key, which holds the
        # rowid too, reads a thirtieth of the pages.
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT substr(originator_id, 1, 16) FROM {EVENTS_TABLE}"
                " WHERE originator_version = 1 AND +rowid < ?",
                (NO_END if before is None else before,),
            )
            rows = c.fetchall()
        return (int(row[0], 16) for row in rows)

    def _states_before(self, aggregate_id: uuid.UUID, seq: int) -> Sequence[bytes]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT state FROM {EVENTS_TABLE} WHERE originator_id = ? AND rowid < ?"
                " ORDER BY originator_version",
                (aggregate_id.hex, seq),
            )
            return [bytes(row[0]) for row in c.fetchall()]

    def read_node_range(self, level: int, low: int, high: int) -> Sequence[bytes]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT idx, hash FROM merkle_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (level, low, high),
            )
            rows = c.fetchall()
        return _contiguous(rows, low)

    def append(self, batch: AppendBatch) -> None:
        # Straight to the recorder: the event store's put would also build a Recording
        # per entry, which nothing here reads.
        self.recorder.insert_events(
            [self.events.mapper.to_stored_event(e) for e in batch.entries], ledger_batch=batch
        )

    def last_nonce(self, signer: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT MAX(nonce) FROM ledger_tx WHERE signer = ?", (signer,))
            row = c.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    def tx_index_summary(self, upto: int | None = None) -> tuple[int, dict[str, int]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT signer, COUNT(*), MAX(nonce) FROM ledger_tx WHERE seq <= ? GROUP BY signer",
                (NO_END if upto is None else upto,),
            )
            rows = c.fetchall()
        return sum(r[1] for r in rows), {r[0]: int(r[2]) for r in rows}

    def signer_activity(self, signer: str) -> tuple[int, int | None, int | None]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM ledger_tx WHERE signer = ?", (signer,))
            row = c.fetchone()
        return int(row[0]), row[1], row[2]

    def find_tx(self, signer: str, nonce: int) -> int | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT seq FROM ledger_tx WHERE signer = ? AND nonce = ?", (signer, nonce))
            row = c.fetchone()
            return int(row[0]) if row else None

    def save_checkpoint(self, size: int, root: bytes, note: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?)", (size, root, note))

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1")
            rows = c.fetchall()
            return self._with_cosignatures(c, rows)[0] if rows else None

    def checkpoints(self, after_size: int = 0, limit: int = 1000) -> Sequence[StoredCheckpoint]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT size, root, note FROM checkpoints WHERE size > ? ORDER BY size LIMIT ?",
                (after_size, limit),
            )
            return self._with_cosignatures(c, c.fetchall())

    @staticmethod
    def _with_cosignatures(c: SQLiteCursor, rows: Sequence[Any]) -> list[StoredCheckpoint]:
        if not rows:
            return []
        c.execute(
            "SELECT size, line FROM checkpoint_cosignatures"
            " WHERE size BETWEEN ? AND ? ORDER BY size, witness",
            (min(r[0] for r in rows), max(r[0] for r in rows)),
        )
        lines: dict[int, list[str]] = {}
        for size, line in c.fetchall():
            lines.setdefault(int(size), []).append(line)
        return [StoredCheckpoint(int(r[0]), bytes(r[1]), r[2], tuple(lines.get(int(r[0]), ()))) for r in rows]

    def save_cosignature(self, size: int, witness: str, line: str) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute("INSERT OR IGNORE INTO checkpoint_cosignatures VALUES (?, ?, ?)", (size, witness, line))
            return bool(c.sqlite_cursor.rowcount == 1)

    def cosigned_checkpoints(self, at_least: int, limit: int = 20) -> Sequence[StoredCheckpoint]:
        with self.datastore.transaction(commit=False) as c:
            # Newest first, counting each one's cosignatures by the key, until ``limit`` are
            # found: not a count over every cosignature the ledger ever kept, which took
            # seconds, on the API's event loop, for each final receipt asked for.
            c.execute(
                "SELECT size, root, note FROM checkpoints AS c WHERE (SELECT COUNT(*) FROM"
                " checkpoint_cosignatures AS cs WHERE cs.size = c.size) >= ? ORDER BY size DESC LIMIT ?",
                (at_least, limit),
            )
            return self._with_cosignatures(c, c.fetchall())

    def cosignatures(self, size: int) -> tuple[str, ...]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT line FROM checkpoint_cosignatures WHERE size = ? ORDER BY witness", (size,))
            return tuple(r[0] for r in c.fetchall())

    def marker(self, name: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT value FROM markers WHERE name = ?", (name,))
            row = c.fetchone()
            return int(row[0]) if row else 0

    def set_marker(self, name: str, value: int) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO markers VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def record_violation(self, kind: str, seq: int, message: str, evidence: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO violations (recorded_at, kind, seq, message, evidence) VALUES (?, ?, ?, ?, ?)",
                (utc_now_text(), kind, seq, message, evidence),
            )

    def violations(self) -> Sequence[RecordedViolation]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT recorded_at, kind, seq, message, evidence FROM violations ORDER BY id")
            return [RecordedViolation(r[0], r[1], int(r[2]), r[3], r[4]) for r in c.fetchall()]

    def wait_for_append(self, timeout: float) -> None:
        # SQLite has no notifications: poll the head, cheaply, a few times a second.
        size = self.head()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.head()[0] != size:
                return

    def close(self) -> None:
        try:
            self.datastore.close()
        finally:
            self._released()


def _contiguous(rows: Sequence[Any], low: int) -> list[bytes]:
    """The values of ``rows`` (index, value), ordered by index, from ``low`` up to the
    first gap."""
    if rows and rows[-1][0] == low + len(rows) - 1:  # indexes are unique: no gap
        return [bytes(value) for _, value in rows]
    out: list[bytes] = []
    for index, value in rows:
        if index != low + len(out):
            break
        out.append(bytes(value))
    return out
