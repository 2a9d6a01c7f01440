"""A store records what it is, a ledger or a node's replica of one, and no command
writes it as the other: a sequencer on a replica would append entries the ledger never
had (a fork under its name), a follower on a ledger would write its markers and
violations into the ledger's database. Mixing them up takes one wrong `--data` or
`--database-url`."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CHAIN, Ledger, give_level1, make_ledger

from gateways.cli.main import cli
from gateways.kafka.follower import CHECKPOINTS_MARKER as FOLLOWER_CHECKPOINTS
from gateways.kafka.follower import COSIGNED_MARKER, TOPIC_END_MARKER
from gateways.kafka.relay import CHECKPOINTS_MARKER
from gateways.kafka.relay import ENTRIES_MARKER as RELAY_ENTRIES
from infra.bootstrap import checkpoint_key, open_sequencer, open_store
from infra.keyfiles import KeyFileError
from infra.node import open_node
from infra.settings import Settings
from infra.store_role import (
    LEDGER_EVIDENCE,
    REPLICA_EVIDENCE,
    ROLE_MARKER,
    StoreRole,
    WrongStoreRole,
    store_role,
)
from ledger.audit import AuditFailure
from ledger.verifier import ParallelVerifier


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def places(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, Settings]]:
    """Where a ledger lives and where a node keeps its replica (two schemas on
    PostgreSQL, two directories on SQLite)."""
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path / "data"), Settings(data_dir=tmp_path / "node")
        return
    import psycopg

    ledger_url = request.getfixturevalue("pg_schema_url")
    pg_url = request.getfixturevalue("pg_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield (
        Settings(data_dir=tmp_path / "data", database_url=ledger_url),
        Settings(data_dir=tmp_path / "node", database_url=f"{pg_url}?schema={schema}"),
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _ledger_with_entries(settings: Settings) -> Ledger:
    ledger = make_ledger(settings)
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"p-{i}") for i in range(5)])
    ledger.sequencer.checkpoint_now()
    return ledger


def _replicate(ledger: Ledger, node: Settings) -> None:
    replica = open_node(node, ledger_key=None, chain=None, verifier=ParallelVerifier(0))
    try:
        replica.replica.accept_entries(list(ledger.sequencer.store.read_entries(1, 1000)))
    finally:
        replica.close()


def test_a_ledger_and_a_replica_say_what_they_are(places: tuple[Settings, Settings]) -> None:
    ledger_at, node_at = places
    ledger = _ledger_with_entries(ledger_at)
    _replicate(ledger, node_at)
    assert store_role(ledger.sequencer.store) is StoreRole.LEDGER
    ledger.sequencer.store.close()
    with closing(open_store(node_at)) as store, closing(open_store(ledger_at)) as original:
        assert store_role(store) is StoreRole.REPLICA
        assert store.head() == original.head()


def test_a_sequencer_refuses_a_replica(places: tuple[Settings, Settings]) -> None:
    """An operator with the ledger's keys who gives the sequencer a replica's store."""
    ledger_at, node_at = places
    ledger = _ledger_with_entries(ledger_at)
    _replicate(ledger, node_at)
    ledger.sequencer.store.close()
    shutil.copytree(ledger_at.keys_dir, node_at.keys_dir)
    with closing(open_store(node_at)) as store:
        before = store.head()
    with pytest.raises(WrongStoreRole, match="is a node's replica of a ledger"):
        open_sequencer(node_at)
    for command in (["demo", "populate", "--entries", "10"], ["serve"], ["relay", "--kafka", "127.0.0.1:9"]):
        result = CliRunner().invoke(cli, [*command, *_place_options(node_at)])
        assert result.exit_code != 0 and "is a node's replica of a ledger" in result.output, (command, result)
    with closing(open_store(node_at)) as store:
        assert store.head() == before
    open_sequencer(ledger_at).store.close()  # the ledger itself still opens


def test_init_refuses_an_empty_replica_and_writes_no_keys(places: tuple[Settings, Settings]) -> None:
    _, node_at = places
    open_node(node_at, ledger_key=None, chain=None, verifier=ParallelVerifier(0)).close()
    result = CliRunner().invoke(cli, ["init", *_place_options(node_at)])
    assert result.exit_code == 1 and "is a node's replica of a ledger" in result.output, result.output
    assert not node_at.keys_dir.exists() or not any(node_at.keys_dir.iterdir())


def test_a_node_refuses_a_ledgers_store(places: tuple[Settings, Settings]) -> None:
    """A node given the ledger's database (its own directory holds no ledger keys, so
    that check cannot tell)."""
    ledger_at, node_at = places
    ledger = _ledger_with_entries(ledger_at)
    ledger.sequencer.store.close()
    if node_at.database_url:
        node_at = Settings(data_dir=node_at.data_dir, database_url=ledger_at.database_url)
    else:
        node_at.data_dir.mkdir()
        shutil.copy(ledger_at.ledger_file, node_at.ledger_file)  # closed: its log is checkpointed
    with pytest.raises(WrongStoreRole, match="is a ledger's own store"):
        open_node(node_at, ledger_key=None, chain=None, verifier=ParallelVerifier(0))
    key = checkpoint_key(ledger_at)
    assert key is not None
    follow = [
        "node",
        "follow",
        "--kafka",
        "127.0.0.1:9",
        "--chain",
        CHAIN,
        "--ledger-key",
        key.verifier().to_string(),
    ]
    result = CliRunner().invoke(cli, [*follow, *_place_options(node_at)])
    assert result.exit_code == 1 and "is a ledger's own store" in result.output, result.output
    with closing(open_store(node_at)) as store:
        assert store.violations() == [] and store_role(store) is StoreRole.LEDGER


def test_a_store_from_before_roles_is_known_by_its_markers(places: tuple[Settings, Settings]) -> None:
    """A store written before roles were recorded: a node's follower leaves its
    position, a ledger's relay its own; a store with neither is claimed by the first
    writer whose checks pass."""
    ledger_at, node_at = places
    ledger = _ledger_with_entries(ledger_at)
    _replicate(ledger, node_at)
    ledger.sequencer.store.close()
    shutil.copytree(ledger_at.keys_dir, node_at.keys_dir)
    for settings, evidence in ((ledger_at, RELAY_ENTRIES), (node_at, FOLLOWER_CHECKPOINTS)):
        with closing(open_store(settings)) as store:
            store.set_marker(ROLE_MARKER, 0)
            store.set_marker(evidence, 3)
    with pytest.raises(WrongStoreRole, match="is a node's replica of a ledger"):
        open_sequencer(node_at)
    node_keys = Settings(data_dir=ledger_at.data_dir.with_name("node2"), database_url=ledger_at.database_url)
    if ledger_at.database_url:  # (on SQLite the ledger's own keys directory is refused first)
        with pytest.raises(WrongStoreRole, match="is a ledger's own store"):
            open_node(node_keys, ledger_key=None, chain=None, verifier=ParallelVerifier(0))
    for settings in places:
        with closing(open_store(settings)) as store:
            assert store_role(store) is None  # refusals record nothing
    open_sequencer(ledger_at).store.close()
    with closing(open_store(ledger_at)) as store:
        assert store_role(store) is StoreRole.LEDGER


def test_a_refused_start_records_no_role(places: tuple[Settings, Settings]) -> None:
    """A sequencer without its checkpoint key, a node named another chain: refused, and
    the store is as it was (a role recorded then would lock its real owner out)."""
    ledger_at, node_at = places
    ledger = _ledger_with_entries(ledger_at)
    _replicate(ledger, node_at)
    ledger.sequencer.store.close()
    for settings in places:
        with closing(open_store(settings)) as store:
            store.set_marker(ROLE_MARKER, 0)
    with pytest.raises(KeyFileError, match=r"checkpoint\.key is missing"):
        open_sequencer(node_at)  # the node's directory holds no ledger keys
    node_keys = Settings(data_dir=ledger_at.data_dir.with_name("node2"), database_url=ledger_at.database_url)
    if ledger_at.database_url:
        with pytest.raises(AuditFailure, match="not the expected 'another-chain'"):
            open_node(node_keys, ledger_key=None, chain="another-chain", verifier=ParallelVerifier(0))
    for settings in places:
        with closing(open_store(settings)) as store:
            assert store_role(store) is None
    open_sequencer(ledger_at).store.close()  # and the ledger still starts


def test_the_evidence_names_the_markers_the_relay_and_the_follower_write() -> None:
    assert RELAY_ENTRIES in LEDGER_EVIDENCE and CHECKPOINTS_MARKER in LEDGER_EVIDENCE
    assert {FOLLOWER_CHECKPOINTS, TOPIC_END_MARKER, COSIGNED_MARKER} == set(REPLICA_EVIDENCE)


def _place_options(settings: Settings) -> list[str]:
    options = ["--data", str(settings.data_dir)]
    return [*options, "--database-url", settings.database_url] if settings.database_url else options


def test_node_status_refuses_a_ledgers_store(places: tuple[Settings, Settings]) -> None:
    """A supervisor's health check given the ledger's --data or --database-url: it was
    shown as a replica of the ledger's own size, never behind, exit status 0."""
    ledger_at, node_at = places
    ledger = _ledger_with_entries(ledger_at)
    _replicate(ledger, node_at)
    ledger.sequencer.store.close()
    refused = CliRunner().invoke(cli, ["node", "status", *_place_options(ledger_at)])
    assert refused.exit_code == 1, refused.output
    assert "is a ledger's own store, not a node's replica" in refused.output
    shown = CliRunner().invoke(cli, ["node", "status", "--json", *_place_options(node_at)])
    assert shown.exit_code == 0 and '"size": 7' in shown.output, shown.output
