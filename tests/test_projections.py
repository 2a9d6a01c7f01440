"""Read models: the consent check's answers, rebuild equality and live following,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import TERMS, Ledger, consent_view, give_level1
from joserfc.jwk import OKPKey

from infra.bootstrap import open_views
from projections.base import catch_up, prepare, rebuild
from projections.consent_state import ConsentStateView, check
from projections.follow import Follower
from projections.keys import PrincipalsView, principal
from projections.registry import all_views
from projections.timeline import TimelineView, history


def _dump(db: Any, view: Any) -> dict[str, list[tuple[Any, ...]]]:
    with db.transaction(commit=False) as cursor:
        out = {}
        for table in view.tables:
            cursor.execute(f"SELECT * FROM {table}")
            out[table] = sorted(tuple(str(v) for v in row) for row in cursor.fetchall())
        return out


def _activity(ledger: Ledger) -> dict[str, str]:
    app = ledger.admit("sp:app", "service_provider")
    wallet = ledger.admit("ids:wallet", "identity_service")
    citizen = ledger.admit("cit:anna", "citizen", by=wallet, custodian="ids:wallet")
    given, withdrawn, requested = (str(uuid.uuid4()) for _ in range(3))
    later = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ledger.accept(
        ledger.sign(
            app,
            "consent.give",
            {
                "consent_id": given,
                "controller": "sp:app",
                "subject": "p-1",
                "level": 1,
                "method": "app",
                "terms": {**TERMS, "valid_until": later},
            },
        ),
        ledger.sign(
            app,
            "consent.utilize",
            {
                "consent_id": given,
                "purpose": "dpv:ServiceProvision",
                "data_categories": ["dpv-pd:HeartRate"],
            },
        ),
        ledger.sign(
            app,
            "consent.give",
            {
                "consent_id": withdrawn,
                "controller": "sp:app",
                "subject": "p-2",
                "level": 1,
                "method": "paper",
                "terms": TERMS,
            },
        ),
        ledger.sign(
            app,
            "consent.withdraw",
            {"consent_id": withdrawn, "controller": "sp:app", "subject": "p-2"},
        ),
        ledger.sign(app, "consent.request", {"consent_id": requested, "subject": "cit:anna", "terms": TERMS}),
        ledger.sign(
            wallet,
            "consent.give",
            {
                "consent_id": requested,
                "controller": "sp:app",
                "subject": "cit:anna",
                "level": 2,
                "method": "wallet",
            },
        ),
        ledger.sign(
            citizen,
            "key.rotate",
            {
                "principal": "cit:anna",
                "old_kid": citizen.kid,
                "jwk": OKPKey.generate_key("Ed25519").as_dict(private=False),
            },
        ),
    )
    return {"given": given, "withdrawn": withdrawn, "requested": requested, "later": later}


def test_checks_rebuild_and_history(any_ledger: Ledger) -> None:
    ids = _activity(any_ledger)
    store = any_ledger.sequencer.store
    db = open_views(any_ledger.settings)
    try:
        for view in all_views():
            prepare(db, view, store.read_entries)
            assert catch_up(db, view, store.read_entries) == store.head()[0]
        now = datetime.now(UTC)
        with db.transaction(commit=False) as cursor:
            ok = check(cursor, "p-1", "sp:app", "dpv:ServiceProvision", ["dpv-pd:HeartRate"], now)
            assert ok.granted and ok.consent_id == ids["given"] and ok.seq is not None
            assert check(cursor, "p-1", "sp:app", "dpv:Marketing", [], now).reason == "purpose_not_covered"
            assert check(cursor, "p-1", "sp:app", "dpv:ServiceProvision", ["dpv-pd:ECG"], now).reason == (
                "category_not_covered"
            )
            after = datetime.strptime(ids["later"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) + timedelta(
                seconds=1
            )
            assert check(cursor, "p-1", "sp:app", "dpv:ServiceProvision", [], after).reason == "expired"
            assert check(cursor, "p-2", "sp:app", "dpv:ServiceProvision", [], now).reason == "withdrawn"
            before = now - timedelta(days=1)
            assert (
                check(cursor, "p-2", "sp:app", "dpv:ServiceProvision", [], before).reason == "not_yet_valid"
            )
            assert check(cursor, "p-9", "sp:app", "dpv:ServiceProvision", [], now).reason == "never_given"
            assert check(cursor, "cit:anna", "sp:app", "dpv:ScientificResearch", [], now).granted
            events = history(cursor, "p-1")
            assert [e["kind"] for e in events] == ["used", "given"]
            assert events[0]["details"]["purpose"] == "dpv:ServiceProvision"
            given_terms = events[1]["details"]
            assert given_terms["valid_from"] is not None and given_terms["valid_until"] == ids["later"]
            # who gave a consent is shown whichever way it was given (directly here; in
            # answer to a request for cit:anna), as the entry records it
            assert given_terms["given_by"] == "sp:app"
            (accepted,) = [e for e in history(cursor, "cit:anna") if e["kind"] == "given"]
            assert accepted["details"]["given_by"] == "ids:wallet"
            anna = principal(cursor, "cit:anna")
            assert anna is not None and anna["custodian"] == "ids:wallet"
            assert [k["revoked_reason"] for k in anna["keys"]] == ["superseded", None]
        live = {v.name: _dump(db, v) for v in all_views()}
        for view in all_views():
            rebuild(db, view, store.read_entries)
        assert {v.name: _dump(db, v) for v in all_views()} == live
    finally:
        db.close()


def test_follower_applies_new_entries_live(any_ledger: Ledger) -> None:
    store = any_ledger.sequencer.store
    db = open_views(any_ledger.settings)
    follower = Follower(
        db,
        [ConsentStateView(), TimelineView()],
        store.read_entries,
        store.wait_for_append,
        poll_s=0.2,
    )
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    thread.start()
    try:
        app = any_ledger.admit("sp:app", "service_provider")
        (accepted,) = any_ledger.accept(
            any_ledger.sign(
                app,
                "consent.give",
                {
                    "consent_id": str(uuid.uuid4()),
                    "controller": "sp:app",
                    "subject": "p-live",
                    "level": 1,
                    "method": "app",
                    "terms": TERMS,
                },
            )
        )
        assert follower.wait_until(accepted.seq, timeout=10)
        with db.transaction(commit=False) as cursor:
            assert check(cursor, "p-live", "sp:app", "dpv:ServiceProvision", [], datetime.now(UTC)).granted
    finally:
        stop.set()
        thread.join(timeout=5)
        db.close()


@pytest.mark.postgres
def test_waiting_for_appends_survives_the_server_ending_its_connection(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """`dfg projections follow` used to exit when its LISTEN connection was ended (a
    server restart, an administrator's pg_terminate_backend); it now polls meanwhile
    and listens again."""
    import psycopg
    from conftest import PG_URL, make_ledger

    from infra.settings import Settings

    led = make_ledger(Settings(data_dir=tmp_path / "data", database_url=pg_schema_url))
    store: Any = led.sequencer.store
    try:
        store.wait_for_append(0.05)  # listening now
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._listener.info.backend_pid,))
        store.wait_for_append(0.05)  # the lost connection: no exception, a poll's wait
        store.wait_for_append(0.05)  # listening again
        assert store._listener is not None and not store._listener.closed
    finally:
        store.close()


@pytest.mark.postgres
def test_an_append_wakes_the_listeners_of_its_own_ledger_only(pg_url: str, tmp_path: Path) -> None:
    """Two ledgers in one database (two schemas): the library's notification channel
    was named after the events table alone, so every append woke every ledger's
    `dfg projections follow` and read models, which then polled for nothing."""
    import psycopg
    from conftest import PG_URL, make_ledger
    from psycopg import sql

    from infra.settings import Settings

    schemas = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    ledgers = [
        make_ledger(Settings(data_dir=tmp_path / s, database_url=f"{PG_URL}?schema={s}")) for s in schemas
    ]
    try:
        with psycopg.connect(PG_URL, autocommit=True) as listener:
            channel = ledgers[0].sequencer.store._recorder.channel_name  # type: ignore[attr-defined]
            listener.execute(sql.SQL("LISTEN {c}").format(c=sql.Identifier(channel)))
            ledgers[1].admit("sp:other-ledger", "service_provider")
            assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
            ledgers[0].admit("sp:this-ledger", "service_provider")
            assert len(list(listener.notifies(timeout=10, stop_after=1))) == 1
    finally:
        for led in ledgers:
            led.sequencer.store.close()
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            for s in schemas:
                admin.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


def test_a_granted_answer_cites_the_entry_that_gave_the_consent(ledger: Ledger) -> None:
    """Asked about a time before the consent was withdrawn, the answer is granted, and
    the entry it names (the one a receipt is fetched for) is the gift, not the later
    withdrawal."""
    app = ledger.admit("sp:app", "service_provider")
    consent_id = str(uuid.uuid4())
    body = {"consent_id": consent_id, "controller": "sp:app", "subject": "p-1", "level": 1, "method": "app"}
    (given,) = ledger.accept(ledger.sign(app, "consent.give", {**body, "terms": TERMS}))
    withdraw = {"consent_id": consent_id, "controller": "sp:app", "subject": "p-1"}
    (withdrawn,) = ledger.accept(ledger.sign(app, "consent.withdraw", withdraw))
    assert withdrawn.entry.ts > given.entry.ts
    with consent_view(ledger) as cursor:
        then = check(cursor, "p-1", "sp:app", "dpv:ServiceProvision", [], given.entry.ts)
        now = check(cursor, "p-1", "sp:app", "dpv:ServiceProvision", [], withdrawn.entry.ts)
    assert (then.granted, then.seq) == (True, given.seq)
    assert (now.granted, now.reason, now.seq) == (False, "withdrawn", withdrawn.seq)


def test_a_view_built_with_an_older_layout_is_built_again(ledger: Ledger) -> None:
    """A consent-state table of version 1 (no ``given_seq``) is dropped on first use and
    rebuilt from the log, so its answers come from the current layout."""
    app = ledger.admit("sp:app", "service_provider")
    body = {"consent_id": str(uuid.uuid4()), "controller": "sp:app", "subject": "p-1", "level": 1}
    ledger.accept(ledger.sign(app, "consent.give", {**body, "method": "app", "terms": TERMS}))
    store = ledger.sequencer.store
    view = ConsentStateView()
    db = open_views(ledger.settings)
    try:
        prepare(db, view, store.read_entries)
        catch_up(db, view, store.read_entries)
        with db.transaction(commit=True) as cursor:  # as a version 1 database looked
            cursor.execute("ALTER TABLE consent_state DROP COLUMN given_seq")
            cursor.execute("DELETE FROM view_versions")
        prepare(db, view, store.read_entries)
        assert db.position(view.name) == 0
        assert catch_up(db, view, store.read_entries) == store.head()[0]
        with db.transaction(commit=False) as cursor:
            answer = check(cursor, "p-1", "sp:app", "dpv:ServiceProvision", [], datetime.now(UTC))
        assert answer.granted and answer.seq == store.head()[0]
    finally:
        db.close()


def test_a_principals_keys_are_found_through_an_index(ledger: Ledger) -> None:
    """Looking up one principal read every key of every principal, so the principals
    line of an audit bundle (dfg audit export, verify --bundle, node follow --from-bundle)
    grew with their square: 30 s for 25,000 principals. A views file made before the
    index has it after its next start."""
    store = ledger.sequencer.store
    view = PrincipalsView()
    db = open_views(ledger.settings)
    try:
        prepare(db, view, store.read_entries)
        with db.transaction(commit=True) as cursor:  # as a views file made before the index
            cursor.execute("DROP INDEX IF EXISTS principal_keys_principal")
        prepare(db, view, store.read_entries)
        with db.transaction(commit=False) as cursor:
            cursor.execute("EXPLAIN QUERY PLAN SELECT kid FROM principal_keys WHERE principal = ?", ("x",))
            plan = " ".join(str(row[-1]) for row in cursor.fetchall())
        assert "USING INDEX" in plan, plan
    finally:
        db.close()


def test_two_processes_catching_up_one_view_apply_each_entry_once(any_ledger: Ledger) -> None:
    """The server, ``dfg projections follow`` and the read commands (``dfg consents
    check``, ``dfg projections status``) all bring the same read models up to date.
    One that read the view's position, and then found another had applied the same
    entries first, used to apply them again (a duplicate row, or a refused one)."""
    _activity(any_ledger)
    store = any_ledger.sequencer.store
    first, second = open_views(any_ledger.settings), open_views(any_ledger.settings)
    views = [ConsentStateView(), TimelineView()] + [v for v in all_views() if v.name == "principals"]
    try:
        for view in views:
            prepare(first, view, store.read_entries)
            raced: list[bool] = []

            def overtaken(start: int, limit: int, view: Any = view, raced: list[bool] = raced) -> Any:
                found = store.read_entries(start, limit)
                if found and not raced:  # the other one gets there between our reads
                    raced.append(True)
                    catch_up(second, view, store.read_entries)
                return found

            assert catch_up(first, view, overtaken) == any_ledger.head()[0]
            assert raced
            once = _dump(first, view)
            rebuild(second, view, store.read_entries)
            assert once == _dump(second, view)
    finally:
        first.close()
        second.close()


def test_read_models_brought_up_to_date_by_several_at_once(any_ledger: Ledger) -> None:
    """The same, with the writers really at once: four threads, each with its own
    connections, catch the views up a few entries at a time."""
    for n in range(40):
        app = any_ledger.admit(f"sp:p{n}", "service_provider")
        any_ledger.accept(give_level1(any_ledger, app, f"s-{n}", controller=f"sp:p{n}"))
    store = any_ledger.sequencer.store
    views = [ConsentStateView(), TimelineView()]
    dbs = [open_views(any_ledger.settings) for _ in range(4)]
    errors: list[BaseException] = []

    def work(db: Any) -> None:
        try:
            for view in views:
                prepare(db, view, store.read_entries)
                catch_up(db, view, store.read_entries, page=3)
        except BaseException as exc:  # reported below, with the thread's traceback lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(db,)) for db in dbs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for view in views:
            once = _dump(dbs[0], view)
            rebuild(dbs[1], view, store.read_entries)
            assert once == _dump(dbs[1], view)
    finally:
        for db in dbs:
            db.close()


def test_a_display_name_with_a_nul_character_is_kept_on_every_engine(any_ledger: Ledger) -> None:
    """The ledger accepts U+0000 in a display name, and PostgreSQL's text refuses it: the
    entry was committed but its read models could not apply it, so the server answered
    that submission and every later one 503 and its views stayed behind for good."""
    any_ledger.admit("sp:nul", "service_provider", display_name="Clinic\x00B")
    store = any_ledger.sequencer.store
    db = open_views(any_ledger.settings)
    try:
        view = PrincipalsView()
        prepare(db, view, store.read_entries)
        assert catch_up(db, view, store.read_entries) == store.head()[0]
        with db.transaction(commit=False) as cursor:
            found = principal(cursor, "sp:nul")
            assert found is not None and found["display_name"] == "Clinic\x00B"
            operator = principal(cursor, "op:federation")
            assert operator is not None and operator["display_name"] == "Test federation"
    finally:
        db.close()
