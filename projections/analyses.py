"""The analysis platform's read models: catalogs, datasources, data views and analyses as
documents; each node's approval inbox; each node's MPC task queue.

Documents are what the GraphQL views serve (one JSON document per object, with the
columns queries filter and sort on). Every event of these aggregates updates exactly
the rows it concerns, with the entry's sequence number and time, so the views can be
rebuilt from zero and give the same answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from domain.times import format_time
from ledger.entry import Entry
from projections.base import Cursor, read_text, stored_text

NAME = "analyses"
KINDS = ("Catalog", "Datasource", "DataView", "Analysis")


class AnalysesView:
    name = NAME
    tables = ("platform_documents", "analysis_nodes", "mpc_tasks")
    #: 2: the queued tasks of a failed analysis are ``cancelled`` (they stayed queued);
    #: 3: names and reasons are stored as JSON (``stored_text``: PostgreSQL refuses U+0000);
    #: 4: other nodes' claims under way are cancelled too when the analysis fails (they
    #: stayed claimed)
    version = 4

    def create(self, cursor: Cursor) -> None:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS platform_documents ("
            " kind TEXT NOT NULL, id TEXT NOT NULL, aggregate_id TEXT NOT NULL UNIQUE,"
            " owner TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL,"
            " created_seq INTEGER NOT NULL, created_ts TEXT NOT NULL,"
            " modified_seq INTEGER NOT NULL, modified_ts TEXT NOT NULL, PRIMARY KEY (kind, id))"
        )
        cursor.execute(
            "CREATE INDEX IF NOT EXISTS platform_documents_owner"
            " ON platform_documents (kind, owner, created_seq)"
        )
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS analysis_nodes ("
            " analysis_id TEXT NOT NULL, node TEXT NOT NULL, approval TEXT NOT NULL, results TEXT NOT NULL,"
            " PRIMARY KEY (analysis_id, node))"
        )
        cursor.execute("CREATE INDEX IF NOT EXISTS analysis_nodes_node ON analysis_nodes (node, approval)")
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS mpc_tasks ("
            " analysis_id TEXT NOT NULL, task_id INTEGER NOT NULL, node TEXT NOT NULL, stage TEXT NOT NULL,"
            " calculation_id TEXT, state TEXT NOT NULL, queued_seq INTEGER NOT NULL, claimed_ts TEXT,"
            " finished_ts TEXT, commitment TEXT, reason TEXT, PRIMARY KEY (analysis_id, task_id, node))"
        )
        cursor.execute("CREATE INDEX IF NOT EXISTS mpc_tasks_node ON mpc_tasks (node, state, queued_seq)")

    # --- applying entries ------------------------------------------------------------

    def apply(self, cursor: Cursor, entries: Sequence[Entry]) -> None:
        for entry in entries:
            kind, _, event = entry.event_type.partition(".")
            if kind in KINDS:
                getattr(self, f"_{kind.lower()}")(cursor, entry, event, entry.data)

    def _insert(self, cursor: Cursor, entry: Entry, kind: str, entity_id: str, doc: dict[str, Any]) -> None:
        ts = format_time(entry.ts)
        doc.update({"created_ts": ts, "modified_ts": ts, "created_seq": entry.seq, "modified_seq": entry.seq})
        cursor.execute(
            "INSERT INTO platform_documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, entity_id, str(entry.aggregate_id), doc["owner"], stored_text(doc["name"]),
             doc.get("status", ""), json.dumps(doc), entry.seq, ts, entry.seq, ts),
        )  # fmt: skip

    def _save(self, cursor: Cursor, entry: Entry, kind: str, entity_id: str, doc: dict[str, Any]) -> None:
        ts = format_time(entry.ts)
        doc.update({"modified_ts": ts, "modified_seq": entry.seq})
        cursor.execute(
            "UPDATE platform_documents SET name = ?, status = ?, doc = ?, modified_seq = ?, modified_ts = ?"
            " WHERE kind = ? AND id = ?",
            (stored_text(doc["name"]), doc.get("status", ""), json.dumps(doc), entry.seq, ts,
             kind, entity_id),
        )  # fmt: skip

    def _catalog(self, cursor: Cursor, entry: Entry, event: str, data: dict[str, Any]) -> None:
        if event == "Created":
            doc = {k: data[k] for k in ("catalog_id", "owner", "name", "description")}
            self._insert(cursor, entry, "Catalog", data["catalog_id"], doc)
            return
        doc = self._doc_by_aggregate(cursor, "Catalog", entry)
        doc.update(data["changes"])
        self._save(cursor, entry, "Catalog", doc["catalog_id"], doc)

    def _datasource(self, cursor: Cursor, entry: Entry, event: str, data: dict[str, Any]) -> None:
        if event == "Created":
            doc = {**data, "variables": [], "commitments": {}, "records": None, "fixed_point_precision": None}
            self._insert(cursor, entry, "Datasource", data["datasource_id"], doc)
            return
        doc = self._doc_by_aggregate(cursor, "Datasource", entry)
        if event == "Updated":
            doc.update(data["changes"])
        elif event == "VariableSet":
            others = [v for v in doc["variables"] if v["name"] != data["variable"]["name"]]
            doc["variables"] = [*others, data["variable"]]
        elif event == "SharesCommitted":
            doc.update(
                commitments=data["commitments"],
                records=data["records"],
                fixed_point_precision=data["fixed_point_precision"],
            )
        self._save(cursor, entry, "Datasource", doc["datasource_id"], doc)

    def _dataview(self, cursor: Cursor, entry: Entry, event: str, data: dict[str, Any]) -> None:
        if event == "Created":
            doc = {**data, "sent": False, "status": "draft"}
            self._insert(cursor, entry, "DataView", data["data_view_id"], doc)
            return
        doc = self._doc_by_aggregate(cursor, "DataView", entry)
        doc.update(sent=True, status="sent")
        self._save(cursor, entry, "DataView", doc["data_view_id"], doc)

    def _analysis(self, cursor: Cursor, entry: Entry, event: str, data: dict[str, Any]) -> None:
        if event == "Created":
            doc = {
                **data,
                "status": "draft",
                "nodes": [],
                "approvals": {},
                "results_approvals": {},
                "tasks": [],
                "binders": [],
                "failure": None,
            }
            self._insert(cursor, entry, "Analysis", data["analysis_id"], doc)
            return
        doc = self._doc_by_aggregate(cursor, "Analysis", entry)
        analysis_id = doc["analysis_id"]
        if "status" in data:
            doc["status"] = data["status"]
        if event == "Updated":
            doc.update(data["changes"])
        elif event == "Deleted":
            doc["status"] = "deleted"
        elif event == "MergeSet":
            doc["merge"] = data["merge"]
        elif event in ("CatalogsChanged", "DatasourcesChanged"):
            doc.update({k: v for k, v in data.items() if k in ("catalogs", "datasources")})
        elif event == "CalculationSet":
            others = [c for c in doc["calculations"] if c["id"] != data["calculation"]["id"]]
            doc["calculations"] = [*others, data["calculation"]]
        elif event == "CalculationDeleted":
            doc["calculations"] = [c for c in doc["calculations"] if c["id"] != data["calculation_id"]]
        elif event == "Sent":
            doc["nodes"] = data["nodes"]
            doc["status"] = "sent"
            cursor.executemany(
                "INSERT INTO analysis_nodes VALUES (?, ?, 'pending', 'pending')",
                [(analysis_id, node) for node in data["nodes"]],
            )
        elif event == "Approved":
            answer = "approved" if data["approve"] else "declined"
            doc["approvals"][data["node"]] = {"state": answer, "reason": data["reason"], "seq": entry.seq}
            cursor.execute(
                "UPDATE analysis_nodes SET approval = ? WHERE analysis_id = ? AND node = ?",
                (answer, analysis_id, data["node"]),
            )
        elif event == "Queued":
            doc["tasks"] = data["tasks"]
            cursor.executemany(
                "INSERT INTO mpc_tasks (analysis_id, task_id, node, stage, calculation_id, state, queued_seq)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                [
                    (analysis_id, t["task_id"], node, t["stage"], t["calculation_id"], entry.seq)
                    for node in doc["nodes"]
                    for t in data["tasks"]
                ],
            )
        elif event in ("TaskClaimed", "TaskFinished", "TaskFailed"):
            self._task(cursor, entry, event, analysis_id, data)
            if event == "TaskFailed":
                doc["failure"] = {"node": data["node"], "task_id": data["task_id"], "reason": data["reason"]}
        elif event == "ResultsApproved":
            answer = "approved" if data["approve"] else "declined"
            doc["results_approvals"][data["node"]] = {
                "state": answer,
                "reason": data["reason"],
                "seq": entry.seq,
            }
            cursor.execute(
                "UPDATE analysis_nodes SET results = ? WHERE analysis_id = ? AND node = ?",
                (answer, analysis_id, data["node"]),
            )
        elif event == "AccessRequested":
            doc["binders"].append(
                {"by": data["by"], "recipient_jwk": data["recipient_jwk"], "seq": entry.seq}
            )
        self._save(cursor, entry, "Analysis", analysis_id, doc)

    def _task(self, cursor: Cursor, entry: Entry, event: str, analysis_id: str, data: dict[str, Any]) -> None:
        key = (analysis_id, data["task_id"], data["node"])
        ts = format_time(entry.ts)
        if event == "TaskClaimed":
            statement = "UPDATE mpc_tasks SET state = 'claimed', claimed_ts = ?"
            params: tuple[Any, ...] = (ts,)
        elif event == "TaskFinished":
            statement = "UPDATE mpc_tasks SET state = 'finished', finished_ts = ?, commitment = ?"
            params = (ts, data["commitment"])
        else:
            statement = "UPDATE mpc_tasks SET state = 'failed', finished_ts = ?, reason = ?"
            params = (ts, stored_text(data["reason"]))
        cursor.execute(statement + " WHERE analysis_id = ? AND task_id = ? AND node = ?", (*params, *key))
        if event == "TaskFailed":  # the analysis failed: the ledger takes no claim, finish or fail now
            cursor.execute(
                "UPDATE mpc_tasks SET state = 'cancelled'"
                " WHERE analysis_id = ? AND state IN ('queued', 'claimed')",
                (analysis_id,),
            )

    def _doc_by_aggregate(self, cursor: Cursor, kind: str, entry: Entry) -> dict[str, Any]:
        """The document of the aggregate an event belongs to."""
        cursor.execute(
            "SELECT doc FROM platform_documents WHERE kind = ? AND aggregate_id = ?",
            (kind, str(entry.aggregate_id)),
        )
        row = cursor.fetchone()
        if row is None:  # pragma: no cover - the ledger never has an event before its creation
            raise LookupError(f"no {kind} for aggregate {entry.aggregate_id}")
        document: dict[str, Any] = json.loads(row[0])
        return document


# --- queries ------------------------------------------------------------------------------------


def document(cursor: Cursor, kind: str, entity_id: str) -> dict[str, Any] | None:
    cursor.execute("SELECT doc FROM platform_documents WHERE kind = ? AND id = ?", (kind, entity_id))
    row = cursor.fetchone()
    return None if row is None else dict(json.loads(row[0]))


def documents(
    cursor: Cursor,
    kind: str,
    *,
    owner: str | None = None,
    statuses: Sequence[str] = (),
    after_seq: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Documents of a kind in creation order (``after_seq`` is the cursor)."""
    where, params = _owner_and_statuses(owner, statuses)
    sql = f"SELECT doc FROM platform_documents WHERE kind = ? AND created_seq > ?{where}"
    cursor.execute(sql + " ORDER BY created_seq LIMIT ?", (kind, after_seq, *params, limit))
    return [dict(json.loads(r[0])) for r in cursor.fetchall()]


def _owner_and_statuses(owner: str | None, statuses: Sequence[str]) -> tuple[str, list[Any]]:
    """The SQL conditions (each after an AND) and parameters of a listing's filters, one
    wording for a page of documents and for the count of every page."""
    sql, params = "", []
    if owner is not None:
        sql += " AND owner = ?"
        params.append(owner)
    if statuses:
        sql += f" AND status IN ({', '.join('?' * len(statuses))})"
        params.extend(statuses)
    return sql, params


def count_analyses(
    cursor: Cursor, *, owner: str | None = None, statuses: Sequence[str] = (), node: str | None = None
) -> int:
    """How many analyses the filters select on every page (a connection's totalCount)."""
    where, params = _owner_and_statuses(owner, statuses)
    sql = f"SELECT COUNT(*) FROM platform_documents d WHERE d.kind = 'Analysis'{where}"
    if node is not None:
        sql += " AND EXISTS (SELECT 1 FROM analysis_nodes n WHERE n.analysis_id = d.id AND n.node = ?)"
        params.append(node)
    cursor.execute(sql, params)
    return int(cursor.fetchone()[0])


def approval_inbox(cursor: Cursor, node: str) -> list[str]:
    """Analyses waiting for ``node``'s approval, oldest first."""
    cursor.execute(
        "SELECT n.analysis_id FROM analysis_nodes n JOIN platform_documents d"
        " ON d.kind = 'Analysis' AND d.id = n.analysis_id"
        " WHERE n.node = ? AND n.approval = 'pending' AND d.status = 'sent' ORDER BY d.modified_seq",
        (node,),
    )
    return [r[0] for r in cursor.fetchall()]


def results_inbox(cursor: Cursor, node: str) -> list[str]:
    """Computed analyses whose results wait for ``node``'s approval."""
    cursor.execute(
        "SELECT n.analysis_id FROM analysis_nodes n JOIN platform_documents d"
        " ON d.kind = 'Analysis' AND d.id = n.analysis_id"
        " WHERE n.node = ? AND n.results = 'pending' AND d.status = 'computed' ORDER BY d.modified_seq",
        (node,),
    )
    return [r[0] for r in cursor.fetchall()]


@dataclass(frozen=True)
class QueuedTask:
    analysis_id: str
    task_id: int
    stage: str
    calculation_id: str | None
    state: str
    claimed_ts: str | None
    stale: bool


def node_queue(cursor: Cursor, node: str, *, now: datetime, stale_after: timedelta) -> list[QueuedTask]:
    """``node``'s unfinished tasks in queue order; a claimed task older than
    ``stale_after`` is stale (its node went silent)."""
    cursor.execute(
        "SELECT analysis_id, task_id, stage, calculation_id, state, claimed_ts FROM mpc_tasks"
        " WHERE node = ? AND state IN ('queued', 'claimed') ORDER BY queued_seq, analysis_id, task_id",
        (node,),
    )
    limit = now - stale_after
    return [
        QueuedTask(
            r[0],
            int(r[1]),
            r[2],
            r[3],
            r[4],
            r[5],
            r[4] == "claimed" and datetime.fromisoformat(r[5]) < limit,
        )
        for r in cursor.fetchall()
    ]


def analysis_tasks(cursor: Cursor, analysis_id: str) -> list[dict[str, Any]]:
    cursor.execute(
        "SELECT task_id, node, stage, calculation_id, state, claimed_ts, finished_ts, commitment, reason"
        " FROM mpc_tasks WHERE analysis_id = ? ORDER BY task_id, node",
        (analysis_id,),
    )
    names = (
        "task_id",
        "node",
        "stage",
        "calculation_id",
        "state",
        "claimed_ts",
        "finished_ts",
        "commitment",
        "reason",
    )
    return [{**dict(zip(names, row, strict=True)), "reason": read_text(row[8])} for row in cursor.fetchall()]


def finished_tasks(cursor: Cursor, analysis_id: str) -> list[int]:
    """Tasks every node of the analysis has finished (the seed's ``finishedTasks``)."""
    cursor.execute(
        "SELECT task_id FROM mpc_tasks WHERE analysis_id = ? GROUP BY task_id"
        " HAVING SUM(CASE WHEN state = 'finished' THEN 1 ELSE 0 END) = COUNT(*) ORDER BY task_id",
        (analysis_id,),
    )
    return [int(r[0]) for r in cursor.fetchall()]
