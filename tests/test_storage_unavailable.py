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
from infra.storage.errors import storage_unavailable


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


@pytest.mark.postgres
def test_a_check_blocked_by_an_administrators_lock_answers_503_and_then_the_answer(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """A ``VACUUM FULL`` or ``ALTER TABLE`` on the read models held every consent check
    for as long as it lasted, and with it the whole API (checks are answered on its
    event loop). A check now waits at most ``READ_LOCK_TIMEOUT_S`` and answers 503."""
    from conftest import PG_URL, give_level1, make_ledger
    from http_server import running_server

    from infra.settings import READ_LOCK_TIMEOUT_S, Settings
    from infra.storage.postgres import database_url_schema

    settings = Settings(data_dir=tmp_path / "data", database_url=pg_schema_url)
    led = make_ledger(settings)
    app = led.admit("sp:app", "service_provider")
    led.accept(give_level1(led, app, "p-1"))
    led.sequencer.store.close()
    query = "/v1/consents/check?subject=p-1&controller=sp:app&purpose=dpv:ServiceProvision"

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
