"""A database that cannot answer now (down, restarting, an administrator's lock) is a
503 the client may retry, not a 500 "the server failed"; a bug stays a 500."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from eventsourcing.persistence import OperationalError, ProgrammingError

from gateways.http.problems import problems_middleware
from infra.settings import Settings
from infra.storage.errors import storage_unavailable
from ledger.sequencer import Accepted


def _wrapped(cause: Exception, kind: type[Exception] = OperationalError) -> Exception:
    """As eventsourcing raises it: its own class, the driver's error as the cause."""
    try:
        try:
            raise cause
        except Exception as inner:
            raise kind(str(inner)) from inner
    except Exception as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (_wrapped(sqlite3.OperationalError("database is locked")), True),
        (_wrapped(sqlite3.OperationalError("no such table: consent_state")), False),
        (_wrapped(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")), True),
        (_wrapped(psycopg.OperationalError("connection refused")), True),
        (_wrapped(psycopg.errors.UndefinedTable("relation does not exist"), ProgrammingError), False),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_the_database_being_unavailable(error: Exception, unavailable: bool) -> None:
    assert storage_unavailable(error) is unavailable


@pytest.mark.parametrize(
    ("message", "status", "code"),
    [("database is locked", 503, "storage_unavailable"), ("no such table: x", 500, "internal_error")],
)
def test_the_api_answers_an_unavailable_database_with_a_503_to_retry(
    message: str, status: int, code: str
) -> None:
    async def handler(_request: web.Request) -> web.StreamResponse:
        raise _wrapped(sqlite3.OperationalError(message))

    request = make_mocked_request("GET", "/v1/consents/check", app=web.Application())
    response: Any = asyncio.run(problems_middleware(request, handler))
    assert response.status == status
    assert json.loads(response.text)["code"] == code
    assert ("Retry-After" in response.headers) is (status == 503)


def _ledger_with_one_consent(database_url: str, tmp_path: Path) -> tuple[Settings, str]:
    """A PostgreSQL ledger holding one consent, its writer closed (a server opens its
    own), and the check that finds it."""
    from conftest import give_level1, make_ledger

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    led = make_ledger(settings)
    app = led.admit("sp:app", "service_provider")
    led.accept(give_level1(led, app, "p-1"))
    led.sequencer.store.close()
    return settings, "/v1/consents/check?subject=p-1&controller=sp:app&purpose=dpv:ServiceProvision"


@pytest.mark.postgres
def test_a_check_blocked_by_an_administrators_lock_answers_503_and_then_the_answer(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """A ``VACUUM FULL`` or ``ALTER TABLE`` on the read models held every consent check
    for as long as it lasted, and with it the whole API (checks are answered on its
    event loop). A check now waits at most ``READ_LOCK_TIMEOUT_S`` and answers 503."""
    from conftest import PG_URL
    from http_server import running_server

    from infra.settings import READ_LOCK_TIMEOUT_S
    from infra.storage.postgres import database_url_schema

    settings, query = _ledger_with_one_consent(pg_schema_url, tmp_path)

    def get(base: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:  # the client's timeout fails the test if the check waits for the lock's holder
            with urllib.request.urlopen(base + query, timeout=20) as answer:
                return answer.status, json.loads(answer.read()), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    with running_server(settings) as base:
        deadline = time.monotonic() + 20
        while get(base)[1].get("granted") is not True:  # the server's views catch up
            assert time.monotonic() < deadline, "the consent never showed in the server's views"
            time.sleep(0.1)
        holder = psycopg.connect(PG_URL)
        try:
            holder.execute(
                f'LOCK TABLE "{database_url_schema(pg_schema_url)}".consent_state IN ACCESS EXCLUSIVE MODE'
            )
            started = time.monotonic()
            status, problem, headers = get(base)
            assert (status, problem["code"]) == (503, "storage_unavailable"), problem
            assert headers.get("Retry-After") == "1"
            assert time.monotonic() - started < READ_LOCK_TIMEOUT_S + 5
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        status, answer, _ = get(base)
        assert status == 200 and answer["granted"] is True, answer


@pytest.mark.postgres
def test_after_the_database_ended_the_servers_sessions_the_next_requests_are_answered(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """After ``pg_terminate_backend`` (or a database restart) every pooled connection
    failed once when next used: five 503s in a row for checks, five for /healthz, more
    than the SDK's four attempts. The first failure now has every pool's broken
    connections replaced, and the requests after it are answered."""
    from conftest import PG_URL
    from http_server import running_server

    settings, query = _ledger_with_one_consent(pg_schema_url, tmp_path)

    def get(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=20) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    with running_server(settings) as base:
        for _ in range(10):  # every pooled connection has been used (the pools take turns)
            assert get(base + query) == 200 and get(base + "/healthz") == 200
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            ended = admin.execute(  # this process's sessions only: the database may be shared
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND client_port = ANY(%s)",
                (_own_tcp_ports(),),
            ).fetchone()
        assert ended is not None and ended[0] >= 4
        time.sleep(0.5)  # the sessions have ended
        first = [get(base + query), get(base + "/healthz")]
        time.sleep(0.5)  # the pools have been checked
        assert [get(base + query) for _ in range(3)] == [200] * 3, first
        assert [get(base + "/healthz") for _ in range(3)] == [200] * 3, first


@pytest.mark.postgres
def test_a_server_stopped_just_after_the_database_ended_its_sessions_stops_cleanly(
    pg_schema_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its last checkpoint at shutdown used a pooled connection the database had ended,
    and `dfg serve` exited 1 after a SIGTERM. It now tries a fresh connection, and if the
    database still cannot be used it says so in one line and stops; the next writer's
    checkpointer signs the entries."""
    from conftest import PG_URL, give_level1, make_ledger

    from infra.bootstrap import open_sequencer, open_views
    from infra.ledger_service import LedgerService
    from projections.registry import all_views

    settings = Settings(data_dir=tmp_path / "data", database_url=pg_schema_url)
    led = make_ledger(settings)
    app = led.admit("sp:app", "service_provider")
    tokens = [give_level1(led, app, f"p-{i}") for i in range(2)]
    led.sequencer.store.close()
    sequencer = open_sequencer(settings)
    views = open_views(settings)
    service = LedgerService(sequencer, views, all_views())
    service.start()
    try:
        assert isinstance(service.submit([tokens[0]]).result(30)[0], Accepted)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND client_port = ANY(%s)",
                (_own_tcp_ports(),),
            )
        time.sleep(0.5)  # the sessions have ended
        caplog.set_level("WARNING", logger="infra.ledger_service")
    finally:
        service.stop()  # raised psycopg.OperationalError
        views.close()
        sequencer.store.close()
    assert not [r for r in caplog.records if r.name == "infra.ledger_service" and r.exc_info], caplog.text
    reopened = open_sequencer(settings)
    try:
        latest = reopened.store.latest_checkpoint()
        assert latest is not None and latest.size == reopened.store.head()[0]
    finally:
        reopened.verifier.close()
        reopened.store.close()


def _own_tcp_ports() -> list[int]:
    """The local ports of this process's TCP sockets (Linux's /proc)."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
