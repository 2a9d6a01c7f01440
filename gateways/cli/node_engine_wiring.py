"""Wiring the MPC engine into ``dfg node serve``: keys from files, the mesh of peer
connections authenticated against the node keys in the replica, and the engine thread."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import OKPKey

from domain.identifiers import is_principal_id
from gateways.cli.options import fail
from gateways.deliveries import key_state
from gateways.node_engine import EngineSettings, NodeEngine
from gateways.sdk import ConsentClient, TransactionBuilder
from infra.keyfiles import KeyFileError, read_jwk
from infra.node import NodeReplica
from mpc.runtime import Message
from mpc.transport import DEFAULT_MAX_BUFFERED, KeysOf, Mesh, NodeIdentity, SessionEndpoint
from projections import keys
from projections.base import ViewDatabase


@dataclass(frozen=True)
class EngineOptions:
    name: str
    key: Path
    encryption_key: Path
    mpc_host: str
    mpc_port: int
    peers: tuple[str, ...]
    task_timeout: float
    max_buffered: int = DEFAULT_MAX_BUFFERED


def parse_peers(values: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """``node:b=host:port`` pairs."""
    peers = {}
    for value in values:
        name, sep, address = value.partition("=")
        host, colon, port = address.rpartition(":")
        if not sep or not name or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            fail(f"--peer takes node:name=host:port, not {value!r}")
        if not name.startswith("node:") or not is_principal_id(name):
            # analyses name their nodes by principal id: "b" would never be dialled
            fail(f"--peer takes node:name=host:port: {name!r} is not a node's principal id (node:...)")
        peers[name] = (host, int(port))
    return peers


def okp_key(path: Path, curve: str, option: str) -> OKPKey:
    try:
        key = read_jwk(path)
    except KeyFileError as exc:
        fail(f"{option}: {exc}")
    if (
        not isinstance(key, OKPKey)
        or key.as_dict(private=False).get("crv") != curve
        or key.private_key is None
    ):
        fail(f"{option}: {path} is not a private {curve} key (JWK)")
    return key


def ledger_node_keys(views: ViewDatabase) -> KeysOf:
    """A node principal's Ed25519 keys that may sign now (as the ledger decides: not
    revoked, within ``not_before`` and ``not_after``), as this node's replica knows
    them. A key past its ``not_after`` was let into the mesh as long as nobody revoked it."""

    def keys_of(principal_id: str) -> list[Ed25519PublicKey]:
        with views.transaction(commit=False) as cursor:
            found = keys.principal(cursor, principal_id)
        if found is None or "node_operator" not in found["roles"]:
            return []
        now = datetime.now(UTC)
        return [
            Ed25519PublicKey.from_public_bytes(
                base64.urlsafe_b64decode(k["jwk"]["x"] + "=" * (-len(k["jwk"]["x"]) % 4))
            )
            for k in found["keys"]
            if key_state(k).usable_at(now) is None and k["jwk"].get("crv") == "Ed25519"
        ]

    return keys_of


def start_engine(
    options: EngineOptions,
    node: NodeReplica,
    coordinator: str,
    chain: str,
    data_dir: Path,
    stop: threading.Event,
) -> tuple[Mesh, threading.Thread]:
    signing = okp_key(options.key, "Ed25519", "--key")
    sealing = okp_key(options.encryption_key, "X25519", "--encryption-key")
    signing_private, sealing_private = signing.private_key, sealing.private_key
    assert isinstance(signing_private, Ed25519PrivateKey) and isinstance(sealing_private, X25519PrivateKey)
    mesh_type = CorruptingMesh if os.environ.get(FAULT_VARIABLE) == "corrupt-opening" else Mesh
    try:
        mesh = mesh_type(
            NodeIdentity(options.name, signing_private),
            ledger_node_keys(node.views),
            chain.encode(),
            listen=(options.mpc_host, options.mpc_port),
            peers=parse_peers(options.peers),
            timeout=options.task_timeout,
            max_buffered=options.max_buffered,
        ).start()
    except OSError as exc:
        fail(f"cannot listen for MPC peers on {options.mpc_host}:{options.mpc_port}: {exc}")
    settings = EngineSettings(
        name=options.name,
        signer=TransactionBuilder(options.name, signing, chain),
        encryption_key=sealing_private,
        data_dir=data_dir,
    )
    engine = NodeEngine(settings, node, mesh, ConsentClient(coordinator))
    thread = threading.Thread(target=engine.run, args=(stop,), name="dfg-node-engine", daemon=True)
    thread.start()
    return mesh, thread


#: Fault drills: ``DFG_MPC_FAULT=corrupt-opening`` makes this node send a wrong share
#: in every opening of a computation task, so operators (and the tests) can see the
#: other nodes detect it and fail the task instead of releasing a wrong result.
FAULT_VARIABLE = "DFG_MPC_FAULT"


class CorruptingMesh(Mesh):
    def endpoint(self, session: str, members: Sequence[str]) -> SessionEndpoint:
        honest = super().endpoint(session, members)
        if session.endswith("/1"):  # leave the merge alone: corrupt computation openings
            return honest
        return _Corrupting(self, session, list(members))


class _Corrupting(SessionEndpoint):
    def exchange(self, outgoing: Mapping[int, bytes]) -> dict[int, Message]:
        messages = [outgoing.get(j, b"") for j in range(1, len(self.members) + 1)]
        if messages[0] and all(m == messages[0] for m in messages):  # a broadcast: an opening
            wrong = bytes([messages[0][0] ^ 1]) + messages[0][1:]  # flip the lowest bit of a share
            outgoing = {j: wrong for j in range(1, len(self.members) + 1)}
        return super().exchange(outgoing)
