"""What a node's engine does when the ledger refuses its claim of a task. Another node
may fail the analysis (a tampered bundle, say) before this node's replica has learnt
of it: the claim is then refused as ``not_computing``, and there is nothing to run and
nothing to fail. Any other refusal is a failure of the task, with the ledger's reason."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateways.node_engine import EngineSettings, NodeEngine
from gateways.sdk import ConsentClient, DfgApiError, TransactionBuilder
from gateways.sdk.errors import DfgConnectionError
from infra.node import NodeReplica
from mpc.results import ResultShares
from mpc.statistics import SharedTable
from mpc.transport import Mesh

ANALYSIS = "5f0c2a52-9a3e-4a43-a3f4-cf3b1c4a0e11"


class _Signer:
    def sign(self, tx_type: str, body: dict[str, Any]) -> str:
        return f"{tx_type}:{body['task_id']}"


class _Ledger:
    """Refuses claims with ``code``; records what was submitted."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.submitted: list[str] = []

    def submit(self, token: str) -> None:
        self.submitted.append(token)
        if token.startswith("task.claim"):
            raise DfgApiError(409, self.code, "refused")


class _Mesh:
    def __init__(self, *, closed: bool = False) -> None:
        self.closed = closed  # this node is being stopped
        self.told: list[str] = []
        self.forgotten: set[str] = set()  # sessions over here

    def give_up(self, session: str, members: list[str], reason: str) -> None:
        self.told.append(reason)

    def forget(self, session: str) -> None:
        self.forgotten.add(session)


def _engine(ledger: _Ledger, tmp_path: Path) -> NodeEngine:
    settings = EngineSettings(
        name="node:a",
        signer=cast(TransactionBuilder, _Signer()),
        encryption_key=X25519PrivateKey.generate(),
        data_dir=tmp_path,
    )
    return NodeEngine(settings, cast(NodeReplica, None), cast(Mesh, _Mesh()), cast(ConsentClient, ledger))


def test_a_claim_refused_because_the_analysis_stopped_computing_starts_and_fails_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = _Ledger("not_computing")
    engine = _engine(ledger, tmp_path)
    with caplog.at_level(logging.INFO, logger="dfg.node.engine"):
        engine._run_task(ANALYSIS, 1, "merge", None)
    assert ledger.submitted == ["task.claim:1"]  # no task.fail, which the ledger would refuse too
    assert (ANALYSIS, 1) in engine._done
    assert cast(_Mesh, engine.mesh).forgotten == {f"{ANALYSIS}/1"}  # a peer's round for it is dropped
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert f"task 1 of analysis {ANALYSIS} not started: the analysis stopped computing" in record.getMessage()


def test_any_other_refused_claim_fails_the_task_with_the_ledgers_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = _Ledger("task_already_claimed")
    engine = _engine(ledger, tmp_path)
    with caplog.at_level(logging.INFO, logger="dfg.node.engine"):
        engine._run_task(ANALYSIS, 1, "merge", None)
    assert ledger.submitted == ["task.claim:1", "task.fail:1"]
    assert cast(_Mesh, engine.mesh).forgotten == {f"{ANALYSIS}/1"}
    (failed,) = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert failed.endswith(
        f"analysis {ANALYSIS} failed: the claim was refused: 409 task_already_claimed: refused"
    )


class _AcceptingLedger:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, token: str) -> None:
        self.submitted.append(token)


def test_a_node_stopped_mid_task_says_so_instead_of_blaming_a_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mpc.runtime import ProtocolTimeout

    ledger = _AcceptingLedger()
    engine = _engine(cast(_Ledger, ledger), tmp_path)
    mesh = _Mesh(closed=True)
    engine.mesh = cast(Mesh, mesh)

    def broken(analysis_id: str) -> None:  # what closing the mesh does to a running round
        raise ProtocolTimeout("cannot reach node:b: [Errno 9] Bad file descriptor")

    monkeypatch.setattr(engine, "_plan", broken)
    with caplog.at_level(logging.INFO, logger="dfg.node.engine"):
        engine._run_task(ANALYSIS, 2, "compute", "c1")
    assert ledger.submitted == ["task.claim:2", "task.fail:2"]
    assert mesh.told == ["node:a was stopped during the task"]
    (failed,) = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert failed.endswith("failed: node:a was stopped during the task")


class _Views:
    """A node's views, as far as answering for results reads them."""

    @contextmanager
    def transaction(self, commit: bool = False) -> Iterator[None]:
        yield None


def _result(task_id: int, calculation_id: str, functions: dict[str, str | None]) -> ResultShares:
    outputs = tuple({"function": f, "suppressed": why} for f, why in functions.items())
    return ResultShares(ANALYSIS, task_id, calculation_id, "node:a", 1, 3, 2**127 - 1, 16, outputs, ())


def test_a_decline_names_the_calculation_of_each_function_below_the_minimum_cell_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateways.node_engine as engine_module

    calculations = [{"id": "c1", "name": "All"}, {"id": "c2", "name": "Older"}]
    monkeypatch.setattr(engine_module.keys, "principal", lambda c, n: {"policy": {"approval": "automatic"}})
    monkeypatch.setattr(engine_module.views, "document", lambda c, k, i: {"calculations": calculations})
    results = [
        _result(2, "c1", {"count()": None, "min(age)": "the nodes' policies do not release min/max"}),
        _result(3, "c2", {"count()": "fewer than 10 records", "mean(sbp)": "fewer than 10 records"}),
    ]
    monkeypatch.setattr(engine_module, "stored_results", lambda work, analysis_id: results)
    submitted: list[dict[str, Any]] = []
    engine = _engine(_Ledger("unused"), tmp_path)
    engine.node = cast(NodeReplica, SimpleNamespace(views=_Views()))
    monkeypatch.setattr(engine, "_submit", lambda tx_type, body: submitted.append(body) or True)
    engine._answer_results(ANALYSIS)
    (body,) = submitted
    assert body["approve"] is False
    assert body["reason"] == "below the minimum cell size: Older: count(), mean(sbp)"


def test_an_analysis_of_two_nodes_fails_saying_it_has_no_honest_majority(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """analysis.send takes two nodes; sharing among two cannot keep a value secret."""
    from gateways.node_engine import Plan

    ledger = _AcceptingLedger()
    engine = _engine(cast(_Ledger, ledger), tmp_path)
    engine.mesh = cast(Mesh, _Mesh(closed=False))
    doc = {"analysis_id": ANALYSIS, "nodes": ["node:a", "node:b"], "modulus": str(2**127 - 1)}
    doc |= {"fixed_point_precision": 16, "calculations": []}
    monkeypatch.setattr(engine, "_plan", lambda analysis_id: Plan.of("node:a", doc, {}, {}, [], set()))
    with caplog.at_level(logging.INFO, logger="dfg.node.engine"):
        engine._run_task(ANALYSIS, 1, "merge", None)
    (failed,) = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert failed.endswith("failed: an honest majority needs 1 <= t < n/2 (n = 2, t = 0)")


def test_the_merged_table_of_an_analysis_that_failed_is_freed_though_its_later_tasks_stay_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed analysis's tasks after the failed one are never claimed: the node's queue
    lists them for ever, and the merged table was kept for ever with them."""
    import gateways.node_engine as engine_module
    from projections.analyses import QueuedTask

    later = QueuedTask(ANALYSIS, 3, "compute", "c2", "queued", None, False)
    monkeypatch.setattr(engine_module.views, "node_queue", lambda cursor, node, **_: [later])
    monkeypatch.setattr(engine_module.views, "results_inbox", lambda cursor, node: [])
    monkeypatch.setattr(engine_module.views, "document", lambda cursor, kind, i: {"status": "failed"})
    engine = _engine(_Ledger("unused"), tmp_path)
    engine.node = cast(NodeReplica, SimpleNamespace(views=_Views()))
    engine._tables[ANALYSIS] = cast(SharedTable, object())  # merged by task 1; task 2 failed
    assert engine.step() is False  # nothing to run
    assert ANALYSIS not in engine._tables
    # a peer may have sent its round of task 3 before it learnt of the failure: the
    # session's inbox here was kept for ever, and enough of them refused every session
    assert cast(_Mesh, engine.mesh).forgotten == {f"{ANALYSIS}/3"}


def test_tasks_and_answers_the_replica_no_longer_lists_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the engine remembers so as not to run a task or answer results twice is only
    needed until the replica shows them settled; it grew with every task ever run."""
    import gateways.node_engine as engine_module
    from projections.analyses import QueuedTask

    engine = _engine(_Ledger("unused"), tmp_path)
    engine.node = cast(NodeReplica, SimpleNamespace(views=_Views()))
    engine._done = {(ANALYSIS, 1), (ANALYSIS, 2)}
    engine._answered = {ANALYSIS, "an-analysis-approved-long-ago"}
    still_listed = QueuedTask(ANALYSIS, 2, "compute", "c1", "queued", None, False)
    monkeypatch.setattr(engine_module.views, "node_queue", lambda cursor, node, **_: [still_listed])
    monkeypatch.setattr(engine_module.views, "results_inbox", lambda cursor, node: [ANALYSIS])
    monkeypatch.setattr(engine_module.views, "document", lambda cursor, kind, i: {"status": "computing"})
    assert engine.step() is False  # task 2 finished here and the inbox's analysis answered
    assert engine._done == {(ANALYSIS, 2)}
    assert engine._answered == {ANALYSIS}


class _NumberingSigner:
    """Each signature a new token, as each carries a new nonce."""

    def __init__(self) -> None:
        self.signed = 0

    def sign(self, tx_type: str, body: dict[str, Any]) -> str:
        self.signed += 1
        return f"{tx_type}:{body['task_id']}#{self.signed}"


class _UnreachableLedger:
    """Answers nothing while ``down`` (the coordinator is restarting)."""

    def __init__(self) -> None:
        self.down = False
        self.submitted: list[str] = []

    def submit(self, token: str) -> None:
        self.submitted.append(token)
        if self.down:
            raise DfgConnectionError("POST /v1/transactions: [Errno 111] Connection refused")


def test_a_task_finish_the_ledger_did_not_answer_is_submitted_again_before_any_other_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was logged as refused and dropped: the node had finished its task, the ledger
    never heard of it, and the analysis stayed computing until the node restarted."""
    import gateways.node_engine as engine_module
    from projections.analyses import QueuedTask

    ledger = _UnreachableLedger()
    engine = _engine(cast(_Ledger, ledger), tmp_path)
    engine.settings.signer = cast(TransactionBuilder, _NumberingSigner())
    engine.node = cast(NodeReplica, SimpleNamespace(views=_Views()))
    monkeypatch.setattr(engine, "_plan", lambda analysis_id: SimpleNamespace(nodes=["node:a", "node:b"]))

    def merge(plan: object, task_id: int) -> str:  # the coordinator goes down during the task
        ledger.down = True
        return "c0ffee"

    monkeypatch.setattr(engine, "_merge", merge)
    engine._run_task(ANALYSIS, 1, "merge", None)
    assert ledger.submitted == ["task.claim:1#1", "task.finish:1#2"]

    next_task = QueuedTask(ANALYSIS, 2, "compute", "c1", "queued", None, False)
    monkeypatch.setattr(engine_module.views, "node_queue", lambda cursor, node, **_: [next_task])
    monkeypatch.setattr(engine_module.views, "results_inbox", lambda cursor, node: [])
    monkeypatch.setattr(engine_module.views, "document", lambda cursor, kind, i: {"status": "computing"})
    assert engine.step() is False  # still down: the next task waits
    assert ledger.submitted[2:] == ["task.finish:1#2"]  # the same token: a duplicate if it was recorded
    ledger.down = False
    monkeypatch.setattr(engine, "_compute", lambda plan, task_id, calculation_id: "beef")
    assert engine.step() is True
    assert ledger.submitted[3:] == ["task.finish:1#2", "task.claim:2#3", "task.finish:2#4"]


class _ExpiringLedger(_UnreachableLedger):
    """Back after longer than a token is valid: one it never recorded is refused as expired
    (one it recorded would be answered as a duplicate, expired or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.expired: set[str] = set()

    def submit(self, token: str) -> None:
        super().submit(token)
        if token in self.expired:
            raise DfgApiError(422, "expired", "valid_until has passed")


def test_a_kept_submission_that_expired_while_the_ledger_was_away_is_signed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token is valid for 5 minutes: after a longer outage, submitting the same one again
    was refused and the task.finish dropped, as before it was kept."""
    ledger = _ExpiringLedger()
    engine = _engine(cast(_Ledger, ledger), tmp_path)
    engine.settings.signer = cast(TransactionBuilder, _NumberingSigner())
    engine.node = cast(NodeReplica, SimpleNamespace(views=_Views()))
    monkeypatch.setattr(engine, "_plan", lambda analysis_id: SimpleNamespace(nodes=["node:a", "node:b"]))

    def merge(plan: object, task_id: int) -> str:
        ledger.down = True
        return "c0ffee"

    monkeypatch.setattr(engine, "_merge", merge)
    engine._run_task(ANALYSIS, 1, "merge", None)
    ledger.down, ledger.expired = False, {"task.finish:1#2"}
    assert engine._resubmitted() is True
    assert ledger.submitted[2:] == ["task.finish:1#2", "task.finish:1#3"]
    assert engine._unsent == []


def test_a_bundle_this_nodes_key_cannot_open_names_the_key_the_ledger_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node run with another --encryption-key than the one it recorded failed the merge
    with "cannot be opened with this key", which named neither key."""
    from infra.share_bundles import keep_bundle
    from mpc.bundles import ShareBundle, commitment, seal
    from mpc.engine import EngineError
    from mpc.sealing import x25519_jwk
    from projections import keys

    recorded = X25519PrivateKey.generate()  # what the ledger has, and providers seal to
    sealed = seal(ShareBundle("ds-1", "node:a", ("p-1",), {"x": [5]}), recorded.public_key())
    engine = _engine(_Ledger("none"), tmp_path)
    keep_bundle(engine.settings.bundles, "ds-1", sealed)

    @contextmanager
    def transaction(commit: bool = True) -> Iterator[None]:
        yield None

    node = SimpleNamespace(views=SimpleNamespace(transaction=transaction))
    engine.node = cast(NodeReplica, node)
    record = {"encryption_key": x25519_jwk(recorded)}
    monkeypatch.setattr(keys, "principal", lambda _cursor, name: record if name == "node:a" else None)
    plan = SimpleNamespace(sources={"ds-1": {"commitments": {"node:a": commitment(sealed)}}})
    with pytest.raises(EngineError) as failed:
        engine._bundles(cast(Any, plan))
    message = str(failed.value)
    assert message.startswith("datasource ds-1: the bundle cannot be opened by this node")
    mine = x25519_jwk(engine.settings.encryption_key)["x"]
    assert f"records the encryption key x={record['encryption_key']['x']} for node:a" in message
    assert f"runs with x={mine} (--encryption-key)" in message


def test_a_merge_over_more_rows_than_the_field_was_checked_for_fails_instead_of_computing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger checks an analysis' field against the rows uploaded when it is sent; a
    provider that uploads more rows afterwards was computed on with no check at all
    (mpc.field.FieldCapacity said the engine checked again; nothing called it)."""
    from gateways.node_engine import Plan
    from infra.share_bundles import keep_bundle
    from mpc.bundles import ShareBundle, commitment, seal
    from mpc.engine import EngineError
    from mpc.statistics import PRESENT

    rows = 10_000  # a variable up to 10^6 at 16 fractional bits: 8,191 rows fit GF(2^127 - 1)
    keys_ = tuple(f"p-{i}" for i in range(rows))
    bundle = ShareBundle("ds-1", "node:a", keys_, {"x": [5] * rows, "x" + PRESENT: [1] * rows})
    engine = _engine(cast(_Ledger, _AcceptingLedger()), tmp_path)
    sealed = seal(bundle, engine.settings.encryption_key.public_key())
    keep_bundle(engine.settings.bundles, "ds-1", sealed)
    doc = {"analysis_id": ANALYSIS, "nodes": ["node:a", "node:b", "node:c"], "modulus": str(2**127 - 1)}
    doc |= {"fixed_point_precision": 16, "calculations": []}
    view = {"variables": [{"alias": "x", "datasource_id": "ds-1", "name": "x", "type": "decimal"}]}
    view["variables"][0] |= {"min": "0", "max": "1000000"}
    sources = {"ds-1": {"commitments": {"node:a": commitment(sealed)}}}
    policy = {"min_cell": 10, "release_extremes": False}
    plan = Plan.of("node:a", doc, view, sources, [policy] * 3, set())
    with pytest.raises(EngineError) as failed:
        engine._bundles(plan)
    assert str(failed.value).startswith(
        "the datasources hold 10,000 rows now: the modulus (127 bits) is too small"
    )
