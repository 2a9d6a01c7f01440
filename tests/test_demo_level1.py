"""``dfg demo level1`` plays its whole story against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_ledger
from http_server import running_server

from gateways.cli.main import cli
from infra.settings import Settings


@pytest.mark.slow
def test_demo_level1_against_a_server(tmp_path: Path) -> None:
    ledger = make_ledger(Settings(data_dir=tmp_path / "data"))
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url:
        result = CliRunner().invoke(cli, ["demo", "level1", "--data", str(tmp_path / "data"), "--url", url])
    assert result.exit_code == 0, result.output
    assert "refused: 422 consent_withdrawn" in result.output
    assert "check: granted=False, reason=withdrawn" in result.output
    assert "transaction signature ✓" in result.output


def test_demo_level1_without_a_server_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "level1", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "no dfg server" in result.output
