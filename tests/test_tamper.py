"""Tamper detection through the real CLI.

One demo ledger is built per module (``dfg init`` + ``dfg demo populate --entries 300``:
301 entries, checkpoints at sizes 1 and 301). Each case works on its own copy of the
data directory, changes ``ledger.sqlite`` behind the ledger's back with ``sqlite3``, and
runs ``dfg audit verify``: it must exit non-zero and name the tampered entry. The same for
an exported audit bundle, and for receipts from ``dfg audit prove`` checked offline by
``dfg audit check-receipt``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gateways.cli.main import cli
from infra.bootstrap import open_store, open_views
from infra.demo import PURPOSES
from infra.settings import Settings
from ledger.merkle import nodes_for_consistency, nodes_for_inclusion
from projections.keys import PrincipalsView, snapshot

ROOT = Path(__file__).resolve().parent.parent
POPULATED = 300
SIZE = POPULATED + 1  # plus the genesis entry
MIDDLE = 150
_FAILED = re.compile(r"FAILED: entry (\d+): (.*)")


def dfg(*args: str) -> Result:
    """Run the real ``dfg`` command in-process; output has stdout and stderr."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def failed_entry(result: Result) -> int:
    """The entry ``dfg audit verify`` names as the first bad one (it must fail)."""
    assert result.exit_code != 0, f"tampering went unnoticed:\n{result.output}"
    match = _FAILED.search(result.output)
    assert match, f"the failure names no entry:\n{result.output}"
    return int(match.group(1))


def assert_names(result: Result, *expected: int) -> None:
    """``dfg audit verify`` failed and named one of the ``expected`` entries."""
    named = failed_entry(result)
    assert named in expected, f"expected entry {' or '.join(map(str, expected))}, got:\n{result.output}"


@dataclass(frozen=True)
class Base:
    data: Path
    bundle: Path
    checkpoint_key: str


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("tamper")
    data = root / "data"
    exe = Path(sys.executable).parent / "dfg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from gateways.cli.main import main; main()"]
    for args in (
        ["init", "--data", str(data), "--chain", "dfg-local"],
        ["demo", "populate", "--data", str(data), "--entries", str(POPULATED)],
    ):
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
    result = dfg("audit", "verify", "--data", str(data), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"OK: {SIZE} entries and 2 checkpoints verified" in result.output
    (key,) = re.findall(r"^checkpoint key (\S+)$", result.output, re.MULTILINE)
    bundle = root / "bundle.jsonl"
    result = dfg("audit", "export", "--data", str(data), "--out", str(bundle))
    assert result.exit_code == 0, result.output
    return Base(data, bundle, key)


#: Segments ``verify`` replays the log in: each case runs as one pass and as three
#: segments in parallel processes (101 entries each; MIDDLE is in the second).
_segments = [1]


@pytest.fixture(params=[1, 3], ids=["one-pass", "3-segments"])
def copy(base: Base, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh copy of the ledger's data directory for one case."""
    target = tmp_path / "data"
    shutil.copytree(base.data, target)
    _segments[0] = request.param
    return target


def tamper(data: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(data / "ledger.sqlite")
    try:
        for sql, params in statements:
            cursor = db.execute(sql, params)
            assert cursor.rowcount != 0, f"{sql} changed nothing"
        db.commit()
    finally:
        db.close()


def query(data: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = sqlite3.connect(data / "ledger.sqlite")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def state_of(data: Path, seq: int) -> bytes:
    ((state,),) = query(data, "SELECT state FROM ledger_entries WHERE rowid = ?", (seq,))
    assert isinstance(state, bytes)
    return state


def verify(data: Path) -> Result:
    return dfg("audit", "verify", "--data", str(data), "--no-progress", "--segments", str(_segments[0]))


# --- one-byte edits of an entry's canonical JSON ------------------------------------


def _replace_at(text: bytes, index: int, new: bytes) -> bytes:
    assert len(new) == 1 and text[index : index + 1] != new
    return text[:index] + new + text[index + 1 :]


def flip_json_syntax(state: bytes) -> bytes:
    """The opening brace becomes a bracket: the entry is no longer a JSON object."""
    assert state.startswith(b"{")
    return _replace_at(state, 0, b"[")


def flip_jws_signature(state: bytes) -> bytes:
    """One base64url character in the middle of the embedded JWS signature."""
    token = json.loads(state)["tx"].encode()
    signature_at = state.index(token) + token.rindex(b".") + 1
    index = signature_at + 40  # well inside the 86 characters, so still canonical
    return _replace_at(state, index, b"A" if state[index : index + 1] != b"A" else b"B")


def flip_jws_payload(state: bytes) -> bytes:
    """One character of the JWS payload (what the signer signed)."""
    token = json.loads(state)["tx"].encode()
    index = state.index(token) + token.index(b".") + 21
    return _replace_at(state, index, b"A" if state[index : index + 1] != b"A" else b"B")


def flip_data_key(state: bytes) -> bytes:
    """One bit of the first letter of the first field name in ``data`` (still valid JSON)."""
    index = state.index(b'"data":{"') + len(b'"data":{"')
    assert state[index : index + 1].isalpha()
    return _replace_at(state, index, bytes([state[index] ^ 0x01]))


EDITS: dict[str, Callable[[bytes], bytes]] = {
    "json-syntax": flip_json_syntax,
    "jws-signature": flip_jws_signature,
    "jws-payload": flip_jws_payload,
    "data-field-name": flip_data_key,
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_one_byte_changed_in_an_entry_is_named(copy: Path, edit: str) -> None:
    changed = EDITS[edit](state_of(copy, MIDDLE))
    assert len(changed) == len(state_of(copy, MIDDLE))
    tamper(copy, ("UPDATE ledger_entries SET state = ? WHERE rowid = ?", (changed, MIDDLE)))
    assert_names(verify(copy), MIDDLE)


def test_changed_purpose_keeps_valid_json_and_is_named(copy: Path) -> None:
    rows = query(
        copy,
        "SELECT rowid, state FROM ledger_entries WHERE topic = 'Consent.Utilized'"
        " AND rowid BETWEEN 100 AND 280 ORDER BY rowid LIMIT 1",
    )
    assert rows, "the demo activity has no Consent.Utilized entry in the middle"
    ((seq, state),) = rows
    assert isinstance(seq, int) and isinstance(state, bytes)
    purpose = json.loads(state)["data"]["purpose"]
    other = next(p for p in PURPOSES if p != purpose)
    changed = state.replace(f'"purpose":"{purpose}"'.encode(), f'"purpose":"{other}"'.encode())
    assert changed != state
    json.loads(changed)  # still a valid (and canonical) entry document
    tamper(copy, ("UPDATE ledger_entries SET state = ? WHERE rowid = ?", (changed, seq)))
    assert_names(verify(copy), seq)


@pytest.mark.parametrize("order", ["tx-before-seq", "spaced"])
def test_the_same_members_written_non_canonically_are_named(copy: Path, order: str) -> None:
    """The replay reads seq, ts and tx from the entry's end; an entry holding the same
    values in another layout is still not the one its transaction produces."""
    document = json.loads(state_of(copy, MIDDLE))
    if order == "tx-before-seq":
        document = {"tx": document.pop("tx"), **document}
        changed = json.dumps(document, separators=(",", ":")).encode()
    else:
        changed = json.dumps(document, sort_keys=True).encode()
    tamper(copy, ("UPDATE ledger_entries SET state = ? WHERE rowid = ?", (changed, MIDDLE)))
    assert_names(verify(copy), MIDDLE)


def test_changed_event_type_column_is_named(copy: Path) -> None:
    (topic,) = query(copy, "SELECT topic FROM ledger_entries WHERE rowid = ?", (MIDDLE,))[0]
    other = "Consent.Given" if topic != "Consent.Given" else "Consent.Withdrawn"
    tamper(copy, ("UPDATE ledger_entries SET topic = ? WHERE rowid = ?", (other, MIDDLE)))
    assert_names(verify(copy), MIDDLE)


def test_changed_timestamp_is_detected(copy: Path) -> None:
    """The sequencer's timestamp moved to a neighbour's (order kept, JSON valid): the entry
    stays self-consistent, as the replay takes the recorded time, but its leaf no longer
    matches the stored tree, which names it."""
    state = state_of(copy, MIDDLE)
    ts = json.loads(state)["ts"]
    neighbours = [json.loads(state_of(copy, seq))["ts"] for seq in (MIDDLE - 1, MIDDLE + 1)]
    other = next(t for t in neighbours if t != ts and len(t) == len(ts))
    changed = state.replace(f'"ts":"{ts}"'.encode(), f'"ts":"{other}"'.encode())
    assert changed != state
    tamper(copy, ("UPDATE ledger_entries SET state = ? WHERE rowid = ?", (changed, MIDDLE)))
    assert_names(verify(copy), MIDDLE)


def test_deleted_nonce_index_rows_fail(copy: Path) -> None:
    """The sequencer refuses replays with the (signer, nonce) index: it must match the log."""
    tamper(copy, ("DELETE FROM ledger_tx WHERE seq = ?", (MIDDLE,)))
    result = verify(copy)
    assert result.exit_code != 0
    assert f"nonce index does not match the log ({SIZE - 1} rows for {SIZE} entries)" in result.output
    assert "[]" not in result.output  # it used to end "signers differing: []"


# --- entries removed or moved --------------------------------------------------------


def test_deleted_entry_in_the_middle_is_named(copy: Path) -> None:
    tamper(copy, ("DELETE FROM ledger_entries WHERE rowid = ?", (MIDDLE,)))
    result = verify(copy)
    assert_names(result, MIDDLE)


def test_an_empty_ledger_does_not_verify(tmp_path: Path) -> None:
    """A log without a genesis entry proves nothing, in a database or in a bundle
    (an interrupted ``dfg init`` or a truncated file used to verify as "OK: 0 entries")."""
    data = tmp_path / "empty"
    open_store(Settings(data_dir=data)).close()
    assert "entry 1: is missing: the log is empty" in verify(data).output
    assert failed_entry(verify(data)) == 1
    bundle = tmp_path / "empty.jsonl"
    assert dfg("audit", "export", "--data", str(data), "--out", str(bundle)).exit_code == 0
    assert failed_entry(dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")) == 1


def test_deleted_last_entry_is_named_missing(copy: Path) -> None:
    tamper(copy, ("DELETE FROM ledger_entries WHERE rowid = ?", (SIZE,)))
    result = verify(copy)
    assert_names(result, SIZE)
    assert "missing" in result.output


def test_deleted_last_entry_and_its_checkpoint_is_named_missing(copy: Path) -> None:
    tamper(
        copy,
        ("DELETE FROM ledger_entries WHERE rowid = ?", (SIZE,)),
        ("DELETE FROM checkpoints WHERE size = ?", (SIZE,)),
    )
    result = verify(copy)
    assert_names(result, SIZE)
    assert "missing" in result.output


@pytest.mark.parametrize("first", [MIDDLE, SIZE - 1], ids=["middle", "last-two"])
def test_two_consecutive_entries_swapped_are_named(copy: Path, first: int) -> None:
    second = first + 1
    columns = "originator_id, originator_version, topic, state"
    tamper(
        copy,
        (
            f"CREATE TEMP TABLE swap AS SELECT rowid AS seq, {columns} FROM ledger_entries"
            " WHERE rowid IN (?, ?)",
            (first, second),
        ),
        # Delete first: (originator_id, originator_version) is the primary key.
        ("DELETE FROM ledger_entries WHERE rowid IN (?, ?)", (first, second)),
        (
            f"INSERT INTO ledger_entries (rowid, {columns})"
            f" SELECT CASE seq WHEN ? THEN ? ELSE ? END, {columns} FROM swap",
            (first, second, first),
        ),
    )
    moved = query(copy, "SELECT rowid, state FROM ledger_entries WHERE rowid IN (?, ?)", (first, second))
    assert {(seq, json.loads(s)["seq"]) for seq, s in moved} == {(first, second), (second, first)}
    assert_names(verify(copy), first, second)


# --- checkpoints and the stored Merkle tree ------------------------------------------


def _checkpoint_note(data: Path, size: int) -> str:
    ((note,),) = query(data, "SELECT note FROM checkpoints WHERE size = ?", (size,))
    assert isinstance(note, str)
    return note


def _flip_note_signature(note: str) -> str:
    """One bit of the Ed25519 signature (the key hash in front of it is kept)."""
    text, _, line = note.rstrip("\n").rpartition("\n")
    prefix, _, encoded = line.rpartition(" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[4 + 10] ^= 0x01
    return f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


def _borrow_note_signature(note: str, donor: str) -> str:
    """The signature line of another checkpoint: right key, wrong text."""
    text, _, _ = note.rstrip("\n").rpartition("\n")
    _, _, donor_line = donor.rstrip("\n").rpartition("\n")
    return f"{text}\n{donor_line}\n"


@pytest.mark.parametrize("how", ["flipped-bit", "borrowed-from-other-checkpoint"])
def test_replaced_checkpoint_signature_fails(copy: Path, how: str) -> None:
    note = _checkpoint_note(copy, SIZE)
    if how == "flipped-bit":
        forged = _flip_note_signature(note)
    else:
        forged = _borrow_note_signature(note, _checkpoint_note(copy, 1))
    assert forged != note and forged.count("\n") == note.count("\n")
    tamper(copy, ("UPDATE checkpoints SET note = ? WHERE size = ?", (forged, SIZE)))
    result = verify(copy)
    assert_names(result, SIZE)
    assert "checkpoint" in result.output and "signed" in result.output


@pytest.mark.parametrize("which", [0, -1], ids=["first-node", "last-node"])
def test_changed_merkle_node_on_a_consistency_path_fails(copy: Path, which: int) -> None:
    level, idx = nodes_for_consistency(1, SIZE)[which]
    ((stored,),) = query(copy, "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, idx))
    assert isinstance(stored, bytes)
    changed = bytes([stored[0] ^ 0x01]) + stored[1:]
    tamper(copy, ("UPDATE merkle_nodes SET hash = ? WHERE level = ? AND idx = ?", (changed, level, idx)))
    result = verify(copy)
    # Named by the entry that completed the node (the last leaf it covers).
    assert_names(result, (idx + 1) << level)
    assert f"Merkle node (level {level}, index {idx})" in result.output


def test_bytes_moved_between_two_stored_merkle_nodes_are_named(copy: Path) -> None:
    """Two neighbouring leaf nodes whose bytes, run together, are unchanged: the first
    gains the second's first five bytes. Nodes are compared one by one."""
    rows = query(
        copy,
        "SELECT hash FROM merkle_nodes WHERE level = 0 AND idx IN (?, ?) ORDER BY idx",
        (MIDDLE, MIDDLE + 1),
    )
    first, second = (row[0] for row in rows)
    assert isinstance(first, bytes) and isinstance(second, bytes)
    tamper(
        copy,
        ("UPDATE merkle_nodes SET hash = ? WHERE level = 0 AND idx = ?", (first + second[:5], MIDDLE)),
        ("UPDATE merkle_nodes SET hash = ? WHERE level = 0 AND idx = ?", (second[5:], MIDDLE + 1)),
    )
    result = verify(copy)
    assert_names(result, MIDDLE + 1)
    assert f"Merkle node (level 0, index {MIDDLE})" in result.output


def test_changed_merkle_node_serving_inclusion_proofs_fails(base: Base, copy: Path) -> None:
    """The audit promises that "the nodes that serve clients' proofs are checked too"
    (ledger/audit.py). A leaf node off every consistency path still serves inclusion
    proofs: corrupted, receipts built from it do not verify (``dfg audit prove`` checks
    its own and refuses to hand them out)."""
    seq = MIDDLE - 1
    consistency = set(nodes_for_consistency(1, SIZE))
    node = next(n for n in nodes_for_inclusion(seq - 1, SIZE) if n not in consistency)
    tamper(copy, ("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = ? AND idx = ?", node))
    # The corruption matters: receipts built from the stored tree are now wrong...
    proof = dfg("audit", "prove", "--data", str(copy), "--seq", str(seq))
    assert proof.exit_code == 1, proof.output
    assert "the inclusion proof does not lead to the checkpoint's root" in proof.output
    assert "run `dfg audit verify`" in proof.output
    # ...so the audit of the stored tree must not say OK.
    result = verify(copy)
    assert result.exit_code != 0, (
        f"dfg audit verify passed a Merkle tree whose node {node} is corrupt:\n{result.output}"
    )


# --- audit bundles -------------------------------------------------------------------


def test_untouched_bundle_verifies(base: Base) -> None:
    result = dfg(
        "audit",
        "verify",
        "--bundle",
        str(base.bundle),
        "--no-progress",
        "--checkpoint-key",
        base.checkpoint_key,
        "--chain",
        "dfg-local",
    )
    assert result.exit_code == 0, result.output
    assert f"OK: {SIZE} entries and 2 checkpoints verified" in result.output


BUNDLE_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "json-syntax": flip_json_syntax,
    "data-field-name": flip_data_key,
    "jws-signature": flip_jws_signature,
}


@pytest.mark.parametrize("edit", list(BUNDLE_EDITS))
def test_one_byte_changed_in_a_bundle_entry_is_named(base: Base, tmp_path: Path, edit: str) -> None:
    lines = base.bundle.read_bytes().split(b"\n")
    assert json.loads(lines[MIDDLE])["seq"] == MIDDLE  # line 0 is the header
    changed = BUNDLE_EDITS[edit](lines[MIDDLE])
    assert len(changed) == len(lines[MIDDLE]) and b"\n" not in changed
    lines[MIDDLE] = changed
    bundle = tmp_path / "tampered.jsonl"
    bundle.write_bytes(b"\n".join(lines))
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert_names(result, MIDDLE)


# --- receipts --------------------------------------------------------------------------


def _check_receipt_text(text: str, base: Base, key: str | None = None) -> Result:
    return CliRunner().invoke(
        cli,
        ["audit", "check-receipt", "-", "--checkpoint-key", key or base.checkpoint_key],
        input=text,
        catch_exceptions=False,
    )


@pytest.fixture(scope="module")
def receipt(base: Base) -> dict[str, object]:
    result = dfg("audit", "prove", "--data", str(base.data), "--seq", str(MIDDLE))
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.output)
    assert isinstance(loaded, dict)
    return loaded


def test_receipt_checks_offline(base: Base, receipt: dict[str, object], tmp_path: Path) -> None:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    result = dfg("audit", "check-receipt", str(path), "--checkpoint-key", base.checkpoint_key)
    assert result.exit_code == 0, result.output
    assert f"OK: entry {MIDDLE} is in the ledger whose signed checkpoint has {SIZE} entries" in (
        result.output
    )


def _alter_hash(r: dict[str, Any]) -> None:
    first = r["proof"]["hashes"][0]
    r["proof"]["hashes"][0] = ("0" if first[0] != "0" else "1") + first[1:]


def _drop_hash(r: dict[str, Any]) -> None:
    r["proof"]["hashes"].pop()


def _alter_checkpoint_signature(r: dict[str, Any]) -> None:
    r["checkpoint"] = _flip_note_signature(r["checkpoint"])


def _alter_checkpoint_size(r: dict[str, Any]) -> None:
    r["checkpoint"] = r["checkpoint"].replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n", 1)


def _alter_entry(r: dict[str, Any]) -> None:
    r["entry"] = flip_data_key(r["entry"].encode()).decode()


def _alter_entry_signature(r: dict[str, Any]) -> None:
    r["entry"] = flip_jws_signature(r["entry"].encode()).decode()


RECEIPT_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "proof-hash": _alter_hash,
    "proof-hash-dropped": _drop_hash,
    "checkpoint-signature": _alter_checkpoint_signature,
    "checkpoint-size": _alter_checkpoint_size,
    "entry-text": _alter_entry,
    "entry-jws-signature": _alter_entry_signature,
}


@pytest.mark.parametrize("edit", list(RECEIPT_EDITS))
def test_altered_receipt_fails(base: Base, receipt: dict[str, object], tmp_path: Path, edit: str) -> None:
    altered = json.loads(json.dumps(receipt))
    RECEIPT_EDITS[edit](altered)
    assert altered != receipt
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(altered))
    result = dfg("audit", "check-receipt", str(path), "--checkpoint-key", base.checkpoint_key)
    assert result.exit_code != 0, f"altered receipt ({edit}) accepted:\n{result.output}"
    assert "receipt does not verify" in result.output


def test_a_receipt_naming_a_member_twice_is_refused(base: Base, receipt: dict[str, object]) -> None:
    """Readers disagree on which of two members counts (Python's json the last, others
    the first or neither): a receipt whose first ``entry`` was a forged one verified."""
    text = '{"entry": "forged", ' + json.dumps(receipt)[1:]
    result = _check_receipt_text(text, base)
    assert result.exit_code == 1, result.output
    assert "not a receipt: it names the member 'entry' twice" in result.output


def test_a_receipt_whose_note_repeats_a_cosignature_is_named_malformed(
    base: Base, receipt: dict[str, object]
) -> None:
    """The ledger's signature is sound; what breaks the note is a witness's line twice.
    It was reported as "the checkpoint is not signed by the ledger key"."""
    line = "\u2014 node:a " + base64.b64encode(bytes(76)).decode() + "\n"
    altered = {**receipt, "checkpoint": f"{receipt['checkpoint']}{line}{line}"}
    result = _check_receipt_text(json.dumps(altered), base)
    assert result.exit_code == 1, result.output
    assert "the checkpoint is not a well-formed signed note: note has two signatures by node:a" in (
        result.output
    )


def test_receipt_fails_against_another_ledgers_key(receipt: dict[str, object], tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert dfg("init", "--data", str(other), "--chain", "dfg-local").exit_code == 0
    key = re.findall(r"^checkpoint key (\S+)$", verify(other).output, re.MULTILINE)[0]
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    result = dfg("audit", "check-receipt", str(path), "--checkpoint-key", key)
    assert result.exit_code != 0, result.output


def test_bundle_with_an_extra_entry_line_is_refused(base: Base, tmp_path: Path) -> None:
    bundle = tmp_path / "extra.bundle"
    lines = base.bundle.read_bytes().splitlines(keepends=True)
    lines.insert(2 + SIZE - 1, lines[2])  # one more entry line than the header says
    bundle.write_bytes(b"".join(lines))
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert result.exit_code != 0
    assert "neither a checkpoint nor the principals" in result.output


def _swap_checkpoints(lines: list[bytes]) -> None:
    first = 1 + SIZE
    lines[first], lines[first + 1] = lines[first + 1], lines[first]


def _repeat_checkpoint(lines: list[bytes]) -> None:
    lines.insert(1 + SIZE + 1, lines[1 + SIZE + 1])
    header = json.loads(lines[0])
    header["checkpoints"] += 1
    lines[0] = json.dumps(header, sort_keys=True).encode()


def _change_a_principals_key(lines: list[bytes]) -> None:
    tail = json.loads(lines[-1])
    name = sorted(tail["principals"])[0]
    text = json.dumps(tail["principals"][name])
    x = re.search(r'"x": "([^"]+)"', text)
    assert x is not None
    tail["principals"][name] = json.loads(text.replace(x.group(1), "A" * len(x.group(1))))
    lines[-1] = json.dumps(tail, sort_keys=True).encode()


def _add_a_header_member(lines: list[bytes]) -> None:
    header = json.loads(lines[0])
    header["note"] = "trust me"
    lines[0] = json.dumps(header, sort_keys=True).encode()


def _add_a_checkpoint_member(lines: list[bytes]) -> None:
    line = json.loads(lines[1 + SIZE])
    line["root"] = "00" * 32
    lines[1 + SIZE] = json.dumps(line).encode()


def _add_a_line_after_the_principals(lines: list[bytes]) -> None:
    lines.append(lines[1 + SIZE])


def _add_a_checkpoint_of_size_0(lines: list[bytes]) -> None:
    """Before the genesis entry's: it was reported as "a checkpoint was skipped"."""
    header = json.loads(lines[0])
    empty = base64.b64encode(hashlib.sha256().digest()).decode()
    origin, signature = header["origin"], base64.b64encode(bytes(68)).decode()
    note = f"{origin}\n0\n{empty}\n\n\u2014 {origin} {signature}\n"
    lines.insert(1 + SIZE, json.dumps({"checkpoint": note}).encode())
    header["checkpoints"] += 1
    lines[0] = json.dumps(header, sort_keys=True).encode()


def _add_a_cosignature_without_its_newline(lines: list[bytes]) -> None:
    """Appended to the note as it is, as the format says, it joins the next line."""
    line = json.loads(lines[1 + SIZE])
    line["cosignatures"] = ["\u2014 node:a " + base64.b64encode(bytes(76)).decode()]
    lines[1 + SIZE] = json.dumps(line).encode()


def _repeat_a_header_member(lines: list[bytes]) -> None:
    lines[0] = b'{"chain": "dfg-forged", ' + lines[0][1:]


def _repeat_the_principals_member(lines: list[bytes]) -> None:
    lines[-1] = b'{"principals": {}, ' + lines[-1][1:]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_swap_checkpoints, "checkpoints come by increasing size"),
        (_repeat_checkpoint, "checkpoints come by increasing size"),
        (_change_a_principals_key, "the bundle's principals line is not what its entries say"),
        (_add_a_header_member, "the header has members a dfg-audit-bundle/1 header has not: ['note']"),
        (_add_a_checkpoint_member, "a checkpoint line has only checkpoint and cosignatures"),
        (_add_a_line_after_the_principals, "follows the principals line, which ends a bundle"),
        (_add_a_checkpoint_of_size_0, "a checkpoint of size 0, which no ledger signs"),
        (_add_a_cosignature_without_its_newline, "each cosignature is one signature line, ending in its"),
        (_repeat_a_header_member, "the header names the member 'chain' twice"),
        (_repeat_the_principals_member, "names the member 'principals' twice"),
    ],
)
def test_a_bundle_the_format_rules_out_is_refused(
    base: Base, tmp_path: Path, change: Callable[[list[bytes]], None], named: str
) -> None:
    """Every entry of these bundles verifies; what is wrong is around them. They used to
    verify: checkpoints out of order or repeated (reported as one more checkpoint
    verified), a principals line whose keys the entries never introduced (a reader may
    take keys from it), members the format does not have."""
    lines = base.bundle.read_bytes().rstrip(b"\n").split(b"\n")
    assert len(lines) == 1 + SIZE + 2 + 1  # header, entries, 2 checkpoints, principals
    change(lines)
    bundle = tmp_path / "changed.bundle"
    bundle.write_bytes(b"\n".join(lines) + b"\n")
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert result.exit_code == 1 and named in result.output, result.output


def test_a_bundle_missing_an_entry_names_it(base: Base, tmp_path: Path) -> None:
    """Every line after a removed entry shifts by one: the header's checkpoint count
    used to be the news, before the entry that is missing."""
    lines = base.bundle.read_bytes().split(b"\n")
    del lines[MIDDLE]
    bundle = tmp_path / "short.bundle"
    bundle.write_bytes(b"\n".join(lines))
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert_names(result, MIDDLE)


def test_a_header_counting_more_entries_than_the_bundle_holds_says_so(base: Base, tmp_path: Path) -> None:
    """The first checkpoint line used to be read as the next entry and named as "not a
    version 1 entry"."""
    lines = base.bundle.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    header["size"] = SIZE + 1
    lines[0] = json.dumps(header, sort_keys=True).encode()
    bundle = tmp_path / "long.bundle"
    bundle.write_bytes(b"\n".join(lines))
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert result.exit_code == 1
    assert f"the bundle holds {SIZE} entries, not the {SIZE + 1} its header counts" in result.output


def test_a_changed_header_root_is_named_with_both_roots(base: Base, tmp_path: Path) -> None:
    lines = base.bundle.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    real, header["root"] = header["root"], "00" * 32
    lines[0] = json.dumps(header, sort_keys=True).encode()
    bundle = tmp_path / "root.bundle"
    bundle.write_bytes(b"\n".join(lines))
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert result.exit_code == 1
    assert f"(size {SIZE}, root {'00' * 32}) does not match the entries (size {SIZE}, root {real})" in (
        result.output
    )


def test_an_entry_with_a_space_added_is_named_as_not_canonical(base: Base, tmp_path: Path) -> None:
    lines = base.bundle.read_bytes().split(b"\n")
    lines[MIDDLE] = lines[MIDDLE].replace(b'","tx":"', b'", "tx":"', 1)
    bundle = tmp_path / "space.bundle"
    bundle.write_bytes(b"\n".join(lines))
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert_names(result, MIDDLE)
    assert "entry bytes are not in canonical form" in result.output


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("garbage", "not a checkpoint verifier key"),
        ("node:a+01234567+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not a checkpoint verifier key"),
    ],
)
def test_a_malformed_checkpoint_key_is_a_bad_option(base: Base, key: str, named: str) -> None:
    """It used to be "a different checkpoint key than the one you trust"."""
    for command in (
        ["audit", "verify", "--bundle", str(base.bundle), "--checkpoint-key", key],
        ["audit", "check-receipt", str(base.bundle), "--checkpoint-key", key],
    ):
        result = dfg(*command)
        assert result.exit_code == 2 and named in result.output, result.output


def test_a_witness_key_given_as_the_checkpoint_key_is_a_bad_option(base: Base) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.note import SIG_COSIGNATURE_V1, Verifier

    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    witness_key = Verifier("node:a", raw, SIG_COSIGNATURE_V1).to_string()
    result = dfg("audit", "verify", "--bundle", str(base.bundle), "--checkpoint-key", witness_key)
    assert result.exit_code == 2 and "a witness's cosignature key" in result.output, result.output


def test_proving_an_entry_the_ledger_does_not_have_says_so(base: Base) -> None:
    result = dfg("audit", "prove", "--data", str(base.data), "--seq", str(SIZE + 1))
    assert result.exit_code == 1 and f"there is no entry {SIZE + 1}: the ledger has {SIZE} entries" in (
        result.output
    )


def test_receipt_whose_entry_is_not_an_object_is_refused_cleanly(base: Base, tmp_path: Path) -> None:
    proof = dfg("audit", "prove", "--data", str(base.data), "--seq", "5")
    receipt = json.loads(proof.output)
    receipt["entry"] = "[1]"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(receipt))
    result = dfg("audit", "check-receipt", str(path), "--checkpoint-key", base.checkpoint_key)
    assert result.exit_code == 1 and "does not verify" in result.output


def test_receipt_with_an_infinite_number_is_refused_cleanly(base: Base, receipt: dict[str, object]) -> None:
    text = json.dumps(receipt).replace(f'"seq": {MIDDLE}', '"seq": Infinity')
    assert "Infinity" in text
    result = _check_receipt_text(text, base)
    assert result.exit_code != 0 and "not a receipt" in result.output


def _claim_another_leaf(r: dict[str, Any]) -> None:
    r["leaf_hash"] = "00" * 32


def _claim_another_jws(r: dict[str, Any]) -> None:
    r["jws"] = "x.y.z"


def _claim_another_event(r: dict[str, Any]) -> None:
    entry = json.loads(r["entry"])
    r["event"] = {
        "aggregate": entry["aggregate"],
        "version": entry["version"],
        "type": "Consent.Given" if entry["event"] != "Consent.Given" else "Consent.Withdrawn",
        "ts": entry["ts"],
        "data": entry["data"],
    }


@pytest.mark.parametrize(
    ("claim", "named"),
    [
        (_claim_another_leaf, "leaf_hash is not the hash of its entry"),
        (_claim_another_jws, "jws is not the transaction inside its entry"),
        (_claim_another_event, "event is not the event inside its entry"),
    ],
)
def test_a_receipt_whose_readable_members_contradict_its_entry_is_refused(
    base: Base, receipt: dict[str, object], claim: Callable[[dict[str, Any]], None], named: str
) -> None:
    """``leaf_hash``, ``jws`` and ``event`` are not covered by the proof: `dfg audit
    check-receipt` used to say OK whatever they said (an app showing ``event`` would
    show a gift where the entry records a withdrawal). The SDK refused them already."""
    altered = json.loads(json.dumps(receipt))
    claim(altered)
    result = _check_receipt_text(json.dumps(altered), base)
    assert result.exit_code == 1 and named in result.output, result.output


def test_a_receipt_as_the_api_serves_it_checks_offline(base: Base, receipt: dict[str, object]) -> None:
    entry = json.loads(str(receipt["entry"]))
    served = {
        **receipt,
        "jws": entry["tx"],
        "event": {
            k: entry[n]
            for k, n in [
                ("aggregate", "aggregate"),
                ("version", "version"),
                ("type", "event"),
                ("ts", "ts"),
                ("data", "data"),
            ]
        },
    }
    result = _check_receipt_text(json.dumps(served), base)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "the file is not JSON"),
        ("\x00\xff garbage", "the file is not JSON"),
        ("[" * 100_000, "nested too deeply"),
        ("42", "not a receipt: the document: "),
        ("[]", "not a receipt: the document: "),
        ("{}", "not a receipt: seq: Field required"),
    ],
)
def test_a_file_that_is_no_receipt_is_named_in_one_line(base: Base, text: str, named: str) -> None:
    """It used to leak Python's own words: "'int' object is not subscriptable",
    "not a receipt: 'proof'", "maximum recursion depth exceeded"."""
    result = _check_receipt_text(text, base)
    assert result.exit_code == 1 and named in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r.__setitem__("seq", str(r["seq"])), "seq: Input should be a valid integer"),
        (lambda r: r["proof"].__setitem__("tree_size", str(r["proof"]["tree_size"])), "proof.tree_size"),
        (lambda r: r["proof"]["hashes"].__setitem__(0, r["proof"]["hashes"][0].upper()), "proof.hashes.0"),
        (lambda r: r.__setitem__("note", "extra"), "note: Extra inputs are not permitted"),
    ],
)
def test_a_receipt_of_loose_types_or_unknown_members_is_refused(
    base: Base, receipt: dict[str, object], change: Callable[[dict[str, Any]], None], named: str
) -> None:
    altered = json.loads(json.dumps(receipt))
    change(altered)
    result = _check_receipt_text(json.dumps(altered), base)
    assert result.exit_code == 1 and named in result.output, result.output


# --- what ties a log to its key; what a bundle's header and tail say ----------------------


def test_a_log_no_checkpoint_covers_does_not_verify(copy: Path) -> None:
    tamper(copy, ("DELETE FROM checkpoints", ()))
    result = verify(copy)
    assert result.exit_code != 0
    assert "no checkpoint signed by the ledger's key covers the log" in result.output


def test_a_forged_genesis_naming_the_ledgers_public_key_does_not_verify(base: Base, tmp_path: Path) -> None:
    """Anyone can write a genesis entry that names a ledger's public checkpoint key,
    chain and origin, signed by an operator key of their own, and entries after it.
    Without a checkpoint signed by that key nothing ties them to the ledger; this used
    to verify with ``--checkpoint-key``."""
    from joserfc.jwk import OKPKey

    from ledger.sequencer import Accepted, Sequencer
    from ledger.signing import TransactionSigner, public_jwk

    forged = Settings(data_dir=tmp_path / "forged")
    forged.data_dir.mkdir()
    operator = OKPKey.generate_key("Ed25519")
    genesis = TransactionSigner("op:federation", operator, "dfg-local").sign(
        "ledger.genesis",
        {
            "ledger": {
                "chain": "dfg-local",
                "origin": "dfg.local/dfg-local",
                "checkpoint_key": base.checkpoint_key,
            },
            "operator": "op:federation",
            "display_name": "Not the federation",
            "jwk": public_jwk(operator).as_dict(),
        },
        now=time.time(),
    )
    store = open_store(forged)
    try:
        assert isinstance(Sequencer(store, checkpoint_key=None).submit([genesis])[0], Accepted)
    finally:
        store.close()
    trusting = ["--checkpoint-key", base.checkpoint_key, "--chain", "dfg-local", "--no-progress"]
    result = dfg("audit", "verify", "--data", str(forged.data_dir), *trusting)
    assert result.exit_code == 1 and "no checkpoint signed" in result.output, result.output
    bundle = tmp_path / "forged.bundle"
    assert dfg("audit", "export", "--data", str(forged.data_dir), "--out", str(bundle)).exit_code == 0
    result = dfg("audit", "verify", "--bundle", str(bundle), *trusting)
    assert result.exit_code == 1 and "no checkpoint signed" in result.output, result.output


def _bundle_lines(base: Base) -> list[bytes]:
    return base.bundle.read_bytes().splitlines(keepends=True)


def _verify_bundle_lines(lines: list[bytes], tmp_path: Path) -> Result:
    bundle = tmp_path / "edited.bundle"
    bundle.write_bytes(b"".join(lines))
    return dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")


def test_a_bundle_without_its_checkpoint_lines_is_refused(base: Base, tmp_path: Path) -> None:
    lines = _bundle_lines(base)
    kept = [line for line in lines if not line.startswith(b'{"checkpoint"')]
    assert len(kept) == len(lines) - 2
    result = _verify_bundle_lines(kept, tmp_path)
    assert result.exit_code != 0 and "the header counts 2 checkpoints, the bundle holds 0" in result.output


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (b'{"checkpoint": 5}\n', "a checkpoint line's checkpoint is its signed note, as text"),
        (
            b'{"principals": []}\n',
            "the principals line has one member, principals, an object by principal id",
        ),
        (b'{"principals": {}, "x": 1}\n', "the principals line has one member, principals"),
    ],
)
def test_a_malformed_checkpoint_or_principals_line_is_named_as_such(
    base: Base, tmp_path: Path, line: bytes, named: str
) -> None:
    """These used to be named as a line that is neither a checkpoint nor the principals,
    with a guess that the bundle held more entries than its header says."""
    lines = _bundle_lines(base)
    if line.startswith(b'{"checkpoint"'):
        lines[1 + SIZE] = line
    else:
        lines[-1] = line
    result = _verify_bundle_lines(lines, tmp_path)
    assert result.exit_code == 1 and named in result.output, result.output
    assert "more entries than the header's size" not in result.output


def test_a_bundle_without_its_principals_line_says_so(base: Base, tmp_path: Path) -> None:
    """It used to be named as a principals line that differs from the entries, naming
    the first principal as the one that differs."""
    lines = _bundle_lines(base)
    assert lines[-1].startswith(b'{"principals"')
    result = _verify_bundle_lines(lines[:-1], tmp_path)
    assert result.exit_code == 1 and "the bundle has no principals line" in result.output, result.output


@pytest.mark.parametrize("member", ["chain", "checkpoint_key"])
def test_a_bundle_header_that_misnames_the_ledger_is_refused(base: Base, tmp_path: Path, member: str) -> None:
    lines = _bundle_lines(base)
    header = json.loads(lines[0])
    header[member] = "another-ledger" if member == "chain" else base.checkpoint_key[:-4] + "AAAA"
    lines[0] = json.dumps(header, sort_keys=True).encode() + b"\n"
    result = _verify_bundle_lines(lines, tmp_path)
    assert result.exit_code != 0 and f"the header's {member}" in result.output


@pytest.mark.parametrize("member", ["chain", "origin", "checkpoint_key", "checkpoints"])
def test_a_bundle_header_without_a_member_is_refused(base: Base, tmp_path: Path, member: str) -> None:
    """Each of these is checked against the bundle's contents; a header without one
    used to verify (exit 0) with that check left out."""
    lines = _bundle_lines(base)
    header = json.loads(lines[0])
    del header[member]
    lines[0] = json.dumps(header, sort_keys=True).encode() + b"\n"
    result = _verify_bundle_lines(lines, tmp_path)
    assert result.exit_code == 1 and "the header lacks members" in result.output, result.output
    assert repr([member]) in result.output


@pytest.mark.parametrize("where", ["header", "tail"])
def test_deeply_nested_json_in_a_bundle_is_refused_cleanly(base: Base, tmp_path: Path, where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    lines = _bundle_lines(base)
    if where == "header":
        lines[0] = deep
    else:
        lines.insert(-1, deep)
    result = _verify_bundle_lines(lines, tmp_path)  # catch_exceptions=False: no traceback
    assert result.exit_code != 0


def test_a_receipt_nested_too_deeply_is_refused_cleanly(base: Base) -> None:
    result = _check_receipt_text("[" * 100_000 + "]" * 100_000, base)
    assert result.exit_code != 0 and "receipt does not verify" in result.output


def test_a_bundle_exported_while_the_ledger_grows_holds_it_as_it_stood(base: Base, tmp_path: Path) -> None:
    """What is appended after the export read the head (entries, checkpoints) stays out:
    the bundle used to take whole pages of entries, and every checkpoint, and then not
    verify."""
    from infra.bundle import export_bundle
    from ledger.merkle import root_at

    store = open_store(Settings(data_dir=base.data))
    try:
        as_it_stood = (MIDDLE, root_at(MIDDLE, store.read_nodes))
        store.head = lambda: as_it_stood  # type: ignore[method-assign]
        bundle = tmp_path / "earlier.bundle"
        with bundle.open("wb") as out:
            assert export_bundle(store, out) == MIDDLE
    finally:
        store.close()
    lines = bundle.read_bytes().splitlines()
    assert len(lines) == 1 + MIDDLE + 1 + 1  # header, entries, checkpoint 1, principals
    # the principals line describes the bundle's entries, not the ledger's newer ones
    assert _seqs_in(json.loads(lines[-1])["principals"]) <= set(range(1, MIDDLE + 1))
    whole = json.loads(base.bundle.read_bytes().splitlines()[-1])["principals"]
    assert max(_seqs_in(whole)) > MIDDLE  # what the shorter bundle must leave out
    result = dfg("audit", "verify", "--bundle", str(bundle), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"the {MIDDLE - 1} entries after size 1 carry no signature" in result.output


def _seqs_in(principals: dict[str, Any]) -> set[int]:
    """Every entry a principals line names: admissions, keys added and revoked."""
    seqs = {p["admitted_seq"] for p in principals.values()}
    for p in principals.values():
        seqs.update(k["added_seq"] for k in p["keys"])
        seqs.update(k["revoked_seq"] for k in p["keys"] if k["revoked_seq"] is not None)
    return seqs


def test_export_writes_nothing_beside_the_ledger(base: Base, tmp_path: Path) -> None:
    """An export reads the ledger only: it used to bring the read models up to date,
    writing them without the writer lock while a server could be writing them too."""
    data = tmp_path / "copy"
    shutil.copytree(base.data, data)
    views = Settings(data_dir=data).views_file
    views.unlink(missing_ok=True)
    result = dfg("audit", "export", "--data", str(data), "--out", str(tmp_path / "b.bundle"))
    assert result.exit_code == 0, result.output
    assert not views.exists()
    ours = json.loads((tmp_path / "b.bundle").read_bytes().splitlines()[-1])["principals"]
    # the same as the read models say, once they are brought up to date
    assert dfg("projections", "rebuild", "--data", str(data)).exit_code == 0
    db = open_views(Settings(data_dir=data))
    try:
        assert db.position(PrincipalsView.name) == SIZE
        with db.transaction(commit=False) as cursor:
            assert ours == snapshot(cursor)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        (("UPDATE checkpoints SET root = zeroblob(32) WHERE size = ?", (SIZE,)), "stored root"),
        (
            ("INSERT INTO checkpoint_cosignatures VALUES (?, ?, ?)", (SIZE, "node:x", "garbage")),
            "not a signature",
        ),
    ],
    ids=["zeroed-stored-root", "cosignature-not-a-signature-line"],
)
def test_what_is_served_with_a_checkpoint_is_checked(
    copy: Path, statement: tuple[str, tuple[object, ...]], named: str
) -> None:
    """The stored root readers are served, and the cosignatures kept with a checkpoint."""
    tamper(copy, statement)
    result = verify(copy)
    assert_names(result, SIZE)
    assert named in result.output


def test_the_entries_verified_before_a_failure_are_those_before_it(copy: Path) -> None:
    tamper(copy, ("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = ?", (MIDDLE - 1,)))
    result = verify(copy)
    assert_names(result, MIDDLE)
    assert f"{MIDDLE - 1} entries verified before the failure" in result.output


def test_require_final_counts_the_entries_before_the_first_uncovered_one(copy: Path) -> None:
    """As for every other failure; it used to say all 301 were verified before entry 2."""
    tamper(copy, ("DELETE FROM checkpoints WHERE size = ?", (SIZE,)))
    result = dfg(
        "audit",
        "verify",
        "--data",
        str(copy),
        "--no-progress",
        "--segments",
        str(_segments[0]),
        "--require-final",
    )
    assert_names(result, 2)
    assert "\n1 entries verified before the failure" in result.output, result.output


def test_prove_over_a_damaged_tree_says_what_to_do(copy: Path) -> None:
    tamper(copy, ("DELETE FROM merkle_nodes WHERE level = 1 AND idx = 1", ()))
    result = dfg("audit", "prove", "--data", str(copy), "--seq", "1")
    assert result.exit_code == 1 and "run `dfg audit verify`" in result.output, result.output
