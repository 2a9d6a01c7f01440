"""The relay and a node over TLS with client certificates, and settings that cannot work.

The broker is the real Tansu behind a TLS front (``tls_front``) that demands a client
certificate; the relay and the follower are the real ``dfg`` commands, given the files
an operator would give them.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CHAIN, Ledger, give_level1
from replication import dfg_process, replica_size, wait_for
from tls_front import Pki, TlsFront, make_pki, server_context

from gateways.cli.main import cli
from gateways.kafka import preflight
from gateways.kafka.preflight import connection_problem
from infra.bootstrap import open_store
from infra.settings import Settings
from infra.tansu import TansuBroker, free_port

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def mutual_tls(pki: Pki) -> dict[str, str]:
    """kafka-python's options for this PKI's client certificate."""
    return {
        "security_protocol": "SSL",
        "ssl_cafile": str(pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
    }


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsFront, TansuBroker]]:
    """Tansu, reachable only through a front that requires a client certificate
    from the PKI's CA (the broker's own port stays plaintext, for the wrong-way tests)."""
    port = free_port()
    with (
        TlsFront(f"127.0.0.1:{port}", server_context(pki, require_client_cert=True)) as front,
        TansuBroker(
            port=port,
            advertised=front.address,
            probe_options=mutual_tls(pki),
            log_dir=tmp_path_factory.mktemp("tansu"),
        ) as broker,
    ):
        yield front, broker


def tls_options(pki: Pki, *, ca: Path | None = None, certificate: bool = True) -> list[str]:
    options = ["--kafka-security-protocol", "SSL", "--kafka-ca-file", str(ca or pki.ca)]
    if certificate:
        options += ["--kafka-cert-file", str(pki.client_cert), "--kafka-key-file", str(pki.client_key)]
    return options


def _stop(process: subprocess.Popen[bytes], log: Path) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.returncode, log.read_text(errors="replace")


def test_relay_and_node_replicate_over_mutual_tls(
    ledger: Ledger, pki: Pki, tls_broker: tuple[TlsFront, TansuBroker], tmp_path: Path
) -> None:
    """What an operator runs against a cluster that takes clients over TLS with client
    certificates: every entry reaches the node, verified, through the TLS front only."""
    front, _ = tls_broker
    app = ledger.admit("sp:app", "service_provider")
    ledger.accept(*[give_level1(ledger, app, f"tls-{i}") for i in range(30)])
    assert ledger.sequencer.ledger is not None
    prefix, node_dir = "tls", tmp_path / "node"
    kafka = ["--kafka", front.address, "--topic-prefix", prefix, *tls_options(pki)]
    relay = dfg_process("relay", "--data", str(ledger.settings.data_dir), *kafka, log=tmp_path / "relay.log")
    follower = dfg_process(
        "node",
        "follow",
        "--data",
        str(node_dir),
        *kafka,
        "--chain",
        CHAIN,
        "--ledger-key",
        ledger.sequencer.ledger["checkpoint_key"],
        log=tmp_path / "follower.log",
    )
    try:
        size = ledger.head()[0]
        wait_for(lambda: replica_size(node_dir) == size, timeout=60, what="the node to follow over TLS")
        ledger.accept(*[give_level1(ledger, app, f"tls-more-{i}") for i in range(10)])
        size = ledger.head()[0]
        wait_for(lambda: replica_size(node_dir) == size, timeout=60, what="the newer entries")
    finally:
        follower_exit = _stop(follower, tmp_path / "follower.log")
        relay_exit = _stop(relay, tmp_path / "relay.log")
    assert follower_exit[0] == 0, follower_exit[1]
    assert relay_exit[0] == 0, relay_exit[1]
    for _, log in (follower_exit, relay_exit):  # dfg's own lines, not kafka-python's chatter
        assert " INFO kafka." not in log, log
    store = open_store(Settings(data_dir=node_dir))
    try:
        held = [e.canonical for e in store.read_entries(1, 1000)]
    finally:
        store.close()
    assert held == [e.canonical for e in ledger.sequencer.store.read_entries(1, 1000)]


def _follow(node_dir: Path, bootstrap: str, *options: str) -> list[str]:
    return ["node", "follow", "--data", str(node_dir), "--kafka", bootstrap, "--chain", CHAIN, *options]


def test_settings_that_cannot_reach_the_brokers_stop_the_commands_at_once(
    ledger: Ledger,
    pki: Pki,
    tls_broker: tuple[TlsFront, TansuBroker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CA that did not sign the brokers' certificate, a missing client certificate,
    TLS spoken to a plaintext listener or plaintext to a TLS one: the clients would
    retry each for ever as if the brokers were down. The commands exit 2 instead,
    naming the option to fix, and leave nothing behind."""
    front, broker = tls_broker
    monkeypatch.setattr(preflight, "TIMEOUT_S", 1.0)  # Tansu waits silently on a TLS hello
    assert ledger.sequencer.ledger is not None
    key = ["--ledger-key", ledger.sequencer.ledger["checkpoint_key"]]
    node_dir = tmp_path / "node"
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    relay = ["relay", "--data", str(ledger.settings.data_dir), "--kafka", front.address]
    serve = [
        "node",
        "serve",
        "--data",
        str(node_dir),
        "--coordinator",
        "http://127.0.0.1:9",
        "--chain",
        CHAIN,
    ]
    cases = [
        ("does not trust", _follow(node_dir, front.address, *tls_options(pki, ca=pki.stranger_ca), *key)),
        ("client certificate", _follow(node_dir, front.address, *tls_options(pki, certificate=False), *key)),
        ("is it a TLS listener", _follow(node_dir, front.address, *key)),
        ("is it a plaintext listener", _follow(node_dir, broker.bootstrap, *tls_options(pki), *key)),
        ("holds no CA certificate", _follow(node_dir, front.address, *tls_options(pki, ca=not_pem), *key)),
        ("does not trust", [*relay, *tls_options(pki, ca=pki.stranger_ca)]),
        ("does not trust", [*serve, "--kafka", front.address, *tls_options(pki, ca=pki.stranger_ca), *key]),
    ]
    before = ledger.head()
    for expected, args in cases:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (expected, result.output)
        assert expected in result.output, (expected, result.output)
        assert f"cannot use Kafka at {args[args.index('--kafka') + 1]}" in result.output
        assert not node_dir.exists(), "a refused node left a replica behind"
    assert ledger.head() == before
    assert ledger.sequencer.store.marker("relay.entries") == 0


def test_a_broker_that_is_down_is_not_taken_for_a_mistake(pki: Pki) -> None:
    """Brokers restart: nothing listening is for the clients to retry, not a reason to stop."""
    assert connection_problem(f"127.0.0.1:{free_port()}", mutual_tls(pki), timeout=1) is None
    assert connection_problem(f"127.0.0.1:{free_port()}", {}, timeout=1) is None


def test_one_server_that_answers_is_enough(pki: Pki, tls_broker: tuple[TlsFront, TansuBroker]) -> None:
    front, _ = tls_broker
    bootstrap = f"127.0.0.1:{free_port()},{front.address}"
    assert connection_problem(bootstrap, mutual_tls(pki), timeout=1) is None
