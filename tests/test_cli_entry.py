"""The ``dfg`` entry points must stay cheap to import: spawned workers run them again."""

from __future__ import annotations

import subprocess
import sys

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
