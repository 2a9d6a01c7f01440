"""An auditor given read access only to a ledger's database (a role that may SELECT,
as a regulator or an operator's monitoring would get) runs every audit tool."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PG_URL, make_ledger

from gateways.cli.main import cli
from infra.settings import Settings
from infra.storage.postgres import database_url_schema


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
