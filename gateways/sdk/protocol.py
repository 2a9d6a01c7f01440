"""The HTTP contract, written once for both clients: which request each method sends
and how each answer (or problem document) is read. The sync and async clients only
move bytes, so they cannot drift apart in what they send or how they fail."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from gateways.http.models import MAX_BATCH_CHECKS, MAX_BATCH_TRANSACTIONS
from gateways.sdk.errors import RETRYABLE_STATUSES, DfgApiError
from gateways.sdk.results import Accepted, ConsentAnswer, ConsentQuestion, Refused

T = TypeVar("T")

JOSE = "application/jose"
JSON = "application/json"


@dataclass(frozen=True)
class Call:
    """One HTTP request and how to read its answer.

    Every call of this API may be repeated: reads trivially, and a transaction
    because the ledger answers a resubmitted accepted JWS with its existing entry.
    """

    method: str
    path: str
    read: Callable[[Any], Any]
    body: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Resubmit the same request on connection errors and 408/502/503/504.

    ``attempts`` counts the first try (1: no retry); delays grow as ``backoff * 2**n`` (with jitter,
    so many clients do not return in lockstep), capped at ``max_delay`` seconds.
    """

    attempts: int = 4
    backoff: float = 0.2
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        # attempts=0 made every call end in the clients' AssertionError, having sent nothing
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts counts the first try: 1 or more, not {self.attempts!r}")
        if not self.backoff >= 0 or not self.max_delay >= 0:
            raise ValueError("backoff and max_delay are seconds, 0 or more")

    def delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.backoff * 2.0**attempt)
        return float(base * (0.5 + random.random() / 2))

    @staticmethod
    def retryable_status(status: int) -> bool:
        return status in RETRYABLE_STATUSES


NO_RETRY = RetryPolicy(attempts=1)


def read_answer(status: int, content_type: str, raw: bytes) -> Any:
    """The decoded body of a 2xx answer; a ``DfgApiError`` for anything else."""
    is_json = content_type.endswith("json")
    if status >= 400:
        if is_json:
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = None
            if isinstance(problem, dict) and "code" in problem:
                raise DfgApiError.from_problem(status, problem)
        raise DfgApiError(status, "http_error", raw[:500].decode("utf-8", "replace"))
    if is_json:
        return json.loads(raw)
    return raw.decode("utf-8")


def answer(call: Call, status: int, content_type: str, raw: bytes) -> Any:
    """What ``call`` returns for this HTTP answer; a ``DfgApiError`` for a refusal, and
    ``unexpected_answer`` for a 2xx that is not the API's (a base URL that reaches a web
    page, another service or a proxy's page; a body cut short): reading it would raise
    the KeyError, TypeError or ValueError of the reader, and the SDK promises one family."""
    try:
        return call.read(read_answer(status, content_type, raw))
    except (KeyError, TypeError, ValueError) as exc:
        raise DfgApiError(
            status,
            "unexpected_answer",
            f"{call.method} {call.path}: the answer ({status}, {content_type or 'no content type'})"
            f" is not the dfg API's: {exc!r}"[:500],
        ) from None


# --- the calls ---------------------------------------------------------------------------


def submit(token: str) -> Call:
    # UTF-8, not ASCII: a token that is no JWS is the server's to refuse (DfgApiError), not a
    # UnicodeEncodeError here
    return Call("POST", "/v1/transactions", Accepted.from_json, token.strip().encode(), JOSE)


def submit_batch(tokens: Sequence[str]) -> Call:
    def read(doc: dict[str, Any]) -> list[Accepted | Refused]:
        return [
            Accepted.from_json(r) if r["status"] == "accepted" else Refused.from_problem(r["problem"])
            for r in doc["results"]
        ]

    return Call("POST", "/v1/transactions", read, _json({"transactions": list(tokens)}), JSON)


def check(
    subject: str, controller: str, purpose: str, categories: Iterable[str] = (), at: datetime | None = None
) -> Call:
    question = ConsentQuestion.of(subject, controller, purpose, categories, at)
    params: list[tuple[str, str]] = [
        ("subject", subject),
        ("controller", controller),
        ("purpose", purpose),
        *(("category", c) for c in question.categories),
    ]
    if at is not None:
        params.append(("at", question.to_json()["at"]))
    return Call("GET", "/v1/consents/check?" + urlencode(params), ConsentAnswer.from_json)


def check_many(questions: Sequence[ConsentQuestion]) -> Call:
    def read(doc: dict[str, Any]) -> list[ConsentAnswer]:
        return [ConsentAnswer.from_json(a) for a in doc["answers"]]

    body = _json({"questions": [q.to_json() for q in questions]})
    return Call("POST", "/v1/consents/check", read, body, JSON)


def entry(seq: int, *, final: bool = False) -> Call:
    query = "?checkpoint=final" if final else ""
    return Call("GET", f"/v1/entries/{int(seq)}{query}", _object("seq", "entry", "proof", "checkpoint"))


def checkpoint() -> Call:
    return Call("GET", "/v1/checkpoint", _text)


def principal(principal_id: str) -> Call:
    return Call("GET", f"/v1/principals/{quote(principal_id, safe=':~')}", _object("principal", "keys"))


def history(subject: str, *, limit: int | None = None, before: int | None = None) -> Call:
    params = {k: str(v) for k, v in (("limit", limit), ("before", before)) if v is not None}
    query = f"?{urlencode(params)}" if params else ""
    return Call(
        "GET", f"/v1/subjects/{quote(subject, safe=':~')}/history{query}", _object("events", "next_before")
    )


def health() -> Call:
    return Call("GET", "/healthz", _object("status", "chain", "size"))


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def as_questions(questions: Iterable[ConsentQuestion | dict[str, Any]]) -> list[ConsentQuestion]:
    return [q if isinstance(q, ConsentQuestion) else ConsentQuestion.of(**q) for q in questions]


BATCH_TRANSACTIONS = MAX_BATCH_TRANSACTIONS
BATCH_CHECKS = MAX_BATCH_CHECKS


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _object(*members: str) -> Callable[[Any], dict[str, Any]]:
    """A reader of a JSON object answer, returned as it is (a receipt, a principal, a
    history page, health), once it has the ``members`` every such answer has."""

    def read(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        if missing := [name for name in members if name not in value]:
            raise KeyError(", ".join(missing))
        return value

    return read


def _text(value: Any) -> str:
    """A text answer (the checkpoint note)."""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value
