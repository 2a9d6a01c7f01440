"""``dfg audit``: verify a whole ledger, export it, prove and check single entries."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateways.cli.options import (
    checkpoint_verifier_key,
    fail,
    ledger_options,
    require_ledger,
    witness_options,
)
from infra.bootstrap import open_store
from infra.bundle import BundleError, BundleReader, export_bundle
from infra.runtime import tune_for_throughput
from infra.settings import Settings
from ledger.audit import Auditor, AuditReport, Problem
from ledger.audit import audit as run_audit
from ledger.held_checkpoints import HeldCheckpointError, claimed_size, held_problem, open_held
from ledger.jws import RepeatedMember, unique_members
from ledger.merkle import root_at
from ledger.note import Verifier
from ledger.receipt import Receipt, ReceiptError, make_receipt, verify_receipt
from ledger.segmented_audit import MIN_SEGMENT, SegmentFailed, audit_in_segments
from ledger.store import LedgerStore, genesis_parameters
from ledger.verifier import ParallelVerifier
from ledger.witness import WitnessPolicy

#: More worker processes than a few per core only add memory (each holds its own copy
#: of the replay's state and imports) and contention; the bound keeps a typo harmless.
MAX_PROCESSES = max(8, 4 * (os.cpu_count() or 1))


@click.group("audit")
def audit() -> None:
    """Verify the ledger's whole history, export it, and prove entries."""


@audit.command("verify")
@ledger_options
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Verify an exported audit bundle instead of a database.",
)
@click.option(
    "--checkpoint-key",
    default=None,
    callback=checkpoint_verifier_key,
    help="Checkpoint verifier key you trust (refuse any other).",
)
@click.option("--chain", default=None, help="Ledger id you expect.")
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_PROCESSES),
    default=None,
    help=f"Signature worker processes [default: all cores; at most {MAX_PROCESSES}].",
)
@click.option(
    "--segments",
    type=click.IntRange(1, MAX_PROCESSES),
    default=None,
    help="Replay the log in this many parallel segments, one process each"
    f" [default: one per core, for ledgers of {2 * MIN_SEGMENT:,} entries or more;"
    f" at most {MAX_PROCESSES}: each process holds its own copy of the replay's state].",
)
@click.option("--progress/--no-progress", default=None, help="Show progress [default: on a terminal].")
@click.option(
    "--known-checkpoint",
    "known_checkpoints",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    multiple=True,
    help="A checkpoint you already hold (its signed note, a receipt, or GET /v1/checkpoint's"
    " answer): the ledger must extend it, or it forked. Repeat for each.",
)
@click.option(
    "--require-final",
    is_flag=True,
    help="Fail unless every entry is covered by a checkpoint signed by the ledger's key (and,"
    " with --witness, cosigned by the quorum) [default: report the uncovered entries].",
)
@witness_options
def verify(
    settings: Settings,
    bundle: Path | None,
    checkpoint_key: str | None,
    chain: str | None,
    workers: int | None,
    segments: int | None,
    progress: bool | None,
    known_checkpoints: tuple[Path, ...],
    require_final: bool,
    witnesses: WitnessPolicy | None,
) -> None:
    """Replay everything and check every signature, rule, root and checkpoint.

    Exits 0 only when everything checks; otherwise names the first bad entry. With a
    witness policy it also reports the newest checkpoint a quorum of witnesses cosigned
    (and fails if none is)."""
    held = _read_known_checkpoints(known_checkpoints)
    verifier = ParallelVerifier(workers)
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    try:
        if bundle is not None:
            report = _verify_bundle(bundle, verifier, checkpoint_key, chain, show, witnesses, held)
        else:
            store = _existing_store(settings, scan=True)
            try:
                size = store.head()[0]
                report = _with_progress(
                    show,
                    size,
                    lambda tick: audit_in_segments(
                        store,
                        partial(open_store, settings, scan=True, read_only=True),
                        setup=tune_for_throughput,
                        segments=segments or workers,
                        minimum=1 if segments else MIN_SEGMENT,
                        verifier=verifier,
                        expected_checkpoint_key=checkpoint_key,
                        expected_chain=chain,
                        progress=tick,
                        witnesses=witnesses,
                    ),
                )
                if report.ok:  # the stored nodes equal the replayed tree: its roots are theirs
                    for held_size in {claimed for claimed, _ in held.values()}:
                        if held_size <= report.entries:
                            report.roots[held_size] = root_at(held_size, store.read_nodes)
            finally:
                store.close()
    except (BundleError, SegmentFailed) as exc:
        fail(str(exc))
    finally:
        verifier.close()
    if report.ok:
        _check_known_checkpoints(report, held)
    if report.ok and require_final:
        _check_all_final(report, witnesses)
    elapsed = time.perf_counter() - started
    _print_report(report, elapsed, witnesses, pinned=checkpoint_key is not None, held=len(held))
    if not report.ok:
        first = report.first_problem
        raise SystemExit(2 if first is not None and first.newer_rules else 1)


def _read_known_checkpoints(paths: tuple[Path, ...]) -> dict[str, tuple[int, str]]:
    """file name -> (the size it states, its text); unreadable files are refused first."""
    held: dict[str, tuple[int, str]] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            held[str(path)] = (claimed_size(text), text)
        except (OSError, UnicodeDecodeError, HeldCheckpointError) as exc:
            fail(f"--known-checkpoint {path}: {exc}", code=2)
    return held


def _check_known_checkpoints(report: AuditReport, held: dict[str, tuple[int, str]]) -> None:
    if not held or report.checkpoint_key is None or report.origin is None:
        return
    verifier = Verifier.from_string(report.checkpoint_key)
    for source, (_, text) in held.items():
        try:
            checkpoint = open_held(text, source, verifier, report.origin)
        except HeldCheckpointError as exc:
            report.problems.append(Problem(0, f"{source} is {exc}"))
            return
        problem = held_problem(checkpoint, report.entries, report.roots.__getitem__)
        if problem is not None:
            report.problems.append(problem)
            report.entries = min(report.entries, max(problem.seq - 1, 0))
            return


def _check_all_final(report: AuditReport, witnesses: WitnessPolicy | None) -> None:
    covered = report.final_size if witnesses is not None else report.signed_size
    if covered < report.entries:
        what = "a checkpoint cosigned by the witnesses' quorum" if witnesses else "a signed checkpoint"
        report.problems.append(
            Problem(covered + 1, f"is not covered by {what} (--require-final), nor is any entry after it")
        )
        report.entries = covered  # "verified before the failure": those before the entry it names


def _verify_bundle(
    path: Path,
    verifier: ParallelVerifier,
    key: str | None,
    chain: str | None,
    show: bool,
    witnesses: WitnessPolicy | None,
    held: dict[str, tuple[int, str]],
) -> AuditReport:
    reader = BundleReader(path)
    try:
        tail = BundleReader(path)
        try:
            tail.read_tail()
        except BundleError:
            # The same error ends the audit's own reading unless an entry fails first: an
            # entry removed or added shifts every line after it, and the entry is the news.
            pass
        finally:
            tail.close()
        checkpoints = tail.checkpoints
        auditor = Auditor(
            load=reader.load_before,
            checkpoints=checkpoints,
            read_nodes=None,
            verifier=verifier,
            expected_checkpoint_key=key,
            expected_chain=chain,
            witnesses=witnesses,
            roots_at={claimed for claimed, _ in held.values()},
        )
        size = reader.size
        head = (size, reader.root)
        report = _with_progress(
            show, size, lambda tick: run_audit(reader.entries(), auditor, head=head, progress=tick)
        )
        if report.ok and reader.principals_problem:  # every entry verified: the line is wrong
            report.problems.append(Problem(0, reader.principals_problem))
        return report
    finally:
        reader.close()


def _with_progress(show: bool, total: int, work: Any) -> AuditReport:
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show, transient=True) as bar:
        task = bar.add_task("verify", total=total)
        result: AuditReport = work(lambda done: bar.update(task, completed=done))
    return result


def _print_report(
    report: AuditReport, elapsed: float, witnesses: WitnessPolicy | None, *, pinned: bool, held: int
) -> None:
    rate = report.entries / elapsed if elapsed > 0 else 0.0
    if not report.ok:
        problem = report.first_problem
        if problem is not None and problem.newer_rules:  # no verdict on the rest: not a failure
            click.secho(f"NOT VERIFIED: {problem}", fg="yellow", err=True)
            click.echo(
                f"{report.entries} entries verified before it; this dfg cannot judge the entries"
                " from it on (no evidence against the ledger): upgrade dfg and audit again",
                err=True,
            )
            return
        click.secho(f"FAILED: {problem}", fg="red", err=True)
        click.echo(f"{report.entries} entries verified before the failure", err=True)
        return
    click.echo(
        f"OK: {report.entries} entries and {report.checkpoints} checkpoints verified"
        f" in {elapsed:.1f}s ({rate:,.0f} entries/s)"
    )
    click.echo(
        f"chain {report.chain}, root {report.signed_root.hex()}"
        f" (the newest signed checkpoint, size {report.signed_size})"
    )
    click.echo(f"checkpoint key {report.checkpoint_key}")
    if not pinned:
        click.echo(
            "  (taken from the genesis entry, not pinned with --checkpoint-key: this shows that the"
            " data is consistent with itself, not that it is the ledger you expect)"
        )
    click.echo(f"genesis signed by {report.operator_kid}")
    unsigned = report.entries - report.signed_size
    if unsigned:
        click.echo(
            f"{'the entry' if unsigned == 1 else f'the {unsigned} entries'} after size"
            f" {report.signed_size} {'carries' if unsigned == 1 else 'carry'} no signature of the"
            f" ledger's key yet (the root of all {report.entries}, unsigned: {report.root.hex()})"
        )
    if witnesses is not None:
        click.echo(
            f"witnessed: {report.final_checkpoints} of {report.checkpoints} checkpoints cosigned by a"
            f" quorum ({witnesses.quorum} of the {len(witnesses.witnesses)} witnesses or more);"
            f" newest final size {report.final_size}"
            f" ({report.entries - report.final_size} newer entries not yet witnessed: only the"
            " ledger's own signature vouches for them)"
        )
    if held:
        click.echo(f"the ledger extends the {held} checkpoint(s) you hold (--known-checkpoint)")
    if report.grown_to:
        click.echo(
            f"the ledger grew to {report.grown_to} entries while it was read: this audit covers it as it"
            f" stood at {report.entries}; the next one checks the rest"
        )


@audit.command("export")
@ledger_options
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write (JSON Lines; see docs/ledger-format.md), or - for standard output.",
)
def export(settings: Settings, out_path: Path) -> None:
    """Write a self-contained audit bundle: entries, checkpoints and public keys."""
    store = _existing_store(settings)
    if str(out_path) == "-":  # to a pipe (compress, copy to the auditor): the summary on stderr
        try:
            size = export_bundle(store, sys.stdout.buffer)
        except BrokenPipeError:  # the reader stopped early (| head): no traceback at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            fail("standard output was closed before the whole bundle was written")
        finally:
            store.close()
        click.echo(f"exported {size} entries to standard output", err=True)
        return
    if out_path.exists():
        fail(f"{out_path} exists; refusing to overwrite it")
    if not out_path.parent.is_dir():
        fail(f"there is no folder {out_path.parent} to write {out_path.name} in")
    # a name of its own, beside the target (a rename within one file system is atomic)
    fd, name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        with tmp.open("wb") as handle:
            size = export_bundle(store, handle)
        tmp.rename(out_path)
    finally:
        tmp.unlink(missing_ok=True)
        store.close()
    click.echo(f"exported {size} entries to {out_path}")


@audit.command("prove")
@ledger_options
@click.option("--seq", type=click.IntRange(1), required=True, help="Sequence number of the entry.")
def prove(settings: Settings, seq: int) -> None:
    """Print an entry's receipt: inclusion proof against the latest signed checkpoint."""
    store = _existing_store(settings)
    try:
        checkpoint = store.latest_checkpoint()
        if checkpoint is None:
            fail("the ledger has no checkpoint yet")
        assert checkpoint is not None
        if seq > checkpoint.size:
            size = store.head()[0]
            if seq > size:
                fail(f"there is no entry {seq}: the ledger has {size} entries")
            fail(f"entry {seq} is not covered by the latest checkpoint (size {checkpoint.size}) yet")
        (stored,) = store.read_entries(seq, 1)
        ledger = genesis_parameters(store)
        assert ledger is not None  # a checkpoint exists
        try:
            receipt = make_receipt(seq, stored.canonical, checkpoint, store.read_nodes)
            # A receipt built from damaged stored data would fail its reader's check:
            # checked here first, so that the damage is named where it is.
            verify_receipt(receipt, ledger["checkpoint_key"], origin=ledger["origin"])
        except (LookupError, ReceiptError) as exc:  # e.g. the stored tree lacks or alters a node
            fail(f"cannot prove entry {seq}: {exc}; run `dfg audit verify` on this ledger")
        click.echo(json.dumps(receipt.to_json(), indent=2))
    finally:
        store.close()


@audit.command("check-receipt")
@click.argument("receipt_file", type=click.File("r"))
@click.option(
    "--checkpoint-key",
    required=True,
    callback=checkpoint_verifier_key,
    help="The ledger's checkpoint verifier key.",
)
@witness_options
def check_receipt(receipt_file: Any, checkpoint_key: str, witnesses: WitnessPolicy | None) -> None:
    """Check a receipt offline (no server, no database): exit 0 when it proves its entry
    (and, with a witness policy, when enough witnesses cosigned its checkpoint)."""
    try:
        document = json.load(receipt_file, object_pairs_hook=unique_members)
    except RepeatedMember as exc:  # readers disagree on which one counts: no single meaning
        fail(f"receipt does not verify: not a receipt: it names the member {exc.name!r} twice")
    except ValueError as exc:
        fail(f"receipt does not verify: not a receipt: the file is not JSON ({exc})")
    except RecursionError:
        fail("receipt does not verify: not a receipt: its JSON is nested too deeply")
    try:
        receipt = Receipt.from_json(document)
        seq = verify_receipt(receipt, checkpoint_key, witnesses=witnesses)
    except ReceiptError as exc:
        fail(f"receipt does not verify: {exc}")
    click.echo(f"OK: entry {seq} is in the ledger whose signed checkpoint has {receipt.tree_size} entries")
    if witnesses is not None:
        cosigners = sorted(witnesses.cosigners(receipt.checkpoint))
        click.echo(
            f"witnessed by {', '.join(cosigners)} ({len(cosigners)} of the {len(witnesses.witnesses)}"
            f" witnesses; the quorum is {witnesses.quorum})"
        )


def _existing_store(settings: Settings, *, scan: bool = False) -> LedgerStore:
    """The ledger, opened for reading: an auditor's database role may be read-only."""
    require_ledger(settings)
    return open_store(settings, scan=scan, read_only=True)
