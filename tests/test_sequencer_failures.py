"""The sequencer when storage fails: nothing half written, nothing half remembered."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import TERMS, Ledger
from pg_sessions import end_session, lock_sessions
from replication import wait_for

from infra.bootstrap import checkpoint_key
from ledger.audit import audit_store
from ledger.sequencer import Accepted, Sequencer
from ledger.store import AppendBatch
from ledger.verifier import ParallelVerifier


class FlakyStore:
    """Delegates to a real store; ``mode`` makes the next append fail before or after
    it commits (the second case is a lost acknowledgement)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.mode: str | None = None

    #: How many of the next ``head()`` calls fail (the database still away).
    head_failures = 0

    def head(self) -> tuple[int, bytes]:
        if self.head_failures:
            self.head_failures -= 1
            raise ConnectionError("database still away")
        head: tuple[int, bytes] = self._store.head()
        return head

    def append(self, batch: AppendBatch) -> None:
        mode, self.mode = self.mode, None
        if mode == "before":
            raise ConnectionError("database went away before COMMIT")
        self._store.append(batch)
        if mode == "after":
            raise ConnectionError("database went away after COMMIT")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _consent(ledger: Ledger, app: Any, subject: str, cid: str | None = None) -> str:
    return ledger.sign(
        app,
        "consent.give",
        {
            "consent_id": cid or str(uuid.uuid4()),
            "controller": "sp:app",
            "subject": subject,
            "level": 1,
            "method": "app",
            "terms": TERMS,
        },
    )


def _audit_ok(store: Any) -> None:
    report = audit_store(store)
    assert report.ok, report.problems


def _failed_withdrawal(ledger: Ledger) -> tuple[FlakyStore, Sequencer, Any, str, list[str]]:
    app = ledger.admit("sp:app", "service_provider")
    cid = str(uuid.uuid4())
    flaky = FlakyStore(ledger.sequencer.store)
    sequencer = Sequencer(flaky, checkpoint_key=checkpoint_key(ledger.settings))  # type: ignore[arg-type]
    (given,) = sequencer.submit([_consent(ledger, app, "p-1", cid)])
    assert isinstance(given, Accepted)
    before = flaky.head()
    batch = [
        ledger.sign(app, "consent.withdraw", {"consent_id": cid, "controller": "sp:app", "subject": "p-1"}),
        _consent(ledger, app, "p-2"),
    ]
    flaky.mode = "before"
    with pytest.raises(ConnectionError):
        sequencer.submit(batch)
    assert flaky.head() == before  # nothing of the batch was written
    return flaky, sequencer, app, cid, batch


def test_failed_batch_can_be_resubmitted_as_it_was(ledger: Ledger) -> None:
    flaky, sequencer, _, _, batch = _failed_withdrawal(ledger)
    outcomes = sequencer.submit(batch)
    assert all(isinstance(o, Accepted) and not o.duplicate for o in outcomes), outcomes
    _audit_ok(flaky)


def test_failed_batch_leaves_no_stale_state_in_memory(ledger: Ledger) -> None:
    flaky, sequencer, app, cid, _ = _failed_withdrawal(ledger)
    # The failed batch withdrew the cached consent in memory; that must have been forgotten.
    use = ledger.sign(
        app,
        "consent.utilize",
        {"consent_id": cid, "purpose": "dpv:ServiceProvision", "data_categories": ["dpv-pd:HeartRate"]},
    )
    (used,) = sequencer.submit([use])
    assert isinstance(used, Accepted), used
    _audit_ok(flaky)


def test_lost_acknowledgement_is_recognised_as_committed(ledger: Ledger) -> None:
    app = ledger.admit("sp:app", "service_provider")
    flaky = FlakyStore(ledger.sequencer.store)
    sequencer = Sequencer(flaky, checkpoint_key=checkpoint_key(ledger.settings))  # type: ignore[arg-type]
    flaky.mode = "after"
    token = _consent(ledger, app, "p-1")
    (outcome,) = sequencer.submit([token])
    assert isinstance(outcome, Accepted) and outcome.seq == flaky.head()[0]
    (again,) = sequencer.submit([token])
    assert isinstance(again, Accepted) and again.duplicate and again.seq == outcome.seq
    (next_one,) = sequencer.submit([_consent(ledger, app, "p-2")])
    assert isinstance(next_one, Accepted) and next_one.seq == outcome.seq + 1
    _audit_ok(flaky)


def test_the_logs_time_does_not_go_backwards_across_a_restart(ledger: Ledger) -> None:
    """Restarted on a clock behind the newest entry (NTP stepped it back), the sequencer
    stamps new entries no earlier than that entry: its time used to start afresh with
    each process, and the audit then refused the log."""
    from datetime import timedelta

    from infra.bootstrap import open_store
    from ledger.entry import Entry

    store = ledger.sequencer.store
    size = ledger.head()[0]
    (last,) = store.read_entries(size, 1)
    newest = Entry.decode(last.canonical).ts
    behind = newest - timedelta(minutes=5)
    store.close()
    ledger.sequencer = Sequencer(
        open_store(ledger.settings), checkpoint_key=checkpoint_key(ledger.settings), clock=lambda: behind
    )
    assert ledger.sequencer.now() == newest  # what a consent check "now" asks about
    ledger.admit("sp:late", "service_provider")
    (entry,) = ledger.sequencer.store.read_entries(size + 1, 1)
    assert Entry.decode(entry.canonical).ts == newest
    ledger.sequencer.checkpoint_now()
    assert audit_store(ledger.sequencer.store).ok


def test_a_second_writer_of_one_ledger_is_refused_until_the_first_stops(any_ledger: Ledger) -> None:
    """Two sequencers (two `dfg serve`, or a server and `dfg demo populate`) on one
    ledger: the second is refused at start with its reason. It used to start, and the
    first then answered every submission with "resubmit" once the other appended; a
    rebuild of the views under a running server left them truncated."""
    from click.testing import CliRunner

    from gateways.cli.main import cli
    from infra.bootstrap import open_sequencer
    from infra.writer_lock import LedgerBusy

    settings = any_ledger.settings
    with pytest.raises(LedgerBusy, match="another process writes the ledger"):
        open_sequencer(settings)
    data = ["--data", str(settings.data_dir)] + (
        ["--database-url", settings.database_url] if settings.database_url else []
    )
    for command in (["projections", "rebuild"], ["demo", "populate", "--entries", "5"]):
        result = CliRunner().invoke(cli, [*command, *data])
        assert result.exit_code == 1 and "another process writes the ledger" in result.output, result.output
    size = any_ledger.head()[0]
    any_ledger.sequencer.store.close()
    second = open_sequencer(settings)  # the first one stopped: its lock went with its store
    try:
        assert second.size == size
    finally:
        second.store.close()
    any_ledger.sequencer = open_sequencer(settings)  # for the fixture's teardown


def test_a_check_from_the_command_line_asks_about_the_logs_time(ledger: Ledger) -> None:
    """A withdrawal stamped ahead of the wall clock (the sequencer's clock ran ahead, and
    the log's time does not go back): `dfg consents check` without --at answers what
    a consent.utilize submitted now would be told, as the API does."""
    import json
    from datetime import UTC, datetime, timedelta

    from click.testing import CliRunner

    from gateways.cli.main import cli
    from infra.bootstrap import open_sequencer

    app = ledger.admit("sp:app", "service_provider")
    cid = str(uuid.uuid4())
    ledger.accept(_consent(ledger, app, "p-ahead", cid))
    ahead = datetime.now(UTC) + timedelta(minutes=5)
    store = ledger.sequencer.store
    ledger.sequencer = Sequencer(store, checkpoint_key=checkpoint_key(ledger.settings), clock=lambda: ahead)
    body = {"consent_id": cid, "controller": "sp:app", "subject": "p-ahead"}
    ledger.accept(ledger.sign(app, "consent.withdraw", body, now=ahead.timestamp()))
    ledger.sequencer.checkpoint_now()
    store.close()
    question = ["--subject", "p-ahead", "--controller", "sp:app", "--purpose", TERMS["purposes"][0]]
    result = CliRunner().invoke(
        cli, ["consents", "check", "--data", str(ledger.settings.data_dir), *question]
    )
    assert result.exit_code == 3, result.output
    assert json.loads(result.output)["reason"] == "withdrawn"
    ledger.sequencer = open_sequencer(ledger.settings)  # for the fixture's teardown


def test_a_lost_acknowledgement_during_a_longer_outage_is_settled_by_the_next_commit(ledger: Ledger) -> None:
    """The commit happened, its acknowledgement was lost, and the database did not
    answer when asked whether it holds the batch. The sequencer kept its old head, and
    every later batch failed as "the head moved: another sequencer?", for good."""
    app = ledger.admit("sp:app", "service_provider")
    flaky = FlakyStore(ledger.sequencer.store)
    sequencer = Sequencer(flaky, checkpoint_key=checkpoint_key(ledger.settings))  # type: ignore[arg-type]
    token = _consent(ledger, app, "p-1")
    flaky.mode, flaky.head_failures = "after", 1
    with pytest.raises(ConnectionError):  # the submitter is told to resubmit
        sequencer.submit([token])
    committed = flaky.head()[0]
    (again, next_one) = sequencer.submit([token, _consent(ledger, app, "p-2")])
    assert isinstance(again, Accepted) and again.duplicate and again.seq == committed
    assert isinstance(next_one, Accepted) and next_one.seq == committed + 1
    _audit_ok(flaky)


def test_a_batch_the_database_did_not_keep_is_forgotten_once_it_answers(ledger: Ledger) -> None:
    app = ledger.admit("sp:app", "service_provider")
    flaky = FlakyStore(ledger.sequencer.store)
    sequencer = Sequencer(flaky, checkpoint_key=checkpoint_key(ledger.settings))  # type: ignore[arg-type]
    before = flaky.head()
    token = _consent(ledger, app, "p-1")
    flaky.mode, flaky.head_failures = "before", 1
    with pytest.raises(ConnectionError):
        sequencer.submit([token])
    (accepted,) = sequencer.submit([token])
    assert isinstance(accepted, Accepted) and not accepted.duplicate and accepted.seq == before[0] + 1
    _audit_ok(flaky)


def _writer_lock_sessions(schema: str) -> list[int]:
    """The PostgreSQL sessions holding the ledger's writer lock for ``schema``."""
    from infra.writer_lock import _lock_key

    return lock_sessions(_lock_key(schema))


@pytest.mark.postgres
def test_a_writer_lock_lost_with_its_connection_is_taken_again_or_stops_the_writes(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """The PostgreSQL writer lock lives in a session of its own, which can end under a
    running sequencer (a server restart, an administrator's pg_terminate_backend). It
    used to be lost silently, so that a second `dfg serve` could start beside the
    first. Each append now confirms the lock in its transaction: taken again if nobody
    holds it, refused with nothing written if another process took it meanwhile."""
    import psycopg
    from conftest import PG_URL, make_ledger

    from infra.settings import Settings
    from infra.storage.postgres import database_url_schema
    from infra.writer_lock import WriterLockLost, _lock_key

    schema = database_url_schema(pg_schema_url)
    led = make_ledger(Settings(data_dir=tmp_path / "data", database_url=pg_schema_url))
    try:
        (first,) = _writer_lock_sessions(schema)
        end_session(first)
        assert _writer_lock_sessions(schema) == []
        led.admit("sp:after-loss", "service_provider")  # the append takes the lock again
        (second,) = _writer_lock_sessions(schema)
        assert second != first

        end_session(second)
        with psycopg.connect(PG_URL, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (_lock_key(schema),))  # another writer
            head = led.head()
            with pytest.raises(WriterLockLost, match="another process holds it now"):
                led.admit("sp:refused", "service_provider")
            assert led.head() == head  # nothing written
        led.admit("sp:after-release", "service_provider")  # the other writer has gone
    finally:
        led.sequencer.store.close()


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_lock_held_by_another_process_fails_the_batch_with_a_503_after_the_lock_timeout(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An administrator's lock on the ledger's tables (``CREATE INDEX`` or ``VACUUM FULL``
    on PostgreSQL, a ``BEGIN IMMEDIATE`` in a SQLite shell) held the PostgreSQL
    sequencer for as long as it was held, and every submitter with it. A batch now fails
    after the lock timeout with nothing written, its submitter is told to resubmit, and
    the same transaction is accepted once the lock is gone."""
    import json
    import sqlite3
    import urllib.error
    import urllib.request

    import psycopg
    from conftest import PG_URL, make_ledger
    from http_server import running_server

    from infra.bootstrap import open_store
    from infra.settings import Settings
    from infra.storage.common import EVENTS_TABLE
    from infra.storage.postgres import database_url_schema

    url = request.getfixturevalue("pg_schema_url") if engine == "postgres" else None
    settings = Settings(data_dir=tmp_path / "data", database_url=url, lock_timeout_s=1)
    led = make_ledger(settings)
    app = led.admit("sp:app", "service_provider")
    token = _consent(led, app, "p-1")
    head = led.head()
    led.sequencer.store.close()  # the server opens its own

    def post() -> tuple[int, Any]:
        call = urllib.request.Request(
            f"{base}/v1/transactions",
            data=token.encode(),
            method="POST",
            headers={"Content-Type": "application/jose"},
        )
        try:  # the client's timeout fails the test if the server waits for the lock's holder
            with urllib.request.urlopen(call, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with running_server(settings) as base:
        if url is None:
            holder: Any = sqlite3.connect(settings.ledger_file, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
        else:
            holder = psycopg.connect(PG_URL)
            holder.execute(f'LOCK TABLE "{database_url_schema(url)}".{EVENTS_TABLE} IN SHARE MODE')
        try:
            status, problem = post()
            assert (status, problem["code"]) == (503, "ledger_unavailable"), problem
            assert "resubmit" in problem["detail"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        status, answer = post()
        assert status == 201 and answer["seq"] == head[0] + 1, answer
    store = open_store(settings)
    try:
        assert store.head()[0] == head[0] + 1  # the failed batch left nothing behind
        _audit_ok(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_a_server_whose_ledger_another_process_appended_to_meanwhile_stops_appending_and_says_so(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """The server's lock session ended (pg_terminate_backend), another writer took the
    free lock, appended and left; the server then took the lock again at its next append
    and, its head stale, answered every submission "resubmit" for good while /healthz
    said "ok". It now stops appending: submitters are answered at once, and /healthz
    answers 503 ledger_stopped, so a liveness probe restarts it."""
    import json
    import urllib.error
    import urllib.request

    from conftest import make_ledger
    from http_server import running_server

    from infra.bootstrap import open_sequencer
    from infra.settings import Settings
    from infra.storage.postgres import database_url_schema

    settings = Settings(data_dir=tmp_path / "data", database_url=pg_schema_url)
    led = make_ledger(settings)
    app = led.admit("sp:app", "service_provider")
    tokens = [_consent(led, app, f"p-{i}") for i in range(3)]
    led.sequencer.store.close()  # the server opens its own

    def call(url: str, token: str | None = None) -> tuple[int, Any]:
        data = token.encode() if token is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/jose"})
        try:  # the client's timeout fails the test if a submission is left waiting
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with running_server(settings) as base:
        assert call(f"{base}/v1/transactions", tokens[0])[0] == 201
        (session,) = _writer_lock_sessions(database_url_schema(pg_schema_url))
        end_session(session)
        other = Ledger(settings, open_sequencer(settings), led.operator)  # takes the free lock
        try:
            other.admit("sp:meanwhile", "service_provider")
        finally:
            other.sequencer.verifier.close()
            other.sequencer.store.close()  # and leaves: the server may take the lock again
        for token in tokens[1:]:
            status, problem = call(f"{base}/v1/transactions", token)
            assert (status, problem["code"]) == (503, "ledger_unavailable"), problem
        status, health = call(f"{base}/healthz")
        assert (status, health["code"]) == (503, "ledger_stopped"), health
    restarted = open_sequencer(settings)  # a restarted server appends again
    try:
        (accepted,) = restarted.submit([tokens[1]])
        assert isinstance(accepted, Accepted) and not accepted.duplicate
        _audit_ok(restarted.store)
    finally:
        restarted.verifier.close()
        restarted.store.close()


def test_a_verifier_worker_that_died_is_replaced_for_the_next_batch(ledger: Ledger) -> None:
    """A worker process killed (by the OOM killer, or an operator) broke the pool for
    good: every later batch of 48 transactions or more failed with BrokenProcessPool (a
    503 "resubmit", again and again) until the server was restarted."""
    verifier = ledger.sequencer.verifier = ParallelVerifier(workers=1)
    try:
        app = ledger.admit("sp:app", "service_provider")
        before = ledger.submit(*[_consent(ledger, app, f"a-{i}") for i in range(60)])
        assert all(isinstance(o, Accepted) for o in before)
        pool = verifier._executor()
        (worker,) = pool._processes  # type: ignore[attr-defined]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: bool(pool._broken), what="the pool to notice its dead worker")  # type: ignore[attr-defined]
        after = ledger.submit(*[_consent(ledger, app, f"b-{i}") for i in range(60)])
        assert all(isinstance(o, Accepted) for o in after), after
    finally:
        verifier.close()
    _audit_ok(ledger.sequencer.store)
