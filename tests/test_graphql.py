"""The GraphQL API over HTTP with a real GraphQL client (gql): the seed's schema, the
lifecycle with signed transactions from several principals, coded errors, and the
same answers after rebuilding the read models from zero."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import Ledger
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport
from http_server import running_node_server, running_server

from gateways.graphql.schema import schema
from gateways.graphql.types import global_id
from infra.settings import Settings
from ledger.signing import TransactionSigner

ROOT = Path(__file__).resolve().parent.parent
HEART, HEALTH = "dpv-pd:HeartRate", "dpv-pd:HealthRecord"

SEED_QUERY = {
    "analysis": ("Analysis!", {"id": "ID!", "orgId": "Int"}),
    "analyses": ("AnalysesConnection!", {"analysisFilter": "AnalysisFilter!"}),
    "dataView": ("DataView!", {"id": "ID!", "orgId": "Int"}),
    "datasource": ("Datasource!", {"id": "ID!"}),
    "catalog": ("Catalog!", {"id": "ID!"}),
    "datasources": ("[Datasource!]!", {"input": "CatalogsAndDatasourcesQueryInput"}),
    "catalogs": ("[Catalog!]!", {"input": "CatalogsAndDatasourcesQueryInput"}),
    "binder": ("Binder", {"analysisId": "ID!"}),
    "result": (
        "Analysis!",
        {"analysisId": "ID!", "orgId": "Int", "signedRequests": "[[String!]!]!", "taskIds": "[Int!]!"},
    ),
    "node": ("Node", {"id": "ID!", "orgId": "Int"}),
}
_TX = {"signedTransaction": "String!"}
SEED_MUTATION = {
    **{
        name: (result, _TX)
        for name, result in {
            "createCatalog": "Catalog!",
            "createDatasource": "Datasource!",
            "createVariable": "Variable!",
            "updateCatalog": "Catalog!",
            "updateDatasource": "Datasource!",
            "updateVariable": "Variable!",
            "createDataView": "DataView!",
            "createAnalysis": "Analysis!",
            "deleteAnalysis": "Boolean!",
            "createCalculation": "Calculation!",
            "deleteCalculation": "Boolean!",
            "sendDataView": "DataView!",
            "sendAnalysis": "Analysis!",
            "duplicateDataView": "DataView!",
            "duplicateAnalysis": "Analysis!",
            "queueAnalysisForComputation": "Analysis!",
        }.items()
    },
    "updateAnalysis": ("Analysis!", {"id": "ID!", **_TX}),
    "updateMergeSpecification": ("Analysis!", {"id": "ID!", **_TX}),
    "updateCalculation": ("Calculation!", {"id": "ID!", **_TX}),
    "duplicateCalculation": ("Calculation!", {"id": "ID!", **_TX}),
    "addCatalog": ("Analysis!", {"analysisId": "ID!", **_TX}),
    "removeCatalog": ("Analysis!", {"analysisId": "ID!", **_TX}),
    "addDatasource": ("Analysis!", {"analysisId": "ID!", **_TX}),
    "removeDatasource": ("Analysis!", {"analysisId": "ID!", **_TX}),
    "approveAnalysis": ("Analysis!", {"orgId": "Int!", **_TX}),
    "approveResults": ("Analysis!", {"orgId": "Int!", **_TX}),
    "requestResultAccess": ("Binder!", {"signedAccess": "String!"}),
}
SEED_ANALYSIS = {
    "id": "ID!", "name": "String", "note": "String", "analysts": "[String!]!",
    "calculations": "[Calculation!]!", "catalogs": "[Catalog!]!", "datasources": "[Datasource!]!",
    "approvals": "[OrganizationApproval!]", "status": "AnalysisStatus!", "locked": "Boolean!",
    "results": "[ResultsDto!]", "modulus": "String!", "fixedPointPrecision": "Int!", "dataViewId": "Int!",
    "createTs": "TIME!", "modifyTs": "TIME!", "analystName": "String", "analystEmail": "String!",
    "approvalState": "ApprovalState!", "resultsApprovalState": "ResultsApprovalState!",
    "stateStatus": "AnalysisStateStatus!", "ownDataTs": "TIME", "otherDataTs": "TIME",
    "processed": "Boolean!",
    "confidentialDataset": "String", "finishedTasks": "[Int!]", "offChainAuthorities": "[String!]",
    "datasetDefinitions": "[DatasetDefinition!]!", "trusted": "Boolean", "mergeSpec": "String!",
}  # fmt: skip

_TYPE_REF = "{ kind name" + " ofType { kind name" * 6 + " }" * 6 + " }"  # deep enough for [[String!]!]!
INTROSPECTION = gql(
    f"""{{ __schema {{ types {{ name interfaces {{ name }}
        fields {{ name type {_TYPE_REF} args {{ name type {_TYPE_REF} }} }} }} }} }}"""
)


def _render(ref: dict[str, Any]) -> str:
    if ref["kind"] == "NON_NULL":
        return _render(ref["ofType"]) + "!"
    if ref["kind"] == "LIST":
        return "[" + _render(ref["ofType"]) + "]"
    return str(ref["name"])


def test_the_committed_schema_is_the_served_one() -> None:
    assert (ROOT / "docs" / "schema.graphql").read_text() == schema.as_str() + "\n"


def test_the_schema_served_over_http_is_the_committed_one(platform: Any) -> None:
    from graphql import (
        build_client_schema,
        build_schema,
        get_introspection_query,
        lexicographic_sort_schema,
        print_schema,
    )

    _, session, _, _ = platform
    served = build_client_schema(session.execute(gql(get_introspection_query(descriptions=True))))
    committed = build_schema((ROOT / "docs" / "schema.graphql").read_text())
    assert print_schema(lexicographic_sort_schema(served)) == print_schema(
        lexicographic_sort_schema(committed)
    )


@pytest.fixture
def platform(ledger: Ledger) -> Iterator[tuple[Ledger, Client, str, dict[str, TransactionSigner]]]:
    people = {
        "provider": ledger.admit("dp:meteda", "data_provider"),
        "provider_b": ledger.admit("dp:cardiolyse", "data_provider"),
        "analyst": ledger.admit("ao:lab", "analyst_org"),
        **{f"node{i}": ledger.admit(f"node:n{i}", "node_operator") for i in range(3)},
    }
    ledger.sequencer.store.close()  # the server opens the ledger itself
    with running_server(ledger.settings) as url:
        transport = RequestsHTTPTransport(url=f"{url}/graphql", timeout=30)
        with Client(transport=transport, fetch_schema_from_transport=False) as session:
            yield ledger, session, url, people


@pytest.fixture
def node_sessions(platform: Any) -> Iterator[list[Client]]:
    """Three computation nodes' servers (dfg node serve), each verifying the log itself."""
    ledger, _, url, _ = platform
    assert ledger.sequencer.ledger is not None
    key, chain = ledger.sequencer.ledger["checkpoint_key"], ledger.sequencer.ledger["chain"]
    with ExitStack() as stack:
        sessions = []
        for index in range(3):
            settings = Settings(data_dir=ledger.settings.data_dir.parent / f"node{index}")
            node_url = stack.enter_context(running_node_server(settings, url, chain, key))
            transport = RequestsHTTPTransport(url=f"{node_url}/graphql", timeout=30)
            sessions.append(
                stack.enter_context(Client(transport=transport, fetch_schema_from_transport=False))
            )
        yield sessions


def test_introspection_has_every_seed_field_with_its_arguments_and_types(platform: Any) -> None:
    _, session, _, _ = platform
    types = {t["name"]: t for t in session.execute(INTROSPECTION)["__schema"]["types"]}

    def fields(type_name: str) -> dict[str, tuple[str, dict[str, str]]]:
        return {
            f["name"]: (_render(f["type"]), {a["name"]: _render(a["type"]) for a in f["args"]})
            for f in types[type_name]["fields"]
        }

    served_query, served_mutation = fields("Query"), fields("Mutation")
    for name, expected in SEED_QUERY.items():
        assert served_query[name] == expected, name
    for name, expected in SEED_MUTATION.items():
        assert served_mutation[name] == expected, name
    analysis = {name: kind for name, (kind, _) in fields("Analysis").items()}
    for name, kind in SEED_ANALYSIS.items():
        assert analysis[name] == kind, name
    assert [i["name"] for i in types["Analysis"]["interfaces"]] == ["Node"]
    assert {"edges", "pageInfo"} <= set(fields("AnalysesConnection"))


def _run(session: Client, document: str, **variables: Any) -> dict[str, Any]:
    result: dict[str, Any] = session.execute(GraphQLRequest(document, variable_values=variables))
    return result


def _error_code(session: Client, document: str, **variables: Any) -> str:
    with pytest.raises(TransportQueryError) as raised:
        session.execute(GraphQLRequest(document, variable_values=variables))
    errors = raised.value.errors or []
    return str(errors[0]["extensions"]["code"])


def _wait_until(condition: Any, timeout: float = 20.0) -> None:
    """Node servers follow the coordinator a fraction of a second behind; until they
    have caught up, a query may fail (e.g. an organisation they do not know yet)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except TransportQueryError:
            pass
        assert time.monotonic() < deadline, "the node servers did not catch up"
        time.sleep(0.05)


def _rest_submit(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/transactions",
        data=token.encode(),
        headers={"Content-Type": "application/jose"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


ANALYSIS_FIELDS = """
  id name status locked approvalState resultsApprovalState stateStatus dataViewId mergeSpec modulus
  fixedPointPrecision analysts analystName analystEmail processed finishedTasks offChainAuthorities trusted
  calculations { id name filter functions } catalogs { name } datasources { name }
  approvals { organization orgId state }
  datasetDefinitions { name key variables } results { taskId stage commitments }
  missingApprovals consentingSubjects
"""


def test_the_lifecycle_through_graphql_with_signed_transactions(
    platform: Any, node_sessions: list[Client]
) -> None:
    ledger, session, url, p = platform
    ids = {
        k: str(uuid.uuid4()) for k in ("cat", "ds_a", "ds_b", "view", "analysis", "calc1", "calc2", "copy")
    }
    sign = ledger.sign

    catalog = _run(
        session,
        "mutation($t: String!) { createCatalog(signedTransaction: $t) { id name owner } }",
        t=sign(p["provider"], "catalog.create", {"catalog_id": ids["cat"], "name": "Meteda diabetes"}),
    )["createCatalog"]
    assert catalog["owner"] == "dp:meteda"
    cat_b = str(uuid.uuid4())
    _run(
        session,
        "mutation($t: String!) { createCatalog(signedTransaction: $t) { id } }",
        t=sign(p["provider_b"], "catalog.create", {"catalog_id": cat_b, "name": "Cardiolyse"}),
    )
    for key, owner, catalog_id, keys, variable in [
        (
            "ds_a",
            "provider",
            ids["cat"],
            ["subject"],
            {"name": "hba1c", "type": "decimal", "min": "10", "max": "200"},
        ),
        (
            "ds_b",
            "provider_b",
            cat_b,
            ["subject"],
            {"name": "hrv", "type": "decimal", "min": "0", "max": "500"},
        ),
    ]:
        body = {
            "datasource_id": ids[key],
            "catalog_id": catalog_id,
            "name": f"{key} readings",
            "origin": {"kind": "tabular", "format": "csv"},
            "keys": keys,
            "data_categories": [HEART, HEALTH],
        }
        _run(
            session,
            "mutation($t: String!) { createDatasource(signedTransaction: $t) { id } }",
            t=sign(p[owner], "datasource.create", body),
        )
        made = _run(
            session,
            "mutation($t: String!) { createVariable(signedTransaction: $t) { name type min max } }",
            t=sign(p[owner], "variable.create", {"datasource_id": ids[key], **variable}),
        )["createVariable"]
        assert made["name"] == variable["name"]

    view_body = {
        "data_view_id": ids["view"],
        "name": "HbA1c and HRV",
        "variables": [
            {"alias": "hba1c", "datasource_id": ids["ds_a"], "variable": "hba1c"},
            {"alias": "hrv", "datasource_id": ids["ds_b"], "variable": "hrv"},
        ],
    }
    view = _run(
        session,
        "mutation($t: String!) { createDataView(signedTransaction: $t)"
        " { id number sent variables { alias } } }",
        t=sign(p["analyst"], "data_view.create", view_body),
    )["createDataView"]
    assert [v["alias"] for v in view["variables"]] == ["hba1c", "hrv"] and not view["sent"]

    consent = {"purpose": "dpv:ScientificResearch", "data_categories": [HEART]}
    created = _run(
        session,
        f"mutation($t: String!) {{ createAnalysis(signedTransaction: $t) {{ {ANALYSIS_FIELDS} }} }}",
        t=sign(
            p["analyst"],
            "analysis.create",
            {
                "analysis_id": ids["analysis"],
                "name": "Pilot",
                "data_view_id": ids["view"],
                "consent": consent,
            },
        ),
    )["createAnalysis"]
    gid = created["id"]
    assert created["status"] == "DRAFT" and not created["locked"] and created["dataViewId"] == view["number"]
    assert created["analystEmail"] == "" and created["approvalState"] == "NOT_SENT"

    merged = _run(
        session,
        "mutation($id: ID!, $t: String!)"
        " { updateMergeSpecification(id: $id, signedTransaction: $t) { mergeSpec } }",
        id=gid,
        t=sign(
            p["analyst"], "analysis.set_merge", {"analysis_id": ids["analysis"], "merge": {"key": "subject"}}
        ),
    )["updateMergeSpecification"]
    assert json.loads(merged["mergeSpec"]) == {"join": "inner", "key": "subject"}
    calc_doc = "mutation($t: String!) { createCalculation(signedTransaction: $t) { id name functions } }"
    for calc, functions in (("calc1", ["count()", "mean(hba1c)"]), ("calc2", ["correlation(hrv, hba1c)"])):
        body = {
            "analysis_id": ids["analysis"],
            "calculation_id": ids[calc],
            "name": calc,
            "functions": functions,
        }
        made = _run(session, calc_doc, t=sign(p["analyst"], "calculation.create", body))["createCalculation"]
        assert made["functions"] == functions
    added = _run(
        session,
        "mutation($a: ID!, $t: String!)"
        " { addCatalog(analysisId: $a, signedTransaction: $t) { catalogs { name } } }",
        a=gid,
        t=sign(
            p["analyst"], "analysis.add_catalog", {"analysis_id": ids["analysis"], "catalog_id": ids["cat"]}
        ),
    )["addCatalog"]
    assert added["catalogs"] == [{"name": "Meteda diabetes"}]

    # coded errors: a filter that does not parse; an id that names another analysis
    bad = {
        "analysis_id": ids["analysis"],
        "calculation_id": str(uuid.uuid4()),
        "name": "x",
        "filter": "hrv >",
    }
    bad["functions"] = ["count()"]
    assert _error_code(session, calc_doc, t=sign(p["analyst"], "calculation.create", bad)) == "filter_syntax"
    other = "QW5hbHlzaXM6MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAw"  # Analysis:0000...
    update = "mutation($id: ID!, $t: String!) { updateAnalysis(id: $id, signedTransaction: $t) { name } }"
    token = sign(p["analyst"], "analysis.update", {"analysis_id": ids["analysis"], "name": "New"})
    assert _error_code(session, update, id=other, t=token) == "id_mismatch"

    _run(
        session,
        "mutation($t: String!) { sendDataView(signedTransaction: $t) { sent } }",
        t=sign(p["analyst"], "data_view.send", {"data_view_id": ids["view"]}),
    )
    nodes = ["node:n0", "node:n1", "node:n2"]
    sent = _run(
        session,
        f"mutation($t: String!) {{ sendAnalysis(signedTransaction: $t) {{ {ANALYSIS_FIELDS} }} }}",
        t=sign(p["analyst"], "analysis.send", {"analysis_id": ids["analysis"], "nodes": nodes}),
    )["sendAnalysis"]
    assert sent["status"] == "SENT" and sent["locked"] and sent["approvalState"] == "PENDING"
    assert sent["stateStatus"] == "AWAITING_APPROVAL" and sent["offChainAuthorities"] == nodes
    assert sent["missingApprovals"] == nodes and sent["consentingSubjects"] == 0
    org_ids = [a["orgId"] for a in sent["approvals"]]

    # consents arrive: the analyst organisation records copies of consents it collected
    for number in range(4):
        body = {
            "consent_id": str(uuid.uuid4()),
            "controller": "ao:lab",
            "subject": f"p-study-{number}",
            "level": 1,
            "method": "web_form",
            "terms": {
                "purposes": ["dpv:ScientificResearch"] if number else ["dpv:Marketing"],
                "data_categories": [HEART],
                "notice": {"url": "https://lab.example/study", "sha256": "ab" * 32},
            },
        }
        _rest_submit(url, sign(p["analyst"], "consent.give", body))
    dashboard = "query($id: ID!) { analysis(id: $id) { consentingSubjects missingApprovals } }"
    assert _run(session, dashboard, id=gid)["analysis"] == {
        "consentingSubjects": 3,
        "missingApprovals": nodes,
    }

    # a sent analysis is locked; node mutations are served by the nodes, not the coordinator
    token = sign(p["analyst"], "analysis.update", {"analysis_id": ids["analysis"], "name": "Too late"})
    assert _error_code(session, update, id=gid, t=token) == "analysis_locked"
    approve = (
        "mutation($o: Int!, $t: String!) { approveAnalysis(orgId: $o, signedTransaction: $t) { status } }"
    )
    token = sign(p["node0"], "analysis.approve", {"analysis_id": ids["analysis"]})
    assert _error_code(session, approve, o=1, t=token) == "wrong_role"
    inbox = "query($o: Int!) { approvalInbox(orgId: $o) { id } }"
    _wait_until(lambda: _run(node_sessions[0], inbox, o=org_ids[0])["approvalInbox"] == [{"id": gid}])
    # orgId names the signing organisation: an unknown number or another node's is refused
    token = sign(p["node0"], "analysis.approve", {"analysis_id": ids["analysis"]})
    assert _error_code(node_sessions[0], approve, o=999_999, t=token) == "unknown_organisation"
    assert _error_code(node_sessions[0], approve, o=org_ids[1], t=token) == "id_mismatch"
    statuses = []
    for index, node_session in enumerate(node_sessions):  # each on its own node's server
        token = sign(p[f"node{index}"], "analysis.approve", {"analysis_id": ids["analysis"]})
        statuses.append(_run(node_session, approve, o=org_ids[index], t=token)["approveAnalysis"]["status"])
    assert statuses == ["SENT", "SENT", "APPROVED"]
    assert _run(node_sessions[0], inbox, o=org_ids[0])["approvalInbox"] == []
    queue_doc = "mutation($t: String!) { queueAnalysisForComputation(signedTransaction: $t) { status } }"
    token = sign(p["analyst"], "analysis.queue", {"analysis_id": ids["analysis"]})
    assert _error_code(node_sessions[0], queue_doc, t=token) == "wrong_role"

    queued = _run(
        session,
        "mutation($t: String!)"
        f" {{ queueAnalysisForComputation(signedTransaction: $t) {{ {ANALYSIS_FIELDS} }} }}",
        t=sign(p["analyst"], "analysis.queue", {"analysis_id": ids["analysis"]}),
    )["queueAnalysisForComputation"]
    assert queued["status"] == "QUEUED" and queued["approvalState"] == "APPROVED" and queued["trusted"]
    assert {a["state"] for a in queued["approvals"]} == {"APPROVED"}
    assert all(isinstance(a["orgId"], int) for a in queued["approvals"])

    # each node's queue shows the analysis' tasks: the merge, then one per calculation
    queue_query = "query($o: Int!) { taskQueue(orgId: $o) { analysis taskId stage state stale } }"
    for index, node_session in enumerate(node_sessions):
        _wait_until(lambda s=node_session, o=org_ids[index]: len(_run(s, queue_query, o=o)["taskQueue"]) == 3)
        tasks = _run(node_session, queue_query, o=org_ids[index])["taskQueue"]
        assert [(q["taskId"], q["stage"], q["state"]) for q in tasks] == [
            (1, "merge", "queued"),
            (2, "compute", "queued"),
            (3, "compute", "queued"),
        ]
        assert {q["analysis"] for q in tasks} == {gid}
    # the nodes compute (their engine signs these task moves), then approve the results
    for index in range(3):
        for task in (1, 2, 3):
            move = {"analysis_id": ids["analysis"], "task_id": task}
            _rest_submit(url, sign(p[f"node{index}"], "task.claim", move))
            _rest_submit(url, sign(p[f"node{index}"], "task.finish", {**move, "commitment": "ab" * 32}))
    access = sign(
        p["analyst"],
        "results.request_access",
        {"analysis_id": ids["analysis"], "recipient_jwk": {"kty": "OKP", "crv": "X25519", "x": "B" * 43}},
    )
    access_doc = (
        "mutation($a: String!) { requestResultAccess(signedAccess: $a) { recipients { requestedBy } } }"
    )
    assert _error_code(node_sessions[0], access_doc, a=access) == "results_not_approved"
    results_doc = (
        "mutation($o: Int!, $t: String!) { approveResults(orgId: $o, signedTransaction: $t) { status } }"
    )
    for index, node_session in enumerate(node_sessions):
        token = sign(p[f"node{index}"], "results.approve", {"analysis_id": ids["analysis"]})
        last = _run(node_session, results_doc, o=org_ids[index], t=token)["approveResults"]["status"]
    assert last == "RESULTS_APPROVED"
    binder = _run(node_sessions[1], access_doc, a=access)["requestResultAccess"]
    assert binder == {"recipients": [{"requestedBy": "ao:lab"}]}
    result_doc = (
        "query($a: ID!, $r: [[String!]!]!, $k: [Int!]!)"
        " { result(analysisId: $a, signedRequests: $r, taskIds: $k) { status finishedTasks"
        " results { taskId commitments } } }"
    )
    result = _run(session, result_doc, a=gid, r=[[access]], k=[2, 3])["result"]
    assert result["status"] == "RELEASED" and result["finishedTasks"] == [1, 2, 3]
    assert all(len(r["commitments"]) == 3 for r in result["results"])
    forged = sign(
        p["analyst"],
        "results.request_access",
        {"analysis_id": ids["analysis"], "recipient_jwk": {"kty": "OKP", "crv": "X25519", "x": "C" * 43}},
    )
    assert _error_code(session, result_doc, a=gid, r=[[forged]], k=[2]) == "access_not_recorded"
    assert _run(node_sessions[1], result_doc, a=gid, r=[[access]], k=[2])["result"]["status"] == "RELEASED"
    # a key the nodes cannot seal to is refused on the ledger (rules version 2; a node
    # still says recipient_not_x25519 for one a version 1 ledger recorded)
    for jwk in ({"kty": "OKP", "crv": "Ed25519", "x": "B" * 43}, {"kty": "OKP", "crv": "X25519", "x": "B"}):
        body = {"analysis_id": ids["analysis"], "recipient_jwk": jwk}
        odd = sign(p["analyst"], "results.request_access", body)
        assert _error_code(node_sessions[1], access_doc, a=odd) == "unusable_key"

    page = _run(
        session,
        "query($f: AnalysisFilter!) { analyses(analysisFilter: $f) { edges { cursor node { name status } }"
        " pageInfo { hasNextPage endCursor } } }",
        f={"first": 5, "owner": "ao:lab", "statuses": ["RELEASED"]},
    )["analyses"]
    assert [e["node"]["status"] for e in page["edges"]] == ["RELEASED"] and not page["pageInfo"][
        "hasNextPage"
    ]
    copy = {"analysis_id": ids["analysis"], "new_analysis_id": str(uuid.uuid4()), "name": "Pilot 2"}
    _run(
        session,
        "mutation($t: String!) { duplicateAnalysis(signedTransaction: $t) { id } }",
        t=sign(p["analyst"], "analysis.duplicate", copy),
    )
    first = _run(
        session,
        "query($f: AnalysisFilter!) { analyses(analysisFilter: $f) { totalCount edges { cursor } } }",
        f={"first": 1},
    )["analyses"]
    assert len(first["edges"]) == 1 and first["totalCount"] == 2  # every page's, not this page's
    none = _run(
        session,
        "query($f: AnalysisFilter!) { analyses(analysisFilter: $f) { totalCount edges { cursor } } }",
        f={"first": 5, "statuses": ["DRAFT"], "node": "node:n0"},
    )["analyses"]
    assert none["edges"] == [] and none["totalCount"] == 0
    by_node = _run(session, "query($id: ID!) { node(id: $id) { id ... on Analysis { name } } }", id=gid)[
        "node"
    ]
    assert by_node == {"id": gid, "name": "Pilot"}
    listed = _run(
        session, '{ catalogs(input: {search: "meteda"}) { name datasources { name variables { name } } } }'
    )
    assert listed["catalogs"] == [
        {
            "name": "Meteda diabetes",
            "datasources": [{"name": "ds_a readings", "variables": [{"name": "hba1c"}]}],
        }
    ]

    # rebuilding every read model from zero gives identical answers
    everything = (
        f"query($id: ID!) {{ analysis(id: $id) {{ {ANALYSIS_FIELDS} }}"
        " catalogs { name } datasources { name } }"
    )
    before = _run(session, everything, id=gid)
    import shutil

    from click.testing import CliRunner

    from gateways.cli.main import cli

    # A rebuild needs the ledger to itself (it is refused while a server writes it), so
    # it runs on a copy, made while this server is idle, which a second server answers from.
    copy = Settings(data_dir=ledger.settings.data_dir.parent / "rebuilt")
    shutil.copytree(ledger.settings.data_dir, copy.data_dir, ignore=shutil.ignore_patterns("ledger.lock"))
    busy = CliRunner().invoke(cli, ["projections", "rebuild", "--data", str(ledger.settings.data_dir)])
    assert busy.exit_code == 1 and "another process writes the ledger" in busy.output
    rebuilt = CliRunner().invoke(cli, ["projections", "rebuild", "--data", str(copy.data_dir)])
    assert rebuilt.exit_code == 0, rebuilt.output
    with running_server(copy) as copy_url:
        transport = RequestsHTTPTransport(url=f"{copy_url}/graphql", timeout=30)
        with Client(transport=transport, fetch_schema_from_transport=False) as copy_session:
            assert _run(copy_session, everything, id=gid) == before


@pytest.mark.parametrize("bad_id", ["bad", "Q2FsY3VsYXRpb246YWJj"])  # not base64; "Calculation:abc"
def test_node_with_a_malformed_id_is_refused_as_invalid_id_not_a_server_error(
    platform: Any, bad_id: str
) -> None:
    """``node(id)`` raised a bare ValueError: an error without a code, logged at ERROR
    with a traceback and the whole client-chosen id (megabytes if the client wished)."""
    _, session, _, _ = platform
    assert _error_code(session, "query($id: ID!) { node(id: $id) { id } }", id=bad_id) == "invalid_id"


def test_node_of_an_object_that_does_not_exist_is_null_and_an_unknown_org_id_is_refused(
    platform: Any,
) -> None:
    """``node(id)`` answered null for a missing calculation but ``not_found`` for a
    missing analysis; and the reads' ``orgId`` was ignored, so a number no
    organisation has went unnoticed."""
    _, session, _, _ = platform
    node = "query($id: ID!, $o: Int) { node(id: $id, orgId: $o) { id } }"
    for kind in ("Analysis", "Catalog", "Datasource", "DataView"):
        assert _run(session, node, id=global_id(kind, str(uuid.uuid4()))) == {"node": None}
    calculation = global_id("Calculation", f"{uuid.uuid4()}/{uuid.uuid4()}")
    assert _run(session, node, id=calculation) == {"node": None}
    missing = global_id("Analysis", str(uuid.uuid4()))
    assert _error_code(session, node, id=missing, o=999_999) == "unknown_organisation"
    for field in ("analysis", "dataView"):
        read = f"query($id: ID!, $o: Int) {{ {field}(id: $id, orgId: $o) {{ id }} }}"
        assert _error_code(session, read, id=missing, o=999_999) == "unknown_organisation"
        assert (
            _error_code(session, read, id=global_id(field[0].upper() + field[1:], str(uuid.uuid4())), o=None)
            == "not_found"
        )


def test_ids_signed_or_asked_for_in_upper_case_name_the_same_objects(platform: Any) -> None:
    """The ledger reads a UUID in any case and records it in lower case: a mutation
    whose transaction spelled it in upper case was recorded, then answered not_found,
    and a global id of the upper-case text found nothing."""
    ledger, session, _, p = platform
    catalog_id = str(uuid.uuid4())
    created = _run(
        session,
        "mutation($t: String!) { createCatalog(signedTransaction: $t) { id name } }",
        t=ledger.sign(p["provider"], "catalog.create", {"catalog_id": catalog_id.upper(), "name": "Shouted"}),
    )["createCatalog"]
    assert created == {"id": global_id("Catalog", catalog_id), "name": "Shouted"}
    read = "query($id: ID!) { catalog(id: $id) { name } node(id: $id) { id } }"
    answer = _run(session, read, id=global_id("Catalog", catalog_id.upper()))
    assert answer == {"catalog": {"name": "Shouted"}, "node": {"id": created["id"]}}


def test_a_document_with_too_many_aliases_or_tokens_is_refused_before_it_runs(platform: Any) -> None:
    """Resolvers run on the server's event loop: one document of 10,000 aliases held
    every other request, REST ones included, for 10 s. Such documents are refused as
    ``invalid_query`` before anything is resolved."""
    from gateways.graphql.schema import MAX_ALIASES, MAX_TOKENS

    _, session, _, _ = platform
    aliased = (
        "{"
        + " ".join(
            f"a{i}: analyses(analysisFilter: {{first: 100}}) {{ totalCount }}" for i in range(MAX_ALIASES + 1)
        )
        + "}"
    )
    assert _error_code(session, aliased) == "invalid_query"
    long = "{" + " __typename" * MAX_TOKENS + "}"
    assert _error_code(session, long) == "invalid_query"
    within = "{" + " ".join(f"a{i}: __typename" for i in range(MAX_ALIASES)) + "}"
    assert len(_run(session, within)) == MAX_ALIASES


def test_a_document_of_several_operations_runs_the_one_named_and_needs_a_name(platform: Any) -> None:
    """strawberry ran the first operation when none was named: a client that meant
    another got an answer to a question it did not ask (GraphQL's GetOperation says
    to refuse)."""
    _, session, _, _ = platform
    document = "query First { __typename } query Second { second: __typename }"
    assert _error_code(session, document) == "invalid_query"
    answer = session.execute(GraphQLRequest(document, operation_name="Second"))
    assert answer == {"second": "Query"}


def test_a_slow_query_does_not_hold_the_other_requests(
    platform: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries read the read models; run on the server's event loop, one that takes long
    (a large page, a slow disk) held every other request, REST ones included."""
    import threading

    from gateways.graphql import schema as served

    _, session, url, _ = platform
    entered, release = threading.Event(), threading.Event()
    documents = served.views.documents

    def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return documents(*args, **kwargs)

    monkeypatch.setattr(served.views, "documents", slow)
    answers: list[Any] = []
    document = "{ analyses(analysisFilter: {first: 5}) { totalCount } }"
    query = threading.Thread(target=lambda: answers.append(_run(session, document)))
    query.start()
    try:
        assert entered.wait(10), "the query never reached the read models"
        with urllib.request.urlopen(f"{url}/v1/checkpoint", timeout=5) as response:
            assert response.status == 200
    finally:
        release.set()
        query.join(30)
    assert answers and answers[0]["analyses"]["totalCount"] == 0


def test_a_list_of_catalogs_reads_the_datasources_once(
    platform: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each catalog of a list read every datasource again: a list of 1,000 catalogs over
    1,000 datasources held a query thread for 16 s, and anyone may ask for it (50 times
    in one document)."""
    from gateways.graphql import schema as served

    ledger, session, url, p = platform
    catalogs = [str(uuid.uuid4()) for _ in range(3)]
    for number, catalog in enumerate(catalogs):
        body = {"catalog_id": catalog, "name": f"c{number}"}
        _rest_submit(url, ledger.sign(p["provider"], "catalog.create", body))
    source = {
        "datasource_id": str(uuid.uuid4()),
        "catalog_id": catalogs[1],
        "name": "readings",
        "origin": {"kind": "tabular", "format": "csv"},
        "keys": ["subject"],
        "data_categories": [HEART],
    }
    _rest_submit(url, ledger.sign(p["provider"], "datasource.create", source))
    reads: list[str] = []
    documents = served.views.documents

    def counted(cursor: Any, kind: str, **filters: Any) -> Any:
        reads.append(kind)
        return documents(cursor, kind, **filters)

    monkeypatch.setattr(served.views, "documents", counted)
    answer = _run(session, "{ catalogs { name datasources { name } } }")["catalogs"]
    assert [(c["name"], [d["name"] for d in c["datasources"]]) for c in answer] == [
        ("c0", []),
        ("c1", ["readings"]),
        ("c2", []),
    ]
    assert reads.count("Datasource") == 1


def test_catalogs_by_catalog_id_answer_that_catalog_only(platform: Any) -> None:
    """catalogs(input: {catalogId}) ignored the id: it listed every catalog, and took
    any string (datasources(input: {catalogId}) filtered, and refused a malformed id)."""
    from strawberry.relay import to_base64

    ledger, session, url, p = platform
    catalogs = [str(uuid.uuid4()) for _ in range(2)]
    for number, catalog in enumerate(catalogs):
        body = {"catalog_id": catalog, "name": f"c{number}"}
        _rest_submit(url, ledger.sign(p["provider"], "catalog.create", body))
    query = "query($c: ID!) { catalogs(input: {catalogId: $c}) { name } }"
    assert _run(session, query, c=to_base64("Catalog", catalogs[1]))["catalogs"] == [{"name": "c1"}]
    assert _run(session, query, c=to_base64("Catalog", str(uuid.uuid4())))["catalogs"] == []
    assert _error_code(session, query, c="zzz") == "invalid_id"


def _analyses_and_consents(platform: Any, analyses: int, consents: int) -> None:
    """``analyses`` drafts of ao:lab over one data view, asking for consent to research
    on heart rates, and ``consents`` level 1 copies of such consents (a subject each)."""
    ledger, _, url, p = platform
    sign = ledger.sign
    catalog, source, view = (str(uuid.uuid4()) for _ in range(3))
    _rest_submit(url, sign(p["provider"], "catalog.create", {"catalog_id": catalog, "name": "c"}))
    body = {"datasource_id": source, "catalog_id": catalog, "name": "readings", "keys": ["subject"]}
    body |= {"origin": {"kind": "tabular", "format": "csv"}, "data_categories": [HEART]}
    _rest_submit(url, sign(p["provider"], "datasource.create", body))
    variable = {"datasource_id": source, "name": "hrv", "type": "decimal", "min": "0", "max": "500"}
    _rest_submit(url, sign(p["provider"], "variable.create", variable))
    aliases = [{"alias": "hrv", "datasource_id": source, "variable": "hrv"}]
    _rest_submit(
        url, sign(p["analyst"], "data_view.create", {"data_view_id": view, "name": "v", "variables": aliases})
    )
    consent = {"purpose": "dpv:ScientificResearch", "data_categories": [HEART]}
    for number in range(analyses):
        body = {
            "analysis_id": str(uuid.uuid4()),
            "name": f"a{number}",
            "data_view_id": view,
            "consent": consent,
        }
        _rest_submit(url, sign(p["analyst"], "analysis.create", body))
    terms = {"purposes": ["dpv:ScientificResearch"], "data_categories": [HEART, HEALTH]}
    terms |= {"notice": {"url": "https://lab.example/study", "sha256": "ab" * 32}}
    for number in range(consents):
        body = {"consent_id": str(uuid.uuid4()), "controller": "ao:lab", "subject": f"p-{number}", "level": 1}
        _rest_submit(url, sign(p["analyst"], "consent.give", {**body, "method": "web_form", "terms": terms}))


def test_consenting_subjects_are_counted_only_when_asked_for_and_then_once(
    platform: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every analysis of an answer counted its consenting subjects, asked for or not: the
    totalCount of a page of 20 analyses over 20,000 consents took 3.7 s. Asked for, the
    count of one organisation and use is made once, and again when a consent comes: 50
    aliases of a page of 100 analyses over 20,000 consents would have held a query
    thread for 12 minutes."""
    from projections import consent_state

    _analyses_and_consents(platform, analyses=3, consents=2)
    ledger, session, url, p = platform
    counted: list[Any] = []
    count = consent_state._counted
    monkeypatch.setattr(consent_state, "_counted", lambda *a: counted.append(a) or count(*a))
    page = _run(session, "{ analyses(analysisFilter: {first: 20}) { totalCount edges { node { name } } } }")
    assert page["analyses"]["totalCount"] == 3 and counted == []
    one = "analyses(analysisFilter: {first: 20}) { edges { node { consentingSubjects } } }"
    many = "{ " + " ".join(f"a{i}: {one}" for i in range(50)) + " }"
    answer = _run(session, many)
    assert {e["node"]["consentingSubjects"] for page in answer.values() for e in page["edges"]} == {2}
    assert len(counted) == 1
    terms = {"purposes": ["dpv:ScientificResearch"], "data_categories": [HEART]}
    terms |= {"notice": {"url": "https://lab.example/study", "sha256": "ab" * 32}}
    body = {"consent_id": str(uuid.uuid4()), "controller": "ao:lab", "subject": "p-new", "level": 1}
    _rest_submit(
        url, ledger.sign(p["analyst"], "consent.give", {**body, "method": "web_form", "terms": terms})
    )
    answer = _run(session, "{ " + one + " }")
    assert [e["node"]["consentingSubjects"] for e in answer["analyses"]["edges"]] == [3, 3, 3]
    assert len(counted) == 2


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "OKP", "crv": "Ed25519", "x": "B" * 43},
        {"kty": "EC", "crv": "P-256", "x": "B" * 43, "y": "B" * 43},
        {"kty": "OKP", "crv": "X25519", "x": "B"},
        {"kty": "OKP", "crv": "X25519", "x": "é" * 43},
    ],
)
def test_a_node_refuses_to_seal_results_to_a_key_a_version_1_ledger_recorded(jwk: dict[str, str]) -> None:
    """Rules version 1 records any public OKP or EC key in results.request_access; a node
    of such a ledger says which key it cannot seal to, rather than answer with no shares."""
    from graphql import GraphQLError

    from gateways.graphql.schema import _require_sealable

    with pytest.raises(GraphQLError) as refused:
        _require_sealable(jwk)
    assert refused.value.extensions == {"code": "recipient_not_x25519"}
    assert f"{jwk['kty']}/{jwk['crv']}" in refused.value.message
    _require_sealable({"kty": "OKP", "crv": "X25519", "x": "B" * 43})  # 32 bytes: sealed to


def test_a_nodes_result_refuses_an_org_id_that_is_not_its_own(platform: Any) -> None:
    """``result(orgId)`` says whose result shares the analyst wants; a node ignored it and
    answered with its own. An analyst who swapped two nodes' URLs got them under the
    other node's name, and then read "node:n1's result shares do not match the
    commitment it signed": an honest node blamed for a typo."""
    ledger, _, url, _ = platform
    assert ledger.sequencer.ledger is not None
    key, chain = ledger.sequencer.ledger["checkpoint_key"], ledger.sequencer.ledger["chain"]
    settings = Settings(data_dir=ledger.settings.data_dir.parent / "node0")

    def org_id(principal: str) -> int:
        with urllib.request.urlopen(f"{url}/v1/principals/{principal}", timeout=10) as response:
            return int(json.loads(response.read())["admitted_seq"])

    document = (
        'query($a: ID!, $o: Int) { result(analysisId: $a, orgId: $o, signedRequests: [["x"]], taskIds: [])'
        " { status } }"
    )
    missing = global_id("Analysis", str(uuid.uuid4()))
    with running_node_server(settings, url, chain, key, name="node:n0") as node_url:
        transport = RequestsHTTPTransport(url=f"{node_url}/graphql", timeout=30)
        with Client(transport=transport, fetch_schema_from_transport=False) as node:
            # until its replica has caught up, node:n1's number names no organisation there
            n1 = org_id("node:n1")
            _wait_until(lambda: _error_code(node, document, a=missing, o=n1) != "unknown_organisation")
            assert _error_code(node, document, a=missing, o=n1) == "id_mismatch"
            assert _error_code(node, document, a=missing, o=999_999) == "unknown_organisation"
            # its own number, or none, goes on to the analysis
            assert _error_code(node, document, a=missing, o=org_id("node:n0")) == "not_found"
            assert _error_code(node, document, a=missing, o=None) == "not_found"


def test_a_nodes_mutation_says_with_a_code_when_the_coordinator_does_not_answer(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node forwards its organisation's mutations to the coordinator. With the
    coordinator down, the answer was aiohttp's exception text with no code (and a
    traceback in the node's log); with a coordinator that took the connection and said
    nothing, the mutation waited for aiohttp's five minutes."""
    import socket

    from gateways.http import node_app

    analyst = ledger.admit("ao:lab", "analyst_org")
    assert ledger.sequencer.ledger is not None
    key, chain = ledger.sequencer.ledger["checkpoint_key"], ledger.sequencer.ledger["chain"]
    jwk = {"kty": "OKP", "crv": "X25519", "x": "B" * 43}
    access = ledger.sign(
        analyst, "results.request_access", {"analysis_id": str(uuid.uuid4()), "recipient_jwk": jwk}
    )
    document = "mutation($a: String!) { requestResultAccess(signedAccess: $a) { analysisId } }"
    monkeypatch.setattr(node_app, "COORDINATOR_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        down = socket.create_server(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{down.getsockname()[1]}"
        down.close()  # nothing listens there now
        for index, coordinator in enumerate((dead, f"http://127.0.0.1:{silent.getsockname()[1]}")):
            settings = Settings(data_dir=ledger.settings.data_dir.parent / f"node{index}")
            with running_node_server(settings, coordinator, chain, key) as node_url:
                transport = RequestsHTTPTransport(url=f"{node_url}/graphql", timeout=30)
                with Client(transport=transport, fetch_schema_from_transport=False) as node:
                    assert _error_code(node, document, a=access) == "coordinator_unavailable"
