"""An analysis and its life, one signed move at a time.

::

    draft ──send──▶ sent ──every node approves──▶ approved ──queue──▶ queued
      │               └──a node declines──▶ rejected
      └─delete─▶ deleted
    queued ──first task claimed──▶ computing ──every node finished every task──▶ computed
                                      └──a task fails──▶ failed
    computed ──every node approves the results──▶ results_approved ──access──▶ released
                 └──a node declines them──▶ results_rejected

Every event that moves the analysis carries the status it moves to, so read models
and auditors read the state machine's decisions instead of re-deriving them.

Only a draft can be edited (name, calculations, merge, catalogs, datasources); sending
locks it. The analyst organisation that created it moves it (send, queue, request
access); each computation node's organisation approves it, runs its tasks and approves
its results. Tasks are made when the analysis is queued: task 1 merges the datasets and
keeps consenting subjects only; tasks 2.. compute one calculation each.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.errors import DomainError


class AnalysisStatus(StrEnum):
    DRAFT = "draft"
    SENT = "sent"
    REJECTED = "rejected"
    APPROVED = "approved"
    QUEUED = "queued"
    COMPUTING = "computing"
    FAILED = "failed"
    COMPUTED = "computed"
    RESULTS_APPROVED = "results_approved"
    RESULTS_REJECTED = "results_rejected"
    RELEASED = "released"
    DELETED = "deleted"


MERGE_TASK = 1


class Analysis(LedgerAggregate):
    class Created(Aggregate.Created):
        analysis_id: str
        owner: str
        name: str
        note: str
        data_view_id: str
        analysts: list[str]
        consent: dict[str, Any]
        modulus: str
        fixed_point_precision: int
        duplicated_from: str | None
        merge: dict[str, Any] | None
        catalogs: list[str]
        datasources: list[str]
        calculations: list[dict[str, Any]]

    class Updated(Aggregate.Event):
        changes: dict[str, Any]

        def apply(self, aggregate: Analysis) -> None:
            for key, value in self.changes.items():
                setattr(aggregate, key, value)

    class Deleted(Aggregate.Event):
        def apply(self, aggregate: Analysis) -> None:
            aggregate.status = AnalysisStatus.DELETED

    class MergeSet(Aggregate.Event):
        merge: dict[str, Any]

        def apply(self, aggregate: Analysis) -> None:
            aggregate.merge = self.merge

    class CatalogsChanged(Aggregate.Event):
        catalogs: list[str]

        def apply(self, aggregate: Analysis) -> None:
            aggregate.catalogs = tuple(self.catalogs)

    class DatasourcesChanged(Aggregate.Event):
        datasources: list[str]

        def apply(self, aggregate: Analysis) -> None:
            aggregate.datasources = tuple(self.datasources)

    class CalculationSet(Aggregate.Event):
        calculation: dict[str, Any]

        def apply(self, aggregate: Analysis) -> None:
            aggregate.calculations = {**aggregate.calculations, self.calculation["id"]: self.calculation}

    class CalculationDeleted(Aggregate.Event):
        calculation_id: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.calculations = {
                k: v for k, v in aggregate.calculations.items() if k != self.calculation_id
            }

    class Sent(Aggregate.Event):
        nodes: list[str]

        def apply(self, aggregate: Analysis) -> None:
            aggregate.nodes = tuple(self.nodes)
            aggregate.status = AnalysisStatus.SENT

    class Approved(Aggregate.Event):
        node: str
        approve: bool
        reason: str
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.approvals = {**aggregate.approvals, self.node: self.approve}
            aggregate.status = AnalysisStatus(self.status)

    class Queued(Aggregate.Event):
        tasks: list[dict[str, Any]]
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.tasks = {t["task_id"]: t for t in self.tasks}
            aggregate.status = AnalysisStatus(self.status)

    class TaskClaimed(Aggregate.Event):
        node: str
        task_id: int
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.claims = {**aggregate.claims, (self.node, self.task_id): self.timestamp}
            aggregate.status = AnalysisStatus(self.status)

    class TaskFinished(Aggregate.Event):
        node: str
        task_id: int
        commitment: str
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.finished = {**aggregate.finished, (self.node, self.task_id): self.commitment}
            aggregate.status = AnalysisStatus(self.status)

    class TaskFailed(Aggregate.Event):
        node: str
        task_id: int
        reason: str
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.status = AnalysisStatus(self.status)

    class ResultsApproved(Aggregate.Event):
        node: str
        approve: bool
        reason: str
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.results_approvals = {**aggregate.results_approvals, self.node: self.approve}
            aggregate.status = AnalysisStatus(self.status)

    class AccessRequested(Aggregate.Event):
        by: str
        recipient_jwk: dict[str, str]
        status: str

        def apply(self, aggregate: Analysis) -> None:
            aggregate.binders = (*aggregate.binders, {"by": self.by, "recipient_jwk": self.recipient_jwk})
            aggregate.status = AnalysisStatus(self.status)

    def __init__(
        self,
        analysis_id: str,
        owner: str,
        name: str,
        note: str,
        data_view_id: str,
        analysts: list[str],
        consent: dict[str, Any],
        modulus: str,
        fixed_point_precision: int,
        duplicated_from: str | None,
        merge: dict[str, Any] | None,
        catalogs: list[str],
        datasources: list[str],
        calculations: list[dict[str, Any]],
    ) -> None:
        self.analysis_id = analysis_id
        self.owner = owner
        self.name = name
        self.note = note
        self.data_view_id = data_view_id
        self.analysts = tuple(analysts)
        self.consent = consent
        self.modulus = modulus
        self.fixed_point_precision = fixed_point_precision
        self.duplicated_from = duplicated_from
        self.merge = merge
        self.catalogs = tuple(catalogs)
        self.datasources = tuple(datasources)
        self.calculations: dict[str, dict[str, Any]] = {c["id"]: c for c in calculations}
        self.status = AnalysisStatus.DRAFT
        self.nodes: tuple[str, ...] = ()
        self.approvals: dict[str, bool] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.claims: dict[tuple[str, int], datetime] = {}
        self.finished: dict[tuple[str, int], str] = {}
        self.results_approvals: dict[str, bool] = {}
        self.binders: tuple[dict[str, Any], ...] = ()

    # --- creation ------------------------------------------------------------------

    @classmethod
    def create(cls, *, aggregate_id: uuid.UUID, at: datetime, **fields: Any) -> Analysis:
        defaults: dict[str, Any] = {
            "duplicated_from": None,
            "merge": None,
            "catalogs": [],
            "datasources": [],
            "calculations": [],
        }
        return cls._create(cls.Created, id=aggregate_id, timestamp=at, **{**defaults, **fields})

    def copy_fields(self) -> dict[str, Any]:
        """What a duplicate starts from (a new draft of the same analysis)."""
        return {
            "name": self.name,
            "note": self.note,
            "data_view_id": self.data_view_id,
            "analysts": list(self.analysts),
            "consent": self.consent,
            "modulus": self.modulus,
            "fixed_point_precision": self.fixed_point_precision,
            "merge": self.merge,
            "catalogs": list(self.catalogs),
            "datasources": list(self.datasources),
            "calculations": list(self.calculations.values()),
        }

    # --- rules ---------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        return self.status is not AnalysisStatus.DRAFT

    def may_act(self, principal: str) -> bool:
        """The owner organisation and the analysts it named act for the analysis."""
        return principal == self.owner or principal in self.analysts

    def _require_analyst(self, by: str) -> None:
        if not self.may_act(by):
            raise DomainError("not_owner", f"analysis {self.analysis_id} belongs to {self.owner}")

    def _require_draft(self, by: str) -> None:
        self._require_analyst(by)
        if self.status is AnalysisStatus.DELETED:
            raise DomainError("analysis_deleted", f"analysis {self.analysis_id} was deleted")
        if self.locked:
            raise DomainError(
                "analysis_locked",
                f"analysis {self.analysis_id} was sent ({self.status}); duplicate it to edit",
            )

    def _require_status(self, *allowed: AnalysisStatus, code: str) -> None:
        if self.status not in allowed:
            wanted = " or ".join(a.value for a in allowed)
            raise DomainError(code, f"analysis {self.analysis_id} is {self.status.value}, not {wanted}")

    def _require_node(self, node: str) -> None:
        if node not in self.nodes:
            raise DomainError(
                "not_a_node_of_this_analysis",
                f"{node} is not one of this analysis' computation nodes"
                f" ({', '.join(self.nodes) or 'none yet'})",
            )

    # --- the analyst's moves -------------------------------------------------------

    def update(self, *, by: str, changes: dict[str, Any], at: datetime) -> None:
        self._require_draft(by)
        if not changes:
            raise DomainError("nothing_to_change", "the update changes nothing")
        self.trigger_event(self.Updated, timestamp=at, changes=changes)

    def delete(self, *, by: str, at: datetime) -> None:
        self._require_draft(by)
        self.trigger_event(self.Deleted, timestamp=at)

    def set_merge(self, *, by: str, merge: dict[str, Any], at: datetime) -> None:
        self._require_draft(by)
        self.trigger_event(self.MergeSet, timestamp=at, merge=merge)

    def change_members(self, *, kind: str, member_id: str, add: bool, by: str, at: datetime) -> None:
        """Add or remove a catalog (``kind="catalog"``) or datasource of a draft."""
        self._require_draft(by)
        members: tuple[str, ...] = self.catalogs if kind == "catalog" else self.datasources
        if add == (member_id in members):
            code = f"{kind}_already_added" if add else f"unknown_{kind}"
            raise DomainError(code, f"{kind} {member_id} is {'already' if add else 'not'} in this analysis")
        changed = [*members, member_id] if add else [m for m in members if m != member_id]
        if kind == "catalog":
            self.trigger_event(self.CatalogsChanged, timestamp=at, catalogs=changed)
        else:
            self.trigger_event(self.DatasourcesChanged, timestamp=at, datasources=changed)

    def set_calculation(self, *, by: str, calculation: dict[str, Any], create: bool, at: datetime) -> None:
        self._require_draft(by)
        exists = calculation["id"] in self.calculations
        if create and exists:
            raise DomainError("calculation_exists", f"calculation {calculation['id']} already exists")
        if not create and not exists:
            raise DomainError("unknown_calculation", f"this analysis has no calculation {calculation['id']}")
        self.trigger_event(self.CalculationSet, timestamp=at, calculation=calculation)

    def delete_calculation(self, *, by: str, calculation_id: str, at: datetime) -> None:
        self._require_draft(by)
        if calculation_id not in self.calculations:
            raise DomainError("unknown_calculation", f"this analysis has no calculation {calculation_id}")
        self.trigger_event(self.CalculationDeleted, timestamp=at, calculation_id=calculation_id)

    def send(self, *, by: str, nodes: list[str], at: datetime) -> None:
        self._require_draft(by)
        if not self.calculations:
            raise DomainError("no_calculations", "an analysis is sent with at least one calculation")
        if self.merge is None:
            raise DomainError("no_merge", "set the merge specification before sending")
        self.trigger_event(self.Sent, timestamp=at, nodes=nodes)

    def queue(self, *, by: str, at: datetime) -> None:
        self._require_analyst(by)
        if self.status is AnalysisStatus.SENT:
            missing = [n for n in self.nodes if not self.approvals.get(n)]
            raise DomainError("approvals_missing", f"not yet approved by {', '.join(missing)}")
        self._require_status(AnalysisStatus.APPROVED, code="not_approved")
        tasks: list[dict[str, Any]] = [{"task_id": MERGE_TASK, "stage": "merge", "calculation_id": None}]
        for number, calculation_id in enumerate(sorted(self.calculations), start=MERGE_TASK + 1):
            tasks.append({"task_id": number, "stage": "compute", "calculation_id": calculation_id})
        self.trigger_event(self.Queued, timestamp=at, tasks=tasks, status=AnalysisStatus.QUEUED.value)

    def request_access(self, *, by: str, recipient_jwk: dict[str, str], at: datetime) -> None:
        self._require_analyst(by)
        self._require_status(
            AnalysisStatus.RESULTS_APPROVED, AnalysisStatus.RELEASED, code="results_not_approved"
        )
        self.trigger_event(
            self.AccessRequested,
            timestamp=at,
            by=by,
            recipient_jwk=recipient_jwk,
            status=AnalysisStatus.RELEASED.value,
        )

    # --- the nodes' moves ----------------------------------------------------------

    def approve(self, *, node: str, approve: bool, reason: str, at: datetime) -> None:
        self._require_node(node)
        self._require_status(AnalysisStatus.SENT, code="not_awaiting_approval")
        if node in self.approvals:
            raise DomainError("already_approved", f"{node} already answered for this analysis")
        answered = {**self.approvals, node: approve}
        status = AnalysisStatus.REJECTED if not approve else AnalysisStatus.SENT
        if approve and all(answered.get(n) for n in self.nodes):
            status = AnalysisStatus.APPROVED
        self.trigger_event(
            self.Approved, timestamp=at, node=node, approve=approve, reason=reason, status=status.value
        )

    def _require_task(self, node: str, task_id: int) -> None:
        self._require_node(node)
        self._require_status(AnalysisStatus.QUEUED, AnalysisStatus.COMPUTING, code="not_computing")
        if task_id not in self.tasks:
            raise DomainError("unknown_task", f"this analysis has tasks 1..{len(self.tasks)}, not {task_id}")

    def claim_task(self, *, node: str, task_id: int, at: datetime) -> None:
        self._require_task(node, task_id)
        if (node, task_id) in self.claims:
            raise DomainError("task_already_claimed", f"{node} already claimed task {task_id}")
        if task_id != MERGE_TASK and (node, MERGE_TASK) not in self.finished:
            raise DomainError("merge_first", "a node finishes the merge task before computing")
        self.trigger_event(
            self.TaskClaimed, timestamp=at, node=node, task_id=task_id, status=AnalysisStatus.COMPUTING.value
        )

    def finish_task(self, *, node: str, task_id: int, commitment: str, at: datetime) -> None:
        self._require_task(node, task_id)
        if (node, task_id) not in self.claims:
            raise DomainError("task_not_claimed", f"{node} has not claimed task {task_id}")
        if (node, task_id) in self.finished:
            raise DomainError("task_already_finished", f"{node} already finished task {task_id}")
        finished = {*self.finished, (node, task_id)}
        done = all((n, t) in finished for n in self.nodes for t in self.tasks)
        status = AnalysisStatus.COMPUTED if done else AnalysisStatus.COMPUTING
        self.trigger_event(
            self.TaskFinished,
            timestamp=at,
            node=node,
            task_id=task_id,
            commitment=commitment,
            status=status.value,
        )

    def fail_task(self, *, node: str, task_id: int, reason: str, at: datetime) -> None:
        self._require_task(node, task_id)
        if (node, task_id) in self.finished:
            raise DomainError("task_already_finished", f"{node} already finished task {task_id}")
        self.trigger_event(
            self.TaskFailed,
            timestamp=at,
            node=node,
            task_id=task_id,
            reason=reason,
            status=AnalysisStatus.FAILED.value,
        )

    def approve_results(self, *, node: str, approve: bool, reason: str, at: datetime) -> None:
        self._require_node(node)
        self._require_status(AnalysisStatus.COMPUTED, code="results_not_ready")
        if node in self.results_approvals:
            raise DomainError("already_approved", f"{node} already answered for these results")
        answered = {**self.results_approvals, node: approve}
        status = AnalysisStatus.RESULTS_REJECTED if not approve else AnalysisStatus.COMPUTED
        if approve and all(answered.get(n) for n in self.nodes):
            status = AnalysisStatus.RESULTS_APPROVED
        self.trigger_event(
            self.ResultsApproved, timestamp=at, node=node, approve=approve, reason=reason, status=status.value
        )
