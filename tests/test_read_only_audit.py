"""An auditor given read access only to a ledger's database (a role that may SELECT,
as a regulator or an operator's monitoring would get) runs every audit tool."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PG_URL, make_ledger

import infra.storage.sqlite as sqlite_storage
from gateways.cli.main import cli
from infra.bootstrap import open_store
from infra.settings import Settings
from infra.storage.postgres import database_url_schema
from infra.storage.sqlite import read_only_uri


@pytest.mark.postgres
def test_an_auditor_with_a_read_only_role_runs_every_audit_tool(pg_schema_url: str, tmp_path: Path) -> None:
    """Opening a store used to create the ledger's schema and tables "if not exists",
    which PostgreSQL refuses to a role without CREATE: the audit tools failed with
    "permission denied" before reading anything."""
    import psycopg

    led = make_ledger(Settings(data_dir=tmp_path / "data", database_url=pg_schema_url))
    led.admit("sp:app", "service_provider")
    led.sequencer.checkpoint_now()
    led.sequencer.store.close()
    schema = database_url_schema(pg_schema_url)
    role = f"dfg_auditor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    try:
        url = pg_schema_url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
        where = ["--data", str(tmp_path / "auditor"), "--database-url", url]
        for command in (
            ["audit", "verify", "--no-progress", "--segments", "2"],
            ["audit", "export", "--out", str(tmp_path / "bundle.jsonl")],
            ["audit", "prove", "--seq", "2"],
        ):
            result = CliRunner().invoke(cli, [*command, *where])
            assert result.exit_code == 0, (command, result.output)
        verified = CliRunner().invoke(
            cli, ["audit", "verify", "--no-progress", "--bundle", str(tmp_path / "bundle.jsonl")]
        )
        assert verified.exit_code == 0, verified.output
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def _small_ledger(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    led = make_ledger(settings)
    led.admit("sp:app", "service_provider")
    led.sequencer.checkpoint_now()
    led.sequencer.store.close()
    return settings


def test_the_audit_tools_open_a_sqlite_ledger_so_that_nothing_can_be_written(tmp_path: Path) -> None:
    """An auditor's copy, or a live ledger read next to its sequencer: SQLite itself
    refuses any write through the store the audit tools open."""
    settings = _small_ledger(tmp_path)
    before = settings.ledger_file.read_bytes()
    store = open_store(settings, read_only=True)
    try:
        assert store.head()[0] == 2
        with pytest.raises(Exception, match="readonly database"):
            store.set_marker("anything", 1)
    finally:
        store.close()
    where = ["--data", str(settings.data_dir)]
    for command in (
        ["audit", "verify", "--no-progress", "--segments", "2"],
        ["audit", "export", "--out", str(tmp_path / "bundle.jsonl")],
        ["audit", "prove", "--seq", "2"],
        ["node", "status"],
    ):
        result = CliRunner().invoke(cli, [*command, *where])
        assert result.exit_code == 0, (command, result.output)
    assert settings.ledger_file.read_bytes() == before


def test_a_ledger_in_a_directory_the_auditor_cannot_write_is_read_as_immutable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-only media, or a directory of another user: SQLite cannot create the index
    of a write-ahead log there, and a plain read-only open fails ("unable to open
    database file"). With no log beside it, no writer has the file open."""
    settings = _small_ledger(tmp_path)
    assert "immutable" not in read_only_uri(settings.ledger_file)
    real_access = os.access

    def access(path: Any, mode: int) -> bool:
        return (
            mode != os.W_OK and real_access(path, mode)
            if Path(path) == settings.data_dir
            else real_access(path, mode)
        )

    monkeypatch.setattr(sqlite_storage.os, "access", access)
    assert read_only_uri(settings.ledger_file).endswith("?mode=ro&immutable=1")
    store = open_store(settings, read_only=True)
    try:
        assert store.head()[0] == 2 and len(store.read_entries(1, 10)) == 2
    finally:
        store.close()


def test_a_sqlite_file_without_a_ledger_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "ledger.sqlite") as other:
        other.execute("CREATE TABLE notes (text TEXT)")
    result = CliRunner().invoke(cli, ["audit", "verify", "--no-progress", "--data", str(data)])
    assert result.exit_code == 1 and "holds no ledger (its tables are missing)" in result.output, (
        result.output
    )
    with sqlite3.connect(data / "ledger.sqlite") as other:  # and nothing was created in it
        assert [r[0] for r in other.execute("SELECT name FROM sqlite_master")] == ["notes"]
