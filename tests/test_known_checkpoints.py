"""What an auditor holds from before: `dfg audit verify --known-checkpoint` finds a
rewritten history, and `--require-final` refuses entries nothing final covers.

A rewritten history verifies on its own (the operator re-signs every checkpoint of
it with the ledger's key); only a checkpoint signed before the rewrite shows the fork.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import Ledger, make_ledger, new_witness

from gateways.cli.main import cli
from infra.bootstrap import checkpoint_key, open_sequencer
from infra.settings import Settings
from ledger.witness import cosign


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _write_newest_note(led: Ledger, path: Path) -> int:
    led.sequencer.checkpoint_now()
    checkpoint = led.sequencer.store.latest_checkpoint()
    assert checkpoint is not None
    path.write_text(checkpoint.note)
    return checkpoint.size


def _reopen(led: Ledger, data: Path) -> Ledger:
    settings = Settings(data_dir=data)
    return Ledger(settings, open_sequencer(settings), copy.deepcopy(led.operator))


def _both_ways(data: Path, tmp_path: Path, *options: str) -> list[Result]:
    """``verify`` of the database, and of its exported bundle."""
    bundle = tmp_path / f"{data.name}.bundle"
    assert _cli("audit", "export", "--data", str(data), "--out", str(bundle)).exit_code == 0
    return [
        _cli("audit", "verify", "--data", str(data), "--no-progress", *options),
        _cli("audit", "verify", "--bundle", str(bundle), "--no-progress", *options),
    ]


def test_a_ledger_that_extends_the_checkpoints_you_hold_verifies(ledger: Ledger, tmp_path: Path) -> None:
    ledger.admit("sp:one", "service_provider")
    held = tmp_path / "held.note"
    _write_newest_note(ledger, held)
    ledger.admit("sp:two", "service_provider")
    receipt = _cli("audit", "prove", "--data", str(ledger.settings.data_dir), "--seq", "2")
    (tmp_path / "receipt.json").write_text(receipt.output)
    ledger.sequencer.checkpoint_now()
    ledger.sequencer.store.close()
    for result in _both_ways(
        ledger.settings.data_dir,
        tmp_path,
        "--known-checkpoint",
        str(held),
        "--known-checkpoint",
        str(tmp_path / "receipt.json"),  # a receipt's checkpoint is one too
    ):
        assert result.exit_code == 0, result.output
        assert "the ledger extends the 2 checkpoint(s) you hold" in result.output
    ledger.sequencer = open_sequencer(ledger.settings)


def test_a_history_rewritten_after_a_checkpoint_you_hold_is_named_a_fork(
    ledger: Ledger, tmp_path: Path
) -> None:
    ledger.admit("sp:before", "service_provider")
    ledger.sequencer.checkpoint_now()
    ledger.sequencer.store.close()
    rewritten = tmp_path / "rewritten"
    shutil.copytree(ledger.settings.data_dir, rewritten)  # the operator keeps a copy...

    original = _reopen(ledger, ledger.settings.data_dir)
    original.admit("sp:seen-by-the-auditor", "service_provider")
    held = tmp_path / "held.note"
    size = _write_newest_note(original, held)
    original.sequencer.store.close()

    fork = _reopen(ledger, rewritten)  # ...and appends another history to it, re-signed
    fork.admit("sp:instead", "service_provider")
    fork.admit("sp:more", "service_provider")
    assert _write_newest_note(fork, tmp_path / "fork.note") > size
    fork.sequencer.store.close()

    assert _cli("audit", "verify", "--data", str(rewritten), "--no-progress").exit_code == 0  # on its own
    for result in _both_ways(rewritten, tmp_path, "--known-checkpoint", str(held)):
        assert result.exit_code == 1, result.output
        assert f"entry {size}: the ledger forked: its tree at this size has root" in result.output
        assert f"{held} holds a checkpoint signed by the same key" in result.output
    ledger.sequencer = open_sequencer(ledger.settings)


def test_a_copy_that_ends_before_a_checkpoint_you_hold_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    ledger.sequencer.checkpoint_now()
    ledger.sequencer.store.close()
    older = tmp_path / "older"
    shutil.copytree(ledger.settings.data_dir, older)
    newer = _reopen(ledger, ledger.settings.data_dir)
    newer.admit("sp:later", "service_provider")
    held = tmp_path / "held.note"
    size = _write_newest_note(newer, held)
    newer.sequencer.store.close()
    for result in _both_ways(older, tmp_path, "--known-checkpoint", str(held)):
        assert result.exit_code == 1, result.output
        assert f"entry {size}: is missing: {held} holds the ledger's checkpoint of size {size}" in (
            result.output
        )
    ledger.sequencer = open_sequencer(ledger.settings)


def test_another_ledgers_checkpoint_or_a_file_that_is_none_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    other = make_ledger(Settings(data_dir=tmp_path / "other"))
    foreign = tmp_path / "foreign.note"
    _write_newest_note(other, foreign)
    other.sequencer.store.close()
    ledger.sequencer.checkpoint_now()
    data = str(ledger.settings.data_dir)
    result = _cli("audit", "verify", "--data", data, "--no-progress", "--known-checkpoint", str(foreign))
    assert result.exit_code == 1 and f"{foreign} is not a checkpoint of this ledger" in result.output

    for text in ("garbage\n", '{"seq": 1}', "\ufeff"):
        bad = tmp_path / "bad.note"
        bad.write_text(text)
        result = _cli("audit", "verify", "--data", data, "--known-checkpoint", str(bad))
        assert result.exit_code == 2 and f"--known-checkpoint {bad}:" in result.output, result.output


def test_require_final_refuses_entries_no_signed_checkpoint_covers(ledger: Ledger, tmp_path: Path) -> None:
    ledger.sequencer.checkpoint_now()
    covered = ledger.head()[0]
    ledger.admit("sp:not-yet-covered", "service_provider")
    data = str(ledger.settings.data_dir)
    relaxed = _cli("audit", "verify", "--data", data, "--no-progress")
    assert relaxed.exit_code == 0, relaxed.output
    assert f"the entry after size {covered} carries no signature of the ledger's key yet" in relaxed.output
    strict = _cli("audit", "verify", "--data", data, "--no-progress", "--require-final")
    assert strict.exit_code == 1, strict.output
    assert f"entry {covered + 1}: is not covered by a signed checkpoint (--require-final)" in strict.output
    ledger.sequencer.checkpoint_now()
    assert _cli("audit", "verify", "--data", data, "--no-progress", "--require-final").exit_code == 0


def test_require_final_with_witnesses_refuses_the_entries_after_the_newest_cosigned_checkpoint(
    ledger: Ledger,
) -> None:
    """The policy used to fail the audit only when no checkpoint at all was final: a
    tail rewritten after the genesis checkpoint, which its witnesses cosigned, passed."""
    key, verifier = new_witness("node:alpha")
    store = ledger.sequencer.store
    first = store.latest_checkpoint()
    assert first is not None
    store.save_cosignature(first.size, "node:alpha", cosign(first.note, "node:alpha", key, 1_700_000_000))
    ledger.admit("sp:after", "service_provider")
    ledger.sequencer.checkpoint_now()
    policy = ["--witness", verifier.to_string(), "--witness-quorum", "1"]
    data = str(ledger.settings.data_dir)
    relaxed = _cli("audit", "verify", "--data", data, "--no-progress", *policy)
    assert relaxed.exit_code == 0, relaxed.output
    assert "only the ledger's own signature vouches for them" in relaxed.output
    # of how many, and that the quorum is at least: it read "1 checkpoints cosigned by 1 of 1"
    assert "witnessed: 1 of 2 checkpoints cosigned by a quorum (1 of the 1 witnesses or more)" in (
        relaxed.output
    )
    strict = _cli("audit", "verify", "--data", data, "--no-progress", "--require-final", *policy)
    assert strict.exit_code == 1, strict.output
    assert (
        f"entry {first.size + 1}: is not covered by a checkpoint cosigned by the witnesses' quorum"
        in strict.output
    )


def test_check_receipt_names_its_cosigners_and_the_quorum(ledger: Ledger, tmp_path: Path) -> None:
    """Three cosigners and a quorum of 2 read "(3 of 2 required)"."""
    store = ledger.sequencer.store
    newest = store.latest_checkpoint()
    assert newest is not None
    policy = ["--witness-quorum", "2"]
    for name in ("node:a", "node:b", "node:c"):
        key, verifier = new_witness(name)
        policy += ["--witness", verifier.to_string()]
        store.save_cosignature(newest.size, name, cosign(newest.note, name, key, 1_700_000_000))
    receipt = tmp_path / "receipt.json"
    receipt.write_text(_cli("audit", "prove", "--data", str(ledger.settings.data_dir), "--seq", "1").output)
    signer = checkpoint_key(ledger.settings)
    assert signer is not None
    key = signer.verifier().to_string()
    result = _cli("audit", "check-receipt", str(receipt), "--checkpoint-key", key, *policy)
    assert result.exit_code == 0, result.output
    assert "witnessed by node:a, node:b, node:c (3 of the 3 witnesses; the quorum is 2)" in result.output


def test_a_receipt_whose_cosignature_does_not_verify_is_not_told_to_wait(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A trusted witness's line that is there but does not verify (damaged, forged) was
    reported as "not final yet: fetch the receipt again later", which will not mend it."""
    store = ledger.sequencer.store
    newest = store.latest_checkpoint()
    assert newest is not None
    key, verifier = new_witness("node:a")
    line = cosign(newest.note, "node:a", key, 1_700_000_000)
    damaged = line[:-6] + ("B" if line[-6] == "A" else "A") + line[-5:]  # a byte of the signature
    store.save_cosignature(newest.size, "node:a", damaged)
    receipt = tmp_path / "receipt.json"
    receipt.write_text(_cli("audit", "prove", "--data", str(ledger.settings.data_dir), "--seq", "1").output)
    signer = checkpoint_key(ledger.settings)
    assert signer is not None
    policy = ["--witness", verifier.to_string()]
    result = _cli(
        "audit", "check-receipt", str(receipt), "--checkpoint-key", signer.verifier().to_string(), *policy
    )
    assert result.exit_code == 1, result.output
    assert "(a cosignature that does not verify, by node:a)" in result.output


@pytest.mark.parametrize("pinned", [False, True])
def test_the_report_says_whether_the_checkpoint_key_was_pinned(ledger: Ledger, pinned: bool) -> None:
    ledger.sequencer.checkpoint_now()
    data = str(ledger.settings.data_dir)
    key = _cli("audit", "verify", "--data", data, "--no-progress").output.split("checkpoint key ", 1)[1]
    key = key.split()[0]
    result = _cli("audit", "verify", "--data", data, "--no-progress", *(["--checkpoint-key", key] * pinned))
    assert result.exit_code == 0, result.output
    assert ("not pinned with --checkpoint-key" in result.output) is not pinned


def test_a_cosignature_kept_without_its_newline_is_exported_with_it(ledger: Ledger, tmp_path: Path) -> None:
    """A relay of before keeping lines with their newline stored a witness's line as sent;
    the database verified, and its bundle, which refuses such a line, did not."""
    newest = ledger.sequencer.store.latest_checkpoint()
    assert newest is not None
    key, verifier = new_witness("node:a")
    line = cosign(newest.note, "node:a", key, 1_700_000_000)
    ledger.sequencer.store.save_cosignature(newest.size, "node:a", line.rstrip("\n"))
    for result in _both_ways(ledger.settings.data_dir, tmp_path, "--witness", verifier.to_string()):
        assert result.exit_code == 0, result.output
        assert "witnessed: 1 of 1 checkpoints cosigned by a quorum" in result.output
