"""Settings, read once at the edge (CLI options and DFG_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("dfg-data")
    database_url: str | None = None
    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 1000

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
