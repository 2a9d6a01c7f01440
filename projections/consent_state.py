"""Consent state: is subject S's consent to controller C valid for purpose P and
category D at time T, and which entry proves it?

One row per consent with the facts the domain's ``Validity`` needs; the decision
itself is the domain's (``Validity.refusal``), so the check and the ledger's own
``consent.utilize`` rule can never disagree. A subject/controller pair with more
consents than a check reads at once (an admitted provider may record any number) is
decided in one SQL statement instead (``_rank``, which mirrors ``Validity.refusal``
over the consent's instants as integers and ``consent_code_lists``), so that no check
decodes every consent of such a pair. Each consent is numbered within its pair
(``pair_number``), so that a check reads at most ``FEW + 1`` rows of any pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from domain.consent import Refusal, Status, Validity
from domain.times import format_time, parse_time
from ledger.canonical import canonical_json
from ledger.entry import Entry
from projections.base import Cursor, ViewDatabase

NAME = "consent_state"
#: A subject/controller pair with at most this many consents (nearly every pair: one
#: or a few) is decided from its rows (``check_few``); one with more, by the database.
FEW = 16


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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(instant: datetime) -> int:
    """The instant as microseconds since 1970: ordered as instants are, in SQL too (the
    ledger's text form is not: ``...:00Z`` sorts after ``...:00.500000Z``)."""
    return (instant - _EPOCH) // timedelta(microseconds=1)


def _micros_of(text: str | None) -> int | None:
    return None if text is None else _micros(parse_time(text))


def _new_row(entry: Entry, status: Status) -> tuple[Any, ...]:
    data = entry.data
    terms = data["terms"]
    valid_from = terms["valid_from"] if status == Status.GIVEN else None
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
        valid_from,
        terms["valid_until"],
        entry.seq if status == Status.GIVEN else None,
        entry.seq,
        entry.seq,
        _micros_of(valid_from),
        _micros_of(terms["valid_until"]),
    )


def _insert(cursor: Cursor, rows: list[tuple[Any, ...]]) -> None:
    """Write the pending new consents, each numbered after its pair's last, and the code
    lists they name (and empty the list)."""
    if rows:
        cursor.executemany(
            "INSERT INTO consent_state (aggregate_id, controller, consent_id, subject, status, level,"
            " purposes, categories, notice_sha256, valid_from, valid_until, given_seq, decided_seq,"
            " last_seq, valid_from_us, valid_until_us, pair_number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(pair_number), 0) + 1 FROM consent_state"
            " WHERE subject = ? AND controller = ?))",
            [(*row, row[3], row[1]) for row in rows],
        )
        lists = {row[6] for row in rows} | {row[7] for row in rows}
        cursor.executemany(
            "INSERT INTO consent_code_lists (code, code_list) VALUES (?, ?) ON CONFLICT DO NOTHING",
            sorted((code, text) for text in lists for code in orjson.loads(text)),
        )
        rows.clear()


class ConsentStateView:
    name = NAME
    tables = ("consent_state", "consent_code_lists")
    #: 2: ``given_seq``, the entry a granted answer cites (version 1 cited the newest
    #: decision, which after a withdrawal is the withdrawal, even for an earlier time).
    #: 3: the instants as integers (``*_us``) and ``consent_code_lists``, for the checks the
    #: database decides; a pair's consents numbered (``pair_number``), and indexed by it
    #: alone: with a second index on the pair, PostgreSQL may read the whole pair through
    #: it (and filter the numbers) when its statistics say the pair is small.
    version = 3

    def create(self, cursor: Cursor) -> None:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS consent_state ("
            " aggregate_id TEXT PRIMARY KEY, controller TEXT NOT NULL, consent_id TEXT NOT NULL,"
            " subject TEXT NOT NULL, status TEXT NOT NULL, level INTEGER NOT NULL,"
            " purposes TEXT NOT NULL, categories TEXT NOT NULL, notice_sha256 TEXT NOT NULL,"
            " valid_from TEXT, valid_until TEXT, withdrawn_at TEXT, given_seq INTEGER,"
            " decided_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, uses INTEGER NOT NULL DEFAULT 0,"
            " valid_from_us BIGINT, valid_until_us BIGINT, withdrawn_at_us BIGINT,"
            " pair_number INTEGER NOT NULL)"
        )
        cursor.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS consent_state_pair"
            " ON consent_state (subject, controller, pair_number)"
        )
        # an organisation's consents, counted (GraphQL's consentingSubjects, the badge)
        cursor.execute("CREATE INDEX IF NOT EXISTS consent_state_controller ON consent_state (controller)")
        # Which code lists (a consent's purposes or categories, as its row holds them)
        # name a code: the database tells a consent that covers a use from one that does
        # not without decoding its lists, and there are few distinct lists.
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS consent_code_lists (code TEXT NOT NULL, code_list TEXT NOT NULL,"
            " PRIMARY KEY (code, code_list))"
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
            "UPDATE consent_state SET status = ?, level = ?, valid_from = ?, valid_from_us = ?,"
            " given_seq = ?, decided_seq = ?, last_seq = ? WHERE aggregate_id = ?",
            (
                Status.GIVEN,
                data["level"],
                data["valid_from"],
                _micros_of(data["valid_from"]),
                entry.seq,
                entry.seq,
                entry.seq,
                aggregate,
            ),
        )

    def _declined(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET status = ?, decided_seq = ?, last_seq = ? WHERE aggregate_id = ?",
            (Status.DECLINED, entry.seq, entry.seq, aggregate),
        )

    def _withdrawn(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET status = ?, withdrawn_at = ?, withdrawn_at_us = ?, decided_seq = ?,"
            " last_seq = ? WHERE aggregate_id = ?",
            (Status.WITHDRAWN, format_time(entry.ts), _micros(entry.ts), entry.seq, entry.seq, aggregate),
        )

    def _utilized(self, cursor: Cursor, entry: Entry, aggregate: str, data: dict[str, Any]) -> None:
        cursor.execute(
            "UPDATE consent_state SET uses = uses + 1, last_seq = ? WHERE aggregate_id = ?",
            (entry.seq, aggregate),
        )


#: A check's reason when no consent covers the use: the most specific first (a consent
#: that exists but does not cover the purpose says more than one that was withdrawn).
REFUSALS_MOST_SPECIFIC_FIRST: tuple[Refusal, ...] = (
    Refusal.PURPOSE_NOT_COVERED,
    Refusal.CATEGORY_NOT_COVERED,
    Refusal.EXPIRED,
    Refusal.WITHDRAWN,
    Refusal.NOT_YET_VALID,
    Refusal.NEVER_GIVEN,
)
_REFUSAL_ORDER = {r: i for i, r in enumerate(REFUSALS_MOST_SPECIFIC_FIRST)}
_REFUSAL_OF_RANK = {i: r for r, i in _REFUSAL_ORDER.items()}
#: The rank of a consent that covers the use: before every refusal.
_COVERS = -1


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


def _rank(purpose: str, categories: Sequence[str], at: datetime) -> tuple[str, list[Any]]:
    """``Validity.refusal`` in SQL over a row ``s`` of consent_state: the same tests in the
    same order, as the refusal's rank in ``_REFUSAL_ORDER`` (``_COVERS`` for none), and
    its parameters. tests/test_consent_checks.py holds the two to the same answers."""
    when = _micros(at)
    wanted = list(dict.fromkeys(categories))
    order = _REFUSAL_ORDER
    naming = "(SELECT code_list FROM consent_code_lists WHERE code = ?)"
    sql = (
        f"CASE WHEN s.status = '{Status.WITHDRAWN}' AND s.withdrawn_at_us IS NOT NULL"
        f" AND ? >= s.withdrawn_at_us THEN {order[Refusal.WITHDRAWN]}"
        f" WHEN s.status NOT IN ('{Status.GIVEN}', '{Status.WITHDRAWN}') OR s.valid_from_us IS NULL"
        f" THEN {order[Refusal.NEVER_GIVEN]}"
        f" WHEN ? < s.valid_from_us THEN {order[Refusal.NOT_YET_VALID]}"
        f" WHEN s.valid_until_us IS NOT NULL AND ? >= s.valid_until_us THEN {order[Refusal.EXPIRED]}"
        f" WHEN s.purposes NOT IN {naming} THEN {order[Refusal.PURPOSE_NOT_COVERED]}"
    )
    if wanted:
        lacks = " OR ".join(f"s.categories NOT IN {naming}" for _ in wanted)
        sql += f" WHEN {lacks} THEN {order[Refusal.CATEGORY_NOT_COVERED]}"
    return f"{sql} ELSE {_COVERS} END", [when, when, when, purpose, *wanted]


def consenting_subjects(
    cursor: Cursor, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> int:
    """How many distinct subjects have a consent to ``controller`` covering this use at
    ``at`` (an analysis' consent request: how many have said yes so far)."""
    return _counted(cursor, controller, purpose, categories, at)[0]


def _counted(
    cursor: Cursor, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> tuple[int, int | None]:
    """``consenting_subjects``, and until when it holds without another entry: the first
    instant after ``at`` at which a consent that covers the use, or may come to, starts,
    ends or was withdrawn (None: never). One statement over the controller's consents."""
    rank, params = _rank(purpose, categories, at)
    never = ", ".join(
        str(_REFUSAL_ORDER[r])
        for r in (Refusal.PURPOSE_NOT_COVERED, Refusal.CATEGORY_NOT_COVERED, Refusal.NEVER_GIVEN)
    )
    later = [  # named: PostgreSQL's rows are read by column name
        f"MIN(CASE WHEN refusal_rank NOT IN ({never}) AND {column} > ? THEN {column} END) AS next_{column}"
        for column in ("valid_from_us", "valid_until_us", "withdrawn_at_us")
    ]
    when = _micros(at)
    cursor.execute(
        f"SELECT COUNT(DISTINCT CASE WHEN refusal_rank = {_COVERS} THEN subject END) AS subjects,"
        f" {', '.join(later)}"
        " FROM (SELECT subject, valid_from_us, valid_until_us, withdrawn_at_us,"
        f" {rank} AS refusal_rank FROM consent_state s WHERE controller = ?) AS ranked",
        (when, when, when, *params, controller),
    )
    count, *changes = cursor.fetchone()
    until = min((int(c) for c in changes if c is not None), default=None)
    return int(count), until


def consenting_subject_set(
    cursor: Cursor, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> set[str]:
    """The subjects with a consent to ``controller`` covering this use at ``at``: whose
    records a computation node may compute on."""
    rank, params = _rank(purpose, categories, at)
    cursor.execute(
        f"SELECT DISTINCT subject FROM consent_state s WHERE controller = ? AND {rank} = {_COVERS}",
        (controller, *params),
    )
    return {row[0] for row in cursor.fetchall()}


@dataclass(frozen=True)
class _Count:
    position: int
    since: int
    until: int | None
    count: int


class ConsentingCounts:
    """``consenting_subjects`` remembered while it cannot change: until the view applies
    another entry, or the clock reaches the next instant a consent it counts (or may
    come to) starts, ends or was withdrawn. Each count reads the organisation's
    consents, and a GraphQL answer may ask for it 5,000 times (50 aliases of a page of
    100 analyses), mostly for the same organisation and use."""

    def __init__(self, db: ViewDatabase, size: int = 4096) -> None:
        self._db = db
        self._size = size
        self._known: dict[tuple[str, str, tuple[str, ...]], _Count] = {}

    def count(self, controller: str, purpose: str, categories: Sequence[str], at: datetime) -> int:
        key = (controller, purpose, tuple(sorted(set(categories))))
        position = self._db.position(NAME)  # before the count: it reads this state or a later one
        when = _micros(at)
        known = self._known.get(key)
        if (
            known is not None
            and known.position == position
            and known.since <= when
            and (known.until is None or when < known.until)
        ):
            return known.count
        with self._db.transaction(commit=False) as cursor:
            count, until = _counted(cursor, controller, purpose, categories, at)
        if len(self._known) >= self._size:
            self._known.clear()
        self._known[key] = _Count(position, when, until, count)
        return count


def check(
    cursor: Cursor,
    subject: str,
    controller: str,
    purpose: str,
    categories: Sequence[str],
    at: datetime,
) -> ConsentAnswer:
    """Granted when any of the subject's consents to the controller covers the use at ``at``.

    A granted answer cites the entry that gave the newest such consent (even when a
    later one withdrew it: the question was about an earlier time). When none covers
    the use, the reason is the most specific one (a consent that exists but does not
    cover the purpose or category says more than one that was withdrawn, and so on),
    citing the entry that decided that consent's state (the newest, of several).
    """
    answer = check_few(cursor, subject, controller, purpose, categories, at)
    if answer is None:
        answer = check_all(cursor, subject, controller, purpose, categories, at)
    return answer


def check_few(
    cursor: Cursor,
    subject: str,
    controller: str,
    purpose: str,
    categories: Sequence[str],
    at: datetime,
) -> ConsentAnswer | None:
    """``check``'s answer when the pair has at most ``FEW`` consents, else None. It reads
    the pair's first ``FEW + 1`` by their numbers, within a range of an index whatever
    plan the database picks (PostgreSQL's depends on its statistics), however many the
    pair has: the server answers it on its event loop."""
    cursor.execute(
        "SELECT consent_id, status, purposes, categories, valid_from, valid_until, withdrawn_at, decided_seq,"
        " given_seq FROM consent_state WHERE subject = ? AND controller = ? AND pair_number <= ?",
        (subject, controller, FEW + 1),
    )
    rows = cursor.fetchall()
    if len(rows) > FEW:
        return None
    best: tuple[int, str, int] | None = None
    for row in sorted(rows, key=lambda row: int(row[7]), reverse=True):  # newest decision first
        refusal = _validity(row[1:7]).refusal(purpose, categories, at)
        if refusal is None:
            return ConsentAnswer(True, row[0], int(row[8]), None)
        rank = _REFUSAL_ORDER[refusal]
        if best is None or rank < best[0]:
            best = (rank, row[0], int(row[7]))
    if best is None:
        return ConsentAnswer(False, None, None, Refusal.NEVER_GIVEN.value)
    return ConsentAnswer(False, best[1], best[2], _REFUSAL_OF_RANK[best[0]].value)


def check_all(
    cursor: Cursor,
    subject: str,
    controller: str,
    purpose: str,
    categories: Sequence[str],
    at: datetime,
) -> ConsentAnswer:
    """``check`` over every consent of the pair, in one statement: the database ranks
    them (``_rank``) and returns the first, newest first among equals."""
    rank, params = _rank(purpose, categories, at)
    cursor.execute(
        "SELECT consent_id, decided_seq, given_seq, refusal_rank FROM ("
        f"SELECT consent_id, decided_seq, given_seq, {rank} AS refusal_rank FROM consent_state s"
        " WHERE subject = ? AND controller = ?) AS ranked ORDER BY refusal_rank, decided_seq DESC LIMIT 1",
        (*params, subject, controller),
    )
    row = cursor.fetchone()
    if row is None:
        return ConsentAnswer(False, None, None, Refusal.NEVER_GIVEN.value)
    consent_id, decided_seq, given_seq, rank_of = row
    if rank_of == _COVERS:
        return ConsentAnswer(True, consent_id, int(given_seq), None)
    return ConsentAnswer(False, consent_id, int(decided_seq), _REFUSAL_OF_RANK[int(rank_of)].value)
