"""Settings, read once at the edge (CLI options and DFG_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: How long a writer waits for a database lock that another process holds (an
#: administrator's ``LOCK TABLE``, ``VACUUM FULL`` or ``CREATE INDEX`` on PostgreSQL, a
#: ``BEGIN IMMEDIATE`` in a SQLite shell) before its batch fails: the batch's submitters
#: are then told to resubmit (HTTP 503) rather than kept waiting for as long as the lock
#: is held. Backups (``pg_dump``) and readers take no lock that a writer waits for.
LOCK_TIMEOUT_S = 30
#: How long a read of the read models (a consent check, a subject's history) waits for a
#: lock an administrator holds on their tables on PostgreSQL (``VACUUM FULL``, ``ALTER
#: TABLE``, ``LOCK TABLE``). The API answers these on its event loop, so every other
#: request waits with one; after this it answers 503 ``storage_unavailable`` instead.
READ_LOCK_TIMEOUT_S = 2


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("dfg-data")
    database_url: str | None = None
    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 1000
    lock_timeout_s: int = LOCK_TIMEOUT_S

    @property
    def ledger_file(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def views_file(self) -> Path:
        return self.data_dir / "views.sqlite"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def engine(self) -> str:
        return "postgresql" if self.database_url else "sqlite"
