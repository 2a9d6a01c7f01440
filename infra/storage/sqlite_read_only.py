"""Opening a SQLite ledger so that nothing can be written to it: the audit tools on an
auditor's copy (read-only media, a directory of another user) or beside a live writer.

A database in WAL mode is read through its ``-shm`` index, which SQLite creates beside
the file when it is missing. Where it cannot (a directory this process may not write),
a plain read-only open fails; the file is then read as immutable, which SQLite reads
without the index and without locks, so it must be checked that nobody writes it
meanwhile, and that no committed transactions wait in a ``-wal`` file that an
immutable read would not see.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path


class ReadOnlyOpenError(sqlite3.DatabaseError):
    """The file cannot be read here as it stands, and why."""


class ChangedWhileRead(sqlite3.DatabaseError):
    """A file read as immutable changed: a writer started."""


@dataclass(frozen=True)
class FileStamp:
    """What a writer changes: the file's size, time and identity, and its log."""

    size: int
    mtime_ns: int
    inode: int
    wal: bool

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino, _wal(path).exists())


def read_only_uri(path: Path) -> tuple[str, FileStamp | None]:
    """The URI to open ``path`` with (a symbolic link is followed first, so that its
    log is the one looked at), and, when it is read as immutable, the file's stamp to
    check it against (``check_unchanged``)."""
    path = path.resolve()
    uri = f"{path.as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as probe:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return uri, None
    except sqlite3.OperationalError as exc:
        if (
            exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN
            or not path.exists()
            or os.access(path.parent, os.W_OK)
        ):
            raise
    wal = _wal(path)
    if wal.exists() and wal.stat().st_size > 0:
        raise ReadOnlyOpenError(
            f"{wal.name} holds transactions not yet copied into {path.name}, which SQLite reads only"
            f" with {path.name}-shm, and it cannot create that file in {path.parent}: copy the"
            f" directory where this user may write, or include {path.name}-shm in the copy"
        )
    return f"{uri}&immutable=1", FileStamp.of(path)


def check_unchanged(path: Path, stamp: FileStamp) -> None:
    if FileStamp.of(path.resolve()) != stamp:
        raise ChangedWhileRead(
            f"{path} changed while it was read as an immutable file (a writer started): run the"
            " audit again when no writer runs, or where this user may write the directory"
        )


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")
