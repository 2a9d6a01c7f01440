"""The consent API against a real server on a loopback port, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from conftest import CHAIN, TERMS, Ledger
from http_server import running_server, send_raw
from joserfc.jwk import OKPKey

from gateways.http.models import AcceptedResult
from gateways.http.openapi import build_openapi
from infra.bootstrap import open_store
from ledger.merkle import root_at, verify_consistency
from ledger.receipt import Receipt, verify_receipt
from ledger.signing import TransactionSigner, public_jwk
from projections import consent_state


@dataclass
class Http:
    url: str

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> tuple[int, str, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, kind, raw = response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as exc:
            status, kind, raw = exc.code, exc.headers.get_content_type(), exc.read()
        text = raw.decode()
        return status, kind, json.loads(text) if "json" in kind else text

    def post_jws(self, token: str) -> tuple[int, str, Any]:
        return self.call("POST", "/v1/transactions", token.encode(), "application/jose")

    def post_json(self, path: str, data: Any) -> tuple[int, str, Any]:
        return self.call("POST", path, json.dumps(data).encode())


@pytest.fixture
def api(any_ledger: Ledger) -> Iterator[tuple[Http, Ledger]]:
    app = any_ledger.admit("sp:app", "service_provider")
    any_ledger.app = app  # type: ignore[attr-defined]
    any_ledger.sequencer.store.close()  # the server opens its own sequencer
    with running_server(any_ledger.settings) as url:
        yield Http(url), any_ledger


def _give(ledger: Ledger, subject: str = "p-1", cid: str | None = None) -> str:
    return ledger.sign(
        ledger.app,
        "consent.give",
        {  # type: ignore[attr-defined]
            "consent_id": cid or str(uuid.uuid4()),
            "controller": "sp:app",
            "subject": subject,
            "level": 1,
            "method": "app",
            "terms": TERMS,
        },
    )


def _size(http: Http) -> int:
    return int(http.call("GET", "/healthz")[2]["size"])


def test_submit_check_receipt_and_history(api: tuple[Http, Ledger]) -> None:
    http, ledger = api
    token = _give(ledger)
    status, kind, body = http.post_jws(token)
    assert (status, kind, body["status"], body["duplicate"]) == (201, "application/json", "accepted", False)
    seq = body["seq"]
    # read-your-writes: the check sees the new consent at once
    status, _, answer = http.call(
        "GET",
        "/v1/consents/check?subject=p-1&controller=sp:app&purpose=dpv:ServiceProvision"
        "&category=dpv-pd:HeartRate",
    )
    assert status == 200 and answer == {
        "granted": True,
        "consent_id": body["entry"]["data"]["consent_id"],
        "seq": seq,
        "reason": None,
    }
    # idempotent resubmission
    status, _, again = http.post_jws(token)
    assert (status, again["seq"], again["duplicate"]) == (200, seq, True)
    AcceptedResult.model_validate(again)  # one of the two 200 schemas of docs/openapi.json
    # receipt, checked offline against the checkpoint key from the genesis entry
    status, _, receipt = http.call("GET", f"/v1/entries/{seq}")
    assert status == 200 and receipt["jws"] == token
    key = ledger.sequencer.ledger["checkpoint_key"]  # type: ignore[index]
    assert verify_receipt(Receipt.from_json(receipt), key) == seq
    status, kind, note = http.call("GET", "/v1/checkpoint")
    assert status == 200 and kind == "text/plain" and note.startswith("dfg.local/")
    status, _, proof = http.call("GET", f"/v1/proofs/consistency?first=1&second={seq}")
    assert status == 200
    # history, newest first, paginated
    cid = body["entry"]["data"]["consent_id"]
    for _ in range(2):
        use = ledger.sign(
            ledger.app,
            "consent.utilize",
            {  # type: ignore[attr-defined]
                "consent_id": cid,
                "purpose": "dpv:ServiceProvision",
                "data_categories": ["dpv-pd:HeartRate"],
            },
        )
        assert http.post_jws(use)[0] == 201
    status, _, page = http.call("GET", "/v1/subjects/p-1/history?limit=2")
    assert status == 200 and [e["kind"] for e in page["events"]] == ["used", "used"]
    status, _, rest = http.call("GET", f"/v1/subjects/p-1/history?limit=2&before={page['next_before']}")
    assert [e["kind"] for e in rest["events"]] == ["given"] and rest["next_before"] is None
    # a page that ends with the oldest event says there is no next page
    status, _, whole = http.call("GET", "/v1/subjects/p-1/history?limit=3")
    assert [e["kind"] for e in whole["events"]] == ["used", "used", "given"] and whole["next_before"] is None
    status, _, last = http.call("GET", f"/v1/subjects/p-1/history?limit=1&before={page['next_before']}")
    assert [e["kind"] for e in last["events"]] == ["given"] and last["next_before"] is None
    assert isinstance(proof["hashes"], list)


def test_batches_are_not_all_or_nothing(api: tuple[Http, Ledger]) -> None:
    http, ledger = api
    good, bad = _give(ledger, "p-2"), "not.a.jws"
    status, _, body = http.post_json("/v1/transactions", {"transactions": [good, bad, _give(ledger, "p-3")]})
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    assert body["results"][1]["problem"]["code"] == "non_canonical_base64"
    status, _, answers = http.post_json(
        "/v1/consents/check",
        {
            "questions": [
                {"subject": "p-2", "controller": "sp:app", "purpose": "dpv:ServiceProvision"},
                {"subject": "p-9", "controller": "sp:app", "purpose": "dpv:ServiceProvision"},
                {"subject": "p-3", "controller": "sp:app", "purpose": "dpv:Marketing"},
            ]
        },
    )
    assert status == 200
    assert [a["reason"] for a in answers["answers"]] == [None, "never_given", "purpose_not_covered"]


def test_a_pair_with_many_consents_is_read_off_the_event_loop(
    api: tuple[Http, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs on the server's event loop, and read every consent of the pair
    there: 50,000 copies for one subject held every other request for 0.46 s a check.
    The loop reads at most the pair's first ``FEW + 1``, and answers when that is all;
    a pair with more is ranked by the database in a thread of its own, and the answers
    are the same."""
    http, ledger = api
    read_on_a_loop = []
    check_all = consent_state.check_all

    def spy(*args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            read_on_a_loop.append(True)
        except RuntimeError:
            read_on_a_loop.append(False)
        return check_all(*args)

    monkeypatch.setattr(consent_state, "check_all", spy)
    tokens = [_give(ledger, "p-many") for _ in range(consent_state.FEW + 1)]
    assert http.post_json("/v1/transactions", {"transactions": tokens})[0] == 200
    asked = "subject=p-many&controller=sp:app&purpose="
    status, _, granted = http.call("GET", f"/v1/consents/check?{asked}dpv:ServiceProvision")
    assert status == 200 and granted["granted"] and read_on_a_loop == [False]
    status, _, refused = http.call("GET", f"/v1/consents/check?{asked}dpv:Marketing")
    assert status == 200 and read_on_a_loop == [False, False]
    assert (refused["reason"], refused["seq"]) == ("purpose_not_covered", granted["seq"])
    question = {"subject": "p-many", "controller": "sp:app", "purpose": "dpv:Marketing"}
    status, _, batch = http.post_json("/v1/consents/check", {"questions": [question]})
    assert status == 200 and batch["answers"] == [refused] and read_on_a_loop == [False] * 3
    status, _, few = http.call("GET", "/v1/consents/check?subject=p-1&controller=sp:app&purpose=x")
    assert status == 200 and few["reason"] == "never_given" and len(read_on_a_loop) == 3


#: ISO 8601 forms that are not RFC 3339 (a space for the "T", no seconds, an offset
#: without its colon or minutes, a week date): refused by both consent checks alike.
NOT_RFC_3339 = [
    (at, "invalid_parameter")
    for at in (
        "2026-11-23%2021:00:00Z",
        "2026-11-23T21:00Z",
        "2026-11-23T21:00:00%2B0100",
        "2026-11-23T21:00:00%2B01",
        "2026-W47-1T21:00:00Z",
    )
]

BAD_REQUESTS = [
    ("POST", "/v1/transactions", b"{", "application/json", 400, "malformed_json"),
    ("POST", "/v1/transactions", b'{"transactions": []}', "application/json", 400, "invalid_request"),
    (
        "POST",
        "/v1/transactions",
        b'{"transactions": ["a"], "x": 1}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "POST",
        "/v1/transactions",
        b'{"transactions": ["a"], "transactions": ["b"]}',
        "application/json",
        400,
        "malformed_json",
    ),
    (  # one question, two subjects: it was answered for the last
        "POST",
        "/v1/consents/check",
        b'{"questions": [{"subject": "p-x", "controller": "sp:app", "purpose": "x", "subject": "p-y"}]}',
        "application/json",
        400,
        "malformed_json",
    ),
    ("POST", "/v1/transactions", b"hello", "text/plain", 415, "unsupported_media_type"),
    ("POST", "/v1/transactions", b"a" * 20000, "application/jose", 413, "too_large"),
    ("POST", "/v1/transactions", "é.b.c".encode(), "application/jose", 400, "malformed_jws"),
    ("GET", "/v1/consents/check?subject=p&controller=sp:app", None, "", 400, "missing_parameter"),
    (
        "GET",
        "/v1/consents/check?subject=p&controller=sp:app&purpose=x&colour=red",
        None,
        "",
        400,
        "unknown_parameter",
    ),
    (
        "GET",
        "/v1/consents/check?subject=p&controller=sp:app&purpose=x&at=2026-02-30T00:00:00Z",
        None,
        "",
        400,
        "invalid_parameter",
    ),
    (
        "GET",
        "/v1/consents/check?subject=p&controller=sp:app&purpose=x&at=2026-01-01T00:00:00",
        None,
        "",
        400,
        "invalid_parameter",
    ),
    *(
        ("GET", f"/v1/consents/check?subject=p&controller=sp:app&purpose=x&at={at}", None, "", 400, code)
        for at, code in NOT_RFC_3339
    ),
    *(
        (
            "POST",
            "/v1/consents/check",
            json.dumps(
                {"questions": [{"subject": "p", "controller": "sp:app", "purpose": "x", "at": unquote(at)}]}
            ).encode(),
            "application/json",
            400,
            "invalid_request",
        )
        for at, _ in NOT_RFC_3339
    ),
    (
        "GET",
        "/v1/consents/check?subject=a%40b.com&controller=sp:app&purpose=x",
        None,
        "",
        400,
        "invalid_parameter",
    ),
    (
        "POST",
        "/v1/consents/check",
        b'{"questions": [{"subject": "p"}]}',
        "application/json",
        400,
        "invalid_request",
    ),
    ("GET", "/v1/entries/0", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/entries/abc", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/entries/999999", None, "", 404, "unknown_entry"),
    ("GET", "/v1/entries/" + "9" * 5000, None, "", 400, "invalid_parameter"),
    ("GET", "/v1/proofs/consistency?first=%201&second=2", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/proofs/consistency?first=1_0&second=20", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/proofs/consistency?first=%D9%A3&second=20", None, "", 400, "invalid_parameter"),
    (
        "POST",
        "/v1/consents/check",
        b'{"questions": [{"subject": "p", "controller": "sp:app", "purpose": "x"}]}',
        "text/plain",
        415,
        "unsupported_media_type",
    ),
    ("GET", "/v1/proofs/consistency?first=2&second=1", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/proofs/consistency?first=1&second=99999", None, "", 404, "unknown_tree_size"),
    ("GET", "/v1/proofs/consistency?first=x&second=2", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/principals/sp:nobody", None, "", 404, "unknown_principal"),
    ("GET", "/v1/principals/ALICE@x", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/badge/nothing", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/principals/sp:nobody%0A", None, "", 400, "invalid_parameter"),  # $ before a newline
    ("GET", "/v1/badge/sp:app%0A", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/badge/sp:nobody", None, "", 404, "unknown_principal"),
    ("GET", "/v1/subjects/a%20b/history", None, "", 400, "invalid_parameter"),
    ("GET", "/v1/badge/sp:app?format=png", None, "", 400, "invalid_parameter"),
    ("DELETE", "/v1/transactions", None, "", 405, "method_not_allowed"),
    ("GET", "/v2/nothing", None, "", 404, "not_found"),
    ("POST", "/graphql", b"{", "application/json", 400, "invalid_graphql_request"),
    ("POST", "/graphql", b'{"variables": {}}', "application/json", 400, "invalid_graphql_request"),
    ("POST", "/graphql", b'"{ __typename }"', "application/json", 400, "invalid_graphql_request"),
    ("POST", "/graphql", b"42", "application/json", 400, "invalid_graphql_request"),
    ("GET", "/graphql?query=mutation%7Bx%7D", None, "", 400, "invalid_graphql_request"),
    # one meaning per question: a repeated member is refused, not read as its last value
    (
        "POST",
        "/graphql",
        b'{"query": "{ a }", "query": "{ __typename }"}',
        "application/json",
        400,
        "malformed_json",
    ),
    (
        "GET",
        "/graphql?query=%7B__typename%7D&variables=%7B%22a%22:1,%22a%22:2%7D",
        None,
        "",
        400,
        "malformed_json",
    ),
    ("POST", "/graphql", b"[" * 100_000, "application/json", 400, "malformed_json"),  # was a 500
    ("POST", "/v1/consents/check", b"[" * 100_000, "application/json", 400, "malformed_json"),
    ("PUT", "/graphql", None, "", 405, "method_not_allowed"),
]


@pytest.mark.parametrize("params", ["variables=null", "extensions=null", "variables=%7B%7D"])
def test_a_graphql_get_may_send_null_variables_and_extensions(api: tuple[Http, Ledger], params: str) -> None:
    """Only a POST body must be a JSON object: a GET's variables and extensions are JSON
    values that may be null (GraphQL over HTTP), and were read as such before."""
    http, _ = api
    status, _, answer = http.call("GET", f"/graphql?query=%7B__typename%7D&{params}")
    assert (status, answer) == (200, {"data": {"__typename": "Query"}}), answer


@pytest.mark.parametrize(("method", "path", "body", "kind", "status", "code"), BAD_REQUESTS)
def test_bad_requests_get_a_problem_and_change_nothing(
    api: tuple[Http, Ledger],
    method: str,
    path: str,
    body: bytes | None,
    kind: str,
    status: int,
    code: str,
) -> None:
    http, _ = api
    before = http.call("GET", "/healthz")[2]["size"]
    got, content_type, problem = http.call(method, path, body, kind)
    assert (got, content_type) == (status, "application/problem+json"), problem
    operation = _documented_operation(method, path)
    if operation is not None:  # the answer is one the OpenAPI document lists for the route
        assert str(status) in operation["responses"], (method, path, sorted(operation["responses"]))
    assert problem["code"] == code and problem["status"] == status and problem["detail"]
    assert http.call("GET", "/healthz")[2]["size"] == before


def _documented_operation(method: str, path: str) -> dict[str, Any] | None:
    """The OpenAPI operation that serves ``method path``, if the document has one."""
    document = build_openapi("test")
    route = urlsplit(path).path
    for template, operations in document["paths"].items():
        if re.fullmatch(re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(template)), route):
            found: dict[str, Any] | None = operations.get(method.lower())
            return found
    return None


def test_protocol_errors_are_problems_too(api: tuple[Http, Ledger]) -> None:
    """A 405 names the allowed methods; a body that cannot be decompressed is the
    client's mistake (400), not the server's."""
    http, _ = api
    request = urllib.request.Request(http.url + "/v1/transactions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"
    head = urllib.request.Request(http.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=30) as response:
        assert response.status == 200 and response.read() == b""
    request = urllib.request.Request(
        http.url + "/v1/consents/check",
        data=b"this is not gzip",
        method="POST",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    with pytest.raises(urllib.error.HTTPError) as unreadable:
        urllib.request.urlopen(request, timeout=30)
    problem = json.loads(unreadable.value.read())
    assert (unreadable.value.code, problem["code"]) == (400, "malformed_body")


def test_a_body_in_a_coding_the_server_does_not_decode_is_refused_not_read_as_plain(
    api: tuple[Http, Ledger],
) -> None:
    """aiohttp decodes gzip and deflate and passes any other coding through: a body
    labelled ``foo`` was answered as if it were plain JSON."""
    http, _ = api
    question = json.dumps({"questions": [{"subject": "p-1", "controller": "sp:app", "purpose": "x"}]})
    for coding in ("foo", "gzip, gzip", "x-gzip"):
        request = urllib.request.Request(
            http.url + "/v1/consents/check",
            data=question.encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Content-Encoding": coding},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 415 and refused.value.headers["Accept-Encoding"] == "gzip, deflate"
        assert json.loads(refused.value.read())["code"] == "unsupported_content_encoding"
    request = urllib.request.Request(
        http.url + "/v1/consents/check",
        data=gzip.compress(question.encode()),
        method="POST",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    with urllib.request.urlopen(request, timeout=30) as answered:  # what it decodes, it takes
        assert answered.status == 200


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: abc\r\n",
        b"Transfer-Encoding: chunked\r\n",  # then a chunk size that is no number
        b"X-Long: " + b"a" * 9000 + b"\r\n",
    ],
)
def test_a_request_that_is_not_well_formed_http_is_one_warning_not_a_traceback(
    api: tuple[Http, Ledger], caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    """aiohttp answers it with a plain 400 itself, and logged each as an error with its
    traceback: a scanner could fill the operator's log."""
    http, _ = api
    caplog.set_level(logging.DEBUG)
    answer, _ = send_raw(
        http.url,
        b"POST /v1/consents/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + head
        + b"\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    time.sleep(0.2)
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert any("refused a malformed request (400)" in r.getMessage() for r in caplog.records)
    assert http.call("GET", "/healthz")[0] == 200


def test_a_read_the_database_does_not_answer_holds_no_other_request(
    api: tuple[Http, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A principal's, an entry's or a checkpoint's read ran on the event loop: while the
    database did not answer (PostgreSQL restarting: a pooled connection is waited for
    5 s), every other request waited, /healthz too."""
    import threading

    from projections import keys

    http, _ = api
    stuck, release, real = threading.Event(), threading.Event(), keys.principal

    def not_answering(cursor: Any, principal_id: str) -> Any:
        stuck.set()
        release.wait(30)
        return real(cursor, principal_id)

    monkeypatch.setattr(keys, "principal", not_answering)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(http.call, "GET", "/v1/principals/sp:app")
        assert stuck.wait(10)
        try:
            with urllib.request.urlopen(http.url + "/healthz", timeout=10) as health:
                assert health.status == 200 and not release.is_set()
        finally:
            release.set()
        assert waiting.result(30)[0] == 200


def test_an_undecodable_body_leaves_no_traceback_in_the_log(
    api: tuple[Http, Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    """The 400 is the whole story: aiohttp must not then try to drain the body it could
    not decode, which raised the same error again and logged it as an unhandled one."""
    http, _ = api
    caplog.set_level(logging.DEBUG)
    for path in ("/v1/consents/check", "/v1/transactions"):
        request = urllib.request.Request(
            http.url + path,
            data=b"this is not gzip",
            method="POST",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        with pytest.raises(urllib.error.HTTPError) as unreadable:
            urllib.request.urlopen(request, timeout=30)
        assert unreadable.value.code == 400 and unreadable.value.headers["Connection"] == "close"
        assert json.loads(unreadable.value.read())["code"] == "malformed_body"
    assert http.call("GET", "/healthz")[0] == 200  # the server is fine, and answers after
    time.sleep(0.2)  # aiohttp logged its drain failure just after the answer was sent
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("path", ["/v1/transactions", "/v1/consents/check"])
def test_a_client_that_leaves_mid_body_is_no_server_error(
    api: tuple[Http, Ledger], caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """A client that hangs up before sending the body it announced is not a bug of the
    server: it was logged at ERROR, with a traceback, as an unhandled error (a 500)."""
    http, _ = api
    caplog.set_level(logging.DEBUG)
    host, port = urlsplit(http.url).hostname, urlsplit(http.url).port
    with socket.create_connection((host, port), timeout=10) as client:
        client.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{".encode()
        )
        time.sleep(0.2)  # the handler is reading the body
    time.sleep(0.3)
    assert http.call("GET", "/healthz")[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("path", ["/v1/transactions", "/v1/consents/check", "/graphql"])
def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    api: tuple[Http, Ledger], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A client that announced a body and sent part of it held its connection and
    handler for as long as it liked (a slow-client attack)."""
    from gateways.http import api as api_module

    monkeypatch.setattr(api_module, "BODY_TIMEOUT_S", 0.5)
    http, _ = api
    kind = "application/jose" if path == "/v1/transactions" else "application/json"
    head, body = send_raw(
        http.url,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: 1000\r\n\r\n{{".encode(),
    )
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["code"] == "body_timeout"
    assert http.call("GET", "/healthz")[0] == 200


def test_both_consent_checks_take_rfc_3339_instants(api: tuple[Http, Ledger]) -> None:
    http, _ = api
    question = "subject=p-1&controller=sp:app&purpose=dpv:ServiceProvision"
    for at in ("2026-11-23T21:00:00Z", "2026-11-23T22:00:00.5+01:00", "2026-11-23T16:00:00.123456-05:00"):
        status, _, answer = http.call("GET", f"/v1/consents/check?{question}&at={quote(at)}")
        assert (status, answer["reason"]) == (200, "never_given"), answer
        body = {"questions": [{"subject": "p-1", "controller": "sp:app", "purpose": "x", "at": at}]}
        status, _, answers = http.post_json("/v1/consents/check", body)
        assert (status, answers["answers"][0]["reason"]) == (200, "never_given"), answers


def test_refused_transaction_is_422_with_its_code(api: tuple[Http, Ledger]) -> None:
    http, ledger = api
    cid = str(uuid.uuid4())
    assert http.post_jws(_give(ledger, "p-4", cid))[0] == 201
    before = _size(http)
    status, kind, problem = http.post_jws(_give(ledger, "p-4", cid))
    assert (status, kind, problem["code"]) == (422, "application/problem+json", "consent_exists")
    assert _size(http) == before


def test_one_jws_body_may_end_with_one_line_end_and_nothing_else(api: tuple[Http, Ledger]) -> None:
    """A file or ``echo`` leaves a line end after the token: ignored. Other white space
    is the token's and refused, as the same token would be in a batch."""
    http, ledger = api
    for body in (b" " + _give(ledger, "p-5").encode(), _give(ledger, "p-5").encode() + b"\n\n"):
        status, _, problem = http.call("POST", "/v1/transactions", body, "application/jose")
        assert (status, problem["code"]) == (400, "non_canonical_base64"), problem
        ledger.app.nonce -= 1  # type: ignore[attr-defined]
    for end in (b"\n", b"\r\n"):
        token = _give(ledger, "p-5").encode()
        assert http.call("POST", "/v1/transactions", token + end, "application/jose")[0] == 201


def test_principal_badge_health_metrics_openapi(api: tuple[Http, Ledger]) -> None:
    http, ledger = api
    assert http.post_jws(_give(ledger, "p-5"))[0] == 201
    status, _, principal = http.call("GET", "/v1/principals/sp:app")
    assert status == 200 and principal["keys"][0]["kid"] == ledger.app.kid  # type: ignore[attr-defined]
    status, kind, svg = http.call("GET", "/v1/badge/sp:app")
    assert status == 200 and kind == "image/svg+xml" and svg.startswith("<svg") and "1 consents" in svg
    status, _, statement = http.call("GET", "/v1/badge/sp:app?format=json")
    assert statement["entries_recorded"] == 1 and statement["consents_recorded"] == 1
    status, _, health = http.call("GET", "/healthz")
    assert health["status"] == "ok" and health["views_lag"] == 0
    status, _, metrics = http.call("GET", "/metrics")
    for name in (
        "dfg_entries_appended_total",
        "dfg_ledger_size",
        "dfg_checkpoint_size",
        "dfg_projection_lag_entries",
        "dfg_http_request_duration_seconds_bucket",
    ):
        assert name in metrics
    status, _, spec = http.call("GET", "/openapi.json")
    assert spec["openapi"].startswith("3.1")
    from gateways.http.api import ROUTES

    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}


def test_consistency_proof_verifies(api: tuple[Http, Ledger]) -> None:
    http, ledger = api
    for i in range(5):
        assert http.post_jws(_give(ledger, f"p-c{i}"))[0] == 201
    size = _size(http)
    status, _, proof = http.call("GET", f"/v1/proofs/consistency?first=2&second={size}")
    assert status == 200
    reader = open_store(ledger.settings)
    try:
        old, new = root_at(2, reader.read_nodes), root_at(size, reader.read_nodes)
    finally:
        reader.close()
    assert verify_consistency(2, size, old, new, [bytes.fromhex(h) for h in proof["hashes"]])


def test_concurrent_submitters_are_grouped_and_all_answered(api: tuple[Http, Ledger]) -> None:
    """Submissions from many threads at once (one signer each, so every signer's nonces
    arrive in order): all accepted, each answered with its own entry, no gap."""
    http, ledger = api
    signers = []
    for i in range(8):
        key = OKPKey.generate_key("Ed25519")
        admit = ledger.sign(
            ledger.operator,
            "principal.admit",
            {
                "principal": f"sp:k{i}",
                "kind": "service_provider",
                "display_name": f"K{i}",
                "jwk": public_jwk(key).as_dict(),
            },
        )
        assert http.post_jws(admit)[0] == 201
        signers.append(TransactionSigner(f"sp:k{i}", key, CHAIN))
    work = [
        ledger.sign(
            s,
            "consent.give",
            {
                "consent_id": str(uuid.uuid4()),
                "controller": s.principal,
                "subject": f"p-t{i}",
                "level": 1,
                "method": "app",
                "terms": TERMS,
            },
        )
        for i, s in enumerate(signers)
    ]
    before = _size(http)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(http.post_jws, work))
    assert all(status == 201 for status, _, _ in results), results
    seqs = sorted(body["seq"] for _, _, body in results)
    assert seqs == list(range(before + 1, before + 1 + len(work)))
    assert _size(http) == before + len(work)


def test_a_receipt_can_be_asked_for_against_the_newest_checkpoint_the_witnesses_made_final(
    ledger: Ledger,
) -> None:
    """A client that requires witnesses could only get receipts against the latest
    checkpoint, which on a busy ledger is rarely cosigned yet: its check failed."""
    from gateways.sdk import ConsentClient, DfgApiError, ReceiptError, WitnessPolicy
    from infra.bootstrap import checkpoint_key
    from ledger.witness import cosign, witness_verifier

    witnesses = []
    for name in ("node:w0", "node:w1"):
        key = OKPKey.generate_key("Ed25519")
        jwk = public_jwk(key).as_dict()
        body = {"principal": name, "kind": "node_operator", "display_name": name, "jwk": jwk}
        ledger.accept(ledger.sign(ledger.operator, "principal.admit", body))
        verifier = witness_verifier(name, jwk)
        assert verifier is not None
        witnesses.append((name, key, verifier.to_string()))
    ledger.app = ledger.admit("sp:app", "service_provider")  # type: ignore[attr-defined]
    (given,) = ledger.accept(_give(ledger))
    assert ledger.sequencer.checkpoint_now()
    ledger.sequencer.store.close()
    signer_key = checkpoint_key(ledger.settings)
    assert signer_key is not None
    policy = WitnessPolicy.from_keys([vkey for _, _, vkey in witnesses], 2)
    with running_server(ledger.settings) as url:
        http = Http(url)
        status, _, problem = http.call("GET", f"/v1/entries/{given.seq}?checkpoint=final")
        assert (status, problem["code"]) == (409, "not_yet_final")
        assert "none is final yet" in problem["detail"]
        bad = http.call("GET", f"/v1/entries/{given.seq}?checkpoint=newest")
        assert (bad[0], bad[2]["code"]) == (400, "invalid_parameter")

        (status, _, latest) = http.call("GET", f"/v1/entries/{given.seq}")
        note, size = Receipt.from_json(latest).checkpoint, Receipt.from_json(latest).tree_size
        store = open_store(ledger.settings)
        try:  # one cosignature: not yet the quorum of two
            name, key, _ = witnesses[0]
            store.save_cosignature(size, name, cosign(note, name, key.private_key, 1))
            status, _, problem = http.call("GET", f"/v1/entries/{given.seq}?checkpoint=final")
            assert (status, problem["code"]) == (409, "not_yet_final")
            name, key, _ = witnesses[1]
            store.save_cosignature(size, name, cosign(note, name, key.private_key, 1))
        finally:
            store.close()
        status, _, final = http.call("GET", f"/v1/entries/{given.seq}?checkpoint=final")
        assert status == 200
        assert verify_receipt(Receipt.from_json(final), signer_key.verifier(), witnesses=policy) == given.seq
        client = ConsentClient(url, checkpoint_key=signer_key.verifier().to_string())
        assert client.receipt(given.seq, witnesses=policy).seq == given.seq
        other = witness_verifier("node:w9", public_jwk(OKPKey.generate_key("Ed25519")).as_dict())
        assert other is not None  # the client's own policy decides: a witness it trusts did not cosign
        with pytest.raises(ReceiptError, match="cosign"):
            client.receipt(given.seq, witnesses=WitnessPolicy.from_keys([other.to_string()], 1))
        with pytest.raises(DfgApiError) as refused:
            client.entry(given.seq + 1, final=True)
        assert refused.value.code == "unknown_entry"


def test_a_page_of_the_log_ends_before_16_mib(ledger: Ledger) -> None:
    """A page was up to 5,000 entries whatever their size: 150 analysis.duplicate of 500
    bytes each (entries of about 1 MB) made one anonymous GET hold 140 MB in the server's
    memory, and 5,000 of them would hold gigabytes."""
    from test_analysis_lifecycle import _draft, _wide_calculation, make_federation

    f = make_federation(ledger)
    analysis = _draft(f)
    ledger.accept(
        *(ledger.sign(f.analyst, "calculation.create", _wide_calculation(analysis)) for _ in range(200))
    )
    copies = [{"analysis_id": analysis, "new_analysis_id": str(uuid.uuid4())} for _ in range(30)]
    ledger.accept(*(ledger.sign(f.analyst, "analysis.duplicate", body) for body in copies))
    size = ledger.sequencer.size
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url:
        pages, start = [], 1
        while start <= size:
            with urllib.request.urlopen(f"{url}/v1/log?start={start}&limit=5000", timeout=60) as response:
                body = response.read()
            assert 0 < len(body) <= 16 * 1024 * 1024
            seqs = [json.loads(line)["seq"] for line in body.splitlines()]
            assert seqs == list(range(start, start + len(seqs)))
            pages.append(len(seqs))
            start += len(seqs)
    assert len(pages) > 1 and sum(pages) == size


def test_a_witness_key_outside_its_validity_makes_no_witness(ledger: Ledger) -> None:
    """The server's witnesses were the node operators' unrevoked keys, also one before
    its not_before (or past its not_after), which may sign nothing: its cosignatures
    counted towards finality, and it raised the quorum."""
    for name, validity in (("node:w0", {}), ("node:w1", {"not_before": "2099-01-01T00:00:00Z"})):
        admit = {"principal": name, "kind": "node_operator", "display_name": name}
        ledger.accept(ledger.sign(ledger.operator, "principal.admit", admit))
        key = {"principal": name, "jwk": public_jwk(OKPKey.generate_key("Ed25519")).as_dict(), **validity}
        ledger.accept(ledger.sign(ledger.operator, "key.add", key))
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url:
        status, _, answer = Http(url).call("GET", "/v1/checkpoint/witnessed")
    assert status == 200 and (answer["witnesses"], answer["quorum"]) == (["node:w0"], 1)


def test_no_receipt_is_final_on_a_ledger_without_witnesses(api: tuple[Http, Ledger]) -> None:
    http, _ = api
    status, _, problem = http.call("GET", "/v1/entries/1?checkpoint=final")
    assert (status, problem["code"]) == (409, "no_witnesses")


def test_the_root_names_the_ledger_and_leads_to_every_document(api: tuple[Http, Ledger]) -> None:
    """``make run`` prints the server's address; opened in a browser it answered 404."""
    http, ledger = api
    status, kind, index = http.call("GET", "/")
    assert (status, kind) == (200, "application/json")
    assert index["service"] == "dfg" and index["chain"] == ledger.sequencer.chain
    assert index["size"] == _size(http)
    for name, path in index["links"].items():
        query = "?query=%7B__typename%7D" if name == "graphql" else ""
        with urllib.request.urlopen(http.url + path + query, timeout=30) as response:
            assert response.status == 200, (name, path)
