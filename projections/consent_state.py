"""Consent state: is subject S's consent to controller C valid for purpose P and
category D at time T, and which entry proves it?

One row per consent with the facts the domain's ``Validity`` needs; the decision
itself is the domain's (``Validity.refusal``), so the check and the ledger's own
``consent.utilize`` rule can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from domain.consent import Refusal, Status, Validity
from domain.times import format_time, parse_time
from ledger.canonical import canonical_json
from ledger.entry import Entry
from projections.base import Cursor

NAME = "consent_state"


@dataclass(frozen=True)
class ConsentAnswer:
    granted: bool
    consent_id: str | None
    seq: int | None
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "consent_id": self.consent_id,
            "seq": self.seq,
            "reason": self.reason,
        }


_CREATED = {"Requested": Status.REQUESTED, "Given": Status.GIVEN}


def _new_row(entry: Entry, status: Status) -> tuple[Any, ...]:
    data = entry.data
    terms = data["terms"]
    return (
        str(entry.aggregate_id),
        data["controller"],
        data["consent_id"],
        data["subject"],
        status,
        data.get("level", 2),
        canonical_json(terms["purposes"]).decode(),
        canonical_json(terms["data_categories"]).decode(),
        terms["notice"]["sha256"],
        terms["valid_from"] if status == Status.GIVEN else None,
        terms["valid_until"],
        entry.seq if status == Status.GIVEN else None,
        entry.seq,
        entry.seq,
    )


def _insert(cursor: Cursor, rows: list[tuple[Any, ...]]) -> None:
    """Write the pending new consents (and empty the list)."""
    if rows:
        cursor.executemany(
            "INSERT INTO consent_state (aggregate_id, controller, consent_id, subject, status, level,"
            " purposes, categories, notice_sha256, valid_from, valid_until, given_seq, decided_seq,"
            " last_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        rows.clear()


class ConsentStateView:
    name = NAME
    tables = ("consent_state",)
    #: 2: ``given_seq``, the entry a granted answer cites (version 1 cited the newest
    #: decision, which after a withdrawal is the withdrawal, even for an earlier time).
    version = 2

    def create(self, cursor: Cursor) -> None:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS consent_state ("
            " aggregate_id TEXT PRIMARY KEY, controller TEXT NOT NULL, consent_id TEXT NOT NULL,"
            " subject TEXT NOT NULL, status TEXT NOT NULL, level INTEGER NOT NULL,"
            " purposes TEXT NOT NULL, categories TEXT NOT NULL, notice_sha256 TEXT NOT NULL,"
            " valid_from TEXT, valid_until TEXT, withdrawn_at TEXT, given_seq INTEGER,"
            " decided_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, uses INTEGER NOT NULL DEFAULT 0)"
        )
        cursor.execute(
            "CREATE INDEX IF NOT EXISTS consent_state_subject ON consent_state (subject, controller)"
        )

    def apply(self, cursor: Cursor, entries: Sequence[Entry]) -> None:
        """New consents go in with one statement per batch; a change to a consent first
        writes the new ones before it, so it always finds its row."""
        new: list[tuple[Any, ...]] = []
        for entry in entries:
            if not entry.event_type.startswith("Consent."):
                continue
            kind = entry.event_type.split(".", 1)[1]
            if kind in _CREATED:
                new.append(_new_row(entry, _CREATED[kind]))
                continue
            _insert(cursor, new)
            getattr(self, "_" + kind.lower())(cursor, entry, str(entry.aggregate_id), entry.data)
        _insert(cursor, new)

    def _requestaccepted(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET status = ?, level = ?, valid_from = ?, given_seq = ?, decided_seq = ?,"
            " last_seq = ? WHERE aggregate_id = ?",
            (Status.GIVEN, data["level"], data["valid_from"], entry.seq, entry.seq, entry.seq, aggregate),
        )

    def _declined(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET status = ?, decided_seq = ?, last_seq = ? WHERE aggregate_id = ?",
            (Status.DECLINED, entry.seq, entry.seq, aggregate),
        )

    def _withdrawn(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET status = ?, withdrawn_at = ?, decided_seq = ?, last_seq = ?"
            " WHERE aggregate_id = ?",
            (Status.WITHDRAWN, format_time(entry.ts), entry.seq, entry.seq, aggregate),
        )

    def _utilized(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET uses = uses + 1, last_seq = ? WHERE aggregate_id = ?",
            (entry.seq, aggregate),
        )


_REFUSAL_ORDER = {
    r: i
    for i, r in enumerate(
        [
            Refusal.PURPOSE_NOT_COVERED,
            Refusal.CATEGORY_NOT_COVERED,
            Refusal.EXPIRED,
            Refusal.WITHDRAWN,
            Refusal.NOT_YET_VALID,
            Refusal.NEVER_GIVEN,
        ]
    )
}


def _validity(columns: Sequence[Any]) -> Validity:
    """(status, purposes, categories, valid_from, valid_until, withdrawn_at) of a row."""
    status, purposes, categories, valid_from, valid_until, withdrawn_at = columns
    return Validity(
        status=Status(status),
        purposes=frozenset(orjson.loads(purposes)),
        data_categories=frozenset(orjson.loads(categories)),
        valid_from=parse_time(valid_from) if valid_from else None,
        valid_until=parse_time(valid_until) if valid_until else None,
        withdrawn_at=parse_time(withdrawn_at) if withdrawn_at else None,
    )


def consenting_subjects(
    cursor: Cursor, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> int:
    """How many distinct subjects have a consent to ``controller`` covering this use at
    ``at`` (an analysis' consent request: how many have said yes so far)."""
    return len(consenting_subject_set(cursor, controller, purpose, categories, at))


def consenting_subject_set(
    cursor: Cursor, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> set[str]:
    """The subjects with a consent to ``controller`` covering this use at ``at``: whose
    records a computation node may compute on."""
    cursor.execute(
        "SELECT subject, status, purposes, categories, valid_from, valid_until, withdrawn_at"
        " FROM consent_state WHERE controller = ? AND status IN ('given', 'withdrawn')",
        (controller,),
    )
    return {
        row[0] for row in cursor.fetchall() if _validity(row[1:7]).refusal(purpose, categories, at) is None
    }


def check(
    cursor: Cursor,
    subject: str,
    controller: str,
    purpose: str,
    categories: Sequence[str],
    at: datetime,
) -> ConsentAnswer:
    """Granted when any of the subject's consents to the controller covers the use at ``at``.

    A granted answer cites the entry that gave the consent (even when a later one
    withdrew it: the question was about an earlier time). When none covers the use,
    the reason is the most specific one (a consent that exists but does not cover the
    purpose or category says more than one that was withdrawn, and so on), citing the
    entry that decided that consent's state.
    """
    cursor.execute(
        "SELECT consent_id, status, purposes, categories, valid_from, valid_until, withdrawn_at, decided_seq,"
        " given_seq FROM consent_state WHERE subject = ? AND controller = ? ORDER BY decided_seq DESC",
        (subject, controller),
    )
    best: tuple[int, str, int] | None = None
    for row in cursor.fetchall():
        refusal = _validity(row[1:7]).refusal(purpose, categories, at)
        if refusal is None:
            return ConsentAnswer(True, row[0], int(row[8]), None)
        rank = _REFUSAL_ORDER[refusal]
        if best is None or rank < best[0]:
            best = (rank, row[0], int(row[7]))
    if best is None:
        return ConsentAnswer(False, None, None, Refusal.NEVER_GIVEN.value)
    reason = next(r for r, i in _REFUSAL_ORDER.items() if i == best[0])
    return ConsentAnswer(False, best[1], best[2], reason.value)
