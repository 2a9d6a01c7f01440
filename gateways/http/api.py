"""The consent API's handlers. Each route is declared once in ``ROUTES``; the router
and the OpenAPI document are both built from that table.

Handlers only translate: a transaction goes to the ledger service, a question goes
to a projection. No handler writes to a store.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from domain.commands import Instant
from domain.identifiers import CODE_PATTERN, PRINCIPAL_ID_PATTERN, PSEUDONYM_PATTERN, is_principal_id
from gateways.http import models as m
from gateways.http.badge import badge_svg
from gateways.http.context import METRICS, OPENAPI, SERVICE, VIEWS, WITNESS_QUORUM
from gateways.http.problems import Problem, problem_body
from gateways.http.responses import json_response
from infra.ledger_service import LedgerService
from infra.storage.errors import storage_unavailable
from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.jws import MAX_JWS_BYTES, RepeatedMember, unique_members
from ledger.merkle import consistency_proof
from ledger.receipt import Receipt, ReceiptError, make_receipt
from ledger.sequencer import Accepted
from ledger.store import HeadMoved, LedgerStore, StoredCheckpoint, StoredEntry
from ledger.witness import WitnessPolicy, with_cosignatures, witness_verifier
from projections import consent_state, keys, timeline
from projections.consent_state import ConsentAnswer, check_few
from projections.consent_state import check as check_consent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "string" | "integer" | "date-time"
    required: bool = False
    repeated: bool = False
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] = ()
    pattern: str | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    query: tuple[Param, ...] = ()
    path_params: tuple[Param, ...] = ()
    body: dict[str, type[BaseModel] | str] = field(default_factory=dict)  # content type -> model
    # status -> (description, model); a tuple of models is any one of them
    responses: dict[int, tuple[str, type[BaseModel] | tuple[type[BaseModel], ...] | str | None]] = field(
        default_factory=dict
    )
    tag: str = "ledger"


def service(request: web.Request) -> LedgerService:
    return request.app[SERVICE]


# --- parameters and bodies ----------------------------------------------------------


def query_params(request: web.Request, route: Route) -> dict[str, Any]:
    """Validated query parameters; unknown or malformed ones are a 400 problem."""
    allowed = {p.name: p for p in route.query}
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise Problem(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, param in allowed.items():
        values = request.query.getall(name, [])
        if not values:
            if param.required:
                raise Problem(400, "missing_parameter", f"query parameter {name!r} is required")
            continue
        if len(values) > 1 and not param.repeated:
            raise Problem(400, "invalid_parameter", f"query parameter {name!r} may appear once")
        parsed = [_parse(param, v) for v in values]
        out[name] = parsed if param.repeated else parsed[0]
    return out


def _parse(param: Param, value: str) -> Any:
    if param.type == "integer":
        if not _INTEGER.fullmatch(value):
            raise Problem(400, "invalid_parameter", f"{param.name} must be an integer")
        number = int(value)
        if (param.minimum is not None and number < param.minimum) or (
            param.maximum is not None and number > param.maximum
        ):
            raise Problem(400, "invalid_parameter", f"{param.name} is out of range")
        return number
    if param.type == "date-time":
        # The same form as in a batch check's body and in transactions: ``fromisoformat``
        # alone also read ISO 8601 forms that are not RFC 3339 (a space for the "T",
        # minutes without seconds, "+0100", week dates), which the batch check refused.
        try:
            return _INSTANT.validate_python(value)
        except ValidationError as exc:
            reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise Problem(400, "invalid_parameter", f"{param.name}: {reason}") from None
    if param.enum and value not in param.enum:
        raise Problem(400, "invalid_parameter", f"{param.name} must be one of {', '.join(param.enum)}")
    return value


MAX_INT = 2**53 - 1  # exact in every JSON implementation
_INSTANT: TypeAdapter[datetime] = TypeAdapter(Instant)
#: An integer as written in a URL: ASCII digits only (``int`` would also take spaces,
#: underscores and other scripts' digits), and few enough that ``int`` never refuses
#: them (it does above 4,300 digits); the range is checked after.
_INTEGER = re.compile(r"-?[0-9]{1,20}", re.ASCII)


def path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not _INTEGER.fullmatch(raw) or not 1 <= int(raw) <= MAX_INT:
        raise Problem(400, "invalid_parameter", f"{name} must be an integer from 1 to {MAX_INT}")
    return int(raw)


#: How long the server waits for a request's whole body (the API's bodies are at most
#: 16 MiB). Without a bound a client that announces a body and sends it slowly, or
#: never, holds its connection and handler for good (aiohttp has no such timeout).
BODY_TIMEOUT_S = 60.0


async def read_body(request: web.Request) -> bytes:
    """The request's body, or 408 ``body_timeout`` (and the connection closed) when it
    has not all arrived within ``BODY_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.read()
    except TimeoutError:
        late = Problem(408, "body_timeout", f"the request body did not arrive within {BODY_TIMEOUT_S:g} s")
        late.force_close()  # the rest of the body is not read: this connection is done
        request.content.feed_eof()
        raise late from None


def _repeated_member(raw: bytes) -> str | None:
    """A member name an object of the body repeats, or None. Parsers disagree on which
    value counts (pydantic's takes the last): a question must have one meaning, as a
    transaction's payload must (``ledger.jws.unique_members``)."""
    try:
        json.loads(raw, object_pairs_hook=unique_members)
    except RepeatedMember as exc:
        return exc.name
    except (ValueError, RecursionError):  # not JSON: pydantic says why below
        return None
    return None


async def json_body(request: web.Request, model: type[BaseModel]) -> Any:
    if _content_type(request) != "application/json":
        raise Problem(415, "unsupported_media_type", "send the request body as application/json")
    raw = await read_body(request)
    if (repeated := _repeated_member(raw)) is not None:
        raise Problem(
            400, "malformed_json", f"the request body repeats the member {repeated[:80]!r} in one object"
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise Problem(400, "malformed_json", f"the request body is not JSON: {first['msg']}") from None
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Problem(400, "invalid_request", f"{where}: {first['msg']}") from None


def _content_type(request: web.Request) -> str:
    return request.content_type.split(";")[0].strip().lower()


# --- transactions -------------------------------------------------------------------


#: Refusals of the envelope itself (the request is malformed) are 400; refusals by the
#: ledger's rules (keys, nonces, consent state) are 422. Either way nothing was recorded.
MALFORMED = frozenset(
    {
        "malformed_jws",
        "non_canonical_base64",
        "malformed_payload",
        "alg_not_allowed",
        "unknown_type",
        "invalid_body",
    }
)


def _rejected_status(code: str) -> int:
    if code == "too_large":
        return 413
    return 400 if code in MALFORMED else 422


def _accepted_json(outcome: Accepted) -> str:
    """One accepted result as JSON text. The entry's canonical bytes are a JSON object
    already, so they are embedded verbatim (no decode and re-encode per entry)."""
    entry = outcome.entry
    duplicate = "true" if outcome.duplicate else "false"
    return (
        f'{{"status": "accepted", "seq": {int(entry.seq)}, "leaf_hash": "{entry.leaf_hash.hex()}",'
        f' "duplicate": {duplicate}, "entry": {entry.canonical.decode()}}}'
    )


def _outcome_json(outcome: Accepted | Rejected) -> str:
    if isinstance(outcome, Accepted):
        return _accepted_json(outcome)
    status = _rejected_status(outcome.code)
    return json.dumps({"status": "rejected", "problem": problem_body(status, outcome.code, outcome.message)})


def _json_text(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="application/json")


async def _submit(request: web.Request, tokens: list[str]) -> list[Accepted | Rejected]:
    try:
        outcomes = await asyncio.wrap_future(service(request).submit(tokens))
    except HeadMoved as exc:  # logged once, when the sequencer stopped
        raise Problem(503, "ledger_unavailable", f"the ledger could not store this now: {exc}") from None
    except Exception as exc:
        if not storage_unavailable(exc):  # an outage was logged by the ledger service, in one line
            request.app.logger.exception("the ledger could not commit a batch")
        raise Problem(
            503, "ledger_unavailable", "the ledger could not store this now; resubmit the same JWS"
        ) from None
    request.app[METRICS].appended(sum(isinstance(o, Accepted) and not o.duplicate for o in outcomes))
    return outcomes


def _without_line_end(body: bytes) -> bytes:
    """The token without the one line end a file or ``echo`` leaves after it. Any other
    white space is the token's, and refused with it (``non_canonical_base64``), as in a
    batch: the same token is accepted or refused whichever way it is sent."""
    for end in (b"\r\n", b"\n"):
        if body.endswith(end):
            return body[: -len(end)]
    return body


async def post_transactions(request: web.Request) -> web.StreamResponse:
    kind = _content_type(request)
    if kind == "application/jose":
        raw = _without_line_end(await read_body(request))
        if len(raw) > MAX_JWS_BYTES:
            raise Problem(413, "too_large", f"a transaction is at most {MAX_JWS_BYTES} bytes")
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            raise Problem(400, "malformed_jws", "a compact JWS is ASCII") from None
        (outcome,) = await _submit(request, [token])
        if isinstance(outcome, Rejected):
            raise Problem(_rejected_status(outcome.code), outcome.code, outcome.message)
        return _json_text(_accepted_json(outcome), status=200 if outcome.duplicate else 201)
    if kind == "application/json":
        batch = await json_body(request, m.TransactionBatch)
        outcomes = await _submit(request, batch.transactions)
        return _json_text('{"results": [' + ", ".join(_outcome_json(o) for o in outcomes) + "]}")
    raise Problem(
        415, "unsupported_media_type", "send application/jose (one JWS) or application/json (a batch)"
    )


# --- consent checks -----------------------------------------------------------------


def _asked(request: web.Request, question: m.ConsentQuestion) -> tuple[Any, ...]:
    at = question.at or service(request).sequencer.now()
    return question.subject, question.controller, question.purpose, question.categories, at


def _answer(request: web.Request, question: m.ConsentQuestion, cursor: Any) -> dict[str, Any]:
    return check_consent(cursor, *_asked(request, question)).as_dict()


async def get_check(request: web.Request) -> web.StreamResponse:
    params = query_params(request, ROUTE_CHECK)
    try:
        question = m.ConsentQuestion(
            subject=params["subject"],
            controller=params["controller"],
            purpose=params["purpose"],
            categories=params.get("category", []),
            at=params.get("at"),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Problem(400, "invalid_parameter", f"{first['loc'][0]}: {first['msg']}") from None
    asked = _asked(request, question)
    with request.app[VIEWS].transaction(commit=False) as cursor:
        answer = check_few(cursor, *asked)  # a bounded read, on the loop
    if answer is None:  # a pair with more consents: ranked by the database, in a thread of their own

        def rank_all() -> ConsentAnswer:  # the bounded read said it is not all: not again
            with request.app[VIEWS].transaction(commit=False) as cursor:
                return consent_state.check_all(cursor, *asked)

        answer = await asyncio.get_running_loop().run_in_executor(_MANY_CONSENTS, rank_all)
    return json_response(answer.as_dict())


#: Where a check of a pair with more than ``FEW`` consents runs. It costs the database a
#: pass over the pair's consents (20 ms for 50,000): one thread, so that many such
#: checks at once take neither the loop nor the worker threads (and cores) every other
#: request needs, but wait for each other.
_MANY_CONSENTS = ThreadPoolExecutor(1, thread_name_prefix="dfg-consent-checks")


async def post_checks(request: web.Request) -> web.StreamResponse:
    batch = await json_body(request, m.ConsentQuestions)

    def answer_all() -> list[dict[str, Any]]:
        with request.app[VIEWS].transaction(commit=False) as cursor:
            return [_answer(request, q, cursor) for q in batch.questions]

    answers = await asyncio.get_running_loop().run_in_executor(None, answer_all)
    return json_response({"answers": answers})


T = TypeVar("T")


# --- entries, checkpoints and proofs --------------------------------------------------


async def _off_loop(read: Callable[[], T]) -> T:
    """Run a handler's database reads in a worker thread: on the event loop, a database
    that does not answer (PostgreSQL restarting: a pooled connection is waited for up to
    5 s) held every other request, /healthz too. The consent check, the hot path whose
    reads take microseconds on a healthy database, stays on the loop, but for a pair
    with more consents than it reads there (``check_few``; ``_MANY_CONSENTS``)."""
    return await asyncio.get_running_loop().run_in_executor(None, read)


async def get_entry(request: web.Request) -> web.StreamResponse:
    seq = path_int(request, "seq")
    final = query_params(request, ROUTE_ENTRY).get("checkpoint") == "final"
    ledger = service(request)
    store = ledger.sequencer.store
    if seq > ledger.sequencer.size:
        raise Problem(404, "unknown_entry", f"the ledger has {ledger.sequencer.size} entries")

    def read() -> tuple[StoredEntry, Receipt]:
        checkpoint: StoredCheckpoint | None
        if final:
            checkpoint = _final_checkpoint_covering(request, seq)
        else:
            checkpoint = store.latest_checkpoint()
            if checkpoint is None or checkpoint.size < seq:
                # Checkpoints follow within a second anyway; a reader asking now gets one now.
                ledger.sequencer.checkpoint_now()
                checkpoint = store.latest_checkpoint()
        assert checkpoint is not None
        (stored,) = store.read_entries(seq, 1)
        try:
            return stored, make_receipt(seq, stored.canonical, checkpoint, store.read_nodes)
        except ReceiptError as exc:
            raise Problem(404, "unknown_entry", str(exc)) from None

    stored, receipt = await _off_loop(read)
    entry = Entry.decode(stored.canonical)
    body = receipt.to_json()
    body["jws"] = entry.tx
    body["event"] = {
        "aggregate": str(entry.aggregate_id),
        "version": entry.version,
        "type": entry.event_type,
        "ts": json.loads(stored.canonical)["ts"],
        "data": entry.data,
    }
    return json_response(body)


async def get_checkpoint(request: web.Request) -> web.StreamResponse:
    checkpoint = await _off_loop(service(request).sequencer.store.latest_checkpoint)
    if checkpoint is None:
        raise Problem(404, "no_checkpoint", "the ledger has no checkpoint yet")
    note = with_cosignatures(checkpoint.note, checkpoint.cosignatures)
    return web.Response(text=note, content_type="text/plain")


def _witness_policy(request: web.Request) -> WitnessPolicy | None:
    with request.app[VIEWS].transaction(commit=False) as cursor:
        registered = keys.witness_keys(cursor, service(request).sequencer.now())
    witnesses = {
        name: [v for jwk in jwks if (v := witness_verifier(name, jwk)) is not None]
        for name, jwks in registered.items()
    }
    witnesses = {name: found for name, found in witnesses.items() if found}
    if not witnesses:
        return None
    quorum = request.app[WITNESS_QUORUM] or len(witnesses) // 2 + 1
    return WitnessPolicy(witnesses, min(quorum, len(witnesses)))


def _newest_final(store: LedgerStore, policy: WitnessPolicy) -> StoredCheckpoint | None:
    """The newest checkpoint the policy's quorum of witnesses cosigned (among the
    store's newest cosigned ones)."""
    for candidate in store.cosigned_checkpoints(policy.quorum):
        if policy.is_final(candidate.note, candidate.cosignatures):
            return candidate
    return None


def _final_checkpoint_covering(request: web.Request, seq: int) -> StoredCheckpoint:
    """A receipt for a client that requires witnesses: the latest checkpoint is rarely
    cosigned yet on a busy ledger, so its receipt would fail such a client's check."""
    policy = _witness_policy(request)
    if policy is None:
        raise Problem(409, "no_witnesses", "no witness is registered: no checkpoint can be final")
    final = _newest_final(service(request).sequencer.store, policy)
    if final is None or final.size < seq:
        newest = f"the newest final checkpoint has size {final.size}" if final else "none is final yet"
        raise Problem(
            409,
            "not_yet_final",
            f"no checkpoint that {policy.quorum} of the {len(policy.witnesses)} witnesses cosigned"
            f" covers entry {seq} yet ({newest}); ask again once they have cosigned a newer one",
        )
    return final


def _witnessed(checkpoint: StoredCheckpoint, policy: WitnessPolicy | None) -> dict[str, Any]:
    note = with_cosignatures(checkpoint.note, checkpoint.cosignatures)
    return {
        "size": checkpoint.size,
        "root": checkpoint.root.hex(),
        "note": note,
        "cosigned_by": sorted(policy.cosigners(note)) if policy else [],
    }


async def get_witnessed_checkpoint(request: web.Request) -> web.StreamResponse:
    store = service(request).sequencer.store

    def read() -> tuple[WitnessPolicy | None, StoredCheckpoint | None, StoredCheckpoint | None]:
        policy = _witness_policy(request)
        final = _newest_final(store, policy) if policy is not None else None
        return policy, store.latest_checkpoint(), final

    policy, latest, final = await _off_loop(read)
    return json_response(
        {
            "witnesses": sorted(policy.witnesses) if policy else [],
            "quorum": policy.quorum if policy else 0,
            "latest": _witnessed(latest, policy) if latest else None,
            "final": _witnessed(final, policy) if final else None,
        }
    )


async def get_consistency(request: web.Request) -> web.StreamResponse:
    params = query_params(request, ROUTE_CONSISTENCY)
    first, second = params["first"], params["second"]
    size = service(request).sequencer.size
    if second > size:
        raise Problem(404, "unknown_tree_size", f"the ledger has {size} entries")
    if first > second:
        raise Problem(400, "invalid_parameter", "first must not be larger than second")
    read_nodes = service(request).sequencer.store.read_nodes
    hashes = await _off_loop(lambda: consistency_proof(first, second, read_nodes))
    return json_response({"first": first, "second": second, "hashes": [h.hex() for h in hashes]})


#: A page of the log ends before this many bytes (it holds one entry at least, however
#: large): an entry may be up to ``MAX_ENTRY_BYTES``, so 5,000 of them were gigabytes
#: held in the server's memory for one anonymous request. Read this many entries at a time.
MAX_LOG_PAGE_BYTES = 16 * 1024 * 1024
LOG_READ_ENTRIES = 64


async def get_log(request: web.Request) -> web.StreamResponse:
    """Entries as stored (one canonical entry per line): how a node or an auditor copies
    the log over HTTP. Each entry is then verified by its reader, not trusted."""
    params = query_params(request, ROUTE_LOG)
    start, limit = params["start"], params.get("limit", 1000)
    store = service(request).sequencer.store

    def read() -> bytes:
        body = bytearray()
        seq, end = start, start + limit
        while seq < end:
            page = store.read_entries(seq, min(LOG_READ_ENTRIES, end - seq))
            for stored in page:
                if body and len(body) + len(stored.canonical) + 1 > MAX_LOG_PAGE_BYTES:
                    return bytes(body)
                body += stored.canonical + b"\n"
            if len(page) < min(LOG_READ_ENTRIES, end - seq):
                break  # the end of the log
            seq += len(page)
        return bytes(body)

    return web.Response(body=await _off_loop(read), content_type="application/x-ndjson")


# --- subjects, principals, badge ------------------------------------------------------


async def get_history(request: web.Request) -> web.StreamResponse:
    params = query_params(request, ROUTE_HISTORY)
    subject = request.match_info["subject"]
    try:
        m.ConsentQuestion(subject=subject, controller="x:x", purpose="x")
    except ValidationError:
        raise Problem(400, "invalid_parameter", "subject is not a valid pseudonym") from None
    limit = params.get("limit", 50)

    def read() -> list[dict[str, Any]]:
        with request.app[VIEWS].transaction(commit=False) as cursor:
            # One more than a page: next_before is given only when an older page exists
            # (a page that happened to end with the oldest event led to an empty page).
            return timeline.history(cursor, subject, before=params.get("before"), limit=limit + 1)

    events = await _off_loop(read)
    more, events = len(events) > limit, events[:limit]
    next_before = events[-1]["seq"] if more else None
    return json_response({"subject": subject, "events": events, "next_before": next_before})


def _principal_in_path(request: web.Request, name: str) -> str:
    """A principal id from the path: one that cannot be one is a bad request (400), as
    the subject in a history's path is, not an unknown principal (404)."""
    value = request.match_info[name]
    if not is_principal_id(value):
        raise Problem(400, "invalid_parameter", f"{name} is not a principal id (kind:name, e.g. sp:app)")
    return value


async def get_principal(request: web.Request) -> web.StreamResponse:
    principal_id = _principal_in_path(request, "principal")

    def read() -> dict[str, Any] | None:
        with request.app[VIEWS].transaction(commit=False) as cursor:
            return keys.principal(cursor, principal_id)

    found = await _off_loop(read)
    if found is None:
        raise Problem(404, "unknown_principal", f"{principal_id} is not admitted on this ledger")
    return json_response(found)


async def get_badge(request: web.Request) -> web.StreamResponse:
    params = query_params(request, ROUTE_BADGE)
    controller = _principal_in_path(request, "controller")
    store = service(request).sequencer.store

    def read() -> tuple[
        dict[str, Any], int, int, tuple[int, int | None, int | None], StoredCheckpoint | None
    ]:
        with request.app[VIEWS].transaction(commit=False) as cursor:
            found = keys.principal(cursor, controller)
            if found is None:
                raise Problem(404, "unknown_principal", f"{controller} is not admitted on this ledger")
            cursor.execute(
                "SELECT COUNT(*), COALESCE(SUM(uses), 0) FROM consent_state WHERE controller = ?",
                (controller,),
            )
            consents, uses = cursor.fetchone()
        return found, consents, uses, store.signer_activity(controller), store.latest_checkpoint()

    found, consents, uses, (entries, first, last), checkpoint = await _off_loop(read)
    statement = {
        "controller": controller,
        "display_name": found["display_name"],
        "entries_recorded": entries,
        "consents_recorded": int(consents),
        "uses_recorded": int(uses),
        "first_seq": first,
        "last_seq": last,
        "checkpoint": checkpoint.note if checkpoint else None,
        "checkpoint_size": checkpoint.size if checkpoint else None,
        "verify": f"/v1/entries/{last}" if last else "/v1/checkpoint",
    }
    if params.get("format", "svg") == "json":
        return json_response(statement)
    return web.Response(text=badge_svg(statement), content_type="image/svg+xml")


# --- operations -------------------------------------------------------------------------


#: What ``GET /`` points to, each answering as it is: the machine-readable description
#: first, then the reads anyone may make (GraphiQL for a browser at /graphql).
INDEX_LINKS = {
    "openapi": "/openapi.json",
    "graphql": "/graphql",
    "checkpoint": "/v1/checkpoint",
    "witnessed_checkpoint": "/v1/checkpoint/witnessed",
    "log": "/v1/log?start=1",
    "health": "/healthz",
    "metrics": "/metrics",
}


async def get_index(request: web.Request) -> web.StreamResponse:
    ledger = service(request)
    return json_response(
        {
            "service": "dfg",
            "version": request.app[OPENAPI]["info"]["version"],
            "chain": ledger.sequencer.chain,
            "size": ledger.sequencer.size,
            "links": INDEX_LINKS,
        }
    )


async def get_health(request: web.Request) -> web.StreamResponse:
    ledger = service(request)
    if not ledger.running:
        raise Problem(503, "ledger_stopped", "the ledger's sequencer has stopped; see the server's log")
    checkpoint = await _off_loop(ledger.sequencer.store.latest_checkpoint)
    return json_response(
        {
            "status": "ok",
            "chain": ledger.sequencer.chain,
            "size": ledger.sequencer.size,
            "checkpoint_size": checkpoint.size if checkpoint else None,
            "views_lag": ledger.views_lag,
        }
    )


async def get_metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = request.app[METRICS].render(service(request))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def get_openapi(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[OPENAPI])


@web.middleware
async def unknown_parameters_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route refuses query parameters it does not declare (a typo must not pass)."""
    resource = request.match_info.route.resource
    route = ROUTE_BY_KEY.get((request.method, resource.canonical)) if resource is not None else None
    if route is not None:
        unknown = sorted(set(request.query) - {p.name for p in route.query})
        if unknown:
            raise Problem(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}")
    return await handler(request)


# --- the route table ----------------------------------------------------------------------

_problem = ("a problem document (application/problem+json)", m.ProblemDocument)
ROUTE_CHECK = Route(
    "GET",
    "/v1/consents/check",
    get_check,
    "Is the subject's consent valid for this use?",
    query=(
        Param("subject", "string", True, description="the subject's pseudonym", pattern=PSEUDONYM_PATTERN),
        Param(
            "controller",
            "string",
            True,
            description="the controller's principal id",
            pattern=PRINCIPAL_ID_PATTERN,
        ),
        Param(
            "purpose",
            "string",
            True,
            description="purpose code, e.g. dpv:ScientificResearch",
            pattern=CODE_PATTERN,
        ),
        Param(
            "category",
            "string",
            repeated=True,
            description="data category code (repeatable)",
            pattern=CODE_PATTERN,
        ),
        Param(
            "at", "date-time", description="instant to check at (default: now; never before the newest entry)"
        ),
    ),
    responses={200: ("the answer", m.ConsentAnswer), 400: _problem},
    tag="consents",
)
ROUTE_CONSISTENCY = Route(
    "GET",
    "/v1/proofs/consistency",
    get_consistency,
    "RFC 9162 consistency proof between two tree sizes",
    query=(
        Param("first", "integer", True, description="the older tree size", minimum=1, maximum=MAX_INT),
        Param(
            "second",
            "integer",
            True,
            description="the newer tree size, at least `first`",
            minimum=1,
            maximum=MAX_INT,
        ),
    ),
    responses={
        200: ("the proof (no hashes when first = second)", m.ConsistencyProof),
        400: _problem,
        404: (
            "a problem document: `second` is beyond the ledger's size (`unknown_tree_size`)",
            m.ProblemDocument,
        ),
    },
)
ROUTE_LOG = Route(
    "GET",
    "/v1/log",
    get_log,
    "The log itself: up to `limit` canonical entries from `start`, one per line (fewer"
    " when they would pass 16 MiB: ask again from the next one)",
    query=(
        Param("start", "integer", True, description="the first entry's seq", minimum=1, maximum=MAX_INT),
        Param(
            "limit",
            "integer",
            description="at most this many entries (default 1000)",
            minimum=1,
            maximum=5000,
        ),
    ),
    responses={
        200: (
            "entries from `start`, each line exactly an entry's bytes and a newline"
            " (empty beyond the ledger's size)",
            "application/x-ndjson",
        ),
        400: _problem,
    },
)
ROUTE_HISTORY = Route(
    "GET",
    "/v1/subjects/{subject}/history",
    get_history,
    "A subject's consents and every use, newest first",
    path_params=(Param("subject", "string", True, pattern=PSEUDONYM_PATTERN),),
    query=(
        Param("limit", "integer", minimum=1, maximum=500),
        Param("before", "integer", minimum=1, maximum=MAX_INT),
    ),
    responses={200: ("a page of events", m.SubjectHistory), 400: _problem},
    tag="consents",
)
ROUTE_ENTRY = Route(
    "GET",
    "/v1/entries/{seq}",
    get_entry,
    "An entry with its inclusion proof and signed checkpoint",
    path_params=(Param("seq", "integer", True, minimum=1, maximum=MAX_INT),),
    query=(
        Param(
            "checkpoint",
            "string",
            enum=("latest", "final"),
            description="latest (default): the newest checkpoint, with the cosignatures it has;"
            " final: the newest checkpoint the witnesses' quorum cosigned (409 not_yet_final"
            " until one covers the entry, 409 no_witnesses when none is registered)",
        ),
    ),
    responses={200: ("the receipt", m.EntryReceipt), 400: _problem, 404: _problem, 409: _problem},
)
ROUTE_BADGE = Route(
    "GET",
    "/v1/badge/{controller}",
    get_badge,
    "DfG compliance badge: what the ledger proves about a controller",
    path_params=(Param("controller", "string", True, pattern=PRINCIPAL_ID_PATTERN),),
    query=(Param("format", "string", enum=("svg", "json")),),
    responses={200: ("an SVG badge, or its statement with ?format=json", m.BadgeStatement), 404: _problem},
    tag="badge",
)
ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/transactions",
        post_transactions,
        "Submit one signed transaction or a batch",
        body={
            "application/jose": "compact JWS (docs/transactions.md)",
            "application/json": m.TransactionBatch,
        },
        responses={
            200: (
                "batch results, or a resubmitted transaction's existing entry (`duplicate: true`)",
                (m.BatchResults, m.AcceptedResult),
            ),
            201: ("accepted: the new entry", m.AcceptedResult),
            400: _problem,
            408: _problem,
            413: _problem,
            415: _problem,
            422: ("refused: nothing was recorded", m.ProblemDocument),
            503: _problem,
        },
        tag="transactions",
    ),
    ROUTE_CHECK,
    Route(
        "POST",
        "/v1/consents/check",
        post_checks,
        f"Up to {m.MAX_BATCH_CHECKS} consent questions at once",
        body={"application/json": m.ConsentQuestions},
        responses={200: ("answers, in order", m.ConsentAnswers), 400: _problem},
        tag="consents",
    ),
    ROUTE_ENTRY,
    Route(
        "GET",
        "/v1/checkpoint",
        get_checkpoint,
        "The latest signed checkpoint (C2SP tlog-checkpoint)",
        responses={200: ("the signed note with witnesses' cosignature lines", "text/plain"), 404: _problem},
    ),
    Route(
        "GET",
        "/v1/checkpoint/witnessed",
        get_witnessed_checkpoint,
        "Which checkpoint is final: k of the n registered witnesses (node operators) cosigned it",
        responses={200: ("the witness status", m.WitnessStatus)},
    ),
    ROUTE_CONSISTENCY,
    ROUTE_LOG,
    ROUTE_HISTORY,
    Route(
        "GET",
        "/v1/principals/{principal}",
        get_principal,
        "A principal, its roles and its keys over time",
        path_params=(Param("principal", "string", True, pattern=PRINCIPAL_ID_PATTERN),),
        responses={200: ("the principal", m.PrincipalView), 404: _problem},
        tag="principals",
    ),
    ROUTE_BADGE,
    Route(
        "GET",
        "/",
        get_index,
        "Which ledger this is, and where its API is described",
        responses={200: ("the service and its links", m.ServiceIndex)},
        tag="operations",
    ),
    Route(
        "GET",
        "/healthz",
        get_health,
        "Liveness and ledger size",
        responses={200: ("ok", m.Health), 503: _problem},
        tag="operations",
    ),
    Route(
        "GET",
        "/metrics",
        get_metrics,
        "Prometheus metrics",
        responses={200: ("metrics", "text/plain")},
        tag="operations",
    ),
    Route(
        "GET",
        "/openapi.json",
        get_openapi,
        "This document",
        responses={200: ("OpenAPI 3.1", None)},
        tag="operations",
    ),
)

ROUTE_BY_KEY = {(route.method, route.path): route for route in ROUTES}
