"""Per-subject timeline: every consent event about a subject, and every use, newest first.

This is what a citizen (or an auditor acting for one) reads to see not only what was
permitted but when it was used, by whom and for what.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from domain.times import format_time
from ledger.canonical import canonical_json
from ledger.entry import Entry
from projections.base import Cursor

NAME = "subject_timeline"
_KINDS = {
    "Consent.Requested": "requested",
    "Consent.Given": "given",
    "Consent.RequestAccepted": "given",
    "Consent.Declined": "declined",
    "Consent.Withdrawn": "withdrawn",
    "Consent.Utilized": "used",
}


class TimelineView:
    name = NAME
    tables = ("subject_timeline", "timeline_consents")
    #: 2: consents' details carry valid_from; 3: a consent given directly names given_by.
    version = 3

    def create(self, cursor: Cursor) -> None:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS timeline_consents ("
            " aggregate_id TEXT PRIMARY KEY, subject TEXT NOT NULL, controller TEXT NOT NULL,"
            " consent_id TEXT NOT NULL)"
        )
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS subject_timeline ("
            " subject TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL, kind TEXT NOT NULL,"
            " controller TEXT NOT NULL, consent_id TEXT NOT NULL, details TEXT NOT NULL,"
            " PRIMARY KEY (subject, seq))"
        )

    def apply(self, cursor: Cursor, entries: Sequence[Entry]) -> None:
        """One statement per table and batch; a consent created in this batch is found
        in ``created``, an older one in ``timeline_consents``."""
        created: dict[str, tuple[str, str, str]] = {}
        lines: list[tuple[Any, ...]] = []
        for entry in entries:
            kind = _KINDS.get(entry.event_type)
            if kind is None:
                continue
            aggregate = str(entry.aggregate_id)
            data = entry.data
            if entry.event_type in ("Consent.Requested", "Consent.Given"):
                who = created[aggregate] = (data["subject"], data["controller"], data["consent_id"])
            else:
                who = created.get(aggregate) or _known_consent(cursor, aggregate)
            subject, controller, consent_id = who
            details = canonical_json(_details(entry)).decode()
            lines.append((subject, entry.seq, format_time(entry.ts), kind, controller, consent_id, details))
        if created:
            cursor.executemany(
                "INSERT INTO timeline_consents VALUES (?, ?, ?, ?)",
                [(aggregate, *who) for aggregate, who in created.items()],
            )
        if lines:
            cursor.executemany("INSERT INTO subject_timeline VALUES (?, ?, ?, ?, ?, ?, ?)", lines)


def _known_consent(cursor: Cursor, aggregate: str) -> tuple[str, str, str]:
    cursor.execute(
        "SELECT subject, controller, consent_id FROM timeline_consents WHERE aggregate_id = ?",
        (aggregate,),
    )
    row = cursor.fetchone()
    return row[0], row[1], row[2]


def _details(entry: Entry) -> dict[str, Any]:
    data = entry.data
    if entry.event_type == "Consent.Utilized":
        return {"purpose": data["purpose"], "data_categories": data["data_categories"]}
    if "terms" in data:
        terms = data["terms"]
        return {
            "purposes": terms["purposes"],
            "data_categories": terms["data_categories"],
            "valid_from": terms["valid_from"],
            "valid_until": terms["valid_until"],
            "notice": terms["notice"],
            **({"level": data["level"], "method": data["method"]} if "level" in data else {}),
            # who gave it: the subject, their custodial wallet, or (level 1) the controller
            **({"given_by": data["given_by"]} if "given_by" in data else {}),
        }
    return {k: v for k, v in data.items() if k.endswith("_by") or k in ("level", "method", "valid_from")}


def history(
    cursor: Cursor, subject: str, *, before: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The subject's events, newest first; page with ``before`` = the last seq seen."""
    cursor.execute(
        "SELECT seq, ts, kind, controller, consent_id, details FROM subject_timeline"
        " WHERE subject = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
        (subject, before if before is not None else 2**62, limit),
    )
    return [
        {
            "seq": r[0],
            "ts": r[1],
            "kind": r[2],
            "controller": r[3],
            "consent_id": r[4],
            "details": orjson.loads(r[5]),
        }
        for r in cursor.fetchall()
    ]
