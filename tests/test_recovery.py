"""A ledger restored from an older backup takes back what it had published (``dfg recover``)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateways.cli.main import cli
from gateways.kafka.client import KafkaSettings
from gateways.kafka.relay import Relay, RelayError
from gateways.kafka.topics import Topics
from infra.bootstrap import RecoveryUnfinished, open_sequencer, open_store
from infra.bundle import export_bundle
from infra.settings import Settings
from infra.store_role import StoreRole, store_role
from ledger.segmented_audit import audit_in_segments
from ledger.store import LedgerStore
from ledger.witness import cosign
from tests.conftest import CHAIN, Ledger, give_level1, make_ledger
from tests.replication import nodes, start_relay, wait_for


def _backup(ledger: Ledger, to: Path) -> Path:
    """An online backup of the ledger's SQLite database, as `sqlite3 .backup` takes it."""
    source = sqlite3.connect(ledger.settings.data_dir / "ledger.sqlite")
    target = sqlite3.connect(to)
    with target:
        source.backup(target)
    source.close()
    target.close()
    return to


def _restore(ledger: Ledger, backup: Path) -> None:
    """Stop the sequencer and put the backup in place of its database."""
    ledger.sequencer.verifier.close()
    ledger.sequencer.store.close()
    database = ledger.settings.data_dir / "ledger.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{database}{extra}").unlink(missing_ok=True)
    database.write_bytes(backup.read_bytes())


def _head(settings: Settings) -> tuple[int, bytes]:
    store = open_store(settings)
    try:
        return store.head()
    finally:
        store.close()


def _export(store: LedgerStore, path: Path) -> Path:
    """An audit bundle of ``store``, as `dfg audit export` writes it."""
    with path.open("wb") as out:
        export_bundle(store, out)
    return path


def _another_ledgers_bundle(tmp_path: Path) -> Path:
    other = make_ledger(Settings(data_dir=tmp_path / "other"))
    try:
        return _export(other.sequencer.store, tmp_path / "other.jsonl")
    finally:
        other.sequencer.store.close()


def _drop_schema(url_with_schema: str) -> None:
    """Lose a PostgreSQL ledger altogether."""
    import psycopg

    url, _, schema = url_with_schema.partition("?schema=")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _recover(settings: Settings, *source: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["recover", "--data", str(settings.data_dir), *source])
    return result.exit_code, result.output


@pytest.mark.kafka
@pytest.mark.slow
def test_a_ledger_restored_from_an_older_backup_takes_back_from_its_topics_what_it_published(
    ledger: Ledger, kafka: KafkaSettings, tmp_path: Path
) -> None:
    """Restored and served again without recovery, the ledger would number new entries in
    the places of those its replica holds (a fork). Recovered, it continues the log the
    replica verified, which follows it on without a violation."""
    topics = Topics.for_ledger(CHAIN, "recover")
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(30)])
    ledger.sequencer.checkpoint_now()
    relay, running = start_relay(ledger.sequencer.store, kafka, topics)
    with nodes(tmp_path, kafka, topics, 1) as (node,):
        wait_for(lambda: node.size == ledger.head()[0], what="the replica to catch up")
        backup = _backup(ledger, tmp_path / "backup.sqlite")
        ledger.accept(*[give_level1(ledger, app, f"q-{i}") for i in range(40)])
        ledger.sequencer.checkpoint_now()
        published = ledger.head()
        wait_for(lambda: relay.stats.entries_published == published[0], what="the relay")
        running.halt()
        wait_for(lambda: node.size == published[0], what="the replica to hold everything")
        _restore(ledger, backup)
        restored = _head(ledger.settings)
        assert restored[0] == published[0] - 40

        store = open_store(ledger.settings)
        try:
            with pytest.raises(RelayError, match=r"restored from an older backup.*dfg recover"):
                Relay(store, kafka, topics).connect()
        finally:
            store.close()

        code, output = _recover(ledger.settings, "--kafka", kafka.bootstrap, "--topic-prefix", "recover")
        assert code == 0, output
        assert f"recovered entries {restored[0] + 1} to {published[0]}" in output
        assert _head(ledger.settings) == published
        code, output = _recover(ledger.settings, "--kafka", kafka.bootstrap, "--topic-prefix", "recover")
        assert code == 0 and "nothing to recover" in output, output

        ledger.sequencer = open_sequencer(ledger.settings)
        ledger.accept(*[give_level1(ledger, app, f"r-{i}") for i in range(5)])
        ledger.sequencer.checkpoint_now()
        relay, running = start_relay(ledger.sequencer.store, kafka, topics)
        try:
            wait_for(lambda: node.size == published[0] + 5, what="the replica to follow on")
            assert node.follower is not None
            wait_for(lambda: node.follower.status.last_checkpoint == published[0] + 5, what="checkpoint")
            assert node.follower.status.halted is None
            assert node.follower.replica.store.head() == ledger.head()
        finally:
            running.halt()
    report = audit_in_segments(ledger.sequencer.store, lambda: open_store(ledger.settings))
    assert report.ok, report.first_problem


@pytest.mark.kafka
def test_a_restored_ledger_that_accepted_transactions_since_is_not_mended_by_recovery(
    ledger: Ledger, kafka: KafkaSettings, tmp_path: Path
) -> None:
    """Its new entries took the places of published ones: appending the topic's later
    entries would hide the fork, so nothing is written and the operator is told why."""
    topics = Topics.for_ledger(CHAIN, "forked")
    app = ledger.admit("sp:app", "service_provider")
    backup = _backup(ledger, tmp_path / "backup.sqlite")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(10)])
    relay, running = start_relay(ledger.sequencer.store, kafka, topics)
    wait_for(lambda: relay.stats.entries_published == ledger.head()[0], what="the relay")
    running.halt()
    _restore(ledger, backup)
    ledger.sequencer = open_sequencer(ledger.settings)
    other = ledger.admit("sp:other", "service_provider")  # served before recovering: a fork
    ledger.accept(give_level1(ledger, other, "x", controller="sp:other"))
    forked = ledger.head()
    ledger.sequencer.store.close()

    code, output = _recover(ledger.settings, "--kafka", kafka.bootstrap, "--topic-prefix", "forked")
    assert code == 1
    assert "accepted transactions after it was restored" in output and "Nothing was written" in output
    assert _head(ledger.settings) == forked
    ledger.sequencer = open_sequencer(ledger.settings)


def test_a_restored_ledger_takes_back_what_it_published_from_an_audit_bundle(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Without Kafka: from `dfg audit export` of a node operator's replica (here of the
    ledger as it stood, which is what a replica holds)."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(5)])
    backup = _backup(ledger, tmp_path / "backup.sqlite")
    ledger.accept(*[give_level1(ledger, app, f"q-{i}") for i in range(20)])
    ledger.sequencer.checkpoint_now()
    published = ledger.head()
    bundle = _export(ledger.sequencer.store, tmp_path / "replica.jsonl")
    _restore(ledger, backup)

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 0, output
    assert _head(ledger.settings) == published
    _serves_on_from(ledger, app, published[0])


def test_a_source_older_than_the_restored_ledger_is_not_taken_for_a_check(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An old replica's bundle, given to a ledger that was served after its restore:
    recovery said "every entry of the source is one this ledger holds (N entries)",
    N being the ledger's count, as if its entries past the bundle's end were checked."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(3)])
    ledger.sequencer.checkpoint_now()
    bundle = _export(ledger.sequencer.store, tmp_path / "old.jsonl")
    old = ledger.head()[0]
    ledger.accept(*[give_level1(ledger, app, f"q-{i}") for i in range(2)])
    held = ledger.head()
    ledger.sequencer.store.close()

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 0, output
    assert f"the source holds {old} entries" in output, output
    assert f"entries {old + 1} to {held[0]} are not in the source" in output, output
    assert _head(ledger.settings) == held
    ledger.sequencer = open_sequencer(ledger.settings)


def test_recovery_refuses_another_ledgers_bundle_and_writes_nothing(ledger: Ledger, tmp_path: Path) -> None:
    other = make_ledger(Settings(data_dir=tmp_path / "other"))
    try:
        app = other.admit("sp:app", "service_provider")
        other.accept(*[give_level1(other, app, f"p-{i}") for i in range(3)])
        bundle = tmp_path / "other.jsonl"
        with bundle.open("wb") as out:
            export_bundle(other.sequencer.store, out)
    finally:
        other.sequencer.store.close()
    ledger.sequencer.store.close()
    held = _head(ledger.settings)

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 1 and "entry 1 of this ledger is not the one the bundle" in output, output
    assert _head(ledger.settings) == held
    ledger.sequencer = open_sequencer(ledger.settings)


def test_recover_needs_one_source_and_the_ledger_itself(ledger: Ledger, tmp_path: Path) -> None:
    ledger.sequencer.store.close()
    data = ["--data", str(ledger.settings.data_dir)]
    for args in ([], ["--kafka", "127.0.0.1:9", "--from-bundle", __file__]):
        result = CliRunner().invoke(cli, ["recover", *data, *args])
        assert result.exit_code == 2 and "give one source" in result.output
    result = CliRunner().invoke(cli, ["recover", "--data", str(tmp_path / "none"), "--from-bundle", __file__])
    assert result.exit_code == 1 and "no ledger" in result.output.lower(), result.output
    ledger.sequencer = open_sequencer(ledger.settings)
    result = CliRunner().invoke(cli, ["recover", *data, "--from-bundle", __file__])  # while it serves
    assert result.exit_code == 1 and "recovering it" in result.output, result.output


def _serves_on_from(ledger: Ledger, app: Any, size: int) -> None:
    """The recovered ledger serves again: its next entry follows the ``size`` it took back."""
    ledger.sequencer = open_sequencer(ledger.settings)
    ledger.accept(give_level1(ledger, app, "after"))
    assert ledger.head()[0] == size + 1


def _lose_the_database(ledger: Ledger) -> None:
    ledger.sequencer.verifier.close()
    ledger.sequencer.store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger.settings.ledger_file}{suffix}").unlink(missing_ok=True)


def test_a_ledger_whose_database_is_lost_is_rebuilt_from_its_keys_and_a_replicas_bundle(
    ledger: Ledger, tmp_path: Path
) -> None:
    app = ledger.admit("sp:app", "service_provider")
    witness = ledger.admit("node:w", "node_operator")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(12)])
    ledger.sequencer.checkpoint_now()
    published = ledger.head()
    store = ledger.sequencer.store
    newest = store.latest_checkpoint()
    assert newest is not None and newest.size == published[0]
    line = cosign(newest.note, "node:w", witness.key.private_key, int(time.time()))
    store.save_cosignature(newest.size, "node:w", line)
    bundle = _export(store, tmp_path / "replica.jsonl")
    _lose_the_database(ledger)

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 0, output
    assert f"recovered entries 1 to {published[0]}" in output
    assert _head(ledger.settings) == published
    rebuilt = open_store(ledger.settings)
    try:  # final before the loss, final again: its witness's cosignature came back with it
        kept = rebuilt.latest_checkpoint()
        assert kept is not None and kept.cosignatures == (line,)
    finally:
        rebuilt.close()
    _serves_on_from(ledger, app, published[0])


def test_a_lost_ledger_is_not_rebuilt_from_another_ledgers_bundle_nor_without_its_keys(
    ledger: Ledger, tmp_path: Path
) -> None:
    bundle = _another_ledgers_bundle(tmp_path)
    _lose_the_database(ledger)

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 1 and "another ledger" in output, output
    assert not ledger.settings.ledger_file.exists()  # no empty ledger left behind
    code, output = _recover(ledger.settings, "--kafka", "127.0.0.1:9092")
    assert code == 2 and "give --chain" in output, output

    for key in ledger.settings.keys_dir.iterdir():
        key.unlink()
    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 1 and "nothing to rebuild it with" in output, output
    assert not ledger.settings.ledger_file.exists()


@pytest.mark.kafka
def test_a_ledger_whose_database_is_lost_is_rebuilt_from_its_topics(
    ledger: Ledger, kafka: KafkaSettings
) -> None:
    topics = Topics.for_ledger(CHAIN, "rebuild")
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(8)])
    ledger.sequencer.checkpoint_now()
    relay, running = start_relay(ledger.sequencer.store, kafka, topics)
    wait_for(lambda: relay.stats.checkpoints_published > 0, what="the relay")
    running.halt()
    published = ledger.head()
    _lose_the_database(ledger)

    args = ("--kafka", kafka.bootstrap, "--topic-prefix", "rebuild", "--chain", CHAIN)
    code, output = _recover(ledger.settings, *args)
    assert code == 0, output
    assert _head(ledger.settings) == published
    ledger.sequencer = open_sequencer(ledger.settings)


@pytest.mark.postgres
def test_a_ledger_whose_postgres_schema_is_lost_is_rebuilt_from_a_replicas_bundle(
    pg_schema_url: str, tmp_path: Path
) -> None:

    settings = Settings(data_dir=tmp_path / "data", database_url=pg_schema_url)
    ledger = make_ledger(settings)
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(6)])
    ledger.sequencer.checkpoint_now()
    published = ledger.head()
    bundle = _export(ledger.sequencer.store, tmp_path / "replica.jsonl")
    ledger.sequencer.verifier.close()
    ledger.sequencer.store.close()
    _drop_schema(pg_schema_url)

    result = CliRunner().invoke(
        cli,
        [
            "recover",
            "--data",
            str(settings.data_dir),
            "--database-url",
            pg_schema_url,
            "--from-bundle",
            str(bundle),
        ],
    )
    assert result.exit_code == 0, result.output
    assert _head(settings) == published
    sequencer = open_sequencer(settings)
    sequencer.verifier.close()
    sequencer.store.close()


def test_brokers_that_do_not_answer_end_recovery_with_a_message_not_a_traceback(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka.errors import KafkaTimeoutError

    def unreachable(self: KafkaSettings, **_: object) -> None:
        raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9")

    monkeypatch.setattr(KafkaSettings, "consumer", unreachable)
    ledger.sequencer.store.close()
    code, output = _recover(ledger.settings, "--kafka", "127.0.0.1:9")
    assert code == 1, output
    assert "broker unavailable" in output and "run it again once the brokers answer" in output
    ledger.sequencer = open_sequencer(ledger.settings)


@pytest.mark.postgres
def test_a_second_rebuild_of_a_postgres_schema_still_refuses_another_ledgers_bundle(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """A failed rebuild leaves PostgreSQL's empty tables behind: the next attempt is still
    a rebuild, checked against the keys, not a recovery of a ledger that has none."""

    settings = Settings(data_dir=tmp_path / "data", database_url=pg_schema_url)
    ledger = make_ledger(settings)
    ledger.sequencer.verifier.close()
    ledger.sequencer.store.close()
    bundle = _another_ledgers_bundle(tmp_path)
    _drop_schema(pg_schema_url)
    args = ["recover", "--data", str(settings.data_dir), "--database-url", pg_schema_url]

    for _ in range(2):
        result = CliRunner().invoke(cli, [*args, "--from-bundle", str(bundle)])
        assert result.exit_code == 1 and "another ledger" in result.output, result.output
        assert _head(settings)[0] == 0
    result = CliRunner().invoke(cli, [*args, "--kafka", "127.0.0.1:9"])
    assert result.exit_code == 2 and "give --chain" in result.output, result.output


def _lost_with_a_bundle_bad_at_entry_6(ledger: Ledger, tmp_path: Path) -> Path:
    """Seven entries; the database lost; a replica's bundle whose entry 6 was changed."""
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(6)])
    bundle = _export(ledger.sequencer.store, tmp_path / "replica.jsonl")
    lines = bundle.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b'"subject":"p-', b'"subject":"z-', 1)  # entry 6 changed
    bundle.write_bytes(b"\n".join(lines))
    _lose_the_database(ledger)
    return bundle


def test_a_rebuild_that_stops_at_a_bad_entry_keeps_what_it_says_it_holds(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The message says how many entries the ledger holds and that running it again goes
    on: a rebuilt ledger.sqlite removed after that contradicted it."""
    bundle = _lost_with_a_bundle_bad_at_entry_6(ledger, tmp_path)

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 1 and "bad_entry at entry 6" in output and "holds 5 entries" in output, output
    assert _head(ledger.settings)[0] == 5
    kept = open_store(ledger.settings)
    try:  # the ledger's, if only in part: `dfg node follow` may not take it for a replica
        assert store_role(kept) is StoreRole.LEDGER
    finally:
        kept.close()


def test_a_rebuild_interrupted_with_ctrl_c_keeps_what_it_verified_as_the_ledgers(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted, it printed click's "Aborted!" and left the entries in a store it had
    not marked as the ledger's; an interruption before any entry left an empty file."""
    import gateways.cli.recover_command as command
    import gateways.recovery as recovery

    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(6)])
    bundle = _export(ledger.sequencer.store, tmp_path / "replica.jsonl")
    _lose_the_database(ledger)
    monkeypatch.setattr(recovery, "PAGE", 2)
    real = recovery.recover_from_bundle

    def interrupted_at(size: int) -> Any:
        def recover(store: Any, path: Path, progress: Any, expected: Any) -> Any:
            def tick(held: int) -> None:
                if held >= size:
                    raise KeyboardInterrupt
                progress(held)

            return real(store, path, tick, expected)

        return recover

    def at_once(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "recover_from_bundle", at_once)
    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 130 and "holds 0 verified entries" in output, output
    assert not ledger.settings.ledger_file.exists()  # dfg init would take an empty file for a ledger
    monkeypatch.setattr(command, "recover_from_bundle", interrupted_at(1))
    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 130 and "interrupted: the ledger holds 2 verified entries" in output, output
    kept = open_store(ledger.settings)
    try:
        assert kept.head()[0] == 2 and store_role(kept) is StoreRole.LEDGER
    finally:
        kept.close()
    # served as it is, its next entry would take the place of entry 3 that replicas hold
    with pytest.raises(RecoveryUnfinished, match="dfg recover of this ledger did not finish"):
        open_sequencer(ledger.settings)
    monkeypatch.setattr(command, "recover_from_bundle", real)
    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 0 and "recovered entries 3 to" in output, output
    assert _head(ledger.settings)[0] == 8
    open_sequencer(ledger.settings).store.close()  # finished: it serves again


def test_an_unfinished_recovery_is_ended_on_purpose_with_abandon(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the source is lost or bad beyond some entry, the operator may go on from what
    the ledger holds, knowing that replicas holding later entries will record a fork."""
    bundle = _lost_with_a_bundle_bad_at_entry_6(ledger, tmp_path)
    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 1 and "bad_entry at entry 6" in output, output
    data = ["--data", str(ledger.settings.data_dir)]
    assert CliRunner().invoke(cli, ["principals", "show", "op:federation", *data]).exit_code == 0  # reading
    refused = CliRunner().invoke(cli, ["principals", "grant-role", "op:federation", "auditor", *data])
    assert refused.exit_code == 1 and "did not finish" in refused.output, refused.output
    with pytest.raises(RecoveryUnfinished):
        open_sequencer(ledger.settings)
    assert _recover(ledger.settings, "--abandon", "--from-bundle", str(bundle))[0] == 2
    code, output = _recover(ledger.settings, "--abandon")
    assert code == 0 and "goes on from its 5 entries" in output, output
    assert "nothing to abandon" in _recover(ledger.settings, "--abandon")[1]
    sequencer = open_sequencer(ledger.settings)
    try:
        assert sequencer.size == 5
    finally:
        sequencer.store.close()


def test_a_refused_recovery_that_appended_nothing_leaves_the_ledger_as_it_was(
    ledger: Ledger, tmp_path: Path
) -> None:
    other = make_ledger(Settings(data_dir=tmp_path / "other"))
    try:
        bundle = _export(other.sequencer.store, tmp_path / "other.jsonl")
    finally:
        other.sequencer.store.close()
    ledger.sequencer.store.close()
    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 1, output
    open_sequencer(ledger.settings).store.close()


def test_recovered_entries_no_checkpoint_covers_are_counted_and_named(ledger: Ledger, tmp_path: Path) -> None:
    """Entries beyond the newest checkpoint carry their signers' signatures but nothing of
    the ledger's: whoever made the source could have added them. The operator is told."""
    app = ledger.admit("sp:app", "service_provider")
    backup = _backup(ledger, tmp_path / "backup.sqlite")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(4)])
    ledger.sequencer.checkpoint_now()
    ledger.accept(*[give_level1(ledger, app, f"q-{i}") for i in range(3)])
    store = ledger.sequencer.store
    newest = store.latest_checkpoint()
    assert newest is not None and newest.size == ledger.head()[0] - 3
    bundle = _export(store, tmp_path / "replica.jsonl")
    _restore(ledger, backup)

    code, output = _recover(ledger.settings, "--from-bundle", str(bundle))
    assert code == 0, output
    assert "Warning: the last 3 are beyond the newest checkpoint the ledger signed" in output
    ledger.sequencer = open_sequencer(ledger.settings)
