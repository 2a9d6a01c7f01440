"""An auditor given read access only to a ledger's database (a role that may SELECT,
as a regulator or an operator's monitoring would get) runs every audit tool."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CHAIN, OPERATOR, PG_URL, Ledger, make_ledger

from gateways.cli.main import cli
from infra.bootstrap import open_sequencer, open_store, root_signer
from infra.settings import Settings
from infra.storage.postgres import database_url_schema
from infra.storage.sqlite_read_only import ChangedWhileRead, read_only_uri


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
    ):
        result = CliRunner().invoke(cli, [*command, *where])
        assert result.exit_code == 0, (command, result.output)
    _node_status_refuses_a_ledger(where)
    assert settings.ledger_file.read_bytes() == before


def _node_status_refuses_a_ledger(where: list[str]) -> None:
    """Read (read-only) far enough to tell a ledger's store from a replica's: reported
    as a replica, it looked like a healthy node that is never behind."""
    result = CliRunner().invoke(cli, ["node", "status", *where])
    assert result.exit_code == 1 and "is a ledger's own store, not a node's replica" in result.output, (
        result.output
    )


@contextmanager
def _read_only_view(source: Path, at: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``at`` (a bind mount): what an auditor meets on
    read-only media or in another user's directory. The tests run as root, who may
    write anywhere else."""
    at.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "--bind", source, at], capture_output=True)
    if not mounted or mounted.returncode != 0:
        reason = (
            "these tests need a read-only bind mount (root and mount(8)): running as root, the"
            " tests could write anywhere else, so nothing else shows what an auditor meets"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)  # CI runs as root on the project's machine: absence is a failure
        pytest.skip(reason)  # a developer's unprivileged shell: say why, run the rest
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", at], check=True, capture_output=True)
        yield at
    finally:
        subprocess.run(["umount", "--lazy", at], capture_output=True)  # even with a file left open


def test_a_closed_ledger_on_read_only_media_is_read_as_immutable(tmp_path: Path) -> None:
    """SQLite cannot create a write-ahead log's index there, and a plain read-only open
    failed ("unable to open database file"); with no log beside it, no writer has it."""
    settings = _small_ledger(tmp_path)
    with _read_only_view(settings.data_dir, tmp_path / "media") as media:
        uri, stamp = read_only_uri(media / "ledger.sqlite")
        assert uri.endswith("?mode=ro&immutable=1") and stamp is not None
        for command in (
            ["audit", "verify", "--no-progress", "--segments", "2"],
            ["audit", "export", "--out", str(tmp_path / "bundle.jsonl")],
            ["audit", "prove", "--seq", "2"],
        ):
            result = CliRunner().invoke(cli, [*command, "--data", str(media)])
            assert result.exit_code == 0, (command, result.output)
        _node_status_refuses_a_ledger(["--data", str(media)])


def test_a_writer_starting_during_an_immutable_read_is_named(tmp_path: Path) -> None:
    settings = _small_ledger(tmp_path)
    with _read_only_view(settings.data_dir, tmp_path / "media") as media:
        store = open_store(Settings(data_dir=media), read_only=True)
        try:
            assert len(store.read_entries(1, 10)) == 2
            led = Ledger(settings, open_sequencer(settings), root_signer(settings, CHAIN, OPERATOR))
            led.operator.nonce = 2
            led.admit("sp:other", "service_provider")
            led.sequencer.store.close()
            with pytest.raises(ChangedWhileRead, match="changed while it was read as an immutable file"):
                store.read_entries(1, 10)
        finally:
            store.close()


def test_a_copy_whose_log_lacks_its_index_is_named(tmp_path: Path) -> None:
    """A backup of a live ledger without its -shm file, on read-only media: read as
    immutable, its log's transactions would silently be left out."""
    settings = Settings(data_dir=tmp_path / "data")
    led = make_ledger(settings)
    led.admit("sp:app", "service_provider")
    led.sequencer.checkpoint_now()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        shutil.copy(settings.data_dir / name, copy / name)
    led.sequencer.store.close()
    assert (copy / "ledger.sqlite-wal").stat().st_size > 0
    with _read_only_view(copy, tmp_path / "media") as media:
        result = CliRunner().invoke(cli, ["audit", "verify", "--no-progress", "--data", str(media)])
    assert result.exit_code == 1, result.output
    assert "ledger.sqlite-wal holds transactions not yet copied into ledger.sqlite" in result.output


def test_a_ledger_file_reached_through_a_symbolic_link_is_read_with_its_own_log(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    led = make_ledger(settings)
    led.admit("sp:app", "service_provider")
    led.sequencer.checkpoint_now()
    try:
        link = tmp_path / "link"
        link.mkdir()
        (link / "ledger.sqlite").symlink_to(settings.ledger_file)
        uri, stamp = read_only_uri(link / "ledger.sqlite")
        assert uri == f"{settings.ledger_file.resolve().as_uri()}?mode=ro" and stamp is None
        store = open_store(Settings(data_dir=link), read_only=True)
        try:
            assert store.head() == led.head()
        finally:
            store.close()
    finally:
        led.sequencer.store.close()


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
