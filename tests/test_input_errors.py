"""Bad input on the paths added for replication, witnesses, nodes and the analysis
platform: each gets a clear error, and nothing is written."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import CHAIN, OPERATOR, Ledger, make_ledger
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport
from http_server import running_node_server, running_server

from gateways.cli.main import cli
from gateways.kafka.client import KafkaSettings
from gateways.kafka.relay import Relay
from gateways.kafka.topics import CosignatureMessage, MessageError, Topics, entry_from_record
from infra.bootstrap import checkpoint_key, create_ledger
from infra.node import open_node
from infra.settings import Settings
from infra.storage.postgres import ledger_exists
from ledger.merkle import leaf_hash
from ledger.note import SIG_COSIGNATURE_V1, Verifier
from ledger.verifier import ParallelVerifier


def test_records_that_are_not_entries_are_named() -> None:
    with pytest.raises(MessageError, match="valid header"):
        entry_from_record(b"k", b"{}", [("seq", b"1")])
    aggregate = uuid.uuid4()
    headers = [
        ("seq", b"1"),
        ("aggregate", str(aggregate).encode()),
        ("version", b"1"),
        ("event", b"X"),
        ("leaf", leaf_hash(b"{}").hex().encode()),
    ]
    assert entry_from_record(aggregate.bytes, b"{}", headers).seq == 1
    with pytest.raises(MessageError, match="its key is not its aggregate id"):
        entry_from_record(b"other", b"{}", headers)
    with pytest.raises(MessageError, match="appears twice"):
        entry_from_record(aggregate.bytes, b"{}", [*headers, ("seq", b"2")])
    with pytest.raises(MessageError, match="not the leaf hash of its value"):
        entry_from_record(aggregate.bytes, b"{ }", headers)
    with pytest.raises(MessageError, match="valid header"):
        entry_from_record(aggregate.bytes, b"{}", headers[:-1])


def test_the_relay_refuses_hostile_cosignature_records_and_goes_on(ledger: Ledger) -> None:
    """A record on the cosignatures topic, which every node operator can write to, must
    not stop the relay: a size beyond 64 bits used to, on every restart."""
    ledger.sequencer.checkpoint_now()
    relay = Relay(ledger.sequencer.store, KafkaSettings("127.0.0.1:1"), Topics.for_ledger(CHAIN))
    hostile = [
        b'{"witness": "node:x", "size": 1180591620717411303424, "cosignature": "x"}',
        b'{"witness": "node:x", "size": 1e400, "cosignature": "x"}',
        b'{"witness": "not a principal", "size": 1, "cosignature": "\\u0000"}',
        b'{"witness": "node:x", "size": 1, "cosignature": "x"}',
    ]
    assert [relay.keep_cosignature(value) for value in hostile] == [False] * 4
    assert relay.stats.cosignatures_refused == 4


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1]",
        b'{"witness": "node:a", "cosignature": "x"}',
        b'{"witness": "node:a", "size": 1180591620717411303424, "cosignature": "x"}',
        b'{"witness": "node:a", "size": 1e400, "cosignature": "x"}',
        b'{"witness": "node:a", "size": 1.9, "cosignature": "x"}',
        b'{"witness": "node:a", "size": true, "cosignature": "x"}',
        b'{"witness": "node:a", "size": "7", "cosignature": "x"}',
        b'{"witness": "node:a", "size": 0, "cosignature": "x"}',
        b'{"witness": 5, "size": 7, "cosignature": "x"}',
        b'{"witness": "node:a", "size": 7, "cosignature": null}',
    ],
)
def test_cosignature_records_of_any_other_shape_are_refused(value: bytes) -> None:
    """Anyone who can write to the topic can send these; each is refused as a record
    not in the documented format (a size beyond 64 bits once stopped the relay)."""
    with pytest.raises(MessageError):
        CosignatureMessage.from_record(value)
    assert CosignatureMessage.from_record(b'{"witness": "node:a", "size": 7, "cosignature": "x"}').size == 7


_PUBLIC = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes_raw()
_LEDGER_KEY = Verifier("dfg.local/x", _PUBLIC).to_string()
_WITNESS_KEY = Verifier("node:a", _PUBLIC, SIG_COSIGNATURE_V1).to_string()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--witness-quorum", "2"], "--witness-quorum needs the witnesses' keys"),
        (["--witness", "not-a-key"], "witness key 'not-a-key'"),
        (["--witness", _LEDGER_KEY], "is not a cosignature/v1 key"),
        (["--witness", _WITNESS_KEY, "--witness-quorum", "2"], "a quorum of 2 cannot be met by 1"),
        (["--segments", "0"], "Invalid value for '--segments'"),
        (["--segments", "many"], "Invalid value for '--segments'"),
        (["--segments", "100000"], "Invalid value for '--segments'"),
        (["--workers", "100000"], "Invalid value for '--workers'"),
    ],
)
def test_bad_audit_options_are_refused(ledger: Ledger, args: list[str], message: str) -> None:
    """Exit status 2, as for any bad option: a witness policy that cannot be one exited 1."""
    result = CliRunner().invoke(cli, ["audit", "verify", "--data", str(ledger.settings.data_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output


_ASKED = ["--controller", "sp:app", "--purpose", "dpv:X"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "--subject", "p-…", *_ASKED], "is not a pseudonym"),
        (["check", "--subject", "a@b.org", *_ASKED], "is not a pseudonym"),
        (["check", "--subject", "p-1", "--controller", "app", "--purpose", "dpv:X"], "is not a principal id"),
        (["check", "--subject", "p-1", "--controller", "sp:a", "--purpose", "a b"], "is not a purpose code"),
        (["check", "--subject", "p-1", *_ASKED, "--category", "x y"], "is not a data category code"),
        (["history", "--subject", "alice@example.org"], "is not a pseudonym"),
    ],
)
def test_consent_questions_the_api_refuses_are_refused_by_the_cli_too(
    ledger: Ledger, args: list[str], message: str
) -> None:
    """They were answered as if asked: "never given" (exit 3), or an empty history."""
    result = CliRunner().invoke(cli, ["consents", *args, "--data", str(ledger.settings.data_dir)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_consent_check_takes_the_instants_the_api_takes_and_refuses_the_others(ledger: Ledger) -> None:
    """It took "+0100", which is no RFC 3339 offset, and refused the nanoseconds the API
    takes (and cuts to microseconds)."""
    question = ["--subject", "p-1", "--controller", "sp:app", "--purpose", "dpv:X"]
    check = ["consents", "check", "--data", str(ledger.settings.data_dir), *question, "--at"]
    for at in (
        "2026-11-25T01:31:52.5Z",
        "2026-11-25T01:31:52.123456+00:00",
        "2026-11-25T01:31:52.123456789Z",
    ):
        result = CliRunner().invoke(cli, [*check, at])
        assert result.exit_code == 3 and json.loads(result.output)["reason"] == "never_given", result.output
    for at in ("2026-11-25T01:31:52+0100", "2026-11-25T01:31:52", "2026-11-25 01:31:52Z"):
        result = CliRunner().invoke(cli, [*check, at])
        assert result.exit_code == 2 and "an RFC 3339 date-time with a time zone" in result.output, at


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:abc", "http://[::1", "ftp://host"])
def test_a_follower_refuses_a_from_url_that_is_not_one_before_creating_anything(
    tmp_path: Path, ledger: Ledger, url: str
) -> None:
    assert ledger.sequencer.ledger is not None
    node = tmp_path / "node"
    args = ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", CHAIN,
            "--ledger-key", ledger.sequencer.ledger["checkpoint_key"], "--from-url", url]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Invalid value for '--from-url'" in result.output, result.output
    assert not node.exists()


def test_node_status_of_a_directory_without_a_replica_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["node", "status", "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "`dfg node follow` makes a replica there" in result.output, result.output
    assert "dfg init" not in result.output


def test_node_keygen_writes_both_keys_or_neither(tmp_path: Path) -> None:
    """The X25519 key's path equal to the node key's, or one that cannot be written: it
    used to leave the node key written with nothing printed (a traceback, or silence),
    and the next attempt was refused as overwriting it."""
    out = tmp_path / "keys" / "node.jwk"
    same = CliRunner().invoke(
        cli, ["node", "keygen", "--out", str(out), "--name", "node:a", "--encryption-out", str(out)]
    )
    assert same.exit_code == 2 and "two files" in same.output and not out.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = CliRunner().invoke(
        cli,
        ["node", "keygen", "--out", str(out), "--name", "node:a", "--encryption-out", str(blocker / "x.jwk")],
    )
    assert unwritable.exit_code == 1 and "no key was kept" in unwritable.output, unwritable.output
    assert not out.exists()
    done = CliRunner().invoke(cli, ["node", "keygen", "--out", str(out), "--name", "node:a"])
    assert done.exit_code == 0 and out.exists()


def test_a_follower_refuses_a_bad_ledger_key_before_creating_anything(tmp_path: Path) -> None:
    node = tmp_path / "node"
    args = ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", "dfg-test"]
    result = CliRunner().invoke(cli, [*args, "--ledger-key", "garbage"])
    assert result.exit_code == 2 and "Invalid value for '--ledger-key'" in result.output, result.output
    assert not node.exists()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--chain", "Bad Chain"], 2, "Invalid value for '--chain'"),
        (["--topic-prefix", "Bad Prefix"], 2, "Invalid value for '--topic-prefix'"),
        (["--witness-key", "KEY", "--witness-name", "node alpha"], 2, "is not a principal id"),
        (["--witness-key", "X25519", "--witness-name", "node:alpha"], 1, "is not an Ed25519 private key"),
    ],
)
def test_a_follower_refuses_bad_options_before_creating_anything(
    tmp_path: Path, ledger: Ledger, extra: list[str], code: int, message: str
) -> None:
    """Checked at the start, not at the first checkpoint to cosign or topic to name."""
    assert ledger.sequencer.ledger is not None
    keys = tmp_path / "keys"
    made = CliRunner().invoke(
        cli,
        ["node", "keygen", "--out", str(keys / "node.jwk"), "--name", "node:alpha",
         "--encryption-out", str(keys / "x25519.jwk")],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    paths = {"KEY": str(keys / "node.jwk"), "X25519": str(keys / "x25519.jwk")}
    node = tmp_path / "node"
    args = ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", "dfg-test",
            "--ledger-key", ledger.sequencer.ledger["checkpoint_key"]]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, *[paths.get(a, a) for a in extra]])
    assert result.exit_code == code and message in result.output, result.output
    assert not node.exists()


def test_a_follower_whose_status_port_is_taken_stops_with_the_reason(tmp_path: Path, ledger: Ledger) -> None:
    """Not a traceback in a thread while the node runs on without its status."""
    assert ledger.sequencer.ledger is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["node", "follow", "--data", str(tmp_path / "node"), "--kafka", "127.0.0.1:9", "--chain", CHAIN,
             "--ledger-key", ledger.sequencer.ledger["checkpoint_key"], "--status-port", str(port)],
        )  # fmt: skip
    assert result.exit_code == 1 and "cannot listen on" in result.output, result.output


def test_a_replica_of_another_ledger_is_named_not_a_traceback(tmp_path: Path, ledger: Ledger) -> None:
    """A node whose replica holds one ledger, started with another ledger's key, fails
    with a message and exit status 2 (a configuration mistake, as topics of another
    ledger are), not a traceback -- `dfg node serve` gave one."""
    other = Settings(data_dir=tmp_path / "other")
    create_ledger(other, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Another")
    signer = checkpoint_key(other)
    assert signer is not None
    other_key = signer.verifier().to_string()
    node = tmp_path / "node"
    replica = open_node(Settings(data_dir=node), ledger_key=None, chain=None, verifier=ParallelVerifier(0))
    replica.replica.accept_entries(list(ledger.sequencer.store.read_entries(1, 100)))  # a replica of it
    replica.close()
    for command in (
        ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", CHAIN],
        ["node", "serve", "--data", str(node), "--coordinator", "http://127.0.0.1:9", "--chain", CHAIN],
    ):
        result = CliRunner().invoke(cli, [*command, "--ledger-key", other_key])
        assert result.exit_code == 2 and "cannot follow this ledger" in result.output, result.output


def test_a_node_refuses_the_sequencers_own_directory(ledger: Ledger) -> None:
    """It used to write its follower markers, and any violation it found, into the
    ledger's own database (when the sequencer was stopped). `dfg node serve` opens its
    replica the same way (``open_node``)."""
    assert ledger.sequencer.ledger is not None
    data = ledger.settings.data_dir
    args = ["node", "follow", "--data", str(data), "--kafka", "127.0.0.1:9", "--chain", CHAIN,
            "--ledger-key", ledger.sequencer.ledger["checkpoint_key"]]  # fmt: skip
    before = ledger.sequencer.store.marker("follower.checkpoints")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "it is the sequencer's data directory" in result.output, result.output
    assert ledger.sequencer.store.marker("follower.checkpoints") == before


def test_a_node_refuses_to_start_from_a_bundle_that_is_not_one(tmp_path: Path, ledger: Ledger) -> None:
    assert ledger.sequencer.ledger is not None
    bogus = tmp_path / "bogus.bundle"
    bogus.write_text("this is not a bundle\n")
    node = tmp_path / "node"
    result = CliRunner().invoke(
        cli,
        ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", "dfg-test",
         "--ledger-key", ledger.sequencer.ledger["checkpoint_key"], "--from-bundle", str(bogus)],
    )  # fmt: skip
    assert result.exit_code == 1 and "not an audit bundle" in result.output
    from infra.bootstrap import open_store

    store = open_store(Settings(data_dir=node))
    assert store.head()[0] == 0  # nothing kept
    store.close()


@pytest.mark.parametrize(
    ("size", "root"),
    [("abc", "00" * 32), (None, "00" * 32), (-5, "00" * 32), (True, "00" * 32), (1, "zz"), (1, None)],
)
def test_a_bundle_header_with_a_bad_size_or_root_is_named(tmp_path: Path, size: Any, root: Any) -> None:
    bundle = tmp_path / "bad.jsonl"
    header = {"format": "dfg-audit-bundle/1", "chain": CHAIN, "origin": "o", "checkpoint_key": "k"}
    header |= {"size": size, "root": root, "checkpoints": 0}
    bundle.write_text(json.dumps(header) + "\n")
    result = CliRunner().invoke(cli, ["audit", "verify", "--bundle", str(bundle), "--no-progress"])
    assert result.exit_code == 1 and "the header's" in result.output, result.output


@pytest.mark.parametrize("ledger_member", [["not", "an", "object"], "text", 7])
def test_a_bundle_whose_first_entry_holds_a_ledger_that_is_no_object_is_named(
    tmp_path: Path, ledger_member: Any
) -> None:
    """The header's chain, origin and checkpoint_key are compared with the genesis
    entry's ledger object: one that is no object ended the audit (and a node's
    --from-bundle) with an AttributeError traceback; the audit now names entry 1."""
    bundle = tmp_path / "bad.jsonl"
    header = {"format": "dfg-audit-bundle/1", "chain": CHAIN, "origin": "o", "checkpoint_key": "k"}
    header |= {"size": 1, "root": "0" * 64, "checkpoints": 0}
    first = {"data": {"ledger": ledger_member}, "seq": 1}
    bundle.write_text("\n".join(json.dumps(line) for line in (header, first, {"principals": {}})) + "\n")
    result = CliRunner().invoke(cli, ["audit", "verify", "--bundle", str(bundle), "--no-progress"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "entry 1" in result.output, result.output


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_graphql_and_the_bundle_inbox_refuse_bad_input_with_codes(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateways.http import node_app

    assert ledger.sequencer.ledger is not None
    key, chain = ledger.sequencer.ledger["checkpoint_key"], ledger.sequencer.ledger["chain"]
    genesis_jws = json.loads(ledger.sequencer.store.read_entries(1, 1)[0].canonical)["tx"]
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url:
        session = Client(transport=RequestsHTTPTransport(url=f"{url}/graphql", timeout=30))

        def code(document: str, **variables: Any) -> str:
            with pytest.raises(TransportQueryError) as raised:
                session.execute(GraphQLRequest(document, variable_values=variables))
            return str((raised.value.errors or [{}])[0]["extensions"]["code"])

        create = "mutation($t: String!) { createCatalog(signedTransaction: $t) { id } }"
        assert code(create, t="not a jws") == "malformed_jws"
        assert code(create, t=genesis_jws) == "wrong_transaction_type"  # a valid JWS, another type
        assert code("query($id: ID!) { analysis(id: $id) { id } }", id="bm90LWFuLWlk") == "invalid_id"
        assert code("query { approvalInbox(orgId: 999) { id } }") == "unknown_organisation"
        node = "query($id: ID!) { node(id: $id) { id } }"
        assert code(node, id="bm90LWFuLWlk") == "invalid_id"
        assert code(node, id=base64.b64encode(b"Calculation:abc").decode()) == "invalid_id"
        for document in ("{ nope }", "{ analyses("):  # a field the schema lacks; no parse
            request = urllib.request.Request(
                f"{url}/graphql",
                json.dumps({"query": document}).encode(),
                {"Content-Type": "application/json"},
            )
            answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
            assert answer["errors"][0]["extensions"]["code"] == "invalid_query", answer
        page = "query($a: String!) { analyses(analysisFilter: {first: 10, after: $a}) { totalCount } }"
        for cursor in ("99999999999999999999999", "-5", "x"):
            assert code(page, a=cursor) == "invalid_argument"
        health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=10).read())
        assert health["size"] == 1  # nothing was written

        settings = Settings(data_dir=tmp_path / "node")
        with running_node_server(settings, url, chain, key, name="node:a") as node_url:
            status, body = _post(f"{node_url}/v1/bundles/not-a-uuid", b"x")
            assert status == 400 and body["code"] == "invalid_parameter"
            monkeypatch.setattr(node_app, "REPLICA_WAIT_S", 0.3)  # for the replica to know it
            status, body = _post(f"{node_url}/v1/bundles/{uuid.uuid4()}", b"garbage")
            assert status == 404 and body["code"] == "unknown_datasource"
        assert not (tmp_path / "node" / "bundles").exists()


def test_provider_upload_refuses_a_malformed_node_argument(tmp_path: Path) -> None:
    records = tmp_path / "r.csv"
    records.write_text("subject,x\np-1,1\n")
    key = tmp_path / "k.jwk"
    key.write_text("{}")
    result = CliRunner().invoke(
        cli,
        ["provider", "upload", str(records), "--url", "http://127.0.0.1:9", "--datasource", str(uuid.uuid4()),
         "--principal", "dp:x", "--key", str(key), "--node", "node:a"],
    )  # fmt: skip
    assert result.exit_code == 1 and "error:" in result.output


def test_provider_upload_and_node_serve_refuse_ids_and_urls_that_cannot_be_ones(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A datasource id that is no UUID was sent to the coordinator (which answered with
    a sentence saying the same twice); a coordinator URL that is no URL was retried
    every two seconds for ever."""
    records, key = tmp_path / "r.csv", tmp_path / "k.jwk"
    records.write_text("subject,x\np-1,1\n")
    key.write_text("{}")
    upload = CliRunner().invoke(
        cli,
        ["provider", "upload", str(records), "--url", "http://127.0.0.1:9", "--datasource", "blah",
         "--principal", "dp:x", "--key", str(key), "--node", "node:a=http://127.0.0.1:9"],
    )  # fmt: skip
    assert upload.exit_code == 2 and "'blah' is not a valid UUID" in upload.output, upload.output
    assert ledger.sequencer.ledger is not None
    serve = CliRunner().invoke(
        cli,
        ["node", "serve", "--data", str(tmp_path / "node"), "--coordinator", "notaurl", "--chain", "c",
         "--ledger-key", ledger.sequencer.ledger["checkpoint_key"]],
    )  # fmt: skip
    assert serve.exit_code == 2 and "Invalid value for '--coordinator'" in serve.output, serve.output
    assert not (tmp_path / "node").exists()


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    from joserfc.jwk import OKPKey

    from infra.keyfiles import write_jwk

    signing, sealing = tmp_path / "ed25519.jwk", tmp_path / "x25519.jwk"
    write_jwk(signing, OKPKey.generate_key("Ed25519"))
    write_jwk(sealing, OKPKey.generate_key("X25519"))
    return signing, sealing


def test_node_serve_refuses_an_incomplete_engine_setup_before_creating_anything(
    ledger: Ledger, tmp_path: Path
) -> None:
    assert ledger.sequencer.ledger is not None
    signing, sealing = _keys(tmp_path)
    base = ["node", "serve", "--data", str(tmp_path / "node"), "--coordinator", "http://127.0.0.1:9",
            "--chain", "c", "--ledger-key", ledger.sequencer.ledger["checkpoint_key"]]  # fmt: skip
    missing = CliRunner().invoke(cli, [*base, "--key", str(signing)])
    assert missing.exit_code == 1 and "needs --name and --encryption-key" in missing.output
    engine = ["--key", str(signing), "--name", "node:a", "--encryption-key", str(sealing)]
    bad_peer = CliRunner().invoke(cli, [*base, *engine, "--peer", "node:b"])
    assert bad_peer.exit_code == 1 and "--peer takes node:name=host:port" in bad_peer.output
    # "b" was taken, and an analysis naming node:b then failed: "no address for node:b"
    for name in ("b", "dp:b", "node:"):
        unnamed = CliRunner().invoke(cli, [*base, *engine, "--peer", f"{name}=127.0.0.1:9100"])
        assert unnamed.exit_code == 1 and "is not a node's principal id" in unnamed.output, name
    for buffer in ("0", "lots"):
        refused = CliRunner().invoke(cli, [*base, *engine, "--mpc-buffer-mb", buffer])
        assert refused.exit_code == 2 and "--mpc-buffer-mb" in refused.output, buffer
    assert not (tmp_path / "node").exists()


def test_node_serve_on_a_port_in_use_does_not_say_it_serves(ledger: Ledger, tmp_path: Path) -> None:
    assert ledger.sequencer.ledger is not None
    key = ledger.sequencer.ledger["checkpoint_key"]
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url, socket.create_server(("127.0.0.1", 0)) as taken:
        serve = ["node", "serve", "--data", str(tmp_path / "node"), "--coordinator", url, "--chain", CHAIN,
                 "--ledger-key", key, "--port", str(taken.getsockname()[1])]  # fmt: skip
        result = CliRunner().invoke(cli, serve)
    assert result.exit_code != 0 and "address already in use" in result.output, result.output
    assert "serving" not in result.output


def test_a_node_refuses_another_ledgers_api_or_bundle_before_creating_anything(
    ledger: Ledger, tmp_path: Path
) -> None:
    """``dfg node serve`` given a wrong --chain used to print that it served, create an
    empty replica and only then stop; ``dfg node follow --from-url/--from-bundle`` left
    the same empty files. The source's genesis entry is now asked first."""
    assert ledger.sequencer.ledger is not None
    key = ledger.sequencer.ledger["checkpoint_key"]
    other = make_ledger(Settings(data_dir=tmp_path / "other"))
    assert other.sequencer.ledger is not None
    other_key = other.sequencer.ledger["checkpoint_key"]
    other.sequencer.store.close()
    bundle = tmp_path / "ledger.bundle"
    exported = CliRunner().invoke(
        cli, ["audit", "export", "--data", str(ledger.settings.data_dir), "--out", str(bundle)]
    )
    assert exported.exit_code == 0, exported.output
    ledger.sequencer.store.close()
    node = tmp_path / "node"
    with running_server(ledger.settings) as url:
        serve = ["node", "serve", "--data", str(node), "--coordinator", url, "--port", "9"]
        wrong_chain = CliRunner().invoke(cli, [*serve, "--chain", "not-it", "--ledger-key", key])
        assert wrong_chain.exit_code == 2, wrong_chain.output
        named = f"--coordinator {url}: this is chain {CHAIN!r}, not the expected 'not-it'"
        assert named in wrong_chain.output
        assert "serving" not in wrong_chain.output
        wrong_key = CliRunner().invoke(cli, [*serve, "--chain", CHAIN, "--ledger-key", other_key])
        assert wrong_key.exit_code == 2 and "a different checkpoint key" in wrong_key.output
        follow = ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", "not-it",
                  "--ledger-key", key]  # fmt: skip
        from_url = CliRunner().invoke(cli, [*follow, "--from-url", url])
        assert from_url.exit_code == 2 and f"--from-url {url}: this is chain" in from_url.output
        not_a_ledger = CliRunner().invoke(cli, [*follow, "--from-url", f"{url}/no/such/prefix"])
        assert not_a_ledger.exit_code == 2 and "no dfg ledger's API" in not_a_ledger.output
    from_bundle = CliRunner().invoke(cli, [*follow, "--from-bundle", str(bundle)])
    assert from_bundle.exit_code == 2 and f"--from-bundle {bundle}: this is chain" in from_bundle.output
    assert not node.exists()


def test_analyst_results_and_fhir_codes_refuse_bad_input(ledger: Ledger, tmp_path: Path) -> None:
    signing, sealing = _keys(tmp_path)
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url:
        args = ["--url", url, "--principal", "ao:x", "--key", str(signing)]
        wrong_key = CliRunner().invoke(
            cli, ["analyst", "results", str(uuid.uuid4()), *args, "--encryption-key", str(signing),
                  "--node", "node:a=http://127.0.0.1:9"],
        )  # fmt: skip
        assert wrong_key.exit_code == 1 and "is not a private X25519 key" in wrong_key.output
        unknown = CliRunner().invoke(
            cli, ["analyst", "results", str(uuid.uuid4()), *args, "--encryption-key", str(sealing),
                  "--node", "node:a=http://127.0.0.1:9"],
        )  # fmt: skip
        assert unknown.exit_code == 1 and "error:" in unknown.output
        health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=10).read())
        assert health["size"] == 1  # no access request was recorded
    records = tmp_path / "b.json"
    records.write_text('{"resourceType": "Bundle", "type": "collection"}')
    upload = CliRunner().invoke(
        cli,
        ["provider", "upload", str(records), "--url", "http://127.0.0.1:9", "--datasource",
         str(uuid.uuid4()), "--principal", "dp:x", "--key", str(signing),
         "--node", "node:a=http://127.0.0.1:9", "--code", "sbp=8480-6"],
    )  # fmt: skip
    assert upload.exit_code == 1 and "--code takes VARIABLE=SYSTEM|CODE" in upload.output


def test_read_models_of_another_ledger_are_refused_until_rebuilt(ledger: Ledger) -> None:
    """Views that have applied more entries than the log holds were built from another
    ledger: their answers would be that ledger's (a new ledger in an old data folder)."""
    data = ["--data", str(ledger.settings.data_dir)]
    ledger.admit("sp:app", "service_provider")
    assert CliRunner().invoke(cli, ["projections", "status", *data]).exit_code == 0
    ledger.sequencer.store.close()
    for leftover in ledger.settings.data_dir.glob("ledger.sqlite*"):
        leftover.unlink()
    shutil.rmtree(ledger.settings.data_dir / "keys")
    assert CliRunner().invoke(cli, ["init", *data]).exit_code == 0
    stale = CliRunner().invoke(cli, ["projections", "status", *data])
    assert stale.exit_code == 1 and "built from another ledger" in stale.output, stale.output
    rebuilt = CliRunner().invoke(cli, ["projections", "rebuild", *data])
    assert rebuilt.exit_code == 0 and "consent_state: rebuilt up to entry 1" in rebuilt.output
    assert "at entry 1 of 1" in CliRunner().invoke(cli, ["projections", "status", *data]).output


def test_a_damaged_database_and_a_bad_database_url_are_one_line_errors(ledger: Ledger) -> None:
    ledger.sequencer.store.close()
    data = ledger.settings.data_dir
    (data / "ledger.sqlite").write_bytes((data / "ledger.sqlite").read_bytes()[:8192])
    for leftover in data.glob("ledger.sqlite-*"):
        leftover.unlink()
    damaged = CliRunner().invoke(cli, ["audit", "verify", "--data", str(data)])
    assert damaged.exit_code == 1 and "error: the database cannot be used" in damaged.output
    assert damaged.exception is None or isinstance(damaged.exception, SystemExit)
    for url in ("notaurl", "postgresql://postgres@127.0.0.1:99999/x"):
        refused = CliRunner().invoke(cli, ["audit", "verify", "--data", str(data), "--database-url", url])
        assert refused.exit_code == 2 and "--database-url" in refused.output


@pytest.mark.parametrize("name", ["ledger.sqlite", "views.sqlite"])
def test_a_database_file_that_is_a_directory_is_named_as_such(
    ledger: Ledger, tmp_path: Path, name: str
) -> None:
    """SQLite said "disk I/O error" (or "unable to open database file") for a directory
    where its file should be; init wrote its writer lock's file before refusing."""
    ledger.sequencer.store.close()
    data = ledger.settings.data_dir
    (data / name).unlink(missing_ok=True)
    (data / name).mkdir()
    command = ["audit", "verify"] if name == "ledger.sqlite" else ["projections", "status"]
    result = CliRunner().invoke(cli, [*command, "--data", str(data)])
    assert result.exit_code == 1, result.output
    assert result.output == f"error: the database's file is a directory: {data / name}\n"
    fresh = tmp_path / "fresh"
    (fresh / "ledger.sqlite").mkdir(parents=True)
    refused = CliRunner().invoke(cli, ["init", "--data", str(fresh)])
    assert refused.exit_code == 1 and "the database's file is a directory" in refused.output
    assert [p.name for p in fresh.iterdir()] == ["ledger.sqlite"]


def test_a_database_that_refuses_the_connection_is_a_one_line_error(tmp_path: Path) -> None:
    """libpq's message for a port nobody listens on goes on over two lines (a tab and
    "Is the server running on that host ...?"), and was printed as it came."""
    from http_server import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    result = CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "d"), "--database-url", url])
    assert result.exit_code == 1 and result.output.startswith("error: the database cannot be used:")
    assert result.output.count("\n") == 1 and "\t" not in result.output, result.output
    assert "Is the server running" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "command",
    [["audit", "verify"], ["consents", "history", "--subject", "p-1"], ["node", "status"], ["serve"]],
)
def test_every_command_names_why_the_database_cannot_be_reached(tmp_path: Path, command: list[str]) -> None:
    """Only init said so: the others asked through a pool, which said "couldn't get a
    connection after 5.00 sec", after waiting that long, whatever the cause."""
    from http_server import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    started = time.monotonic()
    result = CliRunner().invoke(cli, [*command, "--data", str(tmp_path / "d"), "--database-url", url])
    assert result.exit_code == 1 and result.output.startswith("error: the database cannot be used:")
    assert "Is the server running" in result.output and result.output.count("\n") == 1, result.output
    assert time.monotonic() - started < 4


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_named(pg_url: str, tmp_path: Path) -> None:
    url = f"{pg_url.rsplit('/', 1)[0]}/dfg_no_such_database?schema=s"
    data = ["--data", str(tmp_path / "d"), "--database-url", url]
    result = CliRunner().invoke(cli, ["audit", "verify", *data])
    assert result.exit_code == 1, result.output
    assert 'database "dfg_no_such_database" does not exist' in result.output, result.output


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?schema=Upper", "lower-case"),  # PostgreSQL folds it in some statements, not others
        ("?schema=a-b", "lower-case"),
        ('?schema=a"b', "lower-case"),
        ("?schema=" + "l" * 64, "1 to 63"),  # cut to 63 bytes by PostgreSQL, not by the locks
        ("?schema=", "1 to 63"),
        ("?schema=a&schema=b", "got 'a', 'b'"),
        ("?schema=ok&sslmode=require", "not sslmode"),  # was dropped: a plaintext connection
        ("?Schema=ok", "not Schema"),  # was ignored: the ledger went to the public schema
    ],
)
def test_a_database_url_the_ledger_would_misread_is_a_bad_option(
    tmp_path: Path, query: str, named: str
) -> None:
    url = f"postgresql://postgres@127.0.0.1:1/test{query}"
    result = CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "d"), "--database-url", url])
    assert result.exit_code == 2 and "--database-url" in result.output and named in result.output, (
        result.output
    )
    assert not (tmp_path / "d").exists()


def test_a_missing_ledger_is_named_without_the_database_password(pg_schema_url: str, tmp_path: Path) -> None:
    url = pg_schema_url.replace("postgresql://postgres@", "postgresql://postgres:S3cret@", 1)
    result = CliRunner().invoke(cli, ["audit", "verify", "--data", str(tmp_path), "--database-url", url])
    assert result.exit_code == 1 and "no ledger at postgresql://postgres:***@" in result.output, result.output
    assert "S3cret" not in result.output


@pytest.mark.postgres
def test_every_connection_of_a_ledger_reaches_the_database_its_pool_does(pg_url: str) -> None:
    """A URL without a user or a database name: the pool took `postgres` for both, the
    writer lock and LISTEN took libpq's defaults (the login's name), so two writers
    whose URLs differed only in spelling took their locks in different databases."""
    from infra.storage.postgres import connect, datastore_from_url

    url = "postgresql://127.0.0.1:5432?schema=public"
    datastore = datastore_from_url(url, pool_size=1)
    try:
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("SELECT current_database() AS d, current_user AS u")
            row = cursor.fetchone()
            pool = (row["d"], row["u"])
    finally:
        datastore.close()
    with connect(url) as own:
        assert own.execute("SELECT current_database(), current_user").fetchone() == pool == ("postgres",) * 2


def test_a_refused_init_writes_nothing_and_can_be_retried(tmp_path: Path) -> None:
    data = tmp_path / "new"
    for bad in (["--operator", "bad operator"], ["--chain", ""], ["--origin", "has space"]):
        refused = CliRunner().invoke(cli, ["init", "--data", str(data), *bad])
        assert refused.exit_code == 1 and "error:" in refused.output, refused.output
        assert not (data / "keys").exists() or not any((data / "keys").iterdir())
    assert CliRunner().invoke(cli, ["init", "--data", str(data)]).exit_code == 0
    assert CliRunner().invoke(cli, ["audit", "verify", "--data", str(data), "--no-progress"]).exit_code == 0


def test_an_init_refused_for_its_keys_creates_no_ledger_file(tmp_path: Path) -> None:
    """Keys left in --data without a ledger: the refusal came after the store was
    opened, which left an empty ledger.sqlite (and the lock file) behind."""
    data = tmp_path / "d"
    (data / "keys").mkdir(parents=True, mode=0o700)
    (data / "keys" / "root.jwk").write_text("{}")
    refused = CliRunner().invoke(cli, ["init", "--data", str(data)])
    assert refused.exit_code == 1 and "root.jwk exists but there is no ledger" in refused.output
    assert sorted(p.name for p in data.iterdir()) == ["keys"]


@pytest.mark.postgres
def test_an_init_refused_for_its_keys_or_its_data_directory_creates_no_schema(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL the store was opened first, creating the schema and the ledger's
    tables, and only then were keys found in --data, or --data found unwritable."""
    url = ["--database-url", pg_schema_url]
    kept = tmp_path / "kept"
    (kept / "keys").mkdir(parents=True, mode=0o700)
    (kept / "keys" / "checkpoint.key").write_text("a key of another ledger")
    refused = CliRunner().invoke(cli, ["init", "--data", str(kept), *url])
    assert refused.exit_code == 1 and "checkpoint.key exists but there is no ledger" in refused.output
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    unwritable = CliRunner().invoke(cli, ["init", "--data", str(a_file / "d"), *url])
    assert unwritable.exit_code == 1, unwritable.output
    assert f"cannot write the keys in {a_file / 'd' / 'keys'}" in unwritable.output
    assert not ledger_exists(pg_schema_url)
    import psycopg
    from conftest import PG_URL

    from infra.storage.postgres import database_url_schema

    with psycopg.connect(PG_URL) as conn:
        schema = database_url_schema(pg_schema_url)
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
    assert CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "new"), *url]).exit_code == 0


def test_an_init_beside_another_writer_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Two `dfg init` at once on one directory (or one beside any writer) used to race:
    both found the log empty, and the second failed midway on the first one's keys."""
    from infra.settings import Settings
    from infra.writer_lock import take_writer_lock

    data = tmp_path / "new"
    lock = take_writer_lock(Settings(data_dir=data), doing="testing")
    try:
        refused = CliRunner().invoke(cli, ["init", "--data", str(data)])
        assert refused.exit_code == 1 and "another process writes the ledger" in refused.output
        assert not (data / "keys").exists() or not any((data / "keys").iterdir())
    finally:
        lock.release()
    assert CliRunner().invoke(cli, ["init", "--data", str(data)]).exit_code == 0


def test_export_leaves_other_files_alone_and_names_a_missing_folder(ledger: Ledger, tmp_path: Path) -> None:
    data = ["--data", str(ledger.settings.data_dir)]
    mine = tmp_path / "b.jsonl.partial"
    mine.write_text("the user's own file")
    done = CliRunner().invoke(cli, ["audit", "export", *data, "--out", str(tmp_path / "b.jsonl")])
    assert done.exit_code == 0 and mine.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "b.jsonl.partial", "data"]
    missing = CliRunner().invoke(cli, ["audit", "export", *data, "--out", str(tmp_path / "no" / "b.jsonl")])
    assert missing.exit_code == 1 and "there is no folder" in missing.output


def test_export_to_standard_output_writes_the_bundle_there(ledger: Ledger, tmp_path: Path) -> None:
    """``--out -`` used to write a file named "-" in the current folder."""
    data = ["--data", str(ledger.settings.data_dir)]
    to_file = CliRunner().invoke(cli, ["audit", "export", *data, "--out", str(tmp_path / "b.jsonl")])
    assert to_file.exit_code == 0, to_file.output
    piped = subprocess.run(
        [sys.executable, "-m", "gateways.cli", "audit", "export", *data, "--out", "-"],
        capture_output=True, cwd=tmp_path, check=False, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (tmp_path / "b.jsonl").read_bytes()
    assert b"exported" in piped.stderr and not (tmp_path / "-").exists()


def test_export_to_a_reader_that_stops_early_says_so_without_a_traceback(tmp_path: Path) -> None:
    """``dfg audit export --out - | head`` ended with Python's "Exception ignored ...
    BrokenPipeError" lines."""
    data = ["--data", str(tmp_path / "d")]
    assert CliRunner().invoke(cli, ["init", *data]).exit_code == 0
    populated = CliRunner().invoke(cli, ["demo", "populate", *data, "--entries", "600"])
    assert populated.exit_code == 0, populated.output  # a bundle larger than a pipe's buffer
    command = [sys.executable, "-m", "gateways.cli", "audit", "export", *data, "--out", "-"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path) as early:
        assert early.stdout is not None and early.stderr is not None
        early.stdout.read(10)
        early.stdout.close()  # the reader stops, as `| head -c 10` does
        stderr = early.stderr.read()
    assert early.returncode == 1 and b"standard output was closed" in stderr, stderr
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr


@pytest.mark.parametrize("command", [["demo", "level1"], ["demo", "analysis"]])
@pytest.mark.parametrize("url", ["notaurl", "ftp://host", "http://127.0.0.1:99999"])
def test_a_server_url_that_is_not_one_is_refused_before_connecting(
    tmp_path: Path, command: list[str], url: str
) -> None:
    result = CliRunner().invoke(cli, [*command, "--data", str(tmp_path / "d"), "--url", url])
    assert result.exit_code == 2 and "Invalid value for '--url'" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("bootstrap", ["", "not a bootstrap", "kafka1", "kafka1:0", "k:9092,", "h:99999"])
def test_kafka_bootstrap_servers_that_are_not_host_port_are_refused(tmp_path: Path, bootstrap: str) -> None:
    result = CliRunner().invoke(cli, ["relay", "--data", str(tmp_path / "d"), "--kafka", bootstrap])
    assert result.exit_code == 2 and "Invalid value for '--kafka'" in result.output


@pytest.mark.postgres
def test_a_postgres_schema_without_a_ledger_is_named_and_left_uncreated(
    pg_schema_url: str, tmp_path: Path
) -> None:
    url = ["--database-url", pg_schema_url]
    for command in (["audit", "verify", "--no-progress"], ["projections", "status"], ["audit", "export"]):
        extra = ["--out", str(tmp_path / "b.jsonl")] if command[-1] == "export" else []
        result = CliRunner().invoke(cli, [*command, *url, *extra])
        assert result.exit_code == 1 and "no ledger at" in result.output, result.output
    assert not ledger_exists(pg_schema_url)
    assert CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "k"), *url]).exit_code == 0
    assert ledger_exists(pg_schema_url)


def test_read_models_of_a_longer_ledger_are_refused_by_its_genesis_entry(ledger: Ledger) -> None:
    """The log holds as many entries as the views have applied, or more, but it is
    another ledger's: the views recorded the genesis entry they were built from."""
    data = ["--data", str(ledger.settings.data_dir)]
    assert CliRunner().invoke(cli, ["projections", "status", *data]).exit_code == 0  # 1 entry applied
    ledger.sequencer.store.close()
    for leftover in ledger.settings.data_dir.glob("ledger.sqlite*"):
        leftover.unlink()
    shutil.rmtree(ledger.settings.data_dir / "keys")
    assert CliRunner().invoke(cli, ["init", *data]).exit_code == 0
    assert CliRunner().invoke(cli, ["demo", "populate", *data, "--entries", "20"]).exit_code == 0
    stale = CliRunner().invoke(cli, ["projections", "status", *data])
    assert stale.exit_code == 1 and "its genesis entry differs" in stale.output, stale.output
    assert CliRunner().invoke(cli, ["projections", "rebuild", *data]).exit_code == 0
    assert "at entry 21 of 21" in CliRunner().invoke(cli, ["projections", "status", *data]).output


def test_rebuild_sets_an_unreadable_views_file_aside(ledger: Ledger) -> None:
    """Read models are derived data: a views file SQLite cannot read is kept aside, not
    deleted, and built anew from the log."""
    data = ledger.settings.data_dir
    ledger.admit("sp:app", "service_provider")
    ledger.sequencer.store.close()  # a rebuild needs the ledger to itself
    (data / "views.sqlite").write_bytes(b"this is not a database" * 300)
    broken = CliRunner().invoke(cli, ["projections", "status", "--data", str(data)])
    assert broken.exit_code == 1 and "the database cannot be used" in broken.output
    rebuilt = CliRunner().invoke(cli, ["projections", "rebuild", "--data", str(data)])
    assert rebuilt.exit_code == 0 and "set aside as views.sqlite.unreadable-" in rebuilt.output
    assert len(list(data.glob("views.sqlite.unreadable-*"))) == 1
    assert "at entry 2 of 2" in CliRunner().invoke(cli, ["projections", "status", "--data", str(data)]).output


@pytest.mark.parametrize(
    ("key_file", "content", "said"),
    [
        ("checkpoint.key", None, "checkpoint.key is missing: the sequencer signs the ledger's checkpoints"),
        ("checkpoint.key", "not a key", "is not a checkpoint signing key"),
        ("root.jwk", None, "the demo signs as the ledger's operator"),
    ],
    ids=["checkpoint-key-missing", "checkpoint-key-garbage", "root-key-missing"],
)
def test_a_writer_without_its_keys_stops_with_the_reason(
    ledger: Ledger, key_file: str, content: str | None, said: str
) -> None:
    """A ledger without its checkpoint key used to take entries no checkpoint would ever
    cover; a garbage key, or no operator key for the demo, ended in a traceback."""
    ledger.sequencer.store.close()
    path = ledger.settings.keys_dir / key_file
    path.unlink()
    if content is not None:
        path.write_text(content)
        path.chmod(0o600)
    data = ["--data", str(ledger.settings.data_dir)]
    result = CliRunner().invoke(cli, ["demo", "populate", *data, "--entries", "5"])
    assert result.exit_code == 1 and said in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kafka-ca-file", "{ca}"], "need TLS (SSL or SASL_SSL), not PLAINTEXT"),
        (["--kafka-security-protocol", "SSL", "--kafka-cert-file", "{ca}"], "go together"),
        (["--kafka-security-protocol", "SSL", "--kafka-sasl-username", "relay"], "SASL options need"),
        (
            ["--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", "SCRAM-SHA-512"],
            "needs --kafka-sasl-username, --kafka-sasl-password-file",
        ),
        (
            [
                "--kafka-security-protocol",
                "SASL_SSL",
                "--kafka-sasl-mechanism",
                "PLAIN",
                "--kafka-sasl-username",
                "relay",
                "--kafka-sasl-password-file",
                "{empty}",
            ],
            "is empty",
        ),
        (["--kafka-security-protocol", "TLS"], "Invalid value for '--kafka-security-protocol'"),
        (["--kafka-security-protocol", "SSL", "--kafka-ca-file", "{missing}"], "does not exist"),
    ],
)
@pytest.mark.parametrize("command", [["relay"], ["node", "follow", "--chain", "c"]])
def test_kafka_security_options_that_cannot_be_meant_are_refused_before_connecting(
    tmp_path: Path, command: list[str], args: list[str], message: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.note import SignerKey

    if command[0] == "node":
        key = SignerKey("c", Ed25519PrivateKey.generate()).verifier().to_string()
        command = [*command, "--ledger-key", key]
    files = {"ca": tmp_path / "ca.pem", "empty": tmp_path / "empty", "missing": tmp_path / "missing.pem"}
    files["ca"].write_text("-----BEGIN CERTIFICATE-----\n")
    files["empty"].write_text("\n")
    filled = [a.format(**files) for a in args]
    data = ["--data", str(tmp_path / "d"), "--kafka", "127.0.0.1:9"]
    result = CliRunner().invoke(cli, [*command, *data, *filled])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_a_node_pointed_at_a_port_that_does_not_answer_http_is_refused_not_a_traceback(
    ledger: Ledger, tmp_path: Path
) -> None:
    """http.client's errors are no OSError: a --from-url or --coordinator on another
    service's port (an SSH banner) ended `dfg node follow` and `dfg node serve` with a
    BadStatusLine traceback, and a body cut short (IncompleteRead) ended the thread of a
    node following a ledger's API, which then served a replica that no longer moved."""
    import threading

    from gateways.seed import SeedError, seed_from_api
    from ledger.replica import Replica

    def serving(answer: bytes) -> str:
        listener = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    banner = serving(b"SSH-2.0-OpenSSH_9.6\r\n")
    cut_short = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
    assert ledger.sequencer.ledger is not None
    key = ledger.sequencer.ledger["checkpoint_key"]
    node = tmp_path / "node"
    follow = ["node", "follow", "--data", str(node), "--kafka", "127.0.0.1:9", "--chain", CHAIN,
              "--ledger-key", key, "--from-url", banner]  # fmt: skip
    refused = CliRunner().invoke(cli, follow)
    assert refused.exit_code == 2, refused.output
    assert f"--from-url {banner}: it is no dfg ledger's API (it does not answer HTTP)" in refused.output
    serve = ["node", "serve", "--data", str(node), "--coordinator", banner, "--chain", CHAIN,
             "--ledger-key", key, "--port", "9"]  # fmt: skip
    refused = CliRunner().invoke(cli, serve)
    assert refused.exit_code == 2 and "does not answer HTTP" in refused.output, refused.output
    assert not node.exists()
    replica = Replica(ledger.sequencer.store)
    for url in (banner, cut_short):
        with pytest.raises(SeedError, match="cannot read"):  # follow_api retries it
            seed_from_api(replica, url)


def test_a_read_only_database_is_named_with_what_sqlite_needs_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite says only "attempt to write a readonly database": an operator who made the
    files writable but not their directory (the -wal and -shm files are made there) had
    nothing to go on. (Simulated: file permissions do not stop root, who runs the tests.)"""
    import sqlite3

    import infra.bootstrap

    def read_only(*_: Any, **__: Any) -> Any:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    data = tmp_path / "d"
    assert CliRunner().invoke(cli, ["init", "--data", str(data)]).exit_code == 0
    monkeypatch.setattr(infra.bootstrap, "open_store", read_only)
    result = CliRunner().invoke(cli, ["demo", "populate", "--data", str(data), "--entries", "10"])
    assert result.exit_code == 1, result.output
    assert "readonly database" in result.output and "write access to the data directory" in result.output


@pytest.mark.parametrize("timeout", ["0", "never"])
def test_analyst_results_refuses_a_timeout_that_is_not_one(tmp_path: Path, timeout: str) -> None:
    key = tmp_path / "k.jwk"
    key.write_text("{}")
    args = ["analyst", "results", "a", "--principal", "ao:x", "--key", str(key), "--encryption-key", str(key),
            "--node", "node:a=http://127.0.0.1:9", "--timeout", timeout]  # fmt: skip
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "--timeout" in refused.output, refused.output


def test_serve_on_a_host_that_names_no_address_says_which(ledger: Ledger) -> None:
    """It printed the resolver's "Name or service not known" and nothing of the host."""
    ledger.sequencer.store.close()
    result = CliRunner().invoke(
        cli, ["serve", "--data", str(ledger.settings.data_dir), "--host", "999.1.1.1"]
    )
    assert result.exit_code == 2, result.output
    assert "--host '999.1.1.1' names no address" in result.output and "serving" not in result.output
