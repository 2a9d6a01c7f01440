"""``dfg demo analysis`` plays its whole story against a real coordinator, with three
real node servers it starts itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_ledger
from http_server import running_server

from gateways.cli.main import cli
from infra.settings import Settings


@pytest.mark.slow
def test_demo_analysis_against_a_server(tmp_path: Path) -> None:
    ledger = make_ledger(Settings(data_dir=tmp_path / "data"))
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url:
        result = CliRunner().invoke(cli, ["demo", "analysis", "--data", str(tmp_path / "data"), "--url", url])
    assert result.exit_code == 0, result.output
    assert "4 subjects have consented" in result.output
    assert "analysis APPROVED" in result.output and "status QUEUED" in result.output
    queues = re.findall(
        r"node:cc\d-\w+: #1 merge \(queued\), #2 compute \(queued\), #3 compute \(queued\)", result.output
    )
    assert len(queues) == 3


def test_demo_analysis_without_a_server_says_so() -> None:
    result = CliRunner().invoke(cli, ["demo", "analysis", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "no dfg server" in result.output
