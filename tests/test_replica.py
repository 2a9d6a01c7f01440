"""A node operator's replica accepts only what it verified itself (no broker involved).

Entries and checkpoints are read from a real sequencer's store and handed to a
replica with its own store; attacks change them on the way, as a relay or a broker
could.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from conftest import CHAIN, PG_URL, Ledger, give_level1
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import OperationalError

from domain.identifiers import principal_aggregate_id
from gateways.kafka.client import KafkaSettings, partition
from gateways.kafka.follower import CHECKPOINTS_MARKER, Follower
from gateways.kafka.topics import Topics, checkpoint_record, entry_record
from infra.bootstrap import open_store
from infra.node import open_node
from infra.settings import Settings
from infra.storage.postgres import database_url_schema
from ledger.audit import audit_store
from ledger.checkpoint import Checkpoint, parse_checkpoint_body, sign_checkpoint
from ledger.note import parse_note
from ledger.replica import NotThisLedger, OutOfOrder, Replica, ReplicaHalted, ViolationKind
from ledger.store import LedgerStore, StoredEntry
from ledger.verifier import ParallelVerifier


def give(ledger: Ledger, app: Any, subject: str) -> str:
    return give_level1(ledger, app, subject)


@pytest.fixture
def source(ledger: Ledger) -> Ledger:
    """A ledger with 60 entries and checkpoints (every 20 entries)."""
    ledger.sequencer.policy = replace(ledger.sequencer.policy, every=20)
    app = ledger.admit("sp:app", "service_provider")
    for start in range(0, 58, 19):
        ledger.accept(*[give(ledger, app, f"p-{i}") for i in range(start, min(start + 19, 58))])
    ledger.sequencer.checkpoint_now()
    assert ledger.head()[0] == 60
    return ledger


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def replica_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    url = request.getfixturevalue("pg_schema_url") if request.param == "postgres" else None
    store = open_store(Settings(data_dir=tmp_path / "node", database_url=url))
    yield store
    store.close()


def entries_of(ledger: Ledger) -> list[StoredEntry]:
    return list(ledger.sequencer.store.read_entries(1, 10_000))


def notes_of(ledger: Ledger) -> list[str]:
    return [c.note for c in ledger.sequencer.store.checkpoints(0, 1000)]


def test_replica_equals_the_sequencers_log_and_verifies_as_a_ledger(
    source: Ledger, replica_store: LedgerStore
) -> None:
    replica = Replica(replica_store)
    entries = entries_of(source)
    for start in range(0, len(entries), 7):  # batches of any size
        replica.accept_entries(entries[start : start + 7])
    accepted = [replica.accept_checkpoint(note) for note in notes_of(source)]
    assert all(a is not None and a.new for a in accepted)
    assert replica_store.head() == source.head()
    assert [e.canonical for e in replica_store.read_entries(1, 100)] == [e.canonical for e in entries]
    assert [c.note for c in replica_store.checkpoints(0, 100)] == notes_of(source)
    report = audit_store(replica_store)  # a replica is a ledger an auditor can check as is
    assert report.ok, report.first_problem
    assert report.checkpoints == len(notes_of(source))


def test_replica_resumes_after_restart_and_skips_what_it_holds(source: Ledger, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "node")
    entries = entries_of(source)
    store = open_store(settings)
    Replica(store).accept_entries(entries[:25])
    store.close()
    store = open_store(settings)
    replica = Replica(store)
    assert replica.size == 25
    assert [e.seq for e in replica.accept_entries(entries)] == list(range(26, 61))  # 1..25 skipped
    assert replica.accept_entries(entries) == []
    assert store.head() == source.head()
    store.close()


def test_a_gap_is_a_transport_problem_not_a_violation(source: Ledger, replica_store: LedgerStore) -> None:
    replica = Replica(replica_store)
    entries = entries_of(source)
    replica.accept_entries(entries[:10])
    with pytest.raises(OutOfOrder):
        replica.accept_entries(entries[11:20])
    with pytest.raises(OutOfOrder):
        replica.accept_entries([entries[10], entries[12]])
    assert replica.halted is None
    assert [e.seq for e in replica.accept_entries(entries[10:20])] == list(range(11, 21))


@pytest.mark.postgres
def test_a_query_the_database_cancelled_during_the_replay_is_not_evidence_against_the_ledger(
    source: Ledger, pg_schema_url: str, tmp_path: Path
) -> None:
    """An administrator's lock (``VACUUM FULL``, ``LOCK TABLE``) and a cancelled query
    (``pg_cancel_backend``, a ``statement_timeout``) failed the replay's read of an
    aggregate: the replica recorded "entry N cannot be replayed: canceling statement" as
    evidence against the ledger and accepted nothing more, for good. It is now the
    database's error, and once it answers the replica takes the same entries, replayed
    from its store again (not from where the failed batch left the replay)."""
    first, second = source.admit("sp:a", "service_provider"), source.admit("sp:b", "service_provider")
    source.accept(give_level1(source, first, "q-1", "sp:a"), give_level1(source, second, "q-2", "sp:b"))
    entries = entries_of(source)
    store = open_store(Settings(data_dir=tmp_path / "node", database_url=pg_schema_url))
    try:
        Replica(store).accept_entries(entries[:62])
        load, cancelled = store.load_aggregate_before, []
        entries_table = f'"{database_url_schema(pg_schema_url)}".ledger_entries'

        def cancelled_by_an_administrator(aggregate_id: Any, seq: int) -> Any:
            if aggregate_id == principal_aggregate_id("sp:b") and not cancelled:  # entry 64's signer
                cancelled.append(seq)
                holder = psycopg.connect(PG_URL)
                holder.execute(f"LOCK TABLE {entries_table} IN ACCESS EXCLUSIVE MODE")
                threading.Thread(target=_cancel_what_waits, args=(holder, pg_schema_url)).start()
            return load(aggregate_id, seq)

        store.load_aggregate_before = cancelled_by_an_administrator  # type: ignore[method-assign]
        replica = Replica(store)  # as after a restart: the replay reads the aggregates it needs
        with pytest.raises(OperationalError, match="canceling statement"):
            replica.accept_entries(entries[62:])
        assert cancelled == [64] and replica.halted is None and replica.size == 62
        assert [e.seq for e in replica.accept_entries(entries[62:])] == [63, 64]
        assert store.head() == source.head()
    finally:
        store.close()


def test_a_batch_whose_commit_was_reported_failed_but_happened_is_not_taken_for_a_fork(
    source: Ledger, replica_store: LedgerStore
) -> None:
    """The database can commit and then fail to say so (the connection dropped at the
    commit). The replica took its size from before the batch, was sent the same entries
    again, and replayed them over a store that already held them."""
    import sqlite3

    entries = entries_of(source)
    replica = Replica(replica_store)
    replica.accept_entries(entries[:30])
    append = replica_store.append

    def committed_then_lost(batch: Any) -> None:
        append(batch)
        raise sqlite3.OperationalError("database is locked")  # as the answer went missing

    replica_store.append = committed_then_lost  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        replica.accept_entries(entries[30:45])
    replica_store.append = append  # type: ignore[method-assign]
    assert [e.seq for e in replica.accept_entries(entries[30:])] == list(range(46, 61))
    assert replica.halted is None and replica.size == 60 and replica_store.head() == source.head()


def test_the_database_failing_to_read_a_signers_last_nonce_is_not_evidence_against_the_ledger(
    source: Ledger, replica_store: LedgerStore
) -> None:
    """A replica resumed from its store reads each signer's last nonce from it during the
    replay: that read failing was recorded as "entry N cannot be replayed: database is
    locked", and the replica halted for good."""
    import sqlite3

    entries = entries_of(source)
    Replica(replica_store).accept_entries(entries[:30])
    last_nonce = replica_store.last_nonce

    def locked(signer: str) -> int:
        raise sqlite3.OperationalError("database is locked")

    replica_store.last_nonce = locked  # type: ignore[method-assign]
    replica = Replica(replica_store)  # as after a restart
    with pytest.raises(sqlite3.OperationalError):
        replica.accept_entries(entries[30:45])
    replica_store.last_nonce = last_nonce  # type: ignore[method-assign]
    assert replica.halted is None
    assert [e.seq for e in replica.accept_entries(entries[30:])] == list(range(31, 61))
    assert replica_store.head() == source.head()


def _cancel_what_waits(holder: psycopg.Connection[Any], url: str) -> None:
    """Cancel the query that waits for ``holder``'s lock on the schema of ``url``, then
    release the lock."""
    schema = database_url_schema(url)
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f"%{schema}%",),
            ).fetchone()
            if waiting is not None:
                admin.execute("SELECT pg_cancel_backend(%s)", waiting)
                break
            time.sleep(0.02)
    holder.rollback()
    holder.close()


def test_checkpoint_ahead_of_the_replica_is_checked_when_it_gets_there(
    source: Ledger, replica_store: LedgerStore
) -> None:
    replica = Replica(replica_store)
    notes = notes_of(source)
    entries = entries_of(source)
    replica.accept_entries(entries[:1])
    sizes = [parse_checkpoint_body(parse_note(n)[0]).size for n in notes]
    assert sizes == [1, 21, 41, 60]
    assert all(replica.accept_checkpoint(n) is None for n in notes[1:])  # they are ahead
    replica.accept_entries(entries[1:45])
    assert [c.size for c in replica_store.checkpoints(0, 100)] == [21, 41]
    replica.accept_entries(entries[45:])
    assert [c.note for c in replica_store.checkpoints(0, 100)] == notes[1:]
    assert replica.waiting_checkpoints() == []


# --- attacks ---------------------------------------------------------------------------


def _altered(stored: StoredEntry, change: Any) -> StoredEntry:
    document = json.loads(stored.canonical)
    change(document)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return stored._replace(canonical=canonical)


def _assert_halted_at(replica: Replica, store: LedgerStore, kind: ViolationKind, seq: int) -> None:
    violation = replica.halted
    assert violation is not None and violation.kind == kind.value and violation.seq == seq, violation
    assert store.head()[0] == seq - 1 if kind is ViolationKind.BAD_ENTRY else True
    with pytest.raises(ReplicaHalted):  # nothing more is accepted, even valid entries
        replica.accept_entries([])


def test_entry_with_a_bad_signature_is_named_and_nothing_after_it_is_accepted(
    source: Ledger, replica_store: LedgerStore
) -> None:
    entries = entries_of(source)

    def flip_signature(doc: dict[str, Any]) -> None:
        head, payload, sig = doc["tx"].split(".")
        raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
        raw[5] ^= 1
        doc["tx"] = f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"

    entries[30] = _altered(entries[30], flip_signature)
    replica = Replica(replica_store)
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_entries(entries)
    assert raised.value.violation.seq == 31
    assert "signature" in raised.value.violation.message
    _assert_halted_at(replica, replica_store, ViolationKind.BAD_ENTRY, 31)
    assert replica_store.head()[0] == 30  # the good prefix was kept
    evidence = json.loads(raised.value.violation.evidence)
    assert evidence["entry"] == entries[30].canonical.decode()
    # a restarted replica still refuses
    with pytest.raises(ReplicaHalted):
        Replica(replica_store).accept_entries(entries[30:])


def test_entry_altered_in_flight_is_named(source: Ledger, replica_store: LedgerStore) -> None:
    entries = entries_of(source)

    def change_subject(doc: dict[str, Any]) -> None:
        doc["data"]["subject"] = "p-someone-else"

    entries[40] = _altered(entries[40], change_subject)
    replica = Replica(replica_store)
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_entries(entries)
    assert "altered" in raised.value.violation.message
    _assert_halted_at(replica, replica_store, ViolationKind.BAD_ENTRY, 41)


def test_replayed_transaction_is_named(source: Ledger, replica_store: LedgerStore) -> None:
    """An entry that repeats an earlier transaction (same nonce) breaks the nonce rule."""
    entries = entries_of(source)
    earlier = json.loads(entries[10].canonical)["tx"]

    def reuse_tx(doc: dict[str, Any]) -> None:
        doc["tx"] = earlier

    entries[20] = _altered(entries[20], reuse_tx)
    replica = Replica(replica_store)
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_entries(entries)
    assert raised.value.violation.seq == 21


def _forged_checkpoint(ledger: Ledger, size: int, root: bytes) -> str:
    """A checkpoint signed with the ledger's real checkpoint key (a forked sequencer)."""
    key = ledger.sequencer._checkpoint_key
    assert key is not None
    origin = parse_checkpoint_body(parse_note(notes_of(ledger)[0])[0]).origin
    return sign_checkpoint(Checkpoint(origin, size, root), key.name, key.private_key)


def test_checkpoint_whose_root_does_not_match_is_named(source: Ledger, replica_store: LedgerStore) -> None:
    replica = Replica(replica_store)
    replica.accept_entries(entries_of(source))
    forged = _forged_checkpoint(source, 50, b"\x07" * 32)
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_checkpoint(forged)
    assert raised.value.violation.kind == ViolationKind.CHECKPOINT_MISMATCH
    assert raised.value.violation.seq == 50
    assert json.loads(raised.value.violation.evidence)["checkpoint"] == forged


def test_two_conflicting_checkpoints_for_one_size_are_equivocation(
    source: Ledger, replica_store: LedgerStore
) -> None:
    replica = Replica(replica_store)
    replica.accept_entries(entries_of(source))
    genuine = notes_of(source)[1]
    assert replica.accept_checkpoint(genuine) is not None
    size = parse_checkpoint_body(parse_note(genuine)[0]).size
    forged = _forged_checkpoint(source, size, b"\x09" * 32)
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_checkpoint(forged)
    violation = raised.value.violation
    assert violation.kind == ViolationKind.EQUIVOCATION and violation.seq == size
    evidence = json.loads(violation.evidence)
    assert {evidence["checkpoint"], evidence["conflicting_checkpoint"]} == {forged, genuine}


def test_checkpoint_signed_by_another_key_is_named(source: Ledger, replica_store: LedgerStore) -> None:
    replica = Replica(replica_store)
    replica.accept_entries(entries_of(source))
    genuine = notes_of(source)[1]
    checkpoint = parse_checkpoint_body(parse_note(genuine)[0])
    forged = sign_checkpoint(checkpoint, checkpoint.origin, Ed25519PrivateKey.generate())
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_checkpoint(forged)
    assert raised.value.violation.kind == ViolationKind.BAD_CHECKPOINT


def test_a_checkpoint_ahead_that_the_ledger_did_not_sign_is_named_at_once(
    source: Ledger, replica_store: LedgerStore
) -> None:
    """Not queued until the replica gets there (anyone could fill memory with notes for
    sizes it never reaches): its signature is checked when it arrives."""
    replica = Replica(replica_store)
    replica.accept_entries(entries_of(source)[:5])
    checkpoint = parse_checkpoint_body(parse_note(notes_of(source)[-1])[0])
    ahead = replace(checkpoint, size=10**12)
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_checkpoint(sign_checkpoint(ahead, ahead.origin, Ed25519PrivateKey.generate()))
    assert raised.value.violation.kind == ViolationKind.BAD_CHECKPOINT
    assert replica.waiting_checkpoints() == []


def _trusting(source: Ledger, store: LedgerStore) -> Replica:
    assert source.sequencer.ledger is not None
    return Replica(store, expected_checkpoint_key=source.sequencer.ledger["checkpoint_key"])


def _unsigned(note: str, size: int) -> str:
    checkpoint = replace(parse_checkpoint_body(parse_note(note)[0]), size=size)
    return sign_checkpoint(checkpoint, checkpoint.origin, Ed25519PrivateKey.generate())


def test_checkpoints_before_the_genesis_entry_are_checked_with_the_trusted_key(
    source: Ledger, replica_store: LedgerStore
) -> None:
    """Read before the genesis entry, the ledger's checkpoints wait for their entries,
    and notes the trusted key did not sign do not pile up in memory: the first of them
    is named as a bad checkpoint once the genesis entry confirms the key."""
    replica = _trusting(source, replica_store)
    notes = notes_of(source)
    assert all(replica.accept_checkpoint(n) is None for n in notes)
    assert replica.waiting_checkpoints() == [1, 21, 41, 60]
    for size in range(10**9, 10**9 + 200):  # anyone can write to the topic
        assert replica.accept_checkpoint(_unsigned(notes[-1], size)) is None
    assert replica.waiting_checkpoints() == [1, 21, 41, 60]
    with pytest.raises(ReplicaHalted) as raised:
        replica.accept_entries(entries_of(source)[:1])
    assert raised.value.violation.kind == ViolationKind.BAD_CHECKPOINT
    assert raised.value.violation.seq == 10**9


def test_the_ledgers_checkpoints_read_before_its_genesis_entry_are_kept_when_it_comes(
    source: Ledger, replica_store: LedgerStore
) -> None:
    replica = _trusting(source, replica_store)
    notes = notes_of(source)
    assert all(replica.accept_checkpoint(n) is None for n in notes)
    replica.accept_entries(entries_of(source))
    assert [c.note for c in replica_store.checkpoints(0, 100)] == notes
    assert replica.halted is None and replica.waiting_checkpoints() == []


def test_entries_of_another_ledger_are_a_configuration_error_not_evidence(
    source: Ledger, replica_store: LedgerStore
) -> None:
    """A new node given the wrong ledger key records nothing against the ledger: once
    started with the right key it follows as if the mistake had not happened."""
    wrong = Replica(replica_store, expected_checkpoint_key=_another_ledger_key())
    with pytest.raises(NotThisLedger, match="different checkpoint key"):
        wrong.accept_entries(entries_of(source)[:5])
    assert wrong.halted is None and replica_store.head()[0] == 0
    assert source.sequencer.ledger is not None
    right = Replica(replica_store, expected_checkpoint_key=source.sequencer.ledger["checkpoint_key"])
    right.accept_entries(entries_of(source))
    assert right.size == 60


def _another_ledger_key() -> str:
    from ledger.note import SignerKey

    return SignerKey("dfg.local/another", Ed25519PrivateKey.generate()).verifier().to_string()


def test_replica_of_another_chain_is_refused(source: Ledger, tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path / "node"))
    replica = Replica(store, expected_chain="some-other-chain")
    with pytest.raises(NotThisLedger, match=CHAIN):
        replica.accept_entries(entries_of(source)[:5])
    assert replica.halted is None and store.head()[0] == 0  # a configuration error, not evidence
    store.close()


# --- starting from a bundle or from the API ------------------------------------------------


def test_replica_starts_from_an_audit_bundle(source: Ledger, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gateways.cli.main import cli
    from gateways.seed import seed_from_bundle

    bundle = tmp_path / "ledger.bundle"
    result = CliRunner().invoke(
        cli, ["audit", "export", "--data", str(source.settings.data_dir), "--out", str(bundle)]
    )
    assert result.exit_code == 0, result.output
    store = open_store(Settings(data_dir=tmp_path / "node"))
    replica = Replica(store)
    assert seed_from_bundle(replica, bundle) == 60
    assert store.head() == source.head()
    assert [c.note for c in store.checkpoints(0, 100)] == notes_of(source)
    store.close()


def test_a_node_started_again_from_the_same_bundle_says_it_had_nothing_to_add(
    source: Ledger, tmp_path: Path
) -> None:
    """A node restarted with its --from-bundle printed "seeded: verified entries 61..60"."""
    from unittest import mock

    from click.testing import CliRunner

    from gateways.cli.main import cli

    assert source.sequencer.ledger is not None
    bundle = tmp_path / "ledger.bundle"
    result = CliRunner().invoke(
        cli, ["audit", "export", "--data", str(source.settings.data_dir), "--out", str(bundle)]
    )
    assert result.exit_code == 0, result.output
    key = source.sequencer.ledger["checkpoint_key"]
    follow = ["node", "follow", "--data", str(tmp_path / "node"), "--kafka", "127.0.0.1:9", "--chain", CHAIN,
              "--ledger-key", key, "--from-bundle", str(bundle)]  # fmt: skip
    with mock.patch.object(Follower, "run", return_value=0):
        first = CliRunner().invoke(cli, follow)
        again = CliRunner().invoke(cli, follow)
    assert first.exit_code == 0 and "seeded: verified entries 1..60" in first.output, first.output
    assert again.exit_code == 0, again.output
    assert "seeded: nothing new: the replica already holds 60 entries" in again.output


def test_replica_starts_from_the_ledger_api_and_refuses_a_lying_server(
    source: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from http_server import running_server

    import gateways.seed

    source.sequencer.store.close()  # the server opens the ledger itself
    with running_server(source.settings) as url:
        store = open_store(Settings(data_dir=tmp_path / "node"))
        replica = Replica(store)
        assert gateways.seed.seed_from_api(replica, url) >= 60
        assert replica.halted is None
        assert replica_checkpoints(store)
        store.close()

        honest = gateways.seed._get

        def lying(address: str) -> bytes:
            lines = honest(address).split(b"\n")
            for i, line in enumerate(lines):
                if line and json.loads(line)["seq"] == 30:
                    doc = json.loads(line)
                    doc["data"]["subject"] = "p-mallory"
                    lines[i] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            return b"\n".join(lines)

        monkeypatch.setattr(gateways.seed, "_get", lying)
        store = open_store(Settings(data_dir=tmp_path / "node2"))
        replica = Replica(store)
        with pytest.raises(ReplicaHalted) as raised:
            gateways.seed.seed_from_api(replica, url)
        assert raised.value.violation.seq == 30 and store.head()[0] == 29
        store.close()


def replica_checkpoints(store: LedgerStore) -> list[int]:
    return [c.size for c in store.checkpoints(0, 100)]


def test_follower_finishes_applying_its_views_after_a_crash_between_replica_and_views(
    source: Ledger, tmp_path: Path
) -> None:
    import sqlite3

    from gateways.kafka.client import KafkaSettings
    from gateways.kafka.follower import Follower
    from gateways.kafka.topics import Topics
    from infra.bootstrap import open_views
    from projections.base import prepare
    from projections.registry import all_views

    settings = Settings(data_dir=tmp_path / "node")
    store = open_store(settings)
    Replica(store).accept_entries(entries_of(source))  # stored, but the views never saw them
    views = open_views(settings)
    view_list = all_views()
    for view in view_list:
        prepare(views, view, store.read_entries)
    stop = threading.Event()
    stop.set()
    follower = Follower(
        Replica(store), views, view_list, KafkaSettings("127.0.0.1:9"), Topics.for_ledger(CHAIN)
    )
    assert follower.run(stop) == 0
    with sqlite3.connect(settings.views_file) as db:
        assert db.execute("SELECT COUNT(*) FROM consent_state").fetchone()[0] == 58
    views.close()
    store.close()


def test_a_node_following_a_lying_api_stops_and_keeps_the_evidence(
    source: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from http_server import running_server

    import gateways.seed

    source.sequencer.store.close()
    with running_server(source.settings) as url:
        honest = gateways.seed._get

        def lying(address: str) -> bytes:
            body = honest(address)
            return body.replace(b'"subject":"p-40"', b'"subject":"p-mallory"')

        monkeypatch.setattr(gateways.seed, "_get", lying)
        store = open_store(Settings(data_dir=tmp_path / "node"))
        replica, _, follower = _following_api(store, url)
        follower.join(20)
        assert not follower.is_alive()  # it stopped by itself, on the violation, and said why
        assert replica.halted is not None and replica.halted.kind == "bad_entry"
        assert any("stopped following" in r.getMessage() for r in caplog.records)
        store.close()


def test_a_computation_nodes_health_check_fails_once_its_replica_found_a_violation(tmp_path: Path) -> None:
    """A node's /healthz said ok however its replica stood: one that found a violation
    accepts nothing more, so the node serves a frozen copy, and monitoring should see it."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from gateways.http.node_app import build_node_app

    settings = Settings(data_dir=tmp_path / "node")
    node = open_node(settings, ledger_key=None, chain=None, verifier=ParallelVerifier(0))

    async def health() -> tuple[int, dict[str, Any]]:
        app = build_node_app(node.store, node.views, node.view_list, "http://127.0.0.1:9")
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/healthz")
            return response.status, await response.json()

    try:
        assert asyncio.run(health()) == (200, {"status": "ok", "role": "node", "size": 0})
        with pytest.raises(ReplicaHalted):
            node.replica.report_violation(ViolationKind.BAD_ENTRY, 1, "not an entry", {"record": "x"})
        status, body = asyncio.run(health())
        assert status == 503 and body["status"] == "halted"
        assert body["halted"] == {"kind": "bad_entry", "seq": 1, "message": "not an entry"}
    finally:
        node.close()


def test_a_computation_nodes_errors_are_problem_documents_with_a_code(tmp_path: Path) -> None:
    """A node's server answered an unknown path, a wrong method and a body in a coding
    it does not decode in aiohttp's plain text (the last read as if it were JSON), where
    the coordinator answers problem documents with a machine-readable code."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from gateways.http.node_app import build_node_app

    settings = Settings(data_dir=tmp_path / "node")
    node = open_node(settings, ledger_key=None, chain=None, verifier=ParallelVerifier(0))

    async def answers() -> list[tuple[int, str, str]]:
        app = build_node_app(node.store, node.views, node.view_list, "http://127.0.0.1:9")
        async with TestClient(TestServer(app)) as client:
            found = []
            for response in (
                await client.get("/v1/nothing-here"),
                await client.post("/healthz", data=b"{}"),
                await client.post("/graphql", data=b"x", headers={"Content-Encoding": "compress"}),
            ):
                found.append((response.status, response.content_type, (await response.json())["code"]))
            return found

    try:
        assert asyncio.run(answers()) == [
            (404, "application/problem+json", "not_found"),
            (405, "application/problem+json", "method_not_allowed"),
            (415, "application/problem+json", "unsupported_content_encoding"),
        ]
    finally:
        node.close()


class _Consumer:
    """A consumer that hands out prepared polls (the broker is not what is tested)."""

    def __init__(self, *assigned: Any) -> None:
        self.polls: list[dict[Any, list[SimpleNamespace]]] = []
        self.assigned = set(assigned)

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[SimpleNamespace]]:
        return self.polls.pop(0) if self.polls else {}

    def assignment(self) -> set[Any]:
        return self.assigned

    def highwater(self, tp: Any) -> int | None:
        return None

    def close(self) -> None:
        pass


def _records(first_offset: int, records: list[tuple[bytes, bytes, Any]]) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(offset=first_offset + i, key=key, value=value, headers=headers)
        for i, (key, value, headers) in enumerate(records)
    ]


def test_a_checkpoint_waiting_for_its_entries_is_read_again_after_a_restart(
    source: Ledger, tmp_path: Path
) -> None:
    """A follower that reads checkpoints ahead of its entries (catching up) holds them in
    memory until the entries are there: its saved position must not pass them, or a
    restart would never check, keep or cosign them."""
    topics = Topics.for_ledger(CHAIN)
    entries_tp, checkpoints_tp = partition(topics.entries), partition(topics.checkpoints)
    entries = [entry_record(e) for e in entries_of(source)]
    notes = [checkpoint_record(parse_checkpoint_body(parse_note(n)[0]).size, n) for n in notes_of(source)]
    settings = Settings(data_dir=tmp_path / "node")

    def follower() -> tuple[Follower, _Consumer]:
        node = open_node(settings, ledger_key=None, chain=None, verifier=ParallelVerifier(workers=0))
        started = Follower(node.replica, node.views, node.view_list, KafkaSettings("127.0.0.1:1"), topics)
        consumer = _Consumer(entries_tp, checkpoints_tp)
        started._consumer = consumer  # type: ignore[assignment]
        return started, consumer

    first, consumer = follower()
    consumer.polls.append({entries_tp: _records(0, entries[:30]), checkpoints_tp: _records(0, notes)})
    first.step()
    waiting = first.replica.waiting_checkpoints()
    assert first.replica.size == 30 and waiting and min(waiting) > 30
    held = len(notes) - len(waiting)
    assert first.store.marker(CHECKPOINTS_MARKER) == held  # the first waiting record's offset
    first.store.close()
    first.views.close()

    second, consumer = follower()  # a restart: what waited in memory is gone
    assert second.replica.waiting_checkpoints() == []
    consumer.polls.append(
        {entries_tp: _records(30, entries[30:]), checkpoints_tp: _records(held, notes[held:])}
    )
    second.step()
    assert second.replica.size == len(entries) and second.replica.waiting_checkpoints() == []
    assert [c.size for c in second.store.checkpoints(0, 100)] == [
        parse_checkpoint_body(parse_note(n)[0]).size for n in notes_of(source)
    ]
    assert second.store.marker(CHECKPOINTS_MARKER) == len(notes)
    second.store.close()
    second.views.close()


def test_a_node_following_the_api_records_when_it_last_reached_the_log_end(
    source: Ledger, tmp_path: Path
) -> None:

    from click.testing import CliRunner
    from http_server import running_server

    from gateways.cli.main import cli

    size = source.sequencer.store.head()[0]
    source.sequencer.store.close()
    with running_server(source.settings) as url:
        store = open_store(Settings(data_dir=tmp_path / "node"))
        _, stop, follower = _following_api(store, url)
        deadline = time.monotonic() + 20
        while not store.marker("follower.seen_at_ms") and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        follower.join(10)
        store.close()
    result = CliRunner().invoke(cli, ["node", "status", "--data", str(tmp_path / "node"), "--json"])
    report = json.loads(result.output)
    assert report["size"] == report["topic_end"] == size and report["lag_entries"] == 0
    assert report["topic_end_seen_age_s"] is not None and report["topic_end_seen_age_s"] < 20
    shown = CliRunner().invoke(cli, ["node", "status", "--data", str(tmp_path / "node")]).output
    assert f"replica size       {size:,}" in shown
    assert f"last checkpoint    size {report['last_checkpoint']:,}" in shown, shown


def test_node_status_says_the_lag_is_unknown_before_a_follower_has_read_the_log_end(
    source: Ledger, tmp_path: Path
) -> None:
    """It reported "0 entries behind (topic end 5)": the replica's own size, never seen."""
    from click.testing import CliRunner

    from gateways.cli.main import cli

    store = open_store(Settings(data_dir=tmp_path / "node"))
    replica = Replica(store)
    replica.accept_entries(source.sequencer.store.read_entries(1, 3))
    store.close()
    data = ["node", "status", "--data", str(tmp_path / "node")]
    report = json.loads(CliRunner().invoke(cli, [*data, "--json"]).output)
    assert (report["size"], report["topic_end"], report["lag_entries"]) == (3, None, None)
    shown = CliRunner().invoke(cli, data).output
    assert "behind the log     unknown" in shown and "ends at" not in shown


def _following_api(store: LedgerStore, url: str) -> tuple[Replica, threading.Event, threading.Thread]:
    """A replica of ``store`` following the ledger's API at ``url`` in a thread (polling
    often), as ``dfg node serve`` follows it."""
    import gateways.seed

    replica, stop = Replica(store), threading.Event()
    follower = threading.Thread(
        target=gateways.seed.follow_api, args=(replica, lambda: None, url, stop), kwargs={"interval": 0.01}
    )
    follower.start()
    return replica, stop, follower
