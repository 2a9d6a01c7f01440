"""``dfg demo analysis``: a privacy-preserving analysis from datasets to the nodes' task
queues, through the GraphQL API with signed transactions, printed step by step.

Two data providers register datasources, an analyst organisation builds an analysis
that merges them with three calculations and asks citizens for consent, citizens
answer, three computation nodes' organisations approve the analysis on their own node
servers (started here, each verifying the ledger itself), the analyst queues it, and
its tasks appear in every node's queue.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport

from gateways.cli.options import fail, http_url, ledger_options
from gateways.sdk import (
    ConsentClient,
    DfgApiError,
    DfgConnectionError,
    TransactionBuilder,
    generate_key,
    public_jwk,
)
from infra.keyfiles import KeyFileError, read_jwk
from infra.settings import Settings
from infra.tansu import free_port

HEART, HEALTH = "dpv-pd:HeartRate", "dpv-pd:HealthRecord"
PURPOSE = "dpv:ScientificResearch"


def _step(text: str) -> None:
    click.secho(f"\n▸ {text}", bold=True)


def _graphql(url: str) -> Client:
    return Client(
        transport=RequestsHTTPTransport(url=f"{url}/graphql", timeout=30), fetch_schema_from_transport=False
    )


def _run(client: Client, document: str, **variables: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = client.execute(GraphQLRequest(document, variable_values=variables))
    except TransportQueryError as exc:
        errors = exc.errors or [{}]
        code = errors[0].get("extensions", {}).get("code", "error")
        fail(f"GraphQL refused: {code}: {errors[0].get('message', exc)}")
    return result


@contextmanager
def _node_servers(url: str, chain: str, ledger_key: str, count: int) -> Iterator[list[str]]:
    """``count`` computation nodes (dfg node serve), each with its own replica."""
    with tempfile.TemporaryDirectory(prefix="dfg-demo-nodes-") as tmp:
        processes, urls = [], []
        try:
            for index in range(count):
                port = free_port()
                log = (Path(tmp) / f"node{index}.log").open("wb")
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "gateways.cli",
                            "node",
                            "serve",
                            "--data",
                            f"{tmp}/node{index}",
                            "--coordinator",
                            url,
                            "--chain",
                            chain,
                            "--ledger-key",
                            ledger_key,
                            "--port",
                            str(port),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for node_url, process in zip(urls, processes, strict=True):
                _wait_for_server(node_url, process)
            yield urls
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(15)


def _wait_for_server(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _graphql(url).execute(GraphQLRequest("{ __typename }"))
            return
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                fail(f"the node server at {url} did not start")
            time.sleep(0.2)


def _poll(client: Client, document: str, **variables: Any) -> dict[str, Any] | None:
    """A query while a node catches up: an error (say, an organisation its replica does
    not know yet) means "not yet", not a failure."""
    try:
        result: dict[str, Any] = client.execute(GraphQLRequest(document, variable_values=variables))
    except TransportQueryError:
        return None
    return result


def _wait(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@click.command("analysis")
@ledger_options
@click.option(
    "--url",
    default="http://127.0.0.1:8080",
    show_default=True,
    callback=http_url,
    help="The coordinator (make run).",
)
def analysis(settings: Settings, url: str) -> None:
    """An analysis over two providers' data, approved by three nodes and queued."""
    try:
        _demo(settings, url)
    except DfgApiError as exc:
        fail(f"the ledger refused a step: {exc}")


def _demo(settings: Settings, url: str) -> None:
    rest = ConsentClient(url)
    try:
        health = rest.health()
    except DfgConnectionError:
        fail(f"no dfg server at {url}: start one with `make run` or `dfg serve --data {settings.data_dir}`")
    chain = health["chain"]
    genesis = rest.entry(1)
    ledger_key = genesis["event"]["data"]["ledger"]["checkpoint_key"]
    click.echo(f"ledger {chain} at {url}, {health['size']} entries")
    try:
        operator = TransactionBuilder(
            genesis["event"]["data"]["principal"], read_jwk(settings.keys_dir / "root.jwk"), chain
        )
    except KeyFileError as exc:
        fail(f"{exc}; pass --data of the ledger the server runs")
    tag = secrets.token_hex(3)
    coordinator = _graphql(url)

    _step("The operator admits two data providers, an analyst organisation, three nodes and five citizens")
    people: dict[str, TransactionBuilder] = {}
    for name, kind in [
        (f"dp:meteda-{tag}", "data_provider"),
        (f"dp:cardiolyse-{tag}", "data_provider"),
        (f"ao:university-{tag}", "analyst_org"),
        *[(f"node:cc{i}-{tag}", "node_operator") for i in range(3)],
        *[(f"citizen:c{i}-{tag}", "citizen") for i in range(5)],
    ]:
        key = generate_key()
        display = None if kind == "citizen" else name.split(":")[1]
        token = operator.admit_principal(principal=name, kind=kind, jwk=public_jwk(key), display_name=display)
        rest.submit(token)
        people[name] = TransactionBuilder(name, key, chain)
        click.echo(f"  {kind:14} {name}")
    meteda, cardiolyse, university = (people[n] for n in list(people)[:3])
    nodes = [people[f"node:cc{i}-{tag}"] for i in range(3)]
    citizens = [people[f"citizen:c{i}-{tag}"] for i in range(5)]

    _step("Data providers register catalogs and datasources with their variables (GraphQL)")
    sources: dict[str, str] = {}
    for provider, label, variables in [
        (
            meteda,
            "Meteda diabetes registry",
            [("age", "integer", "0", "120"), ("hba1c", "decimal", "10", "200")],
        ),
        (cardiolyse, "Cardiolyse ECG", [("hrv", "decimal", "0", "500")]),
    ]:
        catalog_id, datasource_id = str(uuid.uuid4()), str(uuid.uuid4())
        _run(
            coordinator,
            "mutation($t: String!) { createCatalog(signedTransaction: $t) { id } }",
            t=provider.sign("catalog.create", {"catalog_id": catalog_id, "name": label}),
        )
        body = {
            "datasource_id": datasource_id,
            "catalog_id": catalog_id,
            "name": label,
            "origin": {"kind": "fhir", "resource": "Observation"},
            "keys": ["subject"],
            "data_categories": [HEART, HEALTH],
        }
        made = _run(
            coordinator,
            "mutation($t: String!) { createDatasource(signedTransaction: $t) { id name } }",
            t=provider.sign("datasource.create", body),
        )["createDatasource"]
        for name, kind, low, high in variables:
            spec = {"datasource_id": datasource_id, "name": name, "type": kind, "min": low, "max": high}
            _run(
                coordinator,
                "mutation($t: String!) { createVariable(signedTransaction: $t) { name } }",
                t=provider.sign("variable.create", spec),
            )
        sources[label] = datasource_id
        click.echo(f"  {provider.principal}: {made['name']} ({', '.join(v[0] for v in variables)})")

    _step("The analyst builds a data view over both, and an analysis that merges them on the subject key")
    view_id, analysis_id = str(uuid.uuid4()), str(uuid.uuid4())
    meteda_id, cardiolyse_id = sources["Meteda diabetes registry"], sources["Cardiolyse ECG"]
    view = {
        "data_view_id": view_id,
        "name": "Diabetes and heart rate variability",
        "variables": [
            {"alias": "age", "datasource_id": meteda_id, "variable": "age"},
            {"alias": "hba1c", "datasource_id": meteda_id, "variable": "hba1c"},
            {"alias": "hrv", "datasource_id": cardiolyse_id, "variable": "hrv"},
        ],
    }
    _run(
        coordinator,
        "mutation($t: String!) { createDataView(signedTransaction: $t) { id } }",
        t=university.sign("data_view.create", view),
    )
    _run(
        coordinator,
        "mutation($t: String!) { sendDataView(signedTransaction: $t) { sent } }",
        t=university.sign("data_view.send", {"data_view_id": view_id}),
    )
    created = _run(
        coordinator,
        "mutation($t: String!) { createAnalysis(signedTransaction: $t) { id status } }",
        t=university.sign(
            "analysis.create",
            {
                "analysis_id": analysis_id,
                "name": "HbA1c and HRV in adults",
                "data_view_id": view_id,
                "consent": {"purpose": PURPOSE, "data_categories": [HEART, HEALTH]},
            },
        ),
    )["createAnalysis"]
    gid = created["id"]
    _run(
        coordinator,
        "mutation($id: ID!, $t: String!) { updateMergeSpecification(id: $id, signedTransaction: $t)"
        " { mergeSpec } }",
        id=gid,
        t=university.sign("analysis.set_merge", {"analysis_id": analysis_id, "merge": {"key": "subject"}}),
    )
    for name, flt, functions in [
        ("adults", "age >= 18", ["count()", "mean(hba1c)", "stddev(hba1c)"]),
        ("poor control", "hba1c > 58 & age >= 18", ["histogram(hrv, 10)", "mean(hrv)"]),
        ("association", "age >= 18", ["correlation(hrv, hba1c)", "linear_regression(hrv ~ hba1c + age)"]),
    ]:
        calc = {
            "analysis_id": analysis_id,
            "calculation_id": str(uuid.uuid4()),
            "name": name,
            "filter": flt,
            "functions": functions,
        }
        _run(
            coordinator,
            "mutation($t: String!) { createCalculation(signedTransaction: $t) { name } }",
            t=university.sign("calculation.create", calc),
        )
        click.echo(f"  calculation {name!r}: {flt} => {', '.join(functions)}")
    node_ids = [n.principal for n in nodes]
    sent = _run(
        coordinator,
        "mutation($t: String!) { sendAnalysis(signedTransaction: $t) { status locked"
        " missingApprovals approvals { organization orgId } } }",
        t=university.sign("analysis.send", {"analysis_id": analysis_id, "nodes": node_ids}),
    )["sendAnalysis"]
    org_ids = [a["orgId"] for a in sent["approvals"]]
    click.echo(f"  sent to {', '.join(node_ids)}: status {sent['status']}, locked {sent['locked']}")

    _step("Citizens are asked for consent; four give it, one declines (consent.* transactions)")
    terms = {
        "purposes": [PURPOSE],
        "data_categories": [HEART, HEALTH],
        "notice": {"url": "https://university.example/hrv-study", "sha256": "ab" * 32},
    }
    for number, citizen in enumerate(citizens):
        consent_id = str(uuid.uuid4())
        rest.submit(university.request_consent(consent_id=consent_id, subject=citizen.principal, terms=terms))
        if number < 4:
            rest.submit(
                citizen.sign(
                    "consent.give",
                    {
                        "consent_id": consent_id,
                        "controller": university.principal,
                        "subject": citizen.principal,
                        "level": 2,
                        "method": "app",
                    },
                )
            )
        else:
            rest.submit(
                citizen.decline_consent(
                    consent_id=consent_id, controller=university.principal, subject=citizen.principal
                )
            )
    dash = _run(
        coordinator, "query($id: ID!) { analysis(id: $id) { consentingSubjects missingApprovals } }", id=gid
    )["analysis"]
    click.echo(
        f"  {dash['consentingSubjects']} subjects have consented; approvals missing from"
        f" {', '.join(dash['missingApprovals'])}"
    )

    _step("Three node organisations approve it, each on its own node server (dfg node serve)")
    with _node_servers(url, chain, ledger_key, 3) as node_urls:
        sessions = [_graphql(u) for u in node_urls]
        inbox = "query($o: Int!) { approvalInbox(orgId: $o) { id name } }"
        for node, session, org_id, node_url in zip(nodes, sessions, org_ids, node_urls, strict=True):
            _wait(
                lambda s=session, o=org_id: bool((_poll(s, inbox, o=o) or {}).get("approvalInbox")),
                "the node to catch up",
            )
            waiting = _run(session, inbox, o=org_id)["approvalInbox"]
            approved = _run(
                session,
                "mutation($o: Int!, $t: String!) { approveAnalysis(orgId: $o,"
                " signedTransaction: $t) { status approvalState } }",
                o=org_id,
                t=node.sign("analysis.approve", {"analysis_id": analysis_id}),
            )["approveAnalysis"]
            click.echo(
                f"  {node.principal} at {node_url}: inbox {[w['name'] for w in waiting]} -> approved;"
                f" analysis {approved['status']}"
            )

        _step("The analyst queues it for computation")
        queued = _run(
            coordinator,
            "mutation($t: String!) { queueAnalysisForComputation(signedTransaction: $t)"
            " { status stateStatus } }",
            t=university.sign("analysis.queue", {"analysis_id": analysis_id}),
        )["queueAnalysisForComputation"]
        click.echo(f"  status {queued['status']} ({queued['stateStatus']})")

        _step("Its tasks are in every node's queue")
        tasks = "query($o: Int!) { taskQueue(orgId: $o) { taskId stage calculationId state } }"
        for node, session, org_id in zip(nodes, sessions, org_ids, strict=True):
            _wait(
                lambda s=session, o=org_id: len((_poll(s, tasks, o=o) or {}).get("taskQueue") or []) >= 4,
                "the node's queue",
            )
            queue = _run(session, tasks, o=org_id)["taskQueue"]
            shown = ", ".join(f"#{q['taskId']} {q['stage']} ({q['state']})" for q in queue)
            click.echo(f"  {node.principal}: {shown}")
    click.secho(
        "\nDone: the tasks wait in the nodes' queues (these node servers run no MPC engine;"
        " `dfg demo mpc` shows one computing).",
        fg="green",
    )
