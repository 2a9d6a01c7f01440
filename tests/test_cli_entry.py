"""The ``dfg`` entry points must stay cheap to import: spawned workers run them again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# What multiprocessing's spawn method does in each child with the parent's main module:
# ``python -m gateways.cli`` is re-run by name, the ``dfg`` script by path, which
# imports ``gateways.cli.entry``. Neither may pull in the command line.
_CHILD_VIEWS = {
    "python -m gateways.cli": "import runpy; runpy.run_module('gateways.cli', run_name='__mp_main__')",
    "the dfg script": "from gateways.cli.entry import main",
}


@pytest.mark.parametrize("how", sorted(_CHILD_VIEWS))
def test_a_spawned_child_does_not_import_the_command_line(how: str) -> None:
    heavy = ("gateways.cli.main", "aiohttp", "click")
    probe = f"; import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD_VIEWS[how] + probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_python_dash_m_runs_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateways.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert "version" in out.stdout


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """``dfg consents history ... | head -1`` printed "error: Broken pipe": the reader
    having had enough is no error of the command's."""
    data = str(tmp_path / "data")
    dfg = [sys.executable, "-m", "gateways.cli"]
    subprocess.run([*dfg, "init", "--data", data], capture_output=True, check=True)
    populated = subprocess.run(
        [*dfg, "demo", "populate", "--data", data, "--entries", "300"],
        capture_output=True,
        text=True,
        check=True,
    )
    subject = populated.stdout.split("--subject ")[1].split()[0]
    reading = subprocess.Popen(
        [*dfg, "consents", "history", "--data", data, "--subject", subject, "--limit", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reading.stdout is not None and reading.stderr is not None
    reading.stdout.close()  # as head does once it has its line
    complaint = reading.stderr.read().decode()
    assert reading.wait(60) != 0 and complaint == ""


@pytest.mark.postgres
@pytest.mark.parametrize("set_by_operator", [None, "ledger-eu-1"])
def test_a_commands_postgresql_sessions_carry_its_name(
    pg_schema_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, set_by_operator: str | None
) -> None:
    """An operator looking for the relay's sessions (to see what holds a lock, or before
    pg_terminate_backend) had only their ports to go by: every session was nameless."""
    from click.testing import CliRunner

    from gateways.cli.main import cli
    from infra.storage.postgres import connect

    monkeypatch.delenv("PGAPPNAME", raising=False)
    if set_by_operator:
        monkeypatch.setenv("PGAPPNAME", set_by_operator)
    try:
        result = CliRunner().invoke(
            cli, ["projections", "status", "--data", str(tmp_path), "--database-url", pg_schema_url]
        )
        expected = set_by_operator or "dfg projections status"
        assert os.environ.get("PGAPPNAME") == expected, result.output
        with connect(pg_schema_url) as connection:  # libpq reads it, as every session of the command
            assert connection.execute("SHOW application_name").fetchone() == (expected,)
    finally:
        os.environ.pop("PGAPPNAME", None)
