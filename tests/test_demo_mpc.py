"""``dfg demo mpc`` runs the whole study on loopback and prints MPC results equal to
the plaintext answer."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from gateways.cli.main import cli

pytestmark = pytest.mark.slow

#: function, MPC result, plaintext result
ROW = re.compile(r"\s+(mean|variance|correlation|count)\([^)]*\)\s+(-?[\d.]+).*?\s{2,}(-?[\d.]+)")


def test_the_mpc_demo_prints_results_equal_to_plaintext() -> None:
    result = CliRunner().invoke(cli, ["demo", "mpc", "--patients", "400"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "results_approved" in result.output
    compared = 0
    for line in result.output.splitlines():
        found = ROW.match(line)
        if found:
            assert found.group(2) == found.group(3), line
            compared += 1
    assert compared == 5
    assert "no node saw a record" in result.output
