"""The GraphQL API of seed §4.1: its Query and Mutation fields with the seed's names,
arguments and types, over the analysis read models and the ledger.

Every mutation argument named ``signedTransaction`` or ``signedAccess`` is a compact
JWS (docs/transactions.md): the mutation submits it to the ledger and answers with the
object as the read models show it once they have applied the new entry. Refusals come
as GraphQL errors whose ``extensions.code`` is the ledger's refusal code. Mutations
the seed marks "CC Nodes" belong to computation nodes; the coordinator refuses them
with ``wrong_role``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

import strawberry
from graphql import GraphQLError, OperationDefinitionNode
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.types import ExecutionContext, ExecutionResult, Info
from strawberry.types.graphql import OperationType as StrawberryOperationType

from domain.analysis import AnalysisStatus
from gateways.graphql import types as t
from infra.ledger_service import LedgerService
from ledger.errors import Rejected
from ledger.sequencer import Accepted
from ledger.store import LedgerStore, find_transaction
from ledger.transaction import Transaction, parse_transaction
from projections import analyses as views
from projections import keys
from projections.base import ViewDatabase
from projections.consent_state import ConsentingCounts

COORDINATOR = "coordinator"
NODE = "node"


Submit = Callable[[str], Awaitable[Accepted | Rejected]]


@dataclass
class Context:
    """What resolvers use: the read models, the (local) ledger store, how to submit a
    signed transaction and wait until the read models show it, and this server's role."""

    views: ViewDatabase
    store: LedgerStore
    submit: Submit
    role: str = COORDINATOR
    #: On a computation node: (analysis id, task id, analyst's X25519 JWK) -> this node's
    #: result shares for the task sealed to that key (base64), or None.
    sealed_results: Callable[[str, int, dict[str, str]], str | None] | None = None
    #: On a computation node started with --name: its principal id (``result``'s orgId).
    name: str | None = None
    #: Analyses' consentingSubjects, remembered while they cannot change.
    counts: ConsentingCounts = field(init=False)

    def __post_init__(self) -> None:
        self.counts = ConsentingCounts(self.views)


def coordinator_context(service: LedgerService, views: ViewDatabase) -> Context:
    """The coordinator submits to its own sequencer (read-your-writes built in)."""

    async def submit(token: str) -> Accepted | Rejected:
        (outcome,) = await asyncio.wrap_future(service.submit([token]))
        return outcome

    return Context(views=views, store=service.sequencer.store, submit=submit, role=COORDINATOR)


def fail(code: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


F = TypeVar("F", bound=Callable[..., Any])


def _field(description: str) -> Callable[[F], F]:
    """``strawberry.field`` with a description, typed for mypy."""
    return cast(Callable[[F], F], strawberry.field(description=description))


def _mutation(description: str) -> Callable[[F], F]:
    return cast(Callable[[F], F], strawberry.mutation(description=description))


def _ctx(info: Info[Context, None]) -> Context:
    return info.context


# --- reading the read models ------------------------------------------------------------


def _doc(ctx: Context, kind: str, entity_id: str) -> dict[str, Any]:
    with ctx.views.transaction(commit=False) as cursor:
        found = views.document(cursor, kind, entity_id)
    if found is None:
        raise fail("not_found", f"there is no {kind} {entity_id}")
    return found


def _exists(ctx: Context, kind: str, entity_id: str) -> bool:
    with ctx.views.transaction(commit=False) as cursor:
        return views.document(cursor, kind, entity_id) is not None


def _datasources(ctx: Context, ids: list[str]) -> list[dict[str, Any]]:
    return [_doc(ctx, "Datasource", i) for i in ids]


def _catalog(ctx: Context, catalog_id: str) -> t.Catalog:
    (catalog,) = _catalogs(ctx, [_doc(ctx, "Catalog", catalog_id)])
    return catalog


def _catalogs(ctx: Context, docs: list[dict[str, Any]]) -> list[t.Catalog]:
    """Catalogs with their datasources, which are read once for them all: read once per
    catalog, every datasource was decoded once per catalog listed, and anyone could ask
    for a list of 1,000 catalogs over 1,000 datasources (16 s of a query thread), 50
    times in one document."""
    if not docs:
        return []
    with ctx.views.transaction(commit=False) as cursor:
        sources = views.documents(cursor, "Datasource", limit=10_000)
    by_catalog: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        by_catalog.setdefault(source["catalog_id"], []).append(source)
    return [t.Catalog.of(doc, by_catalog.get(doc["catalog_id"], [])) for doc in docs]


def _org_ids(ctx: Context, principals: list[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    with ctx.views.transaction(commit=False) as cursor:
        for principal in principals:
            found = keys.principal(cursor, principal)
            out[principal] = found["admitted_seq"] if found else None
    return out


def _approval_state(doc: dict[str, Any]) -> t.ApprovalState:
    if not doc["nodes"]:
        return t.ApprovalState.NOT_SENT
    answers = [doc["approvals"].get(n, {}).get("state") for n in doc["nodes"]]
    if "declined" in answers:
        return t.ApprovalState.DECLINED
    return t.ApprovalState.APPROVED if all(a == "approved" for a in answers) else t.ApprovalState.PENDING


def _results_state(doc: dict[str, Any]) -> t.ResultsApprovalState:
    answers = [doc["results_approvals"].get(n, {}).get("state") for n in doc["nodes"]]
    if "declined" in answers:
        return t.ResultsApprovalState.DECLINED
    if doc["nodes"] and all(a == "approved" for a in answers):
        return t.ResultsApprovalState.APPROVED
    return t.ResultsApprovalState.PENDING if doc["status"] == "computed" else t.ResultsApprovalState.NOT_READY


def _node_results_state(doc: dict[str, Any], node: str) -> t.ResultsApprovalState:
    """A node's answer on the results; without one, PENDING only while the ledger awaits
    it (the analysis is computed): before that, or once another node declined (the
    ledger then refuses its answer, results_not_ready), NOT_READY -- not PENDING for ever."""
    answered = doc["results_approvals"].get(node, {}).get("state")
    if answered is not None:
        return t.ResultsApprovalState(answered)
    return t.ResultsApprovalState.PENDING if doc["status"] == "computed" else t.ResultsApprovalState.NOT_READY


_STATE_STATUS = {
    "draft": t.AnalysisStateStatus.EDITING,
    "sent": t.AnalysisStateStatus.AWAITING_APPROVAL,
    "approved": t.AnalysisStateStatus.READY_TO_QUEUE,
    "queued": t.AnalysisStateStatus.QUEUED,
    "computing": t.AnalysisStateStatus.RUNNING,
    "computed": t.AnalysisStateStatus.DONE,
    "results_approved": t.AnalysisStateStatus.DONE,
    "released": t.AnalysisStateStatus.DONE,
}


def _analysis(ctx: Context, analysis_id: str) -> t.Analysis:
    doc = _doc(ctx, "Analysis", analysis_id)
    view = _doc(ctx, "DataView", doc["data_view_id"])
    with ctx.views.transaction(commit=False) as cursor:
        tasks = views.analysis_tasks(cursor, analysis_id)
        finished = views.finished_tasks(cursor, analysis_id)
        owner = keys.principal(cursor, doc["owner"])
    org_ids = _org_ids(ctx, doc["nodes"])
    approvals = [
        t.OrganizationApproval(
            organization=node,
            org_id=org_ids[node],
            state=t.ApprovalState(doc["approvals"].get(node, {}).get("state", "pending")),
            reason=doc["approvals"].get(node, {}).get("reason"),
            results_state=_node_results_state(doc, node),
            results_reason=doc["results_approvals"].get(node, {}).get("reason"),
        )
        for node in doc["nodes"]
    ]
    results = [
        t.ResultsDto(
            task_id=task["task_id"],
            calculation_id=task["calculation_id"],
            stage=task["stage"],
            commitments=[
                x["commitment"] for x in tasks if x["task_id"] == task["task_id"] and x["commitment"]
            ],
            nodes=[x["node"] for x in tasks if x["task_id"] == task["task_id"] and x["commitment"]],
        )
        for task in doc["tasks"]
        if task["task_id"] in finished
    ]
    by_source: dict[str, list[str]] = {}
    for variable in view["variables"]:
        by_source.setdefault(variable["datasource_id"], []).append(variable["alias"])
    definitions = [
        t.DatasetDefinition(
            datasource_id=source["datasource_id"],
            name=source["name"],
            key=(doc["merge"] or {}).get("key"),
            variables=by_source[source["datasource_id"]],
        )
        for source in _datasources(ctx, sorted(by_source))
    ]
    return t.Analysis(
        id=t.global_id("Analysis", analysis_id),
        analysis_id=analysis_id,
        owner=doc["owner"],
        name=doc["name"],
        note=doc["note"],
        analysts=[doc["owner"], *doc["analysts"]],
        calculations=[
            t.Calculation.of(analysis_id, c) for c in sorted(doc["calculations"], key=lambda c: c["id"])
        ],
        catalogs=_catalogs(ctx, [_doc(ctx, "Catalog", c) for c in doc["catalogs"]]),
        datasources=[t.Datasource.of(d) for d in _datasources(ctx, doc["datasources"])],
        approvals=approvals or None,
        status=AnalysisStatus(doc["status"]),
        locked=doc["status"] != "draft",
        results=results or None,
        modulus=doc["modulus"],
        fixed_point_precision=doc["fixed_point_precision"],
        data_view_id=view["created_seq"],
        create_ts=doc["created_ts"],
        modify_ts=doc["modified_ts"],
        analyst_name=(owner or {}).get("display_name"),
        analyst_email="",
        approval_state=_approval_state(doc),
        results_approval_state=_results_state(doc),
        state_status=_STATE_STATUS.get(doc["status"], t.AnalysisStateStatus.STOPPED),
        own_data_ts=None,
        other_data_ts=None,
        processed=doc["status"] in ("computed", "results_approved", "results_rejected", "released"),
        confidential_dataset=None,
        finished_tasks=finished or None,
        off_chain_authorities=doc["nodes"] or None,
        dataset_definitions=definitions,
        trusted=_approval_state(doc) is t.ApprovalState.APPROVED if doc["nodes"] else None,
        merge_spec=t.merge_text(doc["merge"]),
        nodes=doc["nodes"],
        consent_purpose=doc["consent"]["purpose"],
        consent_data_categories=doc["consent"]["data_categories"],
        missing_approvals=[n for n in doc["nodes"] if n not in doc["approvals"]]
        if doc["status"] == "sent"
        else [],
        task_states=[
            t.TaskState(
                task_id=x["task_id"],
                node=x["node"],
                stage=x["stage"],
                state=x["state"],
                claimed_ts=t.TIME(x["claimed_ts"]) if x["claimed_ts"] else None,
                finished_ts=t.TIME(x["finished_ts"]) if x["finished_ts"] else None,
                reason=x["reason"],
            )
            for x in tasks
        ],
        failure=t.TaskFailure(
            node=doc["failure"]["node"], task_id=doc["failure"]["task_id"], reason=doc["failure"]["reason"]
        )
        if doc.get("failure")
        else None,
    )


def _binder(ctx: Context, analysis_id: str) -> t.Binder | None:
    doc = _doc(ctx, "Analysis", analysis_id)
    if not doc["binders"]:
        return None
    return t.Binder(
        analysis_id=t.global_id("Analysis", analysis_id),
        recipients=[
            t.BinderRecipient(
                requested_by=b["by"], recipient_jwk=json.dumps(b["recipient_jwk"], sort_keys=True)
            )
            for b in doc["binders"]
        ],
    )


def _any_id(value: str) -> tuple[str, str]:
    """(type name, entity id) of any global id, or the client's ``invalid_id``: an id
    is the caller's input, so a malformed one is a refusal, not a server error (which
    was logged with its traceback and the whole id)."""
    try:
        type_name, entity_id = t.parse_global_id(value)
    except ValueError as exc:
        raise fail("invalid_id", str(exc)) from None
    if type_name == "Calculation" and "/" not in entity_id:
        raise fail("invalid_id", "a Calculation's id is of <analysis uuid>/<calculation uuid>")
    return type_name, entity_id


def _id_of(value: str, type_name: str) -> str:
    try:
        return t.parse_global_id(value, type_name)[1]
    except ValueError as exc:
        raise fail("invalid_id", str(exc)) from None


# --- submitting -------------------------------------------------------------------------------


async def _submit(ctx: Context, token: str, tx_types: tuple[str, ...], role: str = COORDINATOR) -> Accepted:
    """Submit one signed transaction of one of ``tx_types``; the read models have
    applied it when this returns (read-your-writes)."""
    _require_role(ctx, role)
    try:
        tx = parse_transaction(token)
    except Rejected as exc:
        raise fail(exc.code, exc.message) from None
    if tx.type not in tx_types:
        raise fail(
            "wrong_transaction_type",
            f"this mutation takes a transaction of type {' or '.join(tx_types)}, not {tx.type}",
        )
    outcome = await ctx.submit(token)
    if isinstance(outcome, Rejected):
        raise fail(outcome.code, outcome.message)
    return outcome


def _require_role(ctx: Context, role: str) -> None:
    if ctx.role != role:
        where = "computation nodes (dfg node serve)" if role == NODE else "the coordinator (dfg serve)"
        raise fail("wrong_role", f"this mutation is served by {where}; this server is a {ctx.role}")


def _require_signing_organisation(ctx: Context, org_id: int, token: str) -> None:
    """The ``orgId`` of a node's mutation names the organisation that signed it, so that a
    wrong number is refused instead of silently ignored."""
    _require_role(ctx, NODE)
    organisation = _organisation(ctx, org_id)
    try:
        signer = parse_transaction(token).signer
    except Rejected as exc:
        raise fail(exc.code, exc.message) from None
    if signer != organisation:
        raise fail("id_mismatch", f"orgId {org_id} is {organisation}, not {signer}, who signed this")


def _payload_body(token: str) -> dict[str, Any]:
    """The body of a transaction before it is submitted (to check an id argument)."""
    try:
        return _as_recorded(parse_transaction(token))
    except Rejected as exc:
        raise fail(exc.code, exc.message) from None


def _body(accepted: Accepted) -> dict[str, Any]:
    return _as_recorded(parse_transaction(accepted.entry.tx))


def _as_recorded(tx: Transaction) -> dict[str, Any]:
    """The body as the ledger reads it: a UUID in its lower-case text however the
    signer spelled it (the read models know objects by that text; an upper-case id
    was recorded, then answered ``not_found``)."""
    body: dict[str, Any] = tx.command.model_dump(mode="json")
    return body


def _require_same(given: str, type_name: str, actual: str) -> None:
    if _id_of(given, type_name) != actual:
        raise fail("id_mismatch", f"the id argument names another {type_name} than the signed transaction")


# --- the schema ----------------------------------------------------------------------------------


@strawberry.type
class Query:
    @_field("(Shared coordinator and node)")
    def analysis(self, info: Info[Context, None], id: strawberry.ID, org_id: int | None = None) -> t.Analysis:
        ctx = _ctx(info)
        _check_reader(ctx, org_id)
        return _analysis(ctx, _id_of(id, "Analysis"))

    @_field("(Shared coordinator and node)")
    def analyses(self, info: Info[Context, None], analysis_filter: t.AnalysisFilter) -> t.AnalysesConnection:
        ctx = _ctx(info)
        if not 1 <= analysis_filter.first <= 100:
            raise fail("invalid_argument", "first is between 1 and 100")
        after = 0
        if analysis_filter.after:
            # a cursor is an entry number as this API wrote it: ASCII digits, at most 2**63 - 1
            raw = analysis_filter.after
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) < 2**63):
                raise fail("invalid_argument", "after is a cursor from a previous page")
            after = int(raw)
        statuses = [s.value for s in analysis_filter.statuses or []]
        with ctx.views.transaction(commit=False) as cursor:
            docs = views.documents(
                cursor,
                "Analysis",
                owner=analysis_filter.owner,
                statuses=statuses,
                after_seq=after,
                limit=100_000 if analysis_filter.node else analysis_filter.first + 1,
            )
            total = views.count_analyses(
                cursor, owner=analysis_filter.owner, statuses=statuses, node=analysis_filter.node
            )
        if analysis_filter.node:
            docs = [d for d in docs if analysis_filter.node in d["nodes"]][: analysis_filter.first + 1]
        more = len(docs) > analysis_filter.first
        docs = docs[: analysis_filter.first]
        edges = [
            t.AnalysisEdge(node=_analysis(ctx, d["analysis_id"]), cursor=str(d["created_seq"])) for d in docs
        ]
        return t.AnalysesConnection(
            edges=edges,
            page_info=t.PageInfo(
                has_next_page=more,
                has_previous_page=after > 0,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
            total_count=total,
        )

    @strawberry.field
    def data_view(
        self, info: Info[Context, None], id: strawberry.ID, org_id: int | None = None
    ) -> t.DataView:
        ctx = _ctx(info)
        _check_reader(ctx, org_id)
        return t.DataView.of(_doc(ctx, "DataView", _id_of(id, "DataView")))

    @strawberry.field
    def datasource(self, info: Info[Context, None], id: strawberry.ID) -> t.Datasource:
        return t.Datasource.of(_doc(_ctx(info), "Datasource", _id_of(id, "Datasource")))

    @strawberry.field
    def catalog(self, info: Info[Context, None], id: strawberry.ID) -> t.Catalog:
        return _catalog(_ctx(info), _id_of(id, "Catalog"))

    @strawberry.field
    def datasources(
        self, info: Info[Context, None], input: t.CatalogsAndDatasourcesQueryInput | None = None
    ) -> list[t.Datasource]:
        ctx = _ctx(info)
        with ctx.views.transaction(commit=False) as cursor:
            docs = views.documents(cursor, "Datasource", owner=input.owner if input else None, limit=10_000)
        if input and input.catalog_id:
            catalog_id = _id_of(input.catalog_id, "Catalog")
            docs = [d for d in docs if d["catalog_id"] == catalog_id]
        if input and input.search:
            docs = [d for d in docs if input.search.lower() in d["name"].lower()]
        return [t.Datasource.of(d) for d in docs]

    @strawberry.field
    def catalogs(
        self, info: Info[Context, None], input: t.CatalogsAndDatasourcesQueryInput | None = None
    ) -> list[t.Catalog]:
        ctx = _ctx(info)
        with ctx.views.transaction(commit=False) as cursor:
            docs = views.documents(cursor, "Catalog", owner=input.owner if input else None, limit=10_000)
        if input and input.catalog_id:
            catalog_id = _id_of(input.catalog_id, "Catalog")
            docs = [d for d in docs if d["catalog_id"] == catalog_id]
        if input and input.search:
            docs = [d for d in docs if input.search.lower() in d["name"].lower()]
        return _catalogs(ctx, docs)

    @strawberry.field
    def binder(self, info: Info[Context, None], analysis_id: strawberry.ID) -> t.Binder | None:
        doc = _doc(_ctx(info), "Analysis", _id_of(analysis_id, "Analysis"))
        if not doc["binders"]:
            return None
        return t.Binder(
            analysis_id=analysis_id,
            recipients=[
                t.BinderRecipient(
                    requested_by=b["by"], recipient_jwk=json.dumps(b["recipient_jwk"], sort_keys=True)
                )
                for b in doc["binders"]
            ],
        )

    @_field("Results for analysts who were granted access (their signed requests).")
    def result(
        self,
        info: Info[Context, None],
        analysis_id: strawberry.ID,
        signed_requests: list[list[str]],
        task_ids: list[int],
        org_id: int | None = None,
    ) -> t.Analysis:
        ctx = _ctx(info)
        if org_id is not None and ctx.name is not None:  # whose shares: a node has its own only
            organisation = _organisation(ctx, org_id)
            if organisation != ctx.name:
                raise fail("id_mismatch", f"orgId {org_id} is {organisation}; this node is {ctx.name}")
        analysis = _analysis(ctx, _id_of(analysis_id, "Analysis"))
        if analysis.status not in (AnalysisStatus.RESULTS_APPROVED, AnalysisStatus.RELEASED):
            raise fail(
                "results_not_approved",
                f"the analysis is {analysis.status.value}; results come after approval",
            )
        requests = [token for per_node in signed_requests for token in per_node]
        if not requests:
            raise fail("access_required", "send the signed result-access requests recorded on the ledger")
        recipients = []
        for token in requests:
            entry = find_transaction(ctx.store, token)
            body = _as_recorded(parse_transaction(token)) if entry is not None else {}
            if (
                entry is None
                or entry.data.get("recipient_jwk") is None
                or body.get("analysis_id") != analysis.analysis_id
            ):
                raise fail(
                    "access_not_recorded",
                    "a signed request is not a results.request_access for this analysis on this ledger",
                )
            recipients.append(dict(entry.data["recipient_jwk"]))
        known = {r.task_id for r in analysis.results or []}
        unknown = set(task_ids) - known
        if unknown:
            raise fail("unknown_task", f"no finished tasks {sorted(unknown)}")
        if ctx.sealed_results is not None:
            _require_sealable(recipients[-1])
        if ctx.sealed_results is not None and analysis.results:
            reader, recipient = ctx.sealed_results, recipients[-1]
            wanted = set(task_ids) or known
            analysis.results = [
                replace(r, sealed_shares=reader(analysis.analysis_id, r.task_id, recipient))
                if r.task_id in wanted
                else r
                for r in analysis.results
            ]
        return analysis

    @_field("(Shared in coordinator and node) Any object by its global id.")
    def node(self, info: Info[Context, None], id: strawberry.ID, org_id: int | None = None) -> t.Node | None:
        ctx = _ctx(info)
        _check_reader(ctx, org_id)
        type_name, entity_id = _any_id(id)
        readers: dict[str, Callable[[], t.Node]] = {
            "Analysis": lambda: _analysis(ctx, entity_id),
            "Catalog": lambda: _catalog(ctx, entity_id),
            "Datasource": lambda: t.Datasource.of(_doc(ctx, "Datasource", entity_id)),
            "DataView": lambda: t.DataView.of(_doc(ctx, "DataView", entity_id)),
        }
        if type_name == "Calculation":
            analysis_id, calculation_id = entity_id.split("/", 1)
            if not _exists(ctx, "Analysis", analysis_id):
                return None
            found = [
                c for c in _analysis(ctx, analysis_id).calculations if c.calculation_id == calculation_id
            ]
            return found[0] if found else None
        reader = readers.get(type_name)
        # no such object: null, as for a calculation (Relay's node field), not not_found
        return reader() if reader and _exists(ctx, type_name, entity_id) else None

    # --- dashboards (beyond the seed) -----------------------------------------------------

    @_field("Analyses waiting for this node organisation's approval, oldest first.")
    def approval_inbox(self, info: Info[Context, None], org_id: int) -> list[t.Analysis]:
        ctx = _ctx(info)
        node = _organisation(ctx, org_id)
        with ctx.views.transaction(commit=False) as cursor:
            waiting = views.approval_inbox(cursor, node)
        return [_analysis(ctx, a) for a in waiting]

    @_field("Computed analyses whose results wait for this node organisation's approval.")
    def results_inbox(self, info: Info[Context, None], org_id: int) -> list[t.Analysis]:
        ctx = _ctx(info)
        node = _organisation(ctx, org_id)
        with ctx.views.transaction(commit=False) as cursor:
            waiting = views.results_inbox(cursor, node)
        return [_analysis(ctx, a) for a in waiting]

    @_field("This node organisation's MPC tasks still to do, in queue order.")
    def task_queue(
        self, info: Info[Context, None], org_id: int, stale_after_seconds: int = 600
    ) -> list[t.MpcTask]:
        ctx = _ctx(info)
        node = _organisation(ctx, org_id)
        with ctx.views.transaction(commit=False) as cursor:
            queue = views.node_queue(
                cursor, node, now=datetime.now(UTC), stale_after=timedelta(seconds=stale_after_seconds)
            )
        return [
            t.MpcTask(
                analysis=t.global_id("Analysis", task.analysis_id),
                task_id=task.task_id,
                stage=task.stage,
                calculation_id=task.calculation_id,
                state=task.state,
                claimed_ts=t.TIME(task.claimed_ts) if task.claimed_ts else None,
                stale=task.stale,
            )
            for task in queue
        ]


def _require_sealable(recipient: dict[str, str]) -> None:
    """Nodes seal result shares to an X25519 key only, while the ledger records any public
    OKP or EC key: say so, instead of answering with no shares or a base64 error."""
    x = recipient.get("x", "")
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)) if x.isascii() else b""
    except (binascii.Error, ValueError):
        raw = b""
    if recipient.get("kty") != "OKP" or recipient.get("crv") != "X25519" or len(raw) != 32:
        named = f"{recipient.get('kty')}/{recipient.get('crv')}"
        raise fail(
            "recipient_not_x25519",
            f"the nodes seal result shares to a public X25519 key (32 bytes); the request names {named}",
        )


def _check_reader(ctx: Context, org_id: int | None) -> None:
    """The seed's reads take the reading organisation's ``orgId``. What they answer is
    the same for everyone (the ledger's read models, which every participant may
    verify), so it changes nothing, but a number no organisation has is refused
    (``unknown_organisation``) rather than ignored: it is a client's mistake."""
    if org_id is not None:
        _organisation(ctx, org_id)


def _organisation(ctx: Context, org_id: int) -> str:
    with ctx.views.transaction(commit=False) as cursor:
        principal = keys.principal_by_seq(cursor, org_id)
    if principal is None:
        raise fail("unknown_organisation", f"no organisation has number {org_id}")
    return principal


@strawberry.type
class Mutation:
    # --- coordinator ---------------------------------------------------------------------

    @strawberry.mutation
    async def create_catalog(self, info: Info[Context, None], signed_transaction: str) -> t.Catalog:
        done = await _submit(_ctx(info), signed_transaction, ("catalog.create",))
        return _catalog(_ctx(info), _body(done)["catalog_id"])

    @strawberry.mutation
    async def create_datasource(self, info: Info[Context, None], signed_transaction: str) -> t.Datasource:
        done = await _submit(_ctx(info), signed_transaction, ("datasource.create",))
        return t.Datasource.of(_doc(_ctx(info), "Datasource", _body(done)["datasource_id"]))

    @strawberry.mutation
    async def create_variable(self, info: Info[Context, None], signed_transaction: str) -> t.Variable:
        return await _variable(_ctx(info), signed_transaction, "variable.create")

    @strawberry.mutation
    async def update_catalog(self, info: Info[Context, None], signed_transaction: str) -> t.Catalog:
        done = await _submit(_ctx(info), signed_transaction, ("catalog.update",))
        return _catalog(_ctx(info), _body(done)["catalog_id"])

    @strawberry.mutation
    async def update_datasource(self, info: Info[Context, None], signed_transaction: str) -> t.Datasource:
        done = await _submit(
            _ctx(info), signed_transaction, ("datasource.update", "datasource.commit_shares")
        )
        return t.Datasource.of(_doc(_ctx(info), "Datasource", _body(done)["datasource_id"]))

    @strawberry.mutation
    async def update_variable(self, info: Info[Context, None], signed_transaction: str) -> t.Variable:
        return await _variable(_ctx(info), signed_transaction, "variable.update")

    @strawberry.mutation
    async def create_data_view(self, info: Info[Context, None], signed_transaction: str) -> t.DataView:
        done = await _submit(_ctx(info), signed_transaction, ("data_view.create",))
        return t.DataView.of(_doc(_ctx(info), "DataView", _body(done)["data_view_id"]))

    @strawberry.mutation
    async def create_analysis(self, info: Info[Context, None], signed_transaction: str) -> t.Analysis:
        done = await _submit(_ctx(info), signed_transaction, ("analysis.create",))
        return _analysis(_ctx(info), _body(done)["analysis_id"])

    @strawberry.mutation
    async def update_analysis(
        self, info: Info[Context, None], id: strawberry.ID, signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.update",), id)

    @strawberry.mutation
    async def delete_analysis(self, info: Info[Context, None], signed_transaction: str) -> bool:
        await _submit(_ctx(info), signed_transaction, ("analysis.delete",))
        return True

    @strawberry.mutation
    async def update_merge_specification(
        self, info: Info[Context, None], id: strawberry.ID, signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.set_merge",), id)

    @strawberry.mutation
    async def create_calculation(self, info: Info[Context, None], signed_transaction: str) -> t.Calculation:
        return await _calculation(_ctx(info), signed_transaction, "calculation.create", None)

    @strawberry.mutation
    async def update_calculation(
        self, info: Info[Context, None], id: strawberry.ID, signed_transaction: str
    ) -> t.Calculation:
        return await _calculation(_ctx(info), signed_transaction, "calculation.update", id)

    @strawberry.mutation
    async def duplicate_calculation(
        self, info: Info[Context, None], id: strawberry.ID, signed_transaction: str
    ) -> t.Calculation:
        return await _calculation(_ctx(info), signed_transaction, "calculation.duplicate", id)

    @strawberry.mutation
    async def delete_calculation(self, info: Info[Context, None], signed_transaction: str) -> bool:
        await _submit(_ctx(info), signed_transaction, ("calculation.delete",))
        return True

    @strawberry.mutation
    async def add_catalog(
        self, info: Info[Context, None], analysis_id: strawberry.ID, signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.add_catalog",), analysis_id)

    @strawberry.mutation
    async def remove_catalog(
        self, info: Info[Context, None], analysis_id: strawberry.ID, signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.remove_catalog",), analysis_id)

    @strawberry.mutation
    async def add_datasource(
        self, info: Info[Context, None], analysis_id: strawberry.ID, signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.add_datasource",), analysis_id)

    @strawberry.mutation
    async def remove_datasource(
        self, info: Info[Context, None], analysis_id: strawberry.ID, signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(
            _ctx(info), signed_transaction, ("analysis.remove_datasource",), analysis_id
        )

    @strawberry.mutation
    async def send_data_view(self, info: Info[Context, None], signed_transaction: str) -> t.DataView:
        done = await _submit(_ctx(info), signed_transaction, ("data_view.send",))
        return t.DataView.of(_doc(_ctx(info), "DataView", _body(done)["data_view_id"]))

    @strawberry.mutation
    async def send_analysis(self, info: Info[Context, None], signed_transaction: str) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.send",), None)

    @strawberry.mutation
    async def duplicate_data_view(self, info: Info[Context, None], signed_transaction: str) -> t.DataView:
        done = await _submit(_ctx(info), signed_transaction, ("data_view.duplicate",))
        return t.DataView.of(_doc(_ctx(info), "DataView", _body(done)["new_data_view_id"]))

    @strawberry.mutation
    async def duplicate_analysis(self, info: Info[Context, None], signed_transaction: str) -> t.Analysis:
        done = await _submit(_ctx(info), signed_transaction, ("analysis.duplicate",))
        return _analysis(_ctx(info), _body(done)["new_analysis_id"])

    @strawberry.mutation
    async def queue_analysis_for_computation(
        self, info: Info[Context, None], signed_transaction: str
    ) -> t.Analysis:
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.queue",), None)

    # --- CC Nodes ------------------------------------------------------------------------

    @_mutation("CC Nodes")
    async def approve_analysis(
        self, info: Info[Context, None], org_id: int, signed_transaction: str
    ) -> t.Analysis:
        _require_signing_organisation(_ctx(info), org_id, signed_transaction)
        return await _analysis_move(_ctx(info), signed_transaction, ("analysis.approve",), None, role=NODE)

    @_mutation("CC Nodes")
    async def approve_results(
        self, info: Info[Context, None], org_id: int, signed_transaction: str
    ) -> t.Analysis:
        _require_signing_organisation(_ctx(info), org_id, signed_transaction)
        return await _analysis_move(_ctx(info), signed_transaction, ("results.approve",), None, role=NODE)

    @_mutation("CC Nodes")
    async def request_result_access(self, info: Info[Context, None], signed_access: str) -> t.Binder:
        ctx = _ctx(info)
        done = await _submit(ctx, signed_access, ("results.request_access",), role=NODE)
        binder = _binder(ctx, _body(done)["analysis_id"])
        assert binder is not None
        return binder


async def _variable(ctx: Context, token: str, tx_type: str) -> t.Variable:
    done = await _submit(ctx, token, (tx_type,))
    body = _body(done)
    source = _doc(ctx, "Datasource", body["datasource_id"])
    (variable,) = [v for v in source["variables"] if v["name"] == body["name"]]
    return t.Variable.of(variable)


async def _analysis_move(
    ctx: Context, token: str, tx_types: tuple[str, ...], given_id: str | None, role: str = COORDINATOR
) -> t.Analysis:
    if given_id is not None:
        _id_of(given_id, "Analysis")  # a malformed id is refused before anything is submitted
        analysis_id = str(_payload_body(token).get("analysis_id", ""))
        _require_same(given_id, "Analysis", analysis_id)
    done = await _submit(ctx, token, tx_types, role)
    return _analysis(ctx, _body(done)["analysis_id"])


async def _calculation(ctx: Context, token: str, tx_type: str, given_id: str | None) -> t.Calculation:
    if given_id is not None:
        body = _payload_body(token)
        expected = f"{body.get('analysis_id')}/{body.get('calculation_id')}"
        _require_same(given_id, "Calculation", expected)
    done = await _submit(ctx, token, (tx_type,))
    body = _body(done)
    calculation_id = body.get("new_calculation_id", body["calculation_id"])
    (found,) = [
        c for c in _analysis(ctx, body["analysis_id"]).calculations if c.calculation_id == calculation_id
    ]
    return found


refusals = logging.getLogger("dfg.graphql")
#: The code of an error in the query document itself (a syntax error, an unknown field).
INVALID_QUERY = "invalid_query"


#: Queries run in these threads, not on the server's event loop, where a slow one (a
#: large page, a slow disk) held every other request, REST ones included. Two: the
#: read models answer from one core anyway, and GraphQL cannot take the REST API's
#: threads (the default executor) from it.
_QUERY_THREADS = ThreadPoolExecutor(2, thread_name_prefix="dfg-graphql")


class _Schema(strawberry.Schema):
    """Refusals with a code (``fail``) are answers to the client, not server errors:
    they are logged at INFO without a traceback; anything else stays an ERROR.
    Queries are answered in threads of their own (``_QUERY_THREADS``)."""

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[StrawberryOperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES)
        if query is not None and StrawberryOperationType.QUERY in allowed:
            # Run as a query (its resolvers are synchronous); a mutation is refused before
            # anything runs, and goes to the loop, where its asynchronous resolvers run.
            run = partial(
                self.execute_sync, query, variable_values, context_value, root_value, operation_name,
                {StrawberryOperationType.QUERY}, operation_extensions,
            )  # fmt: skip
            with suppress(InvalidOperationTypeError):
                return await asyncio.get_running_loop().run_in_executor(_QUERY_THREADS, run)
        return await super().execute(
            query, variable_values, context_value, root_value, operation_name, allowed_operation_types,
            operation_extensions,
        )  # fmt: skip

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        unexpected = []
        for error in errors:
            code = (error.extensions or {}).get("code")
            ours = error.original_error is None or isinstance(error.original_error, GraphQLError)
            if code is None and error.original_error is None and not error.path:
                code = INVALID_QUERY  # the document: it does not parse or validate
            if code is not None and ours:  # a refusal the API answers with, not a crash
                refusals.info("GraphQL refused %s: %s", code, error.message)
            else:
                unexpected.append(error)
        if unexpected:
            super().process_errors(unexpected, execution_context)


#: A document's cost is shared by every client (two query threads, and the GIL the
#: event loop needs too): 10,000 aliases of ``analyses`` held every other request (REST
#: included) for 10 s. Aliases are what multiply a document's work (a field asked for
#: twice under one name is resolved once); the token cap bounds parsing and
#: validation. Introspection, GraphiQL's included, takes a few hundred tokens.
MAX_ALIASES = 50
MAX_TOKENS = 10_000


class OperationNameRequired(SchemaExtension):
    """A document of several operations needs ``operationName`` to say which one to
    run (GraphQL's "GetOperation"); strawberry ran the first, so a client that meant
    another, a mutation perhaps, got an answer to a question it did not ask."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        # what the request named (``operation_name`` falls back to the first operation's)
        named = getattr(context, "_provided_operation_name", None)
        if named is None and document is not None:
            operations = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
            if operations > 1:
                message = f"the document has {operations} operations: say which to run with operationName"
                context.pre_execution_errors = [GraphQLError(message, extensions={"code": INVALID_QUERY})]
        yield


schema = _Schema(
    query=Query,
    mutation=Mutation,
    types=[t.Calculation],
    config=StrawberryConfig(scalar_map={t.TIME: t.TIME_SCALAR}),
    extensions=[
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        OperationNameRequired,
    ],
)
