"""A whole federation on loopback, for ``dfg demo mpc``, ``dfg bench mpc`` and the
end-to-end tests: a coordinator (``dfg serve``) and n computation nodes (``dfg node
serve`` with the MPC engine), each a real process with its own data directory, plus
the signing identities of the operator, providers, analysts and nodes.

Everything goes through the public interfaces: signed transactions to the REST API,
GraphQL for the analysis platform, ``provider_upload`` for shares, and
``analyst_results`` for results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import OKPKey

from gateways.analyst_results import CalculationResult, fetch_results, graphql
from gateways.provider_upload import UploadTimings, upload
from gateways.sdk import ConsentClient, DfgApiError, DfgConnectionError, TransactionBuilder, public_jwk
from infra.keyfiles import read_jwk, write_jwk
from infra.tansu import free_port

PURPOSE = "dpv:ScientificResearch"
DFG = (sys.executable, "-m", "gateways.cli")
CATEGORIES = ["dpv-pd:HealthRecord"]


class FederationError(RuntimeError):
    """The federation could not be started or did not do what was asked in time."""


@dataclass
class NodeProcess:
    name: str
    builder: TransactionBuilder
    url: str
    mpc_port: int
    data: Path
    key_file: Path
    encryption_file: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Federation:
    root: Path
    url: str
    chain: str
    ledger_key: str
    operator: TransactionBuilder
    client: ConsentClient
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    task_timeout: float = 60.0
    _coordinator: subprocess.Popen[bytes] | None = None

    # --- people -------------------------------------------------------------------------

    def admit(self, name: str, kind: str, key: OKPKey | None = None) -> TransactionBuilder:
        key = key or OKPKey.generate_key("Ed25519")
        display = name.split(":", 1)[-1]
        self.client.submit(
            self.operator.admit_principal(
                principal=name, kind=kind, jwk=public_jwk(key), display_name=display
            )
        )
        return TransactionBuilder(name, key, self.chain)

    def submit_all(self, tokens: Sequence[str]) -> None:
        for outcome in self.client.submit_batch(list(tokens)):
            if not hasattr(outcome, "seq"):
                raise FederationError(f"the ledger refused a transaction: {outcome}")

    # --- the analysis platform ----------------------------------------------------------------

    def sign(self, builder: TransactionBuilder, tx_type: str, body: dict[str, Any]) -> None:
        """Sign and submit one transaction (refusals raise DfgApiError)."""
        self.client.submit(builder.sign(tx_type, body))

    def datasource(
        self,
        provider: TransactionBuilder,
        name: str,
        variables: Sequence[tuple[str, str, str | None, str | None]],
    ) -> str:
        """A catalog and a datasource keyed by ``subject`` with these (name, type, min, max)
        (min and max None for a boolean)."""
        catalog_id, datasource_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.sign(provider, "catalog.create", {"catalog_id": catalog_id, "name": name})
        self.sign(
            provider,
            "datasource.create",
            {
                "datasource_id": datasource_id,
                "catalog_id": catalog_id,
                "name": name,
                "origin": {"kind": "fhir", "resource": "Observation"},
                "keys": ["subject"],
                "data_categories": CATEGORIES,
            },
        )
        for variable, kind, low, high in variables:
            spec = {"datasource_id": datasource_id, "name": variable, "type": kind}
            if low is not None and high is not None:  # booleans have no range
                spec.update(min=low, max=high)
            self.sign(provider, "variable.create", spec)
        return datasource_id

    def upload(
        self,
        provider: TransactionBuilder,
        datasource_id: str,
        rows: Sequence[Mapping[str, str]],
        timings: UploadTimings | None = None,
    ) -> None:
        from gateways.provider_upload import fetch_datasource

        upload(
            client=self.client,
            provider=provider,
            datasource=fetch_datasource(self.url, datasource_id),
            rows=rows,
            nodes={n.name: n.url for n in self.nodes.values()},
            timings=timings,
        )

    def consent(self, analyst: TransactionBuilder, subjects: Sequence[str]) -> dict[str, str]:
        """Level-1 consents the analyst organisation collected for these pseudonymous
        subjects, covering the study's purpose: subject -> consent id."""
        terms = {
            "purposes": [PURPOSE],
            "data_categories": CATEGORIES,
            "notice": {"url": "https://study.example/consent", "sha256": "ab" * 32},
        }
        ids = {s: str(uuid.uuid4()) for s in subjects}
        self.submit_all(
            [analyst.give_consent_copy(consent_id=ids[s], subject=s, terms=terms) for s in subjects]
        )
        return ids

    def analysis(
        self,
        analyst: TransactionBuilder,
        name: str,
        view: Sequence[tuple[str, str, str]],
        calculations: Sequence[tuple[str, str | None, Sequence[str]]],
    ) -> str:
        """Create, send, have every node approve, and queue an analysis over a data view
        of (alias, datasource id, variable); returns its id."""
        view_id, analysis_id = str(uuid.uuid4()), str(uuid.uuid4())
        variables = [{"alias": a, "datasource_id": d, "variable": v} for a, d, v in view]
        self.sign(
            analyst,
            "data_view.create",
            {"data_view_id": view_id, "name": name, "variables": variables},
        )
        self.sign(analyst, "data_view.send", {"data_view_id": view_id})
        body = {
            "analysis_id": analysis_id,
            "name": name,
            "data_view_id": view_id,
            "consent": {"purpose": PURPOSE, "data_categories": CATEGORIES},
        }
        self.sign(analyst, "analysis.create", body)
        merge = {"analysis_id": analysis_id, "merge": {"key": "subject"}}
        self.sign(analyst, "analysis.set_merge", merge)
        for title, filter_text, functions in calculations:
            calc = {
                "analysis_id": analysis_id,
                "calculation_id": str(uuid.uuid4()),
                "name": title,
                "filter": filter_text or "",
                "functions": list(functions),
            }
            self.sign(analyst, "calculation.create", calc)
        self.client.submit(
            analyst.sign("analysis.send", {"analysis_id": analysis_id, "nodes": sorted(self.nodes)})
        )
        for node in self.nodes.values():
            self.client.submit(node.builder.sign("analysis.approve", {"analysis_id": analysis_id}))
        self.client.submit(analyst.sign("analysis.queue", {"analysis_id": analysis_id}))
        return analysis_id

    def status(self, analysis_id: str) -> dict[str, Any]:
        from strawberry.relay import to_base64

        found: dict[str, Any] = graphql(
            self.url,
            "query($id: ID!) { analysis(id: $id) { status failure { node taskId reason }"
            " approvals { organization resultsState resultsReason } } }",
            id=to_base64("Analysis", analysis_id),
        )["analysis"]
        return found

    def task_states(self, analysis_id: str) -> list[dict[str, Any]]:
        from strawberry.relay import to_base64

        query = (
            "query($id: ID!) { analysis(id: $id) { taskStates { taskId node stage state claimedTs"
            " finishedTs reason } } }"
        )
        found: list[dict[str, Any]] = graphql(self.url, query, id=to_base64("Analysis", analysis_id))[
            "analysis"
        ]["taskStates"]
        return found

    def wait_for(self, analysis_id: str, statuses: Sequence[str], timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.status(analysis_id)
            if found["status"].lower() in statuses:
                return found
            if time.monotonic() > deadline:
                raise FederationError(
                    f"analysis {analysis_id} is {found['status']}, not {' or '.join(statuses)}"
                )
            time.sleep(0.2)

    def results(
        self, analyst: TransactionBuilder, key: X25519PrivateKey, analysis_id: str
    ) -> list[CalculationResult]:
        _, finished = fetch_results(
            coordinator=self.url,
            analysis_id=analysis_id,
            analyst=analyst,
            key=key,
            nodes={n.name: n.url for n in self.nodes.values()},
        )
        return finished

    # --- processes ------------------------------------------------------------------------------

    def start_node(self, node: NodeProcess, environment: Mapping[str, str] | None = None) -> None:
        peers = [f"--peer={o.name}=127.0.0.1:{o.mpc_port}" for o in self.nodes.values() if o is not node]
        command = [
            *DFG, "node", "serve",
            "--data", str(node.data), "--coordinator", self.url, "--chain", self.chain,
            "--ledger-key", self.ledger_key, "--port", node.url.rsplit(":", 1)[1],
            "--name", node.name, "--key", str(node.key_file), "--encryption-key", str(node.encryption_file),
            "--mpc-port", str(node.mpc_port), "--task-timeout", str(self.task_timeout), *peers,
        ]  # fmt: skip
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(environment or {})}
            )
        _wait_until_up(node.url + "/healthz", node.process, f"node {node.name}", node.log)

    def kill_node(self, name: str) -> None:
        node = self.nodes[name]
        if node.process is not None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(10)
            node.process = None

    def close(self) -> None:
        processes = [n.process for n in self.nodes.values() if n.process is not None]
        if self._coordinator is not None:
            processes.append(self._coordinator)
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_up(
    url: str, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60.0
) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise FederationError(f"{what} did not start:\n{tail}") from None
            time.sleep(0.2)


def _x25519_jwk_file(path: Path) -> dict[str, str]:
    key = OKPKey.generate_key("X25519")
    write_jwk(path, key)
    public = key.as_dict(private=False)
    return {"kty": "OKP", "crv": "X25519", "x": str(public["x"])}


@contextmanager
def federation(
    root: Path,
    *,
    nodes: int = 3,
    policy: Mapping[str, Any] | None = None,
    task_timeout: float = 60.0,
) -> Iterator[Federation]:
    """A coordinator and ``nodes`` computation nodes under ``root``; stopped on exit.
    Every node organisation records ``policy`` (node.set_policy; default: k = 10,
    automatic approval, min/max released)."""
    root.mkdir(parents=True, exist_ok=True)
    coordinator_data = root / "coordinator"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    initialised = subprocess.run(
        [*DFG, "init", "--data", str(coordinator_data)],
        capture_output=True, text=True, env=environment, check=False,
    )  # fmt: skip
    if initialised.returncode:
        raise FederationError(f"dfg init failed: {initialised.stderr}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "coordinator.log"
    with log.open("ab") as handle:
        coordinator = subprocess.Popen(
            [*DFG, "serve", "--data", str(coordinator_data), "--port", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
    made: Federation | None = None
    try:
        _wait_until_up(url + "/healthz", coordinator, "the coordinator", log)
        client = ConsentClient(url)
        chain = client.health()["chain"]
        genesis = client.entry(1)
        operator = TransactionBuilder(
            genesis["event"]["data"]["principal"], read_jwk(coordinator_data / "keys" / "root.jwk"), chain
        )
        made = Federation(
            root, url, chain, genesis["event"]["data"]["ledger"]["checkpoint_key"], operator, client,
            task_timeout=task_timeout, _coordinator=coordinator,
        )  # fmt: skip
        chosen = {"min_cell": 10, "release_extremes": True, "approval": "automatic", **(policy or {})}
        for index in range(nodes):
            name = f"node:{chr(ord('a') + index)}"
            data = root / name.replace(":", "-")
            data.mkdir(parents=True, exist_ok=True)
            key_file, encryption_file = data / "node.jwk", data / "x25519.jwk"
            key = OKPKey.generate_key("Ed25519")
            write_jwk(key_file, key)  # the node process signs its task moves with it
            builder = made.admit(name, "node_operator", key)
            made.client.submit(
                builder.sign("node.set_encryption_key", {"jwk": _x25519_jwk_file(encryption_file)})
            )
            made.client.submit(builder.sign("node.set_policy", chosen))
            made.nodes[name] = NodeProcess(
                name, builder, f"http://127.0.0.1:{free_port()}", free_port(), data, key_file,
                encryption_file, root / f"{name.replace(':', '-')}.log",
            )  # fmt: skip
        for node in made.nodes.values():
            made.start_node(node)
        yield made
    except (DfgApiError, DfgConnectionError) as exc:
        raise FederationError(f"setting up the federation failed: {exc}") from exc
    finally:
        if made is not None:
            made.close()
        else:
            coordinator.terminate()
            coordinator.wait(15)


def analyst_key() -> tuple[X25519PrivateKey, dict[str, str]]:
    from mpc.sealing import x25519_jwk

    key = X25519PrivateKey.generate()
    return key, x25519_jwk(key)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
