"""Handlers of the analysis platform's transactions (see ``domain.analysis`` for the
state machine and docs/analyses.md for who may sign what)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain import analysis_commands as a
from domain.analysis import Analysis
from domain.calculations import check_calculation
from domain.catalog import Catalog, Datasource
from domain.commands import Kind
from domain.data_view import DataView
from domain.errors import DomainError
from domain.field_capacity import DEFAULT_MAX_ROWS, check_capacity, variable_magnitude
from domain.identifiers import entity_aggregate_id
from domain.principal import Principal

T = TypeVar("T", bound=Aggregate)


class AnalysisState(Protocol):
    def principal(self, principal_id: str) -> Principal | None: ...

    def aggregate(self, aggregate_id: UUID) -> Aggregate | None: ...

    def rules(self) -> int: ...


PROVIDER = frozenset({Kind.DATA_PROVIDER})
ANALYST = frozenset({Kind.ANALYST_ORG})
NODE = frozenset({Kind.NODE_OPERATOR})

MAY_SIGN: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        [
            "catalog.create",
            "catalog.update",
            "datasource.create",
            "datasource.update",
            "datasource.commit_shares",
            "variable.create",
            "variable.update",
        ],
        PROVIDER,
    ),
    **dict.fromkeys(
        [
            "data_view.create",
            "data_view.send",
            "data_view.duplicate",
            "analysis.create",
            "analysis.update",
            "analysis.delete",
            "analysis.duplicate",
            "analysis.set_merge",
            "analysis.add_catalog",
            "analysis.remove_catalog",
            "analysis.add_datasource",
            "analysis.remove_datasource",
            "calculation.create",
            "calculation.update",
            "calculation.duplicate",
            "calculation.delete",
            "analysis.send",
            "analysis.queue",
            "results.request_access",
        ],
        ANALYST,
    ),
    **dict.fromkeys(
        [
            "analysis.approve",
            "task.claim",
            "task.finish",
            "task.fail",
            "results.approve",
            "node.set_encryption_key",
            "node.set_policy",
        ],
        NODE,
    ),
}

_KIND_OF: dict[type[Aggregate], str] = {
    Catalog: "catalog",
    Datasource: "datasource",
    DataView: "data_view",
    Analysis: "analysis",
}


def _id(cls: type[Aggregate], entity_id: UUID | str) -> UUID:
    return entity_aggregate_id(_KIND_OF[cls], UUID(str(entity_id)))


def _find(state: AnalysisState, cls: type[T], entity_id: UUID | str) -> T:
    found = state.aggregate(_id(cls, entity_id))
    if not isinstance(found, cls):
        raise DomainError(
            f"unknown_{_KIND_OF[cls]}", f"there is no {_KIND_OF[cls].replace('_', ' ')} {entity_id}"
        )
    return found


def _absent(state: AnalysisState, cls: type[Aggregate], entity_id: UUID) -> UUID:
    aggregate_id = _id(cls, entity_id)
    if state.aggregate(aggregate_id) is not None:
        raise DomainError(f"{_KIND_OF[cls]}_exists", f"{_KIND_OF[cls].replace('_', ' ')} {entity_id} exists")
    return aggregate_id


def _by(signer: Principal | None) -> str:
    if signer is None:  # pragma: no cover - the ledger resolves signers before deciding
        raise DomainError("unknown_signer", "the signer is not admitted")
    return signer.principal


def _changes(cmd: a.UpdateCatalog | a.UpdateDatasource | a.UpdateAnalysis, skip: str) -> dict[str, Any]:
    return {k: v for k, v in cmd.model_dump().items() if k != skip and v is not None}


# --- catalogs and datasources ---------------------------------------------------------


def create_catalog(
    cmd: a.CreateCatalog, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    return Catalog.create(
        aggregate_id=_absent(state, Catalog, cmd.catalog_id),
        catalog_id=cmd.catalog_id,
        owner=_by(signer),
        name=cmd.name,
        description=cmd.description,
        at=at,
    )


def update_catalog(
    cmd: a.UpdateCatalog, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    catalog = _find(state, Catalog, cmd.catalog_id)
    catalog.update(by=_by(signer), changes=_changes(cmd, "catalog_id"), at=at)
    return catalog


def create_datasource(
    cmd: a.CreateDatasource, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    by = _by(signer)
    catalog = _find(state, Catalog, cmd.catalog_id)
    if catalog.owner != by:
        raise DomainError("not_owner", f"catalog {cmd.catalog_id} belongs to {catalog.owner}")
    return Datasource.create(
        aggregate_id=_absent(state, Datasource, cmd.datasource_id),
        at=at,
        datasource_id=str(cmd.datasource_id),
        catalog_id=str(cmd.catalog_id),
        owner=by,
        name=cmd.name,
        description=cmd.description,
        origin=cmd.origin.model_dump(mode="json", exclude_none=True),
        keys=list(cmd.keys),
        data_categories=list(cmd.data_categories),
    )


def update_datasource(
    cmd: a.UpdateDatasource, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    datasource = _find(state, Datasource, cmd.datasource_id)
    datasource.update(by=_by(signer), changes=_changes(cmd, "datasource_id"), at=at)
    return datasource


def _set_variable(create: bool) -> Callable[..., Aggregate]:
    def handler(
        cmd: a.VariableSpec, signer: Principal | None, at: datetime, state: AnalysisState
    ) -> Aggregate:
        datasource = _find(state, Datasource, cmd.datasource_id)
        variable = cmd.model_dump(mode="json", exclude={"datasource_id"})
        datasource.set_variable(by=_by(signer), variable=variable, create=create, at=at)
        return datasource

    return handler


def commit_shares(
    cmd: a.CommitShares, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    datasource = _find(state, Datasource, cmd.datasource_id)
    for node in cmd.commitments:
        principal = state.principal(node)
        if principal is None or Kind.NODE_OPERATOR not in principal.roles:
            raise DomainError("not_a_node", f"{node} is not a computation node's organisation on this ledger")
    datasource.commit_shares(
        by=_by(signer),
        commitments=dict(cmd.commitments),
        records=cmd.records,
        precision=cmd.fixed_point_precision,
        at=at,
    )
    return datasource


# --- data views -----------------------------------------------------------------------------


def create_data_view(
    cmd: a.CreateDataView, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    variables = []
    for selected in cmd.variables:
        datasource = _find(state, Datasource, selected.datasource_id)
        spec = datasource.variables.get(selected.variable)
        if spec is None:
            raise DomainError(
                "unknown_variable", f"datasource {selected.datasource_id} has no variable {selected.variable}"
            )
        variables.append({"alias": selected.alias, "datasource_id": str(selected.datasource_id), **spec})
    return DataView.create(
        aggregate_id=_absent(state, DataView, cmd.data_view_id),
        data_view_id=cmd.data_view_id,
        owner=_by(signer),
        name=cmd.name,
        variables=variables,
        at=at,
    )


def send_data_view(
    cmd: a.SendDataView, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    view = _find(state, DataView, cmd.data_view_id)
    view.send(by=_by(signer), at=at)
    return view


def duplicate_data_view(
    cmd: a.DuplicateDataView, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    by = _by(signer)
    source = _find(state, DataView, cmd.data_view_id)
    if source.owner != by:
        raise DomainError("not_owner", f"data view {cmd.data_view_id} belongs to {source.owner}")
    return DataView.create(
        aggregate_id=_absent(state, DataView, cmd.new_data_view_id),
        data_view_id=cmd.new_data_view_id,
        owner=by,
        name=cmd.name or source.name,
        variables=list(source.variables.values()),
        duplicated_from=source.data_view_id,
        at=at,
    )


# --- analyses -----------------------------------------------------------------------------


def create_analysis(
    cmd: a.CreateAnalysis, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    by = _by(signer)
    view = _find(state, DataView, cmd.data_view_id)
    if view.owner != by:
        raise DomainError("not_owner", f"data view {cmd.data_view_id} belongs to {view.owner}")
    for analyst in cmd.analysts:
        if state.principal(analyst) is None:
            raise DomainError("unknown_principal", f"{analyst} is not admitted on this ledger")
    _check_capacity(state, view, cmd.modulus, cmd.fixed_point_precision)
    return Analysis.create(
        aggregate_id=_absent(state, Analysis, cmd.analysis_id),
        at=at,
        analysis_id=str(cmd.analysis_id),
        owner=by,
        name=cmd.name,
        note=cmd.note,
        data_view_id=str(cmd.data_view_id),
        analysts=list(cmd.analysts),
        consent=cmd.consent.model_dump(mode="json"),
        modulus=cmd.modulus,
        fixed_point_precision=cmd.fixed_point_precision,
    )


def _check_capacity(state: AnalysisState, view: DataView, modulus: str, precision: int) -> None:
    """Refuse an analysis whose field could wrap around (``modulus_too_small``)."""
    rows = [_find(state, Datasource, source_id).records or 0 for source_id in view.datasource_ids]
    known = max(rows, default=0)
    check_capacity(
        int(modulus),
        [variable_magnitude(spec) for spec in view.variables.values()],
        precision,
        known or DEFAULT_MAX_ROWS,
    )


def _analysis(state: AnalysisState, analysis_id: UUID) -> Analysis:
    return _find(state, Analysis, analysis_id)


def update_analysis(
    cmd: a.UpdateAnalysis, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    if cmd.modulus is not None or cmd.fixed_point_precision is not None:
        precision = (
            analysis.fixed_point_precision if cmd.fixed_point_precision is None else cmd.fixed_point_precision
        )
        _check_capacity(state, _view_of(state, analysis), cmd.modulus or analysis.modulus, precision)
    analysis.update(by=_by(signer), changes=_changes(cmd, "analysis_id"), at=at)
    return analysis


def delete_analysis(
    cmd: a.AnalysisRef, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.delete(by=_by(signer), at=at)
    return analysis


def duplicate_analysis(
    cmd: a.DuplicateAnalysis, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    by = _by(signer)
    source = _analysis(state, cmd.analysis_id)
    if not source.may_act(by):
        raise DomainError("not_owner", f"analysis {cmd.analysis_id} belongs to {source.owner}")
    fields = source.copy_fields()
    if cmd.name:
        fields["name"] = cmd.name
    return Analysis.create(
        aggregate_id=_absent(state, Analysis, cmd.new_analysis_id),
        at=at,
        analysis_id=str(cmd.new_analysis_id),
        owner=by,
        duplicated_from=source.analysis_id,
        **fields,
    )


def _view_of(state: AnalysisState, analysis: Analysis) -> DataView:
    return _find(state, DataView, analysis.data_view_id)


def set_merge(cmd: a.SetMerge, signer: Principal | None, at: datetime, state: AnalysisState) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    view = _view_of(state, analysis)
    for datasource_id in view.datasource_ids:
        datasource = _find(state, Datasource, datasource_id)
        if cmd.merge.key not in datasource.keys:
            raise DomainError(
                "merge_key_missing",
                f"datasource {datasource.name!r} ({datasource_id}) has no key {cmd.merge.key!r}"
                f" (its keys: {', '.join(datasource.keys)})",
            )
    analysis.set_merge(by=_by(signer), merge=cmd.merge.model_dump(mode="json"), at=at)
    return analysis


def _member_move(cls: type[Catalog] | type[Datasource], add: bool) -> Callable[..., Aggregate]:
    """analysis.add_/remove_ catalog or datasource: one rule for both."""
    kind = _KIND_OF[cls]

    def handler(
        cmd: a.AnalysisCatalog | a.AnalysisDatasource,
        signer: Principal | None,
        at: datetime,
        state: AnalysisState,
    ) -> Aggregate:
        analysis = _analysis(state, cmd.analysis_id)
        member_id = getattr(cmd, f"{kind}_id")
        if add:
            _find(state, cls, member_id)
        analysis.change_members(kind=kind, member_id=str(member_id), add=add, by=_by(signer), at=at)
        return analysis

    return handler


def _set_calculation(create: bool) -> Callable[..., Aggregate]:
    def handler(
        cmd: a.CalculationSpec, signer: Principal | None, at: datetime, state: AnalysisState
    ) -> Aggregate:
        analysis = _analysis(state, cmd.analysis_id)
        view = _view_of(state, analysis)
        checked = check_calculation(cmd.filter or None, cmd.functions, view.variables)
        calculation = {
            "id": str(cmd.calculation_id),
            "name": cmd.name,
            "filter": cmd.filter,
            "functions": [f.text for f in checked.functions],
        }
        analysis.set_calculation(by=_by(signer), calculation=calculation, create=create, at=at)
        return analysis

    return handler


def duplicate_calculation(
    cmd: a.DuplicateCalculation, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    source = analysis.calculations.get(str(cmd.calculation_id))
    if source is None:
        raise DomainError("unknown_calculation", f"this analysis has no calculation {cmd.calculation_id}")
    copy = {**source, "id": str(cmd.new_calculation_id)}
    analysis.set_calculation(by=_by(signer), calculation=copy, create=True, at=at)
    return analysis


def delete_calculation(
    cmd: a.DeleteCalculation, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.delete_calculation(by=_by(signer), calculation_id=str(cmd.calculation_id), at=at)
    return analysis


def send_analysis(
    cmd: a.SendAnalysis, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    if len(cmd.nodes) < 3 and state.rules() >= 2:
        raise DomainError(
            "too_few_nodes",
            f"an analysis needs at least 3 nodes (rules version 2): shares split among"
            f" {len(cmd.nodes)} keep no value secret from a node and its peer",
        )
    for node in cmd.nodes:
        principal = state.principal(node)
        if principal is None or Kind.NODE_OPERATOR not in principal.roles:
            raise DomainError("not_a_node", f"{node} is not a computation node's organisation on this ledger")
    view = _view_of(state, analysis)
    if analysis.status.value == "draft" and not view.sent:
        raise DomainError("data_view_not_sent", f"send data view {analysis.data_view_id} first")
    if analysis.status.value == "draft":  # the uploads known by now give the row count
        _check_capacity(state, view, analysis.modulus, analysis.fixed_point_precision)
    analysis.send(by=_by(signer), nodes=list(cmd.nodes), at=at)
    return analysis


def approve_analysis(
    cmd: a.ApproveAnalysis, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.approve(node=_by(signer), approve=cmd.approve, reason=cmd.reason, at=at)
    return analysis


def queue_analysis(
    cmd: a.AnalysisRef, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.queue(by=_by(signer), at=at)
    return analysis


def claim_task(cmd: a.TaskRef, signer: Principal | None, at: datetime, state: AnalysisState) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.claim_task(node=_by(signer), task_id=cmd.task_id, at=at)
    return analysis


def finish_task(cmd: a.FinishTask, signer: Principal | None, at: datetime, state: AnalysisState) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.finish_task(node=_by(signer), task_id=cmd.task_id, commitment=cmd.commitment, at=at)
    return analysis


def fail_task(cmd: a.FailTask, signer: Principal | None, at: datetime, state: AnalysisState) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.fail_task(node=_by(signer), task_id=cmd.task_id, reason=cmd.reason, at=at)
    return analysis


def approve_results(
    cmd: a.ApproveResults, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    analysis.approve_results(node=_by(signer), approve=cmd.approve, reason=cmd.reason, at=at)
    return analysis


def _unsealable(jwk: dict[str, str]) -> str | None:
    """Why the nodes cannot seal result shares to ``jwk`` (rules version 2), or None: the
    shape ``x25519_problem`` checks, and ``x`` in ASCII, as a node decodes it (that
    shape's ``str.isalnum`` lets other scripts' letters and digits pass; it is left as
    it is for node.set_encryption_key, whose accepted entries are replayed for ever)."""
    problem = a.x25519_problem(jwk)
    if problem is None and not jwk.get("x", "").isascii():
        return "x is 32 bytes, unpadded base64url"
    return problem


def request_access(
    cmd: a.RequestResultAccess, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    analysis = _analysis(state, cmd.analysis_id)
    if (problem := _unsealable(dict(cmd.recipient_jwk))) is not None and state.rules() >= 2:
        raise DomainError(
            "unusable_key",
            f"recipient_jwk: {problem}; the nodes seal results to no other key (rules version 2)",
        )
    analysis.request_access(by=_by(signer), recipient_jwk=dict(cmd.recipient_jwk), at=at)
    return analysis


def set_encryption_key(
    cmd: a.SetEncryptionKey, signer: Principal | None, at: datetime, state: AnalysisState
) -> Aggregate:
    if signer is None:  # pragma: no cover - the ledger resolves signers before deciding
        raise DomainError("unknown_signer", "the signer is not admitted")
    signer.set_encryption_key(dict(cmd.jwk), at=at)
    return signer


def set_policy(cmd: a.NodePolicy, signer: Principal | None, at: datetime, state: AnalysisState) -> Aggregate:
    if signer is None:  # pragma: no cover - the ledger resolves signers before deciding
        raise DomainError("unknown_signer", "the signer is not admitted")
    signer.set_policy(cmd.model_dump(mode="json"), at=at)
    return signer


HANDLERS: dict[str, Callable[..., Aggregate]] = {
    "catalog.create": create_catalog,
    "catalog.update": update_catalog,
    "datasource.create": create_datasource,
    "datasource.update": update_datasource,
    "datasource.commit_shares": commit_shares,
    "variable.create": _set_variable(create=True),
    "variable.update": _set_variable(create=False),
    "data_view.create": create_data_view,
    "data_view.send": send_data_view,
    "data_view.duplicate": duplicate_data_view,
    "analysis.create": create_analysis,
    "analysis.update": update_analysis,
    "analysis.delete": delete_analysis,
    "analysis.duplicate": duplicate_analysis,
    "analysis.set_merge": set_merge,
    "analysis.add_catalog": _member_move(Catalog, add=True),
    "analysis.remove_catalog": _member_move(Catalog, add=False),
    "analysis.add_datasource": _member_move(Datasource, add=True),
    "analysis.remove_datasource": _member_move(Datasource, add=False),
    "calculation.create": _set_calculation(create=True),
    "calculation.update": _set_calculation(create=False),
    "calculation.duplicate": duplicate_calculation,
    "calculation.delete": delete_calculation,
    "analysis.send": send_analysis,
    "analysis.approve": approve_analysis,
    "analysis.queue": queue_analysis,
    "task.claim": claim_task,
    "task.finish": finish_task,
    "task.fail": fail_task,
    "results.approve": approve_results,
    "results.request_access": request_access,
    "node.set_encryption_key": set_encryption_key,
    "node.set_policy": set_policy,
}

EVENT_TYPES: dict[str, type[Aggregate.Event]] = {
    f"{cls.__name__}.{name}": event
    for cls in (Catalog, Datasource, DataView, Analysis)
    for name, event in vars(cls).items()
    if isinstance(event, type) and issubclass(event, Aggregate.Event)
}

AGGREGATES: dict[str, type[Aggregate]] = {cls.__name__: cls for cls in _KIND_OF}
