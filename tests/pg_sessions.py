"""PostgreSQL sessions as the lock tests see them: who holds an advisory lock, and
ending one as a server restart would (``pg_terminate_backend``)."""

from __future__ import annotations

import time

import psycopg
from conftest import PG_URL


def lock_sessions(key: int) -> list[int]:
    """The sessions holding the advisory lock ``key`` (``infra.writer_lock._lock_key``)."""
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        ).fetchall()
    return [int(row[0]) for row in rows]


def end_session(pid: int) -> None:
    """``pg_terminate_backend``, waiting until the session has gone."""
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(500):
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                return
            time.sleep(0.02)
    raise AssertionError(f"session {pid} did not end")
