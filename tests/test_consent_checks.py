"""The consent check over a subject/controller pair with many consents: it reads a
bounded number of them, the database decides the rest through an index, and the
answers are the ones the domain's ``Validity`` gives, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import LEVEL1_TERMS, TERMS, Ledger, consent_view, give_level1

from domain.consent import Refusal
from domain.times import format_time, parse_time
from infra.bootstrap import open_views
from projections import consent_state
from projections.base import Cursor, catch_up, prepare
from projections.consent_state import (
    FEW,
    REFUSALS_MOST_SPECIFIC_FIRST,
    ConsentAnswer,
    ConsentStateView,
    _validity,
    check,
    check_all,
    check_few,
    consenting_subject_set,
    consenting_subjects,
)

SERVICE, RESEARCH, MARKETING = "dpv:ServiceProvision", "dpv:ScientificResearch", "dpv:Marketing"
HEALTH, HEART, ECG = "dpv-pd:HealthRecord", "dpv-pd:HeartRate", "dpv-pd:ECG"


class Counting:
    """A cursor that counts the statements it runs and the rows it hands back."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.statements: list[tuple[str, Sequence[Any]]] = []
        self.rows = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.statements.append((sql, params))
        self.cursor.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise AssertionError("a check writes nothing")

    def fetchone(self) -> Any:
        row = self.cursor.fetchone()
        self.rows += row is not None
        return row

    def fetchall(self) -> list[Any]:
        rows = self.cursor.fetchall()
        self.rows += len(rows)
        return rows


def reference(
    cursor: Cursor, subject: str, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> ConsentAnswer:
    """The check as it was written first: every consent of the pair decoded and decided by
    ``Validity.refusal``, newest decision first."""
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
        if best is None or REFUSALS_MOST_SPECIFIC_FIRST.index(refusal) < best[0]:
            best = (REFUSALS_MOST_SPECIFIC_FIRST.index(refusal), row[0], int(row[7]))
    if best is None:
        return ConsentAnswer(False, None, None, Refusal.NEVER_GIVEN.value)
    return ConsentAnswer(False, best[1], best[2], REFUSALS_MOST_SPECIFIC_FIRST[best[0]].value)


def _consents_in_every_state(ledger: Ledger) -> None:
    """Consents to sp:app in every state a check tells apart: p-1's level 1 copies, valid
    now, later, until soon, for other purposes and categories, withdrawn (one before it
    started); cit:anna's requests left open, declined, accepted and withdrawn, and a
    consent she gave for later; and cit:anna's requests from sp:other, open and declined."""
    app = ledger.admit("sp:app", "service_provider")
    wallet = ledger.admit("ids:wallet", "identity_service")
    ledger.admit("cit:anna", "citizen", by=wallet, custodian="ids:wallet")
    anna = {"controller": "sp:app", "subject": "cit:anna"}
    now = datetime.now(UTC)
    day = timedelta(days=1)

    def terms(purposes: list[str], categories: list[str], start: timedelta, end: timedelta | None) -> Any:
        chosen = {**TERMS, "purposes": purposes, "data_categories": categories}
        chosen["valid_from"] = format_time(now + start)
        chosen["valid_until"] = None if end is None else format_time(now + end)
        return chosen

    def level1(purposes: list[str], categories: list[str], start: timedelta, end: timedelta | None) -> str:
        consent_id = str(uuid.uuid4())
        body = {"consent_id": consent_id, "controller": "sp:app", "subject": "p-1", "level": 1}
        body |= {"method": "app", "terms": terms(purposes, categories, start, end)}
        ledger.accept(ledger.sign(app, "consent.give", body))
        return consent_id

    def request(by: Any = app) -> str:
        consent_id = str(uuid.uuid4())
        body = {"consent_id": consent_id, "subject": "cit:anna", "terms": TERMS}
        ledger.accept(ledger.sign(by, "consent.request", body))
        return consent_id

    def withdraw(consent_id: str, subject: str) -> None:
        body = {"consent_id": consent_id, "controller": "sp:app", "subject": subject}
        ledger.accept(ledger.sign(app if subject == "p-1" else wallet, "consent.withdraw", body))

    level1([SERVICE, RESEARCH], [HEALTH, HEART], -10 * day, 30 * day)
    level1([SERVICE], [HEALTH], 5 * day, 60 * day)
    withdraw(level1([MARKETING], [HEART], -day, None), "p-1")
    withdraw(level1([RESEARCH], [HEART], -20 * day, day), "p-1")
    withdraw(level1([SERVICE], [HEALTH], 3 * day, 9 * day), "p-1")
    request()
    declined = request()
    ledger.accept(ledger.sign(wallet, "consent.decline", {"consent_id": declined, **anna}))
    accepted = request()
    body = {"consent_id": accepted, **anna, "level": 2, "method": "wallet"}
    ledger.accept(ledger.sign(wallet, "consent.give", body))
    withdraw(accepted, "cit:anna")
    body = {"consent_id": str(uuid.uuid4()), **anna, "level": 2, "method": "wallet"}
    body["terms"] = terms([RESEARCH], [HEART], 2 * day, 40 * day)
    ledger.accept(ledger.sign(wallet, "consent.give", body))
    body = {"consent_id": str(uuid.uuid4()), **anna, "level": 2, "method": "wallet", "terms": TERMS}
    ledger.accept(ledger.sign(wallet, "consent.give", body))
    other = ledger.admit("sp:other", "service_provider")  # asked, never answered yes
    request(other)
    declined = request(other)
    body = {"consent_id": declined, "controller": "sp:other", "subject": "cit:anna"}
    ledger.accept(ledger.sign(wallet, "consent.decline", body))


def test_the_database_decides_as_the_domain_does(any_ledger: Ledger) -> None:
    """``check_all`` (the SQL the check falls back on for a pair with many consents)
    answers every question as ``Validity.refusal`` does over every consent, newest
    first: each purpose and category, at each instant a consent starts, ends or was
    withdrawn, a microsecond either side, and long before and after."""
    _consents_in_every_state(any_ledger)
    with consent_view(any_ledger) as cursor:
        cursor.execute("SELECT valid_from, valid_until, withdrawn_at FROM consent_state")
        edges = {parse_time(t) for row in cursor.fetchall() for t in row if t is not None}
        instants = {e + timedelta(microseconds=d) for e in edges for d in (-1, 0, 1)}
        instants |= {datetime(2000, 1, 1, tzinfo=UTC), datetime(2999, 1, 1, tzinfo=UTC)}
        kinds = set()
        pairs = [("p-1", "sp:app"), ("cit:anna", "sp:app"), ("cit:anna", "sp:other")]
        for pair in pairs:
            for at in sorted(instants):
                for purpose in (SERVICE, RESEARCH, MARKETING, "dpv:Other"):
                    for categories in ([], [HEALTH], [HEART], [HEALTH, HEART], [HEART, HEART], [ECG]):
                        expected = reference(cursor, *pair, purpose, categories, at)
                        assert check_all(cursor, *pair, purpose, categories, at) == expected
                        assert check(cursor, *pair, purpose, categories, at) == expected
                        kinds.add(expected.reason)
        assert check_all(cursor, "p-none", "sp:app", SERVICE, [], datetime.now(UTC)) == ConsentAnswer(
            False, None, None, "never_given"
        )
    assert kinds == {None, *(r.value for r in Refusal)}  # every answer there is was given


def test_a_check_reads_a_bounded_number_of_a_pairs_consents(any_ledger: Ledger) -> None:
    """An admitted provider may record any number of consents for one subject, and a
    check read and decoded them all: 0.46 s for 50,000, on the server's event loop. The
    check reads a pair's first ``FEW + 1`` (``check_few``, what the loop runs) and
    decides from them if that is all; for a pair with more, the database ranks them all
    in one statement and returns the first. The answers are the ones every consent
    gives."""
    app = any_ledger.admit("sp:app", "service_provider")
    body = {"consent_id": str(uuid.uuid4()), "controller": "sp:app", "subject": "p-1", "level": 1}
    body |= {"method": "app", "terms": TERMS}
    (oldest,) = any_ledger.accept(any_ledger.sign(app, "consent.give", body))
    copies = any_ledger.accept(*(give_level1(any_ledger, app, "p-1") for _ in range(2 * FEW)))
    assert LEVEL1_TERMS["purposes"] == [SERVICE]  # the copies do not cover RESEARCH, the oldest does
    few = any_ledger.accept(*(give_level1(any_ledger, app, "p-2") for _ in range(FEW)))
    now = datetime.now(UTC)
    with consent_view(any_ledger) as plain:
        for purpose, categories, proof in [
            (SERVICE, [HEALTH], copies[-1]),  # the newest covers it
            (RESEARCH, [HEART], oldest),  # only the oldest does
            (MARKETING, [], copies[-1]),  # none does: the newest is named
            (SERVICE, [HEART], oldest),
        ]:
            cursor = Counting(plain)
            assert check_few(cursor, "p-1", "sp:app", purpose, categories, now) is None
            assert cursor.rows == FEW + 1
            answer = check(cursor, "p-1", "sp:app", purpose, categories, now)
            assert answer == reference(plain, "p-1", "sp:app", purpose, categories, now)
            assert answer.seq == proof.seq
            assert cursor.rows == 2 * (FEW + 1) + 1  # twice the first FEW + 1, then the answer
        cursor = Counting(plain)
        answer = check_few(cursor, "p-2", "sp:app", SERVICE, [], now)
        assert answer is not None and answer.seq == few[-1].seq and cursor.rows == FEW


def test_the_checks_and_counts_statements_use_an_index(any_ledger: Ledger) -> None:
    """Both engines read a pair's consents through ``consent_state_pair``: the loop's
    read within the range of its first ``FEW + 1`` numbers, and the database's ranking;
    and an organisation's through ``consent_state_controller`` to count them. No
    statement scans a table. (PostgreSQL is given statistics and told not to scan
    sequentially: on tables this small it would, and the question is which index
    serves these statements.)"""
    app = any_ledger.admit("sp:app", "service_provider")
    tokens = [give_level1(any_ledger, app, "p-1") for _ in range(FEW + 1)]
    any_ledger.accept(*tokens, *(give_level1(any_ledger, app, f"p-{n}") for n in range(2, 100)))
    postgres = any_ledger.settings.database_url is not None
    with consent_view(any_ledger) as plain:
        cursor = Counting(plain)
        check(cursor, "p-1", "sp:app", MARKETING, [HEART], datetime.now(UTC))
        assert len(cursor.statements) == 2  # the first FEW + 1, then the ranking
        consenting_subjects(cursor, "sp:app", SERVICE, [HEALTH], datetime.now(UTC))
        if postgres:
            plain.execute("ANALYZE")
            plain.execute("SET LOCAL enable_seqscan = off")
        plans = []
        for (sql, params), index in zip(cursor.statements, ["pair", "pair", "controller"], strict=True):
            plain.execute(("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + sql, params)
            plan = "\n".join(str(row[-1]) for row in plain.fetchall())
            assert f"consent_state_{index}" in plan, plan
            assert "Seq Scan" not in plan and "SCAN " not in plan, plan
            assert "TEMP B-TREE FOR ORDER BY" not in plan or "refusal_rank" in sql, plan
            plans.append(plan)
    assert ("pair_number <=" if postgres else "pair_number<?") in plans[0]  # a bounded range


def reference_subjects(
    cursor: Cursor, controller: str, purpose: str, categories: Sequence[str], at: datetime
) -> set[str]:
    cursor.execute(
        "SELECT subject, status, purposes, categories, valid_from, valid_until, withdrawn_at"
        " FROM consent_state WHERE controller = ?",
        (controller,),
    )
    rows = cursor.fetchall()
    return {row[0] for row in rows if _validity(row[1:7]).refusal(purpose, categories, at) is None}


def test_the_database_counts_consenting_subjects_as_the_domain_does(any_ledger: Ledger) -> None:
    """An analysis' consenting subjects (and the set a node computes on) are counted by
    the database, with the subjects ``Validity.refusal`` lets through."""
    _consents_in_every_state(any_ledger)
    with consent_view(any_ledger) as cursor:
        cursor.execute("SELECT valid_from, valid_until, withdrawn_at FROM consent_state")
        edges = {parse_time(t) for row in cursor.fetchall() for t in row if t is not None}
        seen = set()
        for at in sorted({e + timedelta(microseconds=d) for e in edges for d in (-1, 0)}):
            for controller in ("sp:app", "sp:other"):
                for purpose in (SERVICE, RESEARCH, MARKETING):
                    for categories in ([], [HEALTH], [HEART], [HEALTH, HEART]):
                        expected = reference_subjects(cursor, controller, purpose, categories, at)
                        assert consenting_subject_set(cursor, controller, purpose, categories, at) == expected
                        assert consenting_subjects(cursor, controller, purpose, categories, at) == len(
                            expected
                        )
                        seen.add(len(expected))
    assert seen == {0, 1, 2}


def test_a_count_is_remembered_until_an_entry_or_a_consent_starts_or_ends(
    any_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ConsentingCounts`` counts again when the view applied another entry, or when the
    clock passed an instant at which a consent that counts (or may) starts or ends, and
    then only: its counts are the ones counted afresh."""
    app = any_ledger.admit("sp:app", "service_provider")
    now = datetime.now(UTC)
    day = timedelta(days=1)
    for subject, start, end in (("p-a", -day, day), ("p-b", 2 * day, 30 * day), ("p-c", -day, None)):
        terms = {**LEVEL1_TERMS, "valid_from": format_time(now + start)}
        terms["valid_until"] = None if end is None else format_time(now + end)
        body = {"consent_id": str(uuid.uuid4()), "controller": "sp:app", "subject": subject, "level": 1}
        any_ledger.accept(any_ledger.sign(app, "consent.give", {**body, "method": "app", "terms": terms}))
    counted: list[datetime] = []
    count = consent_state._counted
    monkeypatch.setattr(consent_state, "_counted", lambda *a: counted.append(a[-1]) or count(*a))
    store = any_ledger.sequencer.store
    db = open_views(any_ledger.settings)
    try:
        prepare(db, ConsentStateView(), store.read_entries)
        catch_up(db, ConsentStateView(), store.read_entries)
        counts = consent_state.ConsentingCounts(db)

        def asked(at: datetime) -> int:
            return counts.count("sp:app", SERVICE, [HEALTH], at)

        second = timedelta(seconds=1)
        assert [asked(now), asked(now + second), asked(now + day - second)] == [2, 2, 2]
        assert counted == [now]  # p-a and p-c, until p-a ends
        assert [asked(now + day), asked(now + 2 * day), asked(now + 3 * day)] == [1, 2, 2]
        assert counted == [now, now + day, now + 2 * day]  # p-a ended, p-b began
        assert asked(now) == 2 and counted[-1] == now  # an earlier instant: counted again
        any_ledger.accept(give_level1(any_ledger, app, "p-d"))
        catch_up(db, ConsentStateView(), store.read_entries)
        assert asked(now + second) == 3 and counted[-1] == now + second  # a new entry
        assert asked(now + 2 * second) == 3 and len(counted) == 5
    finally:
        db.close()
