"""PostgreSQL engine (production): eventsourcing's PostgreSQL recorder plus our tables.

The insert hook runs inside the library's write transaction: a compare-and-set on
the head row (which also serialises writers), the notification id sequence set to
the next ledger sequence number (sequences are not transactional, so a rolled-back
batch would otherwise leave a gap), then the Merkle nodes and nonce rows.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from infra.settings import LOCK_TIMEOUT_S
from infra.storage.common import EMPTY_ROOT, EVENTS_TABLE, NO_END, EntryStoreMixin, utc_now_text
from infra.storage.sqlite import _contiguous
from ledger.known_ids import KnownIds
from ledger.store import (
    AppendBatch,
    HeadMoved,
    RecordedViolation,
    StoreConflict,
    StoredCheckpoint,
    WriterLockHandle,
)

log = logging.getLogger("dfg.postgres")

#: Schema names the ledger takes: what PostgreSQL keeps as written without quotes, in
#: its 63 bytes. Others would be folded to lower case, or cut short, in some statements
#: and not in others (the advisory locks hash the name as given), or break the quoting
#: of the library's own statements.
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def database_url_schema(url: str) -> str:
    """The schema a database URL names (``public`` without ``?schema=``); ``ValueError``
    naming what is wrong with the URL. Only ``schema`` is read from the query: another
    parameter (``sslmode``...) is refused rather than silently ignored."""
    parsed = urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ValueError("the database URL must start with postgresql://")
    query = parse_qs(parsed.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"schema"})
    if unknown:
        raise ValueError(f"only ?schema= is read from a database URL, not {', '.join(unknown)}")
    schema = query.get("schema", ["public"])
    if len(schema) != 1 or not _SCHEMA.fullmatch(schema[0]):
        raise ValueError(
            "the schema must be 1 to 63 lower-case letters, digits and underscores, not starting"
            f" with a digit (got {', '.join(repr(v) for v in schema)})"
        )
    return schema[0]


def connection_params(url: str) -> dict[str, Any]:
    """Where ``postgresql://user[:password]@host[:port]/dbname[?schema=name]`` points,
    with the defaults every connection of a ledger takes: the pool's, the writer lock's
    and LISTEN's. One URL must reach one database whoever connects (advisory locks are
    per database); libpq's own defaults (the socket, the login's name) would differ."""
    parsed = urlparse(url)
    return {
        "dbname": (parsed.path or "/postgres").lstrip("/") or "postgres",
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": unquote(parsed.username or "postgres"),
        "password": unquote(parsed.password or ""),
    }


def connect(url: str, **options: Any) -> psycopg.Connection[Any]:
    """A connection of its own (a lock's, LISTEN's) to the database ``url`` names."""
    params = {k: v for k, v in connection_params(url).items() if v != ""}
    return psycopg.connect(**params, **options)


def datastore_from_url(url: str, *, pool_size: int = 4, lock_timeout_s: int = 0) -> PostgresDatastore:
    """The library's pooled datastore for ``url`` (see ``connection_params``).
    ``lock_timeout_s``: how long an append waits for the lock on the entries table (the
    library's ``LOCK TABLE``, which serialises inserts; 0 waits for ever)."""
    datastore = PostgresDatastore(
        **connection_params(url),
        schema=database_url_schema(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        lock_timeout=lock_timeout_s,
    )
    _datastores.add(datastore)
    return datastore


#: Every pool of this process, for ``check_pools``.
_datastores: weakref.WeakSet[PostgresDatastore] = weakref.WeakSet()
_checking = threading.Lock()


def check_pools(*, wait: bool = False) -> None:
    """Test the idle connections of every pool of this process, replacing those that are
    broken. After the database ended its sessions (a restart, ``pg_terminate_backend``)
    each pooled connection fails once when next used, so one request after another got
    503 until every connection of every pool had failed once, more than a client's few
    retries. Called (in a worker thread) after such a failure; one check at a time: a
    request's call returns at once when one is under way, ``wait`` waits for it (and
    checks again) before a last attempt that must not meet a dead connection."""
    if not _checking.acquire(blocking=wait):
        return
    try:
        for datastore in list(_datastores):
            with suppress(Exception):  # a pool closed meanwhile, or not opened yet
                datastore.pool.check()
    finally:
        _checking.release()


#: How long the first connection of a command may take (the pools' own wait is 5 s).
CONNECT_TIMEOUT_S = 5


def ledger_exists(url: str) -> bool:
    """Whether the schema the URL names holds a ledger, asked without creating
    anything (opening a store creates its tables; a mistyped schema should not).

    On a connection of its own, not a pool's: a pool that cannot connect says only
    "couldn't get a connection after 5.00 sec", after waiting that long, where libpq
    names the cause at once (nobody listening on the port, no such database or role,
    a host name that does not resolve). Every command but ``init`` asks this first."""
    with connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as connection:
        row = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{database_url_schema(url)}".ledger_head',)
        ).fetchone()
    return bool(row and row[0])


class PostgresLedgerRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, events_table_name: str = EVENTS_TABLE) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        s = Identifier(datastore.schema)
        self.sql_create_statements.extend(
            SQL(statement).format(s=s)
            for statement in (
                "CREATE TABLE IF NOT EXISTS {s}.ledger_head ("
                " id integer PRIMARY KEY CHECK (id = 1), size bigint NOT NULL, root bytea NOT NULL)",
                f"INSERT INTO {{s}}.ledger_head VALUES (1, 0, '\\x{EMPTY_ROOT.hex()}'::bytea)"
                " ON CONFLICT DO NOTHING",
                "CREATE TABLE IF NOT EXISTS {s}.merkle_nodes ("
                " level integer NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL,"
                " PRIMARY KEY (level, idx))",
                "CREATE TABLE IF NOT EXISTS {s}.ledger_tx ("
                " signer text NOT NULL, nonce bigint NOT NULL, seq bigint NOT NULL,"
                " PRIMARY KEY (signer, nonce))",
                "CREATE TABLE IF NOT EXISTS {s}.checkpoints ("
                " size bigint PRIMARY KEY, root bytea NOT NULL, note text NOT NULL)",
                "CREATE TABLE IF NOT EXISTS {s}.checkpoint_cosignatures ("
                " size bigint NOT NULL, witness text NOT NULL, line text NOT NULL,"
                " PRIMARY KEY (size, witness))",
                "CREATE TABLE IF NOT EXISTS {s}.markers (name text PRIMARY KEY, value bigint NOT NULL)",
                "CREATE TABLE IF NOT EXISTS {s}.violations ("
                " id bigserial PRIMARY KEY, recorded_at text NOT NULL, kind text NOT NULL,"
                " seq bigint NOT NULL, message text NOT NULL, evidence text NOT NULL)",
            )
        )
        self._s = s
        self._qualified_table = f"{datastore.schema}.{events_table_name}"
        # The library names the channel after the table alone, so every ledger in one
        # database woke every other's listeners; the schema makes it the ledger's own.
        self.channel_name = f"{events_table_name}/{datastore.schema}"
        self.writer_lock: WriterLockHandle | None = None
        self._insert_columns = SQL(
            "INSERT INTO {s}.{t} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[])"
            " RETURNING notification_id"
        ).format(s=s, t=Identifier(events_table_name), id_type=Identifier(datastore.originator_id_type))

    def q(self, statement: str) -> Composed:
        return SQL(statement).format(s=self._s)  # type: ignore[arg-type]

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """The library's insert, with one binary array per column instead of one array
        of composites dumped as text (which escapes each entry's bytes one by one)."""
        self._lock_table(curs)
        self._notify_channel(curs)
        columns = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        curs.execute(self._insert_columns, columns, binary=True)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        batch: AppendBatch | None = kwargs.get("ledger_batch")
        if batch is None:
            raise StoreConflict("ledger entries are appended only as a sequenced batch")
        if self.writer_lock is not None:
            self.writer_lock.confirm(curs)
        curs.execute(
            self.q(
                "UPDATE {s}.ledger_head SET size = %s, root = %s WHERE id = 1 AND size = %s RETURNING size"
            ),
            (batch.new_size, batch.new_root, batch.old_size),
        )
        if curs.fetchone() is None:
            raise HeadMoved("the ledger head moved: is another sequencer writing here?")
        curs.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), %s, false)",
            (self._qualified_table, batch.old_size + 1),
        )
        self._insert_rows(curs, "merkle_nodes", ("integer", "bigint", "bytea"), batch.nodes)
        self._insert_rows(curs, "ledger_tx", ("text", "bigint", "bigint"), batch.tx_rows)

    def _insert_rows(
        self, curs: Cursor[DictRow], table: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Many rows in one statement: one binary array per column."""
        if not rows:
            return
        arrays = ", ".join(f"%s::{kind}[]" for kind in types)
        curs.execute(
            self.q(f"INSERT INTO {{s}}.{table} SELECT * FROM unnest({arrays})"),
            [list(column) for column in zip(*rows, strict=True)],
            binary=True,
        )


@contextmanager
def _schema_lock(url: str, schema: str) -> Iterator[None]:
    """Serialise creating a ledger's tables: processes opening one ledger at once (the
    segments of an audit) would otherwise race in the catalog ("tuple concurrently
    updated") even with IF NOT EXISTS."""
    key = int.from_bytes(
        hashlib.sha256(f"dfg-ledger-schema/{schema}".encode()).digest()[:8], "big", signed=True
    )
    with connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (key,))


class PostgresLedgerStore(EntryStoreMixin):
    def __init__(self, url: str, *, read_only: bool = False, lock_timeout_s: int = LOCK_TIMEOUT_S) -> None:
        """``read_only``: for an existing ledger, read by a role that may only SELECT (an
        auditor's); PostgreSQL refuses "create if not exists" to such a role.
        ``lock_timeout_s``: see ``LOCK_TIMEOUT_S``."""
        self.datastore = datastore_from_url(url, lock_timeout_s=lock_timeout_s)
        self._url = url
        self._listener: psycopg.Connection[Any] | None = None
        self._recorder = PostgresLedgerRecorder(self.datastore)
        if not read_only:
            with _schema_lock(url, self.datastore.schema):
                with self.datastore.transaction(commit=True) as curs:
                    curs.execute(
                        SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=Identifier(self.datastore.schema))
                    )
                self._recorder.create_table()
        self._wire(self._recorder)

    def _confirm_writes_with(self, lock: WriterLockHandle) -> None:
        self._recorder.writer_lock = lock

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Any:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._recorder.q(statement), params)
            return curs.fetchone()

    def head(self) -> tuple[int, bytes]:
        row = self._one("SELECT size, root FROM {s}.ledger_head WHERE id = 1")
        return int(row["size"]), bytes(row["root"])

    def read_nodes(self, coords: Sequence[tuple[int, int]]) -> Sequence[bytes]:
        if not coords:
            return []
        levels = [c[0] for c in coords]
        indexes = [c[1] for c in coords]
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT n.level, n.idx, n.hash FROM {s}.merkle_nodes n"
                    " JOIN unnest(%s::integer[], %s::bigint[]) AS w(level, idx)"
                    " ON n.level = w.level AND n.idx = w.idx"
                ),
                (levels, indexes),
            )
            found = {(r["level"], r["idx"]): bytes(r["hash"]) for r in curs.fetchall()}
        missing = [coord for coord in coords if coord not in found]
        if missing:
            raise LookupError(f"Merkle nodes missing from storage: {missing[:5]}")
        return [found[coord] for coord in coords]

    def aggregate_id_prefixes(self, before: int | None = None) -> Iterator[int]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT originator_id FROM {s}.{t} WHERE originator_version = 1 AND notification_id < %s"
                ).format(s=Identifier(self.datastore.schema), t=Identifier(EVENTS_TABLE)),
                (NO_END if before is None else before,),
            )
            rows = curs.fetchall()
        ids = (r["originator_id"] for r in rows)  # psycopg reads the uuid column as UUID
        return (KnownIds.prefix(i if isinstance(i, uuid.UUID) else uuid.UUID(str(i))) for i in ids)

    def _states_before(self, aggregate_id: uuid.UUID, seq: int) -> Sequence[bytes]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT state FROM {s}.{t} WHERE originator_id = %s AND notification_id < %s"
                    " ORDER BY originator_version"
                ).format(s=Identifier(self.datastore.schema), t=Identifier(EVENTS_TABLE)),
                (aggregate_id, seq),
            )
            return [bytes(r["state"]) for r in curs.fetchall()]

    def read_node_range(self, level: int, low: int, high: int) -> Sequence[bytes]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT idx, hash FROM {s}.merkle_nodes WHERE level = %s AND idx >= %s AND idx < %s"
                    " ORDER BY idx"
                ),
                (level, low, high),
            )
            rows = [(r["idx"], r["hash"]) for r in curs.fetchall()]
        return _contiguous(rows, low)

    def append(self, batch: AppendBatch) -> None:
        ids = self._recorder.insert_events(
            [self.events.mapper.to_stored_event(e) for e in batch.entries], ledger_batch=batch
        )
        if list(ids or []) != [e.seq for e in batch.entries]:  # pragma: no cover - guarded above
            raise StoreConflict("notification ids do not follow the ledger sequence")

    def last_nonce(self, signer: str) -> int:
        row = self._one("SELECT MAX(nonce) AS n FROM {s}.ledger_tx WHERE signer = %s", (signer,))
        return int(row["n"]) if row and row["n"] is not None else 0

    def tx_index_summary(self, upto: int | None = None) -> tuple[int, dict[str, int]]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT signer, COUNT(*) AS n, MAX(nonce) AS m FROM {s}.ledger_tx"
                    " WHERE seq <= %s GROUP BY signer"
                ),
                (NO_END if upto is None else upto,),
            )
            rows = curs.fetchall()
        return sum(int(r["n"]) for r in rows), {r["signer"]: int(r["m"]) for r in rows}

    def signer_activity(self, signer: str) -> tuple[int, int | None, int | None]:
        row = self._one(
            "SELECT COUNT(*) AS n, MIN(seq) AS lo, MAX(seq) AS hi FROM {s}.ledger_tx WHERE signer = %s",
            (signer,),
        )
        return int(row["n"]), row["lo"], row["hi"]

    def find_tx(self, signer: str, nonce: int) -> int | None:
        row = self._one("SELECT seq FROM {s}.ledger_tx WHERE signer = %s AND nonce = %s", (signer, nonce))
        return int(row["seq"]) if row else None

    def save_checkpoint(self, size: int, root: bytes, note: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self._recorder.q("INSERT INTO {s}.checkpoints VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"),
                (size, root, note),
            )

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q("SELECT size, root, note FROM {s}.checkpoints ORDER BY size DESC LIMIT 1")
            )
            rows = curs.fetchall()
            return self._with_cosignatures(curs, rows)[0] if rows else None

    def checkpoints(self, after_size: int = 0, limit: int = 1000) -> Sequence[StoredCheckpoint]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT size, root, note FROM {s}.checkpoints WHERE size > %s ORDER BY size LIMIT %s"
                ),
                (after_size, limit),
            )
            return self._with_cosignatures(curs, curs.fetchall())

    def _with_cosignatures(self, curs: Cursor[DictRow], rows: Sequence[DictRow]) -> list[StoredCheckpoint]:
        if not rows:
            return []
        curs.execute(
            self._recorder.q(
                "SELECT size, line FROM {s}.checkpoint_cosignatures WHERE size BETWEEN %s AND %s"
                " ORDER BY size, witness"
            ),
            (min(r["size"] for r in rows), max(r["size"] for r in rows)),
        )
        lines: dict[int, list[str]] = {}
        for r in curs.fetchall():
            lines.setdefault(int(r["size"]), []).append(r["line"])
        return [
            StoredCheckpoint(
                int(r["size"]), bytes(r["root"]), r["note"], tuple(lines.get(int(r["size"]), ()))
            )
            for r in rows
        ]

    def save_cosignature(self, size: int, witness: str, line: str) -> bool:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self._recorder.q(
                    "INSERT INTO {s}.checkpoint_cosignatures VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
                ),
                (size, witness, line),
            )
            return curs.rowcount == 1

    def cosigned_checkpoints(self, at_least: int, limit: int = 20) -> Sequence[StoredCheckpoint]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT size, root, note FROM {s}.checkpoints AS c WHERE (SELECT COUNT(*) FROM"
                    " {s}.checkpoint_cosignatures AS cs WHERE cs.size = c.size) >= %s"
                    " ORDER BY size DESC LIMIT %s"  # as in SQLite: newest first
                ),
                (at_least, limit),
            )
            return self._with_cosignatures(curs, curs.fetchall())

    def cosignatures(self, size: int) -> tuple[str, ...]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT line FROM {s}.checkpoint_cosignatures WHERE size = %s ORDER BY witness"
                ),
                (size,),
            )
            return tuple(r["line"] for r in curs.fetchall())

    def marker(self, name: str) -> int:
        row = self._one("SELECT value FROM {s}.markers WHERE name = %s", (name,))
        return int(row["value"]) if row else 0

    def set_marker(self, name: str, value: int) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self._recorder.q(
                    "INSERT INTO {s}.markers VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
                ),
                (name, value),
            )

    def record_violation(self, kind: str, seq: int, message: str, evidence: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self._recorder.q(
                    "INSERT INTO {s}.violations (recorded_at, kind, seq, message, evidence)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ),
                (utc_now_text(), kind, seq, message, evidence),
            )

    def violations(self) -> Sequence[RecordedViolation]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._recorder.q(
                    "SELECT recorded_at, kind, seq, message, evidence FROM {s}.violations ORDER BY id"
                )
            )
            return [
                RecordedViolation(r["recorded_at"], r["kind"], int(r["seq"]), r["message"], r["evidence"])
                for r in curs.fetchall()
            ]

    def wait_for_append(self, timeout: float) -> None:
        """LISTEN on the channel the library NOTIFYs after each insert; the timeout is the
        polling fallback if a notification is ever lost."""
        try:
            if self._listener is None or self._listener.closed:
                self._listener = connect(self._url, autocommit=True)
                self._listener.execute(SQL("LISTEN {c}").format(c=Identifier(self._recorder.channel_name)))
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error as exc:  # the server restarted, or ended this connection: poll meanwhile
            log.warning("cannot wait for notifications (%s); polling until the server answers again", exc)
            if self._listener is not None:
                with suppress(psycopg.Error):
                    self._listener.close()
            self._listener = None
            time.sleep(timeout)

    def close(self) -> None:
        try:
            if self._listener is not None:
                self._listener.close()
            self.datastore.close()
        finally:
            self._released()
