"""``dfg relay`` and ``dfg node ...``: replication to node operators over Kafka."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from domain.identifiers import is_principal_id
from gateways.cli.kafka_security import kafka_security_options
from gateways.cli.options import (
    checkpoint_verifier_key,
    fail,
    http_url,
    ledger_options,
    optional_http_url,
    require_ledger,
    run_server,
)
from gateways.kafka.client import KafkaSettings
from gateways.kafka.follower import SEEN_AT_MARKER, TOPIC_END_MARKER, Follower, Witness
from gateways.kafka.preflight import connection_problem
from gateways.kafka.quiet_logs import quiet_kafka_repeats
from gateways.kafka.relay import Relay, RelayError
from gateways.kafka.topics import Topics, check_topic_part
from infra.bootstrap import open_store
from infra.keyfiles import KeyFileError, read_jwk, write_jwk
from infra.node import NodeReplica, open_node
from infra.settings import Settings
from infra.store_role import StoreRole, WrongStoreRole, check_store_role, describe_store
from infra.writer_lock import LedgerBusy, RelayBusy, WriterLockLost, take_relay_lock
from ledger.audit import AuditFailure
from ledger.replica import NeedsNewerDfg, NotThisLedger, Replica, ReplicaHalted
from ledger.signing import public_jwk
from ledger.store import genesis_parameters, newest_entry_time
from ledger.witness import witness_verifier
from mpc.transport import DEFAULT_MAX_BUFFERED

#: How long a stopping node waits for its engine to record a task it was running as
#: failed (one submission, with the client's retries).
ENGINE_STOP_S = 20.0
_BOOTSTRAP_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")


def _bootstrap(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """host:port[,host:port...], checked here: a client given anything else retries forever."""
    for server in value.split(","):
        match = _BOOTSTRAP_SERVER.fullmatch(server.strip())
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            raise click.BadParameter(f"{server.strip()!r} is not host:port")
    return value


def _refuse_unusable_kafka(bootstrap: str, security: dict[str, Any]) -> None:
    """Exit 2 naming settings that can never reach the brokers (a CA that does not sign
    their certificates, TLS to a plaintext listener...), which the clients would retry
    for ever as if the brokers were down."""
    problem = connection_problem(bootstrap, security)
    if problem is not None:
        fail(f"cannot use Kafka at {bootstrap}: {problem}", 2)


kafka_option = click.option(
    "--kafka",
    "bootstrap",
    envvar="DFG_KAFKA",
    show_envvar=True,
    required=True,
    callback=_bootstrap,
    help="Kafka bootstrap servers, host:port[,host:port...].",
)


def _topic_name_part(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A chain id or topic prefix that can name Kafka topics, checked before anything
    is created."""
    if value is not None:
        try:
            check_topic_part(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


prefix_option = click.option(
    "--topic-prefix",
    default="dfg",
    show_default=True,
    callback=_topic_name_part,
    help="Topics are <prefix>.<chain>.entries etc.",
)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python says a great deal at INFO (some 70 lines as a relay starts), which
    # buried dfg's own lines; its warnings and errors (a failed TLS handshake) stay.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    quiet_kafka_repeats()  # and while a broker is down it repeats them several times a second


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.command("relay")
@ledger_options
@kafka_option
@kafka_security_options
@prefix_option
@click.option(
    "--replication-factor",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="For topics the relay creates (use 3 on a production cluster).",
)
def relay(
    settings: Settings,
    bootstrap: str,
    kafka_security: dict[str, Any],
    topic_prefix: str,
    replication_factor: int,
) -> None:
    """Publish every entry and checkpoint of the ledger to Kafka, in order, once; keep
    the witnesses' cosignatures that come back."""
    _logging()
    require_ledger(settings)
    _refuse_unusable_kafka(bootstrap, kafka_security)
    store = open_store(settings)
    try:
        check_store_role(store, StoreRole.LEDGER, settings)
        lock = take_relay_lock(settings)
    except (WrongStoreRole, RelayBusy) as exc:
        store.close()
        fail(str(exc))
    try:
        chain = _chain_of(store)
        topics = Topics.for_ledger(chain, topic_prefix)
        kafka = KafkaSettings(
            bootstrap,
            client_id=f"dfg-relay-{chain}",
            replication_factor=replication_factor,
            security=kafka_security,
        )
        publisher = Relay(store, kafka, topics, lock=lock)
        click.echo(f"dfg relay: {chain} -> {topics.entries}, {topics.checkpoints} on {bootstrap}")
        publisher.run(_stop_on_signals())
    except RelayError as exc:
        fail(str(exc), code=2)
    except WriterLockLost as exc:
        fail(str(exc))
    finally:
        store.close()
        lock.release()


@click.group("node")
def node() -> None:
    """Run a node operator's verifying, witnessing replica."""


@node.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the node's private key (JWK, mode 0600).",
)
@click.option("--name", required=True, help="The node operator's principal id, e.g. node:alpha.")
@click.option(
    "--encryption-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the node's X25519 key here (providers seal share bundles to it).",
)
def keygen(out: Path, name: str, encryption_out: Path | None) -> None:
    """Create a node key; prints the public JWK to admit on the ledger, the witness key
    (vkey) auditors pin in their witness policy, and with --encryption-out the X25519
    public key to register with node.set_encryption_key."""
    if not is_principal_id(name):
        fail(f"--name {name!r} is not a principal id (e.g. node:alpha)", 2)
    if encryption_out is not None and encryption_out.resolve() == out.resolve():
        fail("--out and --encryption-out must be two files", 2)
    for path in (out, encryption_out):
        if path is not None and path.exists():
            fail(f"{path} exists; refusing to overwrite a key")
    key = OKPKey.generate_key("Ed25519")
    jwk = public_jwk(key).as_dict()
    verifier = witness_verifier(name, jwk)
    if verifier is None:  # before anything is written
        fail(f"--name {name!r} cannot name a witness key", 2)
    printed: dict[str, Any] = {"principal": name, "jwk": jwk, "witness_key": verifier.to_string()}
    keys = [(out, key)]
    if encryption_out is not None:
        sealing = OKPKey.generate_key("X25519")
        keys.append((encryption_out, sealing))
        printed["encryption_jwk"] = sealing.as_dict(private=False)
    written: list[Path] = []
    try:
        for path, private in keys:
            write_jwk(path, private)
            written.append(path)
    except (KeyFileError, OSError) as exc:  # both keys or neither: a lone one is never printed
        for path in written:
            path.unlink(missing_ok=True)
        fail(f"{exc}; no key was kept")
    click.echo(json.dumps(printed, indent=2))


@node.command("follow")
@ledger_options
@kafka_option
@kafka_security_options
@prefix_option
@click.option(
    "--chain", required=True, callback=_topic_name_part, help="The ledger's chain id (names its topics)."
)
@click.option(
    "--ledger-key",
    required=True,
    envvar="DFG_LEDGER_KEY",
    callback=checkpoint_verifier_key,
    help="The ledger's checkpoint verifier key (name+hash+key), as `dfg init` printed it.",
)
@click.option(
    "--witness-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="This node's key (from `dfg node keygen`): cosign verified checkpoints.",
)
@click.option("--witness-name", help="This node's principal id on the ledger (with --witness-key).")
@click.option(
    "--status-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve GET /status (JSON) and /metrics on 127.0.0.1:PORT.",
)
@click.option("--exit-on-violation", is_flag=True, help="Exit with status 3 when a violation is found.")
@click.option(
    "--from-bundle",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="First verify and keep an audit bundle's entries (`dfg audit export`), then follow.",
)
@click.option(
    "--from-url",
    callback=optional_http_url,
    help="First copy (and verify) the log from a ledger's API, e.g. http://ledger:8080.",
)
def follow(
    settings: Settings,
    bootstrap: str,
    kafka_security: dict[str, Any],
    topic_prefix: str,
    chain: str,
    ledger_key: str,
    witness_key: Path | None,
    witness_name: str | None,
    status_port: int | None,
    exit_on_violation: bool,
    from_bundle: Path | None,
    from_url: str | None,
) -> None:
    """Consume the ledger's topics into this node's own verified replica and views."""
    _logging()
    witness = _witness(witness_key, witness_name)
    topics = Topics.for_ledger(chain, topic_prefix)
    _refuse_unusable_kafka(bootstrap, kafka_security)
    _refuse_another_ledger(chain, ledger_key, bundle=from_bundle, url=from_url, url_option="--from-url")
    node = _open_node(settings, ledger_key, chain)
    store, views, view_list, replica = node.store, node.views, node.view_list, node.replica
    if from_bundle is not None or from_url is not None:
        _seed(replica, from_bundle, from_url)
    kafka = KafkaSettings(bootstrap, client_id=f"dfg-node-{chain}", security=kafka_security)
    follower = Follower(replica, views, view_list, kafka, topics, witness=witness)
    stop = _stop_on_signals()
    if status_port is not None:
        from gateways.http.node_status import serve_status

        listening = serve_status(follower, "127.0.0.1", status_port)
    where = settings.data_dir if not settings.database_url else "the database of --database-url"
    click.echo(f"dfg node following {chain} on {bootstrap} into {where} (size {replica.size})")
    if status_port is not None:
        click.echo(f"status on http://127.0.0.1:{listening}/status and /metrics")
    try:
        code = follower.run(stop, exit_on_violation=exit_on_violation)
    except WriterLockLost as exc:  # its session ended (PostgreSQL), and another process took it
        fail(str(exc))
    finally:
        views.close()
        store.close()
    if follower.cannot_follow is not None:
        fail(f"these topics cannot be followed into this replica: {follower.cannot_follow}", 2)
    if code:
        halted = follower.status.halted or {}
        click.secho(
            f"VIOLATION: entry {halted.get('seq')}: {halted.get('kind')}: {halted.get('message')}",
            fg="red",
            err=True,
        )
    sys.exit(code)


@node.command("serve")
@ledger_options
@click.option(
    "--coordinator",
    required=True,
    callback=http_url,
    help="The coordinator's URL (dfg serve), e.g. http://ledger:8080.",
)
@click.option("--chain", required=True, help="The ledger's chain id.")
@click.option(
    "--ledger-key",
    required=True,
    envvar="DFG_LEDGER_KEY",
    callback=checkpoint_verifier_key,
    help="The ledger's checkpoint verifier key.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True)
@click.option(
    "--name", default=None, help="This node's principal id (refuse bundles sealed for another node)."
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The node organisation's Ed25519 key (JWK): run the MPC engine, signing its task moves.",
)
@click.option(
    "--encryption-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The node's X25519 key (JWK) that providers seal share bundles to (with --key).",
)
@click.option("--mpc-host", default="127.0.0.1", show_default=True, help="Listen for the other nodes here.")
@click.option("--mpc-port", type=click.IntRange(0, 65535), default=9100, show_default=True)
@click.option("--peer", "peers", multiple=True, help="Another node: node:name=host:port (repeat).")
@click.option(
    "--kafka",
    "bootstrap",
    default=None,
    envvar="DFG_KAFKA",
    help="Follow the ledger's Kafka topics (host:port,...) instead of the coordinator's HTTP log.",
)
@kafka_security_options
@click.option(
    "--topic-prefix",
    default="dfg",
    show_default=True,
    callback=_topic_name_part,
    help="With --kafka: topics are <prefix>.<chain>.*.",
)
@click.option(
    "--task-timeout",
    type=click.FloatRange(1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds to wait for another node in a protocol round before failing the task.",
)
@click.option(
    "--mpc-buffer-mb",
    type=click.IntRange(16, 1 << 20),
    default=DEFAULT_MAX_BUFFERED >> 20,
    show_default=True,
    help="Other nodes' round messages held, not yet read, at most (MiB, all tasks together): a peer"
    " that sends more has its connection cut and its task fails. Large analyses need a round's"
    " vector from every peer, twice.",
)
def node_serve(
    settings: Settings,
    coordinator: str,
    chain: str,
    ledger_key: str,
    host: str,
    port: int,
    name: str | None,
    key: Path | None,
    encryption_key: Path | None,
    mpc_host: str,
    mpc_port: int,
    peers: tuple[str, ...],
    bootstrap: str | None,
    kafka_security: dict[str, Any],
    topic_prefix: str,
    task_timeout: float,
    mpc_buffer_mb: int,
) -> None:
    """Serve the GraphQL API as a computation node: answers from this node's own
    verified replica (kept up to date from the ledger's Kafka topics with --kafka, else
    from the coordinator's API), forwards the node
    organisation's signed approvals to the coordinator, receives share bundles, and
    -- with --key -- runs the MPC engine on the node's task queue with its --peer nodes."""

    from gateways.cli.node_engine_wiring import EngineOptions, start_engine
    from gateways.http.node_app import build_node_app
    from gateways.node_engine import result_sealer
    from gateways.seed import follow_api

    _logging()
    if key is not None and (name is None or encryption_key is None):
        fail("the MPC engine (--key) needs --name and --encryption-key")
    if key is not None:
        from gateways.cli.node_engine_wiring import parse_peers

        parse_peers(peers)  # refuse a malformed --peer before anything is created
    try:
        topics = Topics.for_ledger(chain, topic_prefix) if bootstrap is not None else None
    except ValueError as exc:
        fail(f"--chain: {exc}", 2)
    if bootstrap is not None:
        _refuse_unusable_kafka(bootstrap, kafka_security)
    _refuse_another_ledger(chain, ledger_key, url=coordinator, url_option="--coordinator")
    node = _open_node(settings, ledger_key, chain)
    stop = threading.Event()
    kafka: Follower | None = None
    if bootstrap is not None and topics is not None:  # the topics, as dfg node follow reads them
        settings_kafka = KafkaSettings(bootstrap, client_id=f"dfg-node-{chain}", security=kafka_security)
        kafka = Follower(node.replica, node.views, node.view_list, settings_kafka, topics)
        source = f"Kafka at {bootstrap}"
    else:
        source = coordinator
    gave_up: list[str] = []
    failed: list[str] = []

    def follow() -> None:
        """Topics or an API that cannot be followed into this replica (another ledger's,
        records deleted, an entry twice) stop the node, as they stop `dfg node follow`:
        serving on from a replica that no longer moves would go unnoticed. So does a
        fault that ends the follower (its database restarted under it), which ended this
        thread alone. A violation does not: the node serves its evidence (``/healthz``)."""
        try:
            if kafka is not None:
                kafka.run(stop)
                reason = kafka.cannot_follow
            else:
                reason = follow_api(node.replica, node.apply_views, coordinator, stop)
        except Exception as exc:
            if stop.is_set():  # the node is stopping, and closing what the follower used
                return
            logging.getLogger("dfg.node").exception("following %s failed", source)
            failed.append(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if reason is not None and not stop.is_set():
            gave_up.append(reason)
            os.kill(os.getpid(), signal.SIGTERM)  # web.run_app stops on it, as on Ctrl-C

    follower = threading.Thread(target=follow, name="dfg-node-follow", daemon=True)
    follower.start()
    mesh, engine = None, None
    if key is not None and name is not None and encryption_key is not None:
        options = EngineOptions(
            name, key, encryption_key, mpc_host, mpc_port, peers, task_timeout, mpc_buffer_mb << 20
        )
        mesh, engine = start_engine(options, node, coordinator, chain, settings.data_dir, stop)
        click.echo(f"dfg node {name}: MPC engine listening for peers on {mpc_host}:{mesh.address[1]}")
    serving = f"dfg node serving {chain} on http://{host}:{port}/graphql, following {source}"
    app = build_node_app(
        node.store,
        node.views,
        node.view_list,
        coordinator,
        bundles=settings.data_dir / "bundles",
        name=name,
        sealed_results=result_sealer(settings.data_dir / "work"),
    )
    try:
        run_server(app, host, port, serving)
    finally:
        stop.set()
        if mesh is not None:
            mesh.close()  # a task under way fails now ("stopped during the task") ...
        if engine is not None:  # ... and its task.fail reaches the ledger before the exit
            engine.join(ENGINE_STOP_S)
        follower.join(10)
        node.close()
    if gave_up:
        fail(f"the node stopped: {source} cannot be followed into this replica: {gave_up[0]}", 2)
    if failed:
        fail(f"the node stopped: following {source} failed: {failed[0]}")


def _open_node(settings: Settings, ledger_key: str, chain: str) -> NodeReplica:
    """The node's replica and views; exit 2 when the replica holds another ledger than
    the one named (a configuration mistake, as for topics of another ledger), 1 when
    another process holds it or it is a ledger's store."""
    try:
        return open_node(settings, ledger_key=ledger_key, chain=chain)
    except AuditFailure as exc:  # the replica held is not of the ledger named
        fail(f"the replica in {describe_store(settings)} cannot follow this ledger: {exc}", 2)
    except (LedgerBusy, WrongStoreRole) as exc:
        fail(str(exc))


@node.command("status")
@ledger_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(settings: Settings, as_json: bool) -> None:
    """Replica size, lag, last verified checkpoint and violations of a node; exit status 3
    when a violation is recorded (for a supervisor's health check)."""
    require_ledger(settings, making="`dfg node follow` makes a replica there")
    store = open_store(settings, read_only=True)  # beside a running follower
    try:
        try:
            check_store_role(store, StoreRole.REPLICA, settings)
        except WrongStoreRole:
            # a health check pointed at the ledger's own store would report a replica that
            # is never behind and never finds a violation
            fail(
                f"{describe_store(settings)} is a ledger's own store, not a node's replica:"
                " give dfg node status the node's --data or --database-url (the ledger's"
                " health is dfg serve's GET /healthz)"
            )
        size = store.head()[0]
        seen_ms = store.marker(SEEN_AT_MARKER)
        # unknown until a follower has read where the log ends (not the replica's size)
        topic_end = max(store.marker(TOPIC_END_MARKER), size) if seen_ms else None
        seen_age = round(time.time() - seen_ms / 1000, 3) if seen_ms else None
        latest = store.latest_checkpoint()
        newest = newest_entry_time(store, size)
        last_ts = newest.timestamp() if newest is not None else None
        violations = [v.__dict__ for v in store.violations()]
        report: dict[str, Any] = {
            "size": size,
            "topic_end": topic_end,
            "lag_entries": None if topic_end is None else topic_end - size,
            "topic_end_seen_age_s": seen_age,
            "newest_entry_age_s": None if last_ts is None else round(time.time() - last_ts, 3),
            "last_checkpoint": latest.size if latest else None,
            "cosignatures_on_last_checkpoint": len(latest.cosignatures) if latest else 0,
            "violations": violations,
        }
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(f"replica size       {size:,}")
        if topic_end is None or seen_age is None:
            click.echo("behind the log     unknown (no follower has read where the log ends yet)")
        else:
            click.echo(
                f"behind the log     {report['lag_entries']:,} entries"
                f" (it ends at {topic_end:,}, seen {_ago(seen_age)})"
            )
        last = report["last_checkpoint"]
        click.echo(f"last checkpoint    {'none yet' if last is None else f'size {last:,}'}")
        for v in violations:
            click.secho(
                f"VIOLATION {v['kind']} at entry {v['seq']}: {v['message']} ({v['recorded_at']})", fg="red"
            )
        if not violations:
            click.echo("violations         none")
    sys.exit(3 if violations else 0)


def _ago(seconds: float) -> str:
    """Roughly how long ago: a follower notes where the topic ends about once a second."""
    if seconds < 2:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.0f} h ago"


def _refuse_another_ledger(
    chain: str, ledger_key: str, *, bundle: Path | None = None, url: str | None = None, url_option: str
) -> None:
    """Exit 2 before any file is made when the bundle or the ledger's API holds another
    ledger than --chain and --ledger-key name (an API that cannot be reached now is not
    refused: the node retries it)."""
    from gateways.seed import api_ledger_problem, bundle_ledger_problem

    if bundle is not None:
        problem = bundle_ledger_problem(bundle, chain=chain, checkpoint_key=ledger_key)
        if problem is not None:
            fail(f"--from-bundle {bundle}: {problem} (check --chain and --ledger-key)", 2)
    if url is not None:
        problem = api_ledger_problem(url, chain=chain, checkpoint_key=ledger_key)
        if problem is not None:
            fail(f"{url_option} {url}: {problem} (check --chain and --ledger-key)", 2)


def _seed(replica: Replica, bundle: Path | None, url: str | None) -> None:
    """Verify a bundle's or an API's log into the replica before following the topic."""
    from gateways.seed import SeedError, seed_from_api, seed_from_bundle
    from infra.bundle import BundleError

    before = replica.size
    try:
        if bundle is not None:
            seed_from_bundle(replica, bundle)
        if url is not None:
            seed_from_api(replica, url)
    except ReplicaHalted as exc:
        fail(f"VIOLATION while seeding: {exc}", code=3)
    except NotThisLedger as exc:
        fail(f"the seed holds another ledger than the one named: {exc}", code=2)
    except NeedsNewerDfg as exc:
        fail(f"{exc} (the replica keeps the {replica.size} entries it verified)", code=2)
    except (SeedError, BundleError) as exc:
        fail(f"{exc} (the replica keeps the {replica.size} entries it verified)")
    if replica.size == before:  # a restart with the same --from-bundle or --from-url
        click.echo(f"seeded: nothing new: the replica already holds {before} entries")
    else:
        click.echo(f"seeded: verified entries {before + 1}..{replica.size}")


def _witness(path: Path | None, name: str | None) -> Witness | None:
    if path is None and name is None:
        return None
    if path is None or name is None:
        fail("--witness-key and --witness-name go together")
    if not is_principal_id(name):
        fail(f"--witness-name {name!r} is not a principal id (e.g. node:alpha)", 2)
    try:
        key = read_jwk(path)
    except KeyFileError as exc:
        fail(str(exc))
    # checked now, not at the first checkpoint to cosign (an X25519 key is OKP too)
    if not isinstance(key, OKPKey) or not isinstance(key.private_key, Ed25519PrivateKey):
        fail(f"{path} is not an Ed25519 private key (`dfg node keygen --out` writes one)")
    return Witness(name, key.private_key)


def _chain_of(store: Any) -> str:
    ledger = genesis_parameters(store)
    if ledger is None:
        fail("this ledger has no genesis entry")
    assert ledger is not None
    return ledger["chain"]
