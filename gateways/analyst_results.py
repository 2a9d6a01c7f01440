"""An analyst fetches an analysis' results: it asks for access on the ledger with its
X25519 key (``results.request_access``), collects every node's sealed result shares
through the node's GraphQL ``result`` query, checks each node's shares against the
commitment that node signed on the ledger (``task.finish``), reconstructs every
aggregate with the redundant share checking the others, and finishes the statistics.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateways.sdk import ConsentClient, TransactionBuilder
from mpc.results import ResultError, ResultShares, open_result, reconstruct
from mpc.sealing import x25519_jwk

#: How long to wait for a node's replica to show the access request.
ACCESS_WAIT_S = 30.0


class ResultsError(RuntimeError):
    """The results cannot be fetched or do not check out; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: Seconds to wait for one answer of a node or the coordinator (``--timeout``).
DEFAULT_TIMEOUT_S = 60.0


def graphql(url: str, query: str, *, timeout: float = DEFAULT_TIMEOUT_S, **variables: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
    except TimeoutError as exc:  # connected, then no answer: a hung process, not a wrong address
        raise ResultsError("unreachable", f"{url} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise ResultsError("unreachable", f"cannot reach {url}: {exc}") from exc
    if answer.get("errors"):
        error = answer["errors"][0]
        raise ResultsError(error.get("extensions", {}).get("code", "error"), error.get("message", "refused"))
    data: dict[str, Any] = answer["data"]
    return data


ANALYSIS = """
query($id: ID!) { analysis(id: $id) { analysisId name status
  calculations { calculationId name filter functions }
  approvals { organization orgId resultsState }
  results { taskId calculationId stage commitments nodes } } }
"""

RESULT = """
query($id: ID!, $org: Int!, $requests: [[String!]!]!) {
  result(analysisId: $id, orgId: $org, signedRequests: $requests, taskIds: []) {
    results { taskId sealedShares } } }
"""


@dataclass(frozen=True)
class CalculationResult:
    task_id: int
    calculation_id: str
    name: str
    filter: str | None
    results: list[dict[str, Any]]


def fetch_results(
    *,
    coordinator: str,
    analysis_id: str,
    analyst: TransactionBuilder,
    key: X25519PrivateKey,
    nodes: Mapping[str, str],
    timeout: float = DEFAULT_TIMEOUT_S,
) -> tuple[dict[str, Any], list[CalculationResult]]:
    """(the analysis as the coordinator describes it, each calculation's results)."""
    from strawberry.relay import to_base64

    gid = to_base64("Analysis", analysis_id)
    analysis = graphql(coordinator, ANALYSIS, timeout=timeout, id=gid)["analysis"]
    if analysis["status"] not in ("RESULTS_APPROVED", "RELEASED"):
        raise ResultsError(
            "results_not_approved",
            f"the analysis is {analysis['status'].lower()}; results come after approval",
        )
    org_ids = {a["organization"]: a["orgId"] for a in analysis["approvals"]}
    missing = sorted(set(org_ids) - set(nodes))
    if missing:
        raise ResultsError("node_url_missing", f"give --node NAME=URL for {', '.join(missing)}")
    token = analyst.sign(
        "results.request_access", {"analysis_id": analysis_id, "recipient_jwk": x25519_jwk(key)}
    )
    ConsentClient(coordinator).submit(token)
    sealed: dict[str, dict[int, str]] = {}
    for node in sorted(org_ids):
        sealed[node] = _sealed_from(nodes[node], gid, org_ids[node], token, timeout)
    calculations = {c["calculationId"]: c for c in analysis["calculations"]}
    finished = []
    for task in sorted(analysis["results"] or [], key=lambda r: r["taskId"]):
        if task["stage"] != "compute":
            continue
        commitments = dict(zip(task["nodes"], task["commitments"], strict=True))
        shares: list[ResultShares] = []
        for node in sorted(org_ids):
            blob = sealed[node].get(task["taskId"])
            if blob is None or node not in commitments:
                raise ResultsError("shares_missing", f"{node} has no result shares for task {task['taskId']}")
            try:
                shares.append(open_result(base64.b64decode(blob), key, expected_commitment=commitments[node]))
            except ResultError as exc:
                raise ResultsError("shares_rejected", str(exc)) from exc
        try:
            results = reconstruct(shares)
        except ResultError as exc:
            raise ResultsError("shares_inconsistent", str(exc)) from exc
        spec = calculations.get(task["calculationId"], {})
        finished.append(
            CalculationResult(
                task["taskId"], task["calculationId"], spec.get("name", ""), spec.get("filter"), results
            )
        )
    return analysis, finished


def _sealed_from(url: str, gid: str, org_id: int, token: str, timeout: float) -> dict[int, str]:
    """A node's sealed shares by task, waiting for its replica to show the request."""
    deadline = time.monotonic() + ACCESS_WAIT_S
    while True:
        try:
            answer = graphql(url, RESULT, timeout=timeout, id=gid, org=org_id, requests=[[token]])
            return {
                r["taskId"]: r["sealedShares"] for r in answer["result"]["results"] or [] if r["sealedShares"]
            }
        except ResultsError as exc:
            if exc.code not in ("access_not_recorded", "results_not_approved") or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
