"""The basic life of a consent on both engines, and a clean audit afterwards."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TERMS, Ledger

from gateways.cli.main import cli
from ledger.audit import audit_store
from ledger.errors import Rejected


def test_level1_consent_life_and_audit(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    cid = str(uuid.uuid4())
    body = {
        "consent_id": cid,
        "controller": "sp:app",
        "subject": "p-1",
        "level": 1,
        "method": "app",
        "terms": TERMS,
    }
    use = {
        "consent_id": cid,
        "purpose": "dpv:ServiceProvision",
        "data_categories": ["dpv-pd:HeartRate"],
    }
    given, used, withdrawn = any_ledger.accept(
        any_ledger.sign(app, "consent.give", body),
        any_ledger.sign(app, "consent.utilize", use),
        any_ledger.sign(
            app, "consent.withdraw", {"consent_id": cid, "controller": "sp:app", "subject": "p-1"}
        ),
    )
    assert (given.seq, used.seq, withdrawn.seq) == (3, 4, 5)
    (refused,) = any_ledger.submit(any_ledger.sign(app, "consent.utilize", use))
    assert isinstance(refused, Rejected) and refused.code == "consent_withdrawn"
    assert any_ledger.head()[0] == 5
    any_ledger.sequencer.checkpoint_now()
    store = any_ledger.sequencer.store
    report = audit_store(store)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (5, 2)


def test_the_demo_ends_with_a_question_the_ledger_answers_yes(tmp_path: Path) -> None:
    """A newcomer's tour needs a subject to ask about; pseudonyms are not guessable."""
    data = ["--data", str(tmp_path / "demo")]
    assert CliRunner().invoke(cli, ["init", *data]).exit_code == 0
    populated = CliRunner().invoke(cli, ["demo", "populate", *data, "--entries", "500"])
    assert populated.exit_code == 0, populated.output
    line = populated.output.strip().splitlines()[-1]
    prefix = "a consent to ask about: dfg consents check "
    assert line.startswith(prefix), populated.output
    # pasted as printed, it finds the ledger it was printed for
    answer = CliRunner().invoke(cli, ["consents", "check", *shlex.split(line.removeprefix(prefix))])
    assert answer.exit_code == 0 and json.loads(answer.output)["granted"] is True, answer.output


def test_ctrl_c_during_populate_says_what_the_ledger_keeps_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """click printed "Aborted!" and exit status 1, as for a failure, and said nothing of
    the entries already appended."""
    from ledger.sequencer import Sequencer

    data = ["--data", str(tmp_path / "demo")]
    assert CliRunner().invoke(cli, ["init", *data]).exit_code == 0
    real, calls = Sequencer.submit, []

    def submit(self: Sequencer, tokens: list[str]) -> list[object]:
        calls.append(len(tokens))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, tokens)

    monkeypatch.setattr(Sequencer, "submit", submit)
    result = CliRunner().invoke(cli, ["demo", "populate", *data, "--entries", "500", "--batch", "100"])
    assert result.exit_code == 130, result.output
    assert "interrupted: the ledger keeps the 200 entries appended so far" in result.output
    assert "Aborted" not in result.output
    monkeypatch.setattr(Sequencer, "submit", real)
    assert CliRunner().invoke(cli, ["audit", "verify", *data]).exit_code == 0


def test_ctrl_c_ends_any_command_with_exit_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateways.cli.ledger_commands as commands

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "create_ledger", interrupted)
    result = CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "d")])
    assert (result.exit_code, result.output.strip()) == (130, "error: interrupted")


def test_ctrl_c_while_the_program_starts_is_no_traceback(tmp_path: Path) -> None:
    """Importing the commands takes a moment; a Ctrl-C then printed an import's traceback."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "gateways.cli", "rules", "show", "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's & ignores it
    )
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert (process.returncode, err.decode().strip()) == (130, "error: interrupted")
