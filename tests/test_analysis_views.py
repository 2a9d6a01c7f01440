"""The analysis platform's read models: documents, approval inboxes, MPC task queues;
rebuilt from zero they say the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import Ledger
from test_analysis_lifecycle import Federation, _draft, _send, fed, ids, make_federation  # noqa: F401 - the fixture

from infra.bootstrap import open_views
from projections import analyses as views
from projections.base import catch_up, prepare, rebuild

NOW = datetime.now(UTC)


def _views(f: Federation) -> Any:
    db = open_views(f.ledger.settings)
    view = views.AnalysesView()
    prepare(db, view, f.ledger.sequencer.store.read_entries)
    catch_up(db, view, f.ledger.sequencer.store.read_entries)
    return db, view


def _snapshot(db: Any) -> list[Any]:
    rows = []
    with db.transaction(commit=False) as cursor:
        for table in ("platform_documents", "analysis_nodes", "mpc_tasks"):
            cursor.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
            rows.append(cursor.fetchall())
    return rows


def test_documents_inboxes_and_queues_follow_the_lifecycle(fed: Federation) -> None:  # noqa: F811
    f = fed
    analysis = _draft(f)
    db, view = _views(f)
    with db.transaction(commit=False) as c:
        doc = views.document(c, "Analysis", analysis)
        assert doc is not None and doc["status"] == "draft" and len(doc["calculations"]) == 3
        assert doc["merge"] == {"key": "subject", "join": "inner"}
        assert [d["name"] for d in views.documents(c, "Datasource")] == [
            "dp:meteda measurements",
            "dp:cardiolyse measurements",
        ]
        source = views.document(c, "Datasource", f.datasource_a)
        assert source is not None and {v["name"] for v in source["variables"]} == {"age", "hba1c"}
        assert (
            views.documents(c, "Analysis", owner="ao:lab", statuses=["draft"])[0]["analysis_id"] == analysis
        )
        assert views.documents(c, "Analysis", owner="ao:other") == []

    _send(f, analysis)
    f.do(f.nodes[0], "analysis.approve", {"analysis_id": analysis})
    catch_up(db, view, f.ledger.sequencer.store.read_entries)
    with db.transaction(commit=False) as c:
        assert views.approval_inbox(c, "node:n0") == []
        assert views.approval_inbox(c, "node:n1") == [analysis]
        assert views.approval_inbox(c, "node:other") == []

    for node in f.nodes[1:]:
        f.do(node, "analysis.approve", {"analysis_id": analysis})
    f.do(f.analyst, "analysis.queue", {"analysis_id": analysis})
    f.do(f.nodes[0], "task.claim", {"analysis_id": analysis, "task_id": 1})
    catch_up(db, view, f.ledger.sequencer.store.read_entries)
    with db.transaction(commit=False) as c:
        queue = views.node_queue(c, "node:n0", now=NOW, stale_after=timedelta(minutes=5))
        assert [(t.task_id, t.state, t.stale) for t in queue] == [
            (1, "claimed", False),
            (2, "queued", False),
            (3, "queued", False),
            (4, "queued", False),
        ]
        later = views.node_queue(c, "node:n0", now=NOW + timedelta(hours=1), stale_after=timedelta(minutes=5))
        assert later[0].stale  # claimed an hour ago and never finished: its node went silent
        assert len(views.node_queue(c, "node:n1", now=NOW, stale_after=timedelta(minutes=5))) == 4
        doc = views.document(c, "Analysis", analysis)
        assert doc is not None and doc["status"] == "computing"

    for node in f.nodes:
        for task in (1, 2, 3, 4):
            if (node, task) != (f.nodes[0], 1):
                f.do(node, "task.claim", {"analysis_id": analysis, "task_id": task})
            f.do(node, "task.finish", {"analysis_id": analysis, "task_id": task, "commitment": "ef" * 32})
    catch_up(db, view, f.ledger.sequencer.store.read_entries)
    with db.transaction(commit=False) as c:
        assert views.finished_tasks(c, analysis) == [1, 2, 3, 4]
        assert views.node_queue(c, "node:n2", now=NOW, stale_after=timedelta(minutes=5)) == []
        assert views.results_inbox(c, "node:n2") == [analysis]
        assert all(t["commitment"] == "ef" * 32 for t in views.analysis_tasks(c, analysis))

    before = _snapshot(db)
    rebuild(db, view, f.ledger.sequencer.store.read_entries)
    assert _snapshot(db) == before
    db.close()


def _queued(f: Federation) -> str:
    """An analysis every node approved and the analyst queued: its tasks wait to be claimed."""
    analysis = _draft(f)
    _send(f, analysis)
    for node in f.nodes:
        f.do(node, "analysis.approve", {"analysis_id": analysis})
    f.do(f.analyst, "analysis.queue", {"analysis_id": analysis})
    return analysis


def test_a_failed_analysis_leaves_no_task_in_any_nodes_queue(fed: Federation) -> None:  # noqa: F811
    """Its later tasks, and other nodes' claims under way, stayed in the queues for ever:
    every node's queue (GraphQL taskQueue, and what a node's engine reads at every step)
    listed work that can never run."""
    f = fed
    analysis = _queued(f)
    f.do(f.nodes[0], "task.claim", {"analysis_id": analysis, "task_id": 1})
    f.do(f.nodes[1], "task.claim", {"analysis_id": analysis, "task_id": 1})
    f.do(f.nodes[0], "task.fail", {"analysis_id": analysis, "task_id": 1, "reason": "a peer cheated"})
    # node:n1 claimed task 1 before the failure; the ledger takes no move of a failed
    # analysis, so its claim can be neither failed nor finished: it left no queue either
    # (it stayed there, "stale" after a while, as if node:n1 had gone silent)
    body = {"analysis_id": analysis, "task_id": 1}
    f.refused(f.nodes[1], "task.fail", {**body, "reason": "node:n0 gave up"}, "not_computing")
    f.refused(f.nodes[1], "task.finish", {**body, "commitment": "ef" * 32}, "not_computing")
    db, _ = _views(f)
    with db.transaction(commit=False) as c:
        for node in f.nodes:
            assert views.node_queue(c, node.principal, now=NOW, stale_after=timedelta(minutes=5)) == []
        states = {(t["task_id"], t["node"]): t["state"] for t in views.analysis_tasks(c, analysis)}
        assert states[(1, "node:n0")] == "failed" and states[(2, "node:n0")] == "cancelled"
        assert states[(1, "node:n1")] == "cancelled"
    db.close()


def test_names_and_reasons_with_a_nul_character_are_kept_on_every_engine(any_ledger: Ledger) -> None:
    """A catalog's name and a task's failure reason may hold U+0000, which PostgreSQL's text
    refuses: one such entry stopped the read models (and every later submission) there."""
    f = make_federation(any_ledger)
    catalog = ids()
    f.do(f.provider_a, "catalog.create", {"catalog_id": catalog, "name": "Nul\x00catalog"})
    analysis = _queued(f)
    f.do(f.nodes[0], "task.claim", {"analysis_id": analysis, "task_id": 1})
    f.do(f.nodes[0], "task.fail", {"analysis_id": analysis, "task_id": 1, "reason": "bad\x00share"})
    db, _ = _views(f)
    try:
        with db.transaction(commit=False) as c:
            doc = views.document(c, "Catalog", catalog)
            assert doc is not None and doc["name"] == "Nul\x00catalog"
            reasons = {(t["task_id"], t["node"]): t["reason"] for t in views.analysis_tasks(c, analysis)}
            assert reasons[(1, "node:n0")] == "bad\x00share" and reasons[(2, "node:n0")] is None
    finally:
        db.close()
