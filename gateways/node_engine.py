"""The computation node's engine (inside ``dfg node serve``): takes tasks from the
node's own queue projection, runs them with the other nodes, and signs every step.

For each queued task of an analysis it runs on, in queue order:

1. sign ``task.claim``;
2. merge (task 1): open this node's share bundles after checking each against the
   provider's commitment on the ledger, keep the subjects whose consent the node's own
   replica finds valid now, and agree on the rows with the other nodes
   (``mpc.engine``); compute (tasks 2..): the task's calculation on the merged table,
   keeping the aggregates shared;
3. sign ``task.finish`` with the SHA-256 of its output shares -- or ``task.fail`` with
   the reason when anything goes wrong (a time-out, a commitment mismatch, an
   inconsistent opening). A node that finds a task it had claimed but not finished
   (it crashed mid-task) fails it: the others have moved on or timed out.

When an analysis is computed, the node answers for its results under its
organisation's policy: with ``approval: automatic`` it approves them only if no
function was suppressed for aggregating fewer than k records, and declines them
otherwise (the reason names the functions, never a count); with ``manual`` a person
answers through GraphQL. Result shares are kept on disk and sealed to the analyst's
key when the analyst shows a recorded access request (``result`` query).

Nothing here logs a count or a value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from domain.calculations import CalculationError, check_calculation
from domain.field_capacity import variable_magnitude
from gateways.sdk import ConsentClient, DfgApiError, TransactionBuilder
from infra.node import NodeReplica
from infra.share_bundles import find_bundle
from mpc.bundles import BundleError, ShareBundle, open_sealed
from mpc.engine import Column, EngineError, agree_on_rows, check_bundles, eligible_rows, shared_table
from mpc.field import FieldCapacity, FieldError, FixedPoint, PrimeField, Range
from mpc.protocols import ProtocolError
from mpc.results import ResultShares, seal_result
from mpc.runtime import Party, ProtocolTimeout
from mpc.sealing import x25519_jwk
from mpc.shamir import Scheme, SharingError
from mpc.statistics import Ranges, SharedTable, aggregate
from mpc.transport import Mesh, TransportError
from mpc.vectors import VectorOps
from projections import analyses as views
from projections import consent_state, keys

log = logging.getLogger("dfg.node.engine")

MERGE_TASK = 1
#: The policy of a node organisation that has not set one (node.set_policy's defaults).
DEFAULT_POLICY: dict[str, Any] = {"min_cell": 10, "release_extremes": False, "approval": "manual"}
_FAILURES = (
    EngineError, ProtocolTimeout, ProtocolError, TransportError, BundleError, CalculationError, FieldError,
    SharingError,  # e.g. an analysis sent to two nodes: no honest majority
)  # fmt: skip


@dataclass
class EngineSettings:
    name: str  # this node's principal id
    signer: TransactionBuilder
    encryption_key: X25519PrivateKey
    data_dir: Path
    poll_s: float = 0.5
    stale_after: timedelta = timedelta(minutes=30)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @property
    def bundles(self) -> Path:
        return self.data_dir / "bundles"

    @property
    def work(self) -> Path:
        return self.data_dir / "work"


class NodeEngine:
    def __init__(
        self, settings: EngineSettings, node: NodeReplica, mesh: Mesh, client: ConsentClient
    ) -> None:
        self.settings = settings
        self.node = node
        self.mesh = mesh
        self.client = client
        self._done: set[tuple[str, int]] = set()  # tasks this process finished or failed
        self._answered: set[str] = set()  # analyses whose results this process answered
        self._tables: dict[str, SharedTable] = {}
        #: (type, body, token) the ledger may not have received
        self._unsent: list[tuple[str, dict[str, Any], str]] = []

    @property
    def name(self) -> str:
        return self.settings.name

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("node engine of %s running", self.name)
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:  # keep serving; the next poll tries again
                log.exception("node engine step failed")
                busy = False
            if not busy:
                stop.wait(self.settings.poll_s)

    def step(self) -> bool:
        """Work on the first task that can run now, or answer for computed results."""
        if not self._resubmitted():
            return False  # the ledger is still out of reach: the next task would fail
        now = self.settings.clock()
        with self.node.views.transaction(commit=False) as cursor:
            queue = views.node_queue(cursor, self.name, now=now, stale_after=self.settings.stale_after)
            inbox = views.results_inbox(cursor, self.name)
            statuses = {
                q.analysis_id: (views.document(cursor, "Analysis", q.analysis_id) or {}) for q in queue
            }
        # what left the replica's queue and inbox is settled there: forget it, or a node
        # that runs for months keeps every task it ever ran
        self._done &= {(q.analysis_id, q.task_id) for q in queue}
        self._answered &= set(inbox)
        # a failed analysis's later tasks stay queued for ever: only a computing one waits
        active = {a for a, doc in statuses.items() if doc.get("status") in ("queued", "computing")}
        for analysis_id in [a for a in self._tables if a not in active]:
            del self._tables[analysis_id]  # its tasks are done, or it failed: free the merged table
        for task in queue:
            key = (task.analysis_id, task.task_id)
            if key in self._done:
                continue
            if task.analysis_id not in active:  # it will never run here: a round a peer
                self._done.add(key)  # already sent for it must not keep its inbox open
                self.mesh.forget(f"{task.analysis_id}/{task.task_id}")
                continue
            if task.state == "claimed":  # claimed before this process started: it crashed mid-task
                self._fail(task.analysis_id, task.task_id, "the node restarted during the task")
                return True
            self._run_task(task.analysis_id, task.task_id, task.stage, task.calculation_id)
            return True
        for analysis_id in inbox:
            if analysis_id not in self._answered:
                self._answer_results(analysis_id)
                return True
        return False

    # --- one task --------------------------------------------------------------------------

    def _run_task(self, analysis_id: str, task_id: int, stage: str, calculation_id: str | None) -> None:
        claim = {"analysis_id": analysis_id, "task_id": task_id}
        refusal = self._refusal("task.claim", claim, expected=("not_computing",))
        if refusal is not None and refusal.code == "not_computing":
            # another node failed the analysis before this one claimed its task (the
            # replica had not caught up): nothing to run, nor to fail -- but a peer that
            # claimed first may have sent its round: the session is over here
            self._done.add((analysis_id, task_id))
            self.mesh.forget(f"{analysis_id}/{task_id}")
            log.info(
                "%s: task %d of analysis %s not started: the analysis stopped computing before"
                " this node claimed it (%s)",
                self.name,
                task_id,
                analysis_id,
                refusal,
            )
            return
        if refusal is not None:
            self._fail(analysis_id, task_id, f"the claim was refused: {refusal}")
            return
        log.info("%s: task %d (%s) of analysis %s claimed", self.name, task_id, stage, analysis_id)
        plan: Plan | None = None
        try:
            plan = self._plan(analysis_id)
            if stage == "merge":
                commitment = self._merge(plan, task_id)
            else:
                commitment = self._compute(plan, task_id, calculation_id or "")
        except _FAILURES as exc:
            nodes = plan.nodes if plan else []
            self._give_up(analysis_id, task_id, self._failure_reason(exc, nodes), nodes)
            return
        except Exception as exc:  # a bug must fail the task cleanly, not leave it claimed
            log.exception("%s: task %d of analysis %s crashed", self.name, task_id, analysis_id)
            reason = f"internal error: {type(exc).__name__}"
            self._give_up(analysis_id, task_id, reason, plan.nodes if plan else [])
            return
        finally:
            self.mesh.forget(f"{analysis_id}/{task_id}")
        self._done.add((analysis_id, task_id))
        body = {"analysis_id": analysis_id, "task_id": task_id, "commitment": commitment}
        self._submit("task.finish", body)
        log.info("%s: task %d of analysis %s finished", self.name, task_id, analysis_id)

    def _failure_reason(self, exc: Exception, nodes: list[str]) -> str:
        """What the task.fail says: a node being stopped breaks its own connections, and
        must not blame the peer it happened to be talking to ("cannot reach node:b")."""
        if self.mesh.closed:
            return f"{self.name} was stopped during the task"
        return _name_parties(str(exc), nodes)

    def _give_up(self, analysis_id: str, task_id: int, reason: str, nodes: list[str]) -> None:
        """Fail the task on the ledger first (so that the root cause is what the analysis
        records), then tell the other nodes, which stop waiting for this one instead of
        timing out (and holding up their next task)."""
        self._fail(analysis_id, task_id, reason)
        self.mesh.give_up(f"{analysis_id}/{task_id}", nodes, reason)

    def _fail(self, analysis_id: str, task_id: int, reason: str) -> None:
        """Also ends the session here, so that rounds peers still send are dropped."""
        self._done.add((analysis_id, task_id))
        self.mesh.forget(f"{analysis_id}/{task_id}")
        log.warning("%s: task %d of analysis %s failed: %s", self.name, task_id, analysis_id, reason)
        self._submit("task.fail", {"analysis_id": analysis_id, "task_id": task_id, "reason": reason[:500]})

    def _submit(self, tx_type: str, body: dict[str, Any]) -> bool:
        """Sign and submit; a refusal is logged and reported (False), never raised. A
        submission the ledger may not have received (no answer, or 408/502/503/504) is kept
        and resubmitted before any other work: a lost task.finish, task.fail or
        results.approve would leave the analysis waiting until this node restarted."""
        return self._refusal(tx_type, body, keep=True) is None

    def _refusal(
        self, tx_type: str, body: dict[str, Any], *, expected: tuple[str, ...] = (), keep: bool = False
    ) -> DfgApiError | None:
        """Sign and submit; the ledger's refusal is returned, never raised, and logged
        as a warning unless its code is one of ``expected`` (the caller says why)."""
        for attempt in (1, 2):
            token = self.settings.signer.sign(tx_type, body)
            try:
                self.client.submit(token)
                return None
            except DfgApiError as exc:
                if exc.code.startswith("nonce") and attempt == 1:
                    continue  # another process of this organisation signed in between: sign again
                if keep and exc.retryable:
                    log.warning("%s: %s not submitted, will submit it again: %s", self.name, tx_type, exc)
                    self._unsent.append((tx_type, body, token))
                    return exc
                if exc.code not in expected:
                    log.warning("%s: %s refused: %s", self.name, tx_type, exc)
                return exc
        raise AssertionError("unreachable: the second attempt returns")

    def _resubmitted(self) -> bool:
        """Submit the kept tokens again, in order and unchanged (the ledger answers one it
        had recorded as a duplicate, even expired); False while the ledger is still out of
        reach. One refused as expired (a token is valid for minutes, an outage may last
        longer) or for its nonce (another process of this organisation signed since) was
        never recorded: it is signed again, once (a clock far behind the ledger's would
        sign expired tokens for ever)."""
        signed_again: set[str] = set()
        while self._unsent:
            tx_type, body, token = self._unsent[0]
            try:
                self.client.submit(token)
                log.info("%s: %s submitted again", self.name, tx_type)
            except DfgApiError as exc:
                if exc.retryable:
                    return False
                stale = exc.code == "expired" or exc.code.startswith("nonce")
                if stale and token not in signed_again:
                    token = self.settings.signer.sign(tx_type, body)
                    signed_again.add(token)
                    self._unsent[0] = (tx_type, body, token)
                    continue
                log.warning("%s: %s refused: %s", self.name, tx_type, exc)
            self._unsent.pop(0)
        return True

    # --- what the ledger says about an analysis ------------------------------------------------

    def _plan(self, analysis_id: str) -> Plan:
        with self.node.views.transaction(commit=False) as cursor:
            doc = views.document(cursor, "Analysis", analysis_id)
            if doc is None:
                raise EngineError(f"this node's replica has no analysis {analysis_id}")
            view = views.document(cursor, "DataView", doc["data_view_id"]) or {}
            sources = {
                v["datasource_id"]: views.document(cursor, "Datasource", v["datasource_id"]) or {}
                for v in view.get("variables", [])
            }
            policies = []
            for node in doc["nodes"]:
                found = keys.principal(cursor, node) or {}
                policies.append({**DEFAULT_POLICY, **(found.get("policy") or {})})
            consent = doc["consent"]
            consenting = consent_state.consenting_subject_set(
                cursor, doc["owner"], consent["purpose"], consent["data_categories"], self.settings.clock()
            )
        return Plan.of(self.name, doc, view, sources, policies, consenting)

    # --- merge ---------------------------------------------------------------------------------

    def _bundles(self, plan: Plan) -> dict[str, ShareBundle]:
        opened = {}
        for datasource_id, source in plan.sources.items():
            expected = (source.get("commitments") or {}).get(self.name)
            if expected is None:
                raise EngineError(f"datasource {datasource_id} has no shares committed for {self.name}")
            try:
                path = find_bundle(self.settings.bundles, datasource_id, expected)
            except ValueError as exc:
                raise EngineError(f"datasource {datasource_id}: {exc}") from exc
            if path is None:
                raise EngineError(
                    f"the share bundle of datasource {datasource_id} committed for {self.name}"
                    f" ({expected[:12]}...) was not delivered to it"
                )
            try:
                opened[datasource_id] = open_sealed(
                    path.read_bytes(), self.settings.encryption_key, expected_commitment=expected
                )
            except BundleError as exc:
                raise EngineError(f"datasource {datasource_id}: {exc}{self._key_mismatch()}") from exc
        check_bundles(opened, node=self.name, party=plan.party, modulus=plan.field.modulus)
        # the ledger checked the field against the rows uploaded when the analysis was sent
        # (10,000,000 before any upload); a provider may have uploaded more since
        rows = max((bundle.rows for bundle in opened.values()), default=0)
        try:
            FieldCapacity(plan.field, plan.fixed).check([Range(-m, m) for m in plan.magnitudes], rows)
        except FieldError as exc:
            raise EngineError(f"the datasources hold {rows:,} rows now: {exc}") from exc
        return opened

    def _key_mismatch(self) -> str:
        """Why no bundle opens when this node runs with another X25519 key than the one
        the ledger records for it (providers seal to the recorded one), or ""."""
        with self.node.views.transaction(commit=False) as cursor:
            recorded = ((keys.principal(cursor, self.name) or {}).get("encryption_key") or {}).get("x")
        mine = x25519_jwk(self.settings.encryption_key)["x"]
        if recorded is None or recorded == mine:
            return ""
        return (
            f"; the ledger records the encryption key x={recorded} for {self.name}, and this node runs"
            f" with x={mine} (--encryption-key): run it with the recorded key, or record this one"
            " (dfg node set-encryption-key) and have the providers upload again"
        )

    def _merge(self, plan: Plan, task_id: int) -> str:
        bundles = self._bundles(plan)
        party = self._party(plan, task_id)
        rows = agree_on_rows(party, eligible_rows(list(bundles.values()), plan.consenting))
        table = shared_table(bundles, plan.columns, rows, precision=plan.fixed.precision)
        self._tables[plan.analysis_id] = table
        self._write(plan.analysis_id, "rows.json", json.dumps(rows).encode())
        return _table_commitment(table, plan.field.vectors)

    def _table(self, plan: Plan) -> SharedTable:
        table = self._tables.get(plan.analysis_id)
        if table is None:  # restarted after the merge: rebuild from the bundles and the agreed rows
            saved = self.settings.work / plan.analysis_id / "rows.json"
            if not saved.exists():
                raise EngineError(f"{self.name} has lost the merged rows ({saved})")
            rows = json.loads(saved.read_bytes())
            table = shared_table(self._bundles(plan), plan.columns, rows, precision=plan.fixed.precision)
            self._tables[plan.analysis_id] = table
        return table

    # --- compute -------------------------------------------------------------------------------

    def _compute(self, plan: Plan, task_id: int, calculation_id: str) -> str:
        spec = plan.calculations.get(calculation_id)
        if spec is None:
            raise EngineError(f"the analysis has no calculation {calculation_id}")
        calculation = check_calculation(spec.get("filter") or None, spec["functions"], plan.ranges.low)
        table = self._table(plan)
        party = self._party(plan, task_id)
        outputs = aggregate(
            party, calculation, table, fixed=plan.fixed, ranges=plan.ranges,
            min_cell=plan.min_cell, release_extremes=plan.release_extremes,
        )  # fmt: skip
        result = ResultShares.of(
            analysis_id=plan.analysis_id, task_id=task_id, calculation_id=calculation_id, node=self.name,
            party=plan.party, parties=len(plan.nodes), modulus=plan.field.modulus,
            precision=plan.fixed.precision, outputs=outputs,
        )  # fmt: skip
        self._write(plan.analysis_id, f"result-{task_id}.json", result.plaintext())
        return result.commitment()

    def _party(self, plan: Plan, task_id: int) -> Party:
        endpoint = self.mesh.endpoint(f"{plan.analysis_id}/{task_id}", plan.nodes)
        return Party(plan.party, plan.scheme, endpoint)

    def _write(self, analysis_id: str, name: str, data: bytes) -> None:
        directory = self.settings.work / analysis_id
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        temporary = target.with_suffix(".partial")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    # --- results ------------------------------------------------------------------------------

    def _answer_results(self, analysis_id: str) -> None:
        self._answered.add(analysis_id)
        with self.node.views.transaction(commit=False) as cursor:
            policy = {**DEFAULT_POLICY, **((keys.principal(cursor, self.name) or {}).get("policy") or {})}
            calculations = (views.document(cursor, "Analysis", analysis_id) or {}).get("calculations") or []
        names = {c["id"]: c.get("name") or c["id"] for c in calculations}
        if policy["approval"] != "automatic":
            log.info("%s: results of analysis %s wait for a person's approval", self.name, analysis_id)
            return
        results = stored_results(self.settings.work, analysis_id)
        if not results:
            reason = "this node holds no result shares for the analysis"
            approve = False
        else:
            small = _below_minimum_cell_size(results, names)
            approve = not small
            reason = (
                "every released statistic aggregates at least the minimum cell size"
                if approve
                else f"below the minimum cell size: {small}"
            )
        if self._submit(  # a refusal (another node declined first) is logged as such
            "results.approve", {"analysis_id": analysis_id, "approve": approve, "reason": reason[:500]}
        ):
            log.info(
                "%s: results of analysis %s %s", self.name, analysis_id, "approved" if approve else "declined"
            )


def _range_of(variable: dict[str, Any]) -> tuple[Fraction, Fraction]:
    """The values a variable can take, as uploads encode them: booleans 0/1, categories
    their index, numbers their declared range."""
    if variable.get("type") == "boolean":
        return Fraction(0), Fraction(1)
    if variable.get("type") == "category":
        return Fraction(0), Fraction(max(len(variable.get("categories") or []) - 1, 0))
    if variable.get("min") is None or variable.get("max") is None:
        raise EngineError(f"variable {variable['alias']} has no declared range (min and max)")
    return Fraction(variable["min"]), Fraction(variable["max"])


def _name_parties(reason: str, nodes: list[str]) -> str:
    """Protocol errors number parties; a task.fail names the node organisations."""
    for number, node in enumerate(nodes, start=1):
        reason = reason.replace(f"party {number}'s", f"{node}'s").replace(f"party {number} ", f"{node} ")
    return reason


def _below_minimum_cell_size(results: list[ResultShares], names: dict[str, str]) -> str:
    """The suppressed functions by calculation ("Older: count(), mean(sbp)"), as several
    calculations may hold the same function; empty when none was suppressed."""
    parts = []
    for result in results:
        small = [o["function"] for o in result.outputs if (o.get("suppressed") or "").startswith("fewer")]
        if small:
            parts.append(f"{names.get(result.calculation_id, result.calculation_id)}: {', '.join(small)}")
    return "; ".join(parts)


def stored_results(work: Path, analysis_id: str) -> list[ResultShares]:
    directory = work / analysis_id
    if not directory.is_dir():
        return []
    return [ResultShares.from_plaintext(p.read_bytes()) for p in sorted(directory.glob("result-*.json"))]


def _table_commitment(table: SharedTable, ops: VectorOps) -> str:
    digest = hashlib.sha256()
    for name in sorted(table.columns):
        digest.update(name.encode() + b"\0" + ops.dumps(table.columns[name]) + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Plan:
    """An analysis as the node's replica describes it, ready to compute."""

    analysis_id: str
    nodes: list[str]  # party order: sorted principal ids
    party: int
    scheme: Scheme
    fixed: FixedPoint
    columns: list[Column]
    sources: dict[str, dict[str, Any]]
    ranges: Ranges
    calculations: dict[str, dict[str, Any]]
    consenting: frozenset[str]
    min_cell: int
    release_extremes: bool
    magnitudes: tuple[Decimal, ...] = ()  # the largest |value| of each view variable

    @property
    def field(self) -> PrimeField:
        return self.scheme.field

    @classmethod
    def of(
        cls,
        me: str,
        doc: dict[str, Any],
        view: dict[str, Any],
        sources: dict[str, dict[str, Any]],
        policies: list[dict[str, Any]],
        consenting: set[str],
    ) -> Plan:
        nodes = sorted(doc["nodes"])
        if me not in nodes:
            raise EngineError(f"{me} does not compute analysis {doc['analysis_id']}")
        field_ = PrimeField(int(doc["modulus"]))
        columns = []
        low: dict[str, Fraction] = {}
        high: dict[str, Fraction] = {}
        for variable in view.get("variables", []):  # each as the view copied it from its datasource
            alias = variable["alias"]
            columns.append(Column(alias, variable["datasource_id"], variable["name"]))
            low[alias], high[alias] = _range_of(variable)
        return cls(
            analysis_id=doc["analysis_id"],
            nodes=nodes,
            party=nodes.index(me) + 1,
            scheme=Scheme(field_, len(nodes), (len(nodes) - 1) // 2),
            fixed=FixedPoint(int(doc["fixed_point_precision"])),
            columns=columns,
            sources=sources,
            ranges=Ranges(low, high),
            calculations={c["id"]: c for c in doc["calculations"]},
            consenting=frozenset(consenting),
            min_cell=max(int(p["min_cell"]) for p in policies),
            release_extremes=all(bool(p["release_extremes"]) for p in policies),
            magnitudes=tuple(variable_magnitude(v) for v in view.get("variables", [])),
        )


def result_sealer(work: Path) -> Callable[[str, int, dict[str, str]], str | None]:
    """What the node's GraphQL ``result`` query hands an analyst with recorded access:
    the stored result shares of a task, sealed afresh to the analyst's X25519 key."""

    def sealed(analysis_id: str, task_id: int, recipient: dict[str, str]) -> str | None:
        path = work / analysis_id / f"result-{task_id}.json"
        if not path.exists() or recipient.get("crv") != "X25519" or "x" not in recipient:
            return None
        raw = base64.urlsafe_b64decode(recipient["x"] + "=" * (-len(recipient["x"]) % 4))
        result = ResultShares.from_plaintext(path.read_bytes())
        return base64.b64encode(seal_result(result, X25519PublicKey.from_public_bytes(raw))).decode()

    return sealed
