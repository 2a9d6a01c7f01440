"""GraphQL types of the Confidential Computing platform (seed §4.1) and the ones the seed
leaves out, built from the analysis read models' documents.

Ids are Relay global ids: base64 of ``<Type>:<uuid>``. ``orgId`` and ``dataViewId``
are integers in the seed; here an organisation's number is the ledger sequence number
that admitted it, and a data view's the one that created it -- stable, public, and
checkable against the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NewType, TypeVar, cast

import strawberry
from strawberry.relay import from_base64, to_base64
from strawberry.types import Info

from domain.analysis import AnalysisStatus
from projections.consent_state import ConsentingCounts

TIME = NewType("TIME", str)
#: The schema's scalar for ``TIME`` (registered in the schema's ``scalar_map``).
TIME_SCALAR = strawberry.scalar(
    name="TIME",
    description="An instant, RFC 3339 in UTC ('Z'), as the ledger records it.",
    serialize=lambda value: value,
    parse_value=lambda value: str(value),
)


def global_id(type_name: str, entity_id: str) -> strawberry.ID:
    return strawberry.ID(to_base64(type_name, entity_id))


_F = TypeVar("_F", bound=Callable[..., Any])


def _resolver(description: str) -> Callable[[_F], _F]:
    """``strawberry.field`` with a description on a resolver, typed for mypy."""
    return cast(Callable[[_F], _F], strawberry.field(description=description))


def parse_global_id(value: str, expected: str | None = None) -> tuple[str, str]:
    """(type name, entity id) of a global id; raises ValueError with a clear message.
    Every entity id is of UUIDs, which the read models hold in lower case: one spelled
    in upper case names the same object."""
    try:
        type_name, entity_id = from_base64(value)
    except Exception as exc:
        raise ValueError(f"{value!r} is not a global id") from exc
    if expected is not None and type_name != expected:
        raise ValueError(f"{value!r} is the id of a {type_name}, not of a {expected}")
    return type_name, entity_id.lower()


# The domain's state machine, as it is: one list of statuses for the ledger and the API.
strawberry.enum(AnalysisStatus)


@strawberry.enum(description="The node organisations' answer to an analysis, as a whole or per node.")
class ApprovalState(Enum):
    NOT_SENT = "not_sent"
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"


@strawberry.enum(description="The node organisations' answer to the results.")
class ResultsApprovalState(Enum):
    NOT_READY = "not_ready"
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"


@strawberry.enum(description="Where the analysis stands in the computation pipeline.")
class AnalysisStateStatus(Enum):
    EDITING = "editing"
    AWAITING_APPROVAL = "awaiting_approval"
    READY_TO_QUEUE = "ready_to_queue"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"


@strawberry.interface(description="Relay's Node: anything with a global id.")
class Node:
    id: strawberry.ID


@strawberry.type
class Variable:
    name: str
    type: str
    unit: str
    min: str | None
    max: str | None
    categories: list[str] | None
    description: str

    @classmethod
    def of(cls, v: dict[str, Any]) -> Variable:
        return cls(
            name=v["name"],
            type=v["type"],
            unit=v.get("unit", ""),
            min=v.get("min"),
            max=v.get("max"),
            categories=v.get("categories"),
            description=v.get("description", ""),
        )


@strawberry.type
class ShareCommitment:
    node: str
    sha256: str


@strawberry.type
class Datasource(Node):
    datasource_id: str
    catalog_id: str
    owner: str
    name: str
    description: str
    origin: str = strawberry.field(description="'fhir:<resource type>' or 'tabular:<format>'.")
    keys: list[str]
    data_categories: list[str]
    variables: list[Variable]
    commitments: list[ShareCommitment] = strawberry.field(
        description="Per node: SHA-256 of the sealed share bundle it received (once uploaded)."
    )
    records: int | None
    fixed_point_precision: int | None
    create_ts: TIME
    modify_ts: TIME

    @classmethod
    def of(cls, d: dict[str, Any]) -> Datasource:
        origin = d["origin"]
        return cls(
            id=global_id("Datasource", d["datasource_id"]),
            datasource_id=d["datasource_id"],
            catalog_id=d["catalog_id"],
            owner=d["owner"],
            name=d["name"],
            description=d["description"],
            origin=f"{origin['kind']}:{origin.get('resource') or origin.get('format')}",
            keys=d["keys"],
            data_categories=d["data_categories"],
            variables=[Variable.of(v) for v in d["variables"]],
            commitments=[ShareCommitment(node=n, sha256=h) for n, h in sorted(d["commitments"].items())],
            records=d.get("records"),
            fixed_point_precision=d.get("fixed_point_precision"),
            create_ts=d["created_ts"],
            modify_ts=d["modified_ts"],
        )


@strawberry.type
class Catalog(Node):
    catalog_id: str
    owner: str
    name: str
    description: str
    datasources: list[Datasource]
    create_ts: TIME
    modify_ts: TIME

    @classmethod
    def of(cls, d: dict[str, Any], datasources: list[dict[str, Any]]) -> Catalog:
        return cls(
            id=global_id("Catalog", d["catalog_id"]),
            catalog_id=d["catalog_id"],
            owner=d["owner"],
            name=d["name"],
            description=d["description"],
            datasources=[Datasource.of(s) for s in datasources],
            create_ts=d["created_ts"],
            modify_ts=d["modified_ts"],
        )


@strawberry.type
class DataViewVariable:
    alias: str
    datasource_id: str
    variable: str
    type: str
    unit: str
    min: str | None
    max: str | None


@strawberry.type
class DataView(Node):
    data_view_id: str
    number: int = strawberry.field(description="The integer id analyses refer to (dataViewId).")
    owner: str
    name: str
    variables: list[DataViewVariable]
    sent: bool
    duplicated_from: str | None
    create_ts: TIME
    modify_ts: TIME

    @classmethod
    def of(cls, d: dict[str, Any]) -> DataView:
        return cls(
            id=global_id("DataView", d["data_view_id"]),
            data_view_id=d["data_view_id"],
            number=d["created_seq"],
            owner=d["owner"],
            name=d["name"],
            variables=[
                DataViewVariable(
                    alias=v["alias"],
                    datasource_id=v["datasource_id"],
                    variable=v["name"],
                    type=v["type"],
                    unit=v.get("unit", ""),
                    min=v.get("min"),
                    max=v.get("max"),
                )
                for v in d["variables"]
            ],
            sent=d["sent"],
            duplicated_from=d.get("duplicated_from"),
            create_ts=d["created_ts"],
            modify_ts=d["modified_ts"],
        )


@strawberry.type
class Calculation(Node):
    calculation_id: str
    analysis_id: str
    name: str
    filter: str
    functions: list[str]

    @classmethod
    def of(cls, analysis_id: str, c: dict[str, Any]) -> Calculation:
        return cls(
            id=global_id("Calculation", f"{analysis_id}/{c['id']}"),
            calculation_id=c["id"],
            analysis_id=analysis_id,
            name=c["name"],
            filter=c["filter"],
            functions=c["functions"],
        )


@strawberry.type
class OrganizationApproval:
    organization: str
    org_id: int | None
    state: ApprovalState
    reason: str | None
    results_state: ResultsApprovalState
    results_reason: str | None = strawberry.field(
        default=None, description="Why the node approved or declined the results (beyond the seed)."
    )


@strawberry.type(description="What the ledger knows of one computed calculation: each node's commitment.")
class ResultsDto:
    task_id: int
    calculation_id: str | None
    stage: str
    commitments: list[str]
    nodes: list[str] = strawberry.field(
        default_factory=list, description="The node that signed each commitment, in the same order."
    )
    sealed_shares: str | None = strawberry.field(
        default=None,
        description="From a computation node, to an analyst with recorded access: this node's result"
        " shares for the task, sealed to the analyst's X25519 key (base64; see docs/mpc.md).",
    )


@strawberry.type
class DatasetDefinition:
    datasource_id: str
    name: str
    key: str | None
    variables: list[str]


@strawberry.type
class BinderRecipient:
    requested_by: str
    recipient_jwk: str = strawberry.field(description="The public key result shares are encrypted to (JSON).")


@strawberry.type(description="Who may receive an analysis' results, and to which keys.")
class Binder:
    analysis_id: strawberry.ID
    recipients: list[BinderRecipient]


@strawberry.type
class Analysis(Node):
    name: str | None
    note: str | None
    analysts: list[str]
    calculations: list[Calculation]
    catalogs: list[Catalog]
    datasources: list[Datasource]
    approvals: list[OrganizationApproval] | None
    status: AnalysisStatus
    locked: bool
    results: list[ResultsDto] | None
    modulus: str
    fixed_point_precision: int
    data_view_id: int
    create_ts: TIME
    modify_ts: TIME
    analyst_name: str | None
    analyst_email: str = strawberry.field(
        description="Always empty: the ledger holds no personal data; contact the analyst organisation."
    )
    approval_state: ApprovalState
    results_approval_state: ResultsApprovalState
    state_status: AnalysisStateStatus
    own_data_ts: TIME | None
    other_data_ts: TIME | None
    processed: bool
    confidential_dataset: str | None
    finished_tasks: list[int] | None
    off_chain_authorities: list[str] | None
    dataset_definitions: list[DatasetDefinition]
    trusted: bool | None
    merge_spec: str
    analysis_id: str
    owner: str
    nodes: list[str]
    consent_purpose: str
    consent_data_categories: list[str]
    missing_approvals: list[str] = strawberry.field(description="Nodes that have not answered yet.")

    @_resolver("Subjects whose consent to the analyst organisation covers this analysis now.")
    def consenting_subjects(self, info: Info[Any, None]) -> int:
        """Counted only when asked for: it reads the organisation's consents, and every
        analysis of an answer counted them even for a page's totalCount (3.7 s for 20
        analyses over 20,000 consents). The count is remembered (``ConsentingCounts``)."""
        counts: ConsentingCounts = info.context.counts
        return counts.count(self.owner, self.consent_purpose, self.consent_data_categories, datetime.now(UTC))

    failure: TaskFailure | None = strawberry.field(
        default=None, description="Why the analysis failed: the node's signed task.fail (beyond the seed)."
    )
    task_states: list[TaskState] = strawberry.field(
        default_factory=list,
        description="Every node's progress on every task, from its signed moves (beyond the seed).",
    )


@strawberry.type(description="One node's progress on one task, as its signed transactions record it.")
class TaskState:
    task_id: int
    node: str
    stage: str
    state: str
    claimed_ts: TIME | None
    finished_ts: TIME | None
    reason: str | None


@strawberry.type(description="A task a node failed, with the reason it signed.")
class TaskFailure:
    node: str
    task_id: int
    reason: str


@strawberry.type(description="One task of an analysis in one node's queue.")
class MpcTask:
    analysis: strawberry.ID
    task_id: int
    stage: str
    calculation_id: str | None
    state: str
    claimed_ts: TIME | None
    stale: bool = strawberry.field(description="Claimed long ago and not finished: the node went silent.")


def merge_text(merge: dict[str, Any] | None) -> str:
    return "" if merge is None else json.dumps(merge, sort_keys=True, separators=(",", ":"))


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class AnalysisEdge:
    node: Analysis
    cursor: str


@strawberry.type(description="A Relay connection over analyses, in creation order.")
class AnalysesConnection:
    edges: list[AnalysisEdge]
    page_info: PageInfo
    total_count: int


@strawberry.input
class AnalysisFilter:
    first: int = 20
    after: str | None = None
    statuses: list[AnalysisStatus] | None = None
    owner: str | None = None
    node: str | None = strawberry.field(
        default=None, description="Only analyses this node organisation computes."
    )


@strawberry.input
class CatalogsAndDatasourcesQueryInput:
    owner: str | None = None
    catalog_id: strawberry.ID | None = None
    search: str | None = strawberry.field(default=None, description="Case-insensitive part of the name.")
