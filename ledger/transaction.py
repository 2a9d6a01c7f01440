"""A signed transaction: envelope checks, payload model and command body.

``parse_transaction`` does every check that needs neither a key nor ledger state,
so it can run anywhere (gateways, the verifier pool, an auditor's machine). What
depends on state (keys valid now, nonces, domain rules) is the sequencer's job.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Annotated, Any, Final, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from domain.commands import Command, PrincipalId
from domain.handlers import COMMANDS
from domain.identifiers import split_kid
from ledger.errors import Rejected, shown
from ledger.jws import CompactJws, parse_compact, unique_members

MAX_NONCE: Final = 2**53 - 1  # exact in every JSON implementation


class Envelope(BaseModel):
    """The members of every dfg transaction's JWS payload around its body
    (docs/transactions.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    chain: Annotated[str, Field(min_length=1, max_length=64)]
    signer: PrincipalId
    nonce: Annotated[int, Field(ge=1, le=MAX_NONCE)]
    valid_until: Annotated[int, Field(ge=0, le=2**40)]
    type: Annotated[str, Field(min_length=1, max_length=64)]


class Payload(Envelope):
    """The whole payload, its body still JSON (the body's model depends on ``type``)."""

    body: dict[str, Any]


class Transaction(NamedTuple):
    """A parsed transaction (a named tuple, as ``CompactJws``)."""

    jws: CompactJws
    payload: Envelope
    command: Command
    #: The body as signed (JSON values), for readers that want it as such.
    body: dict[str, Any]

    @property
    def token(self) -> str:
        return self.jws.token

    @property
    def signer(self) -> str:
        return self.payload.signer

    @property
    def type(self) -> str:
        return self.payload.type


_payload_decoder = json.JSONDecoder(object_pairs_hook=unique_members)


def _payload_value(payload: bytes) -> Any:
    """The payload's JSON value, with repeated member names refused.

    Fast path: ``orjson`` reads it, and when writing the value back gives exactly the
    payload's bytes, the payload had no repeated name (orjson keeps the last one, and
    never writes a name twice) and every number and string read back as written, so
    the value is the one ``json`` would give. Payloads signed in compact form (the
    SDK's, ``JSON.stringify``'s) take it; anything else (white space, escapes, big
    integers, repeated names, malformed text) is read by ``json`` as before, which
    also names the problem. orjson reads 1,024 levels of nesting but writes only 254:
    a payload between the two is not written back (``JSONEncodeError``, a
    ``TypeError``) and is also left to ``json``, or it would fail its whole batch."""
    try:
        value = orjson.loads(payload)
        if orjson.dumps(value) == payload:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    return _payload_decoder.decode(payload.decode("utf-8"))


def _json_problem(exc: Exception) -> str:
    """What is wrong with the payload's JSON, in the client's terms: Python's refusal of
    a huge integer tells a client in any language to call ``sys.set_int_max_str_digits``."""
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return f"a number has more than {sys.get_int_max_str_digits():,} digits"
    return str(exc)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


@cache
def _typed_payload(tx_type: str) -> type[Envelope]:
    """The model of a whole payload whose body is of ``tx_type``'s model: a valid
    transaction is validated in one call instead of two, a microsecond less on the
    sequencer's and the audit's path. Built on first use, so that processes which
    never parse a type do not pay for building its model."""
    model = COMMANDS[tx_type]
    return create_model(f"{model.__name__}Payload", __base__=Envelope, body=(model, ...))


def _validated(raw: dict[str, Any]) -> tuple[Envelope, Command]:
    """The envelope and the body's command, or the refusal that names what is wrong.
    A payload the one-call validation refuses is validated again in two steps, which
    tell an envelope problem (``malformed_payload``) from a body problem
    (``invalid_body``)."""
    tx_type = raw.get("type")
    if isinstance(tx_type, str) and tx_type in COMMANDS:
        typed = _typed_payload(tx_type)
        try:
            # the validator itself: model_validate's wrapper costs a few tenths of a µs
            payload = typed.__pydantic_validator__.validate_python(raw)
        except ValidationError:
            pass
        else:
            return payload, payload.body
    try:
        payload = Payload.model_validate(raw)
    except ValidationError as exc:
        raise Rejected("malformed_payload", _describe(exc)) from exc
    model = COMMANDS.get(payload.type)
    if model is None:
        raise Rejected("unknown_type", f"unknown transaction type {payload.type!r}")
    try:
        return payload, model.model_validate(payload.body)
    except ValidationError as exc:
        raise Rejected("invalid_body", f"{payload.type}: {_describe(exc)}") from exc


def parse_transaction(token: str | bytes) -> Transaction:
    jws = parse_compact(token)
    try:
        raw = _payload_value(jws.payload)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise Rejected("malformed_payload", f"the payload is not valid JSON: {_json_problem(exc)}") from exc
    if not isinstance(raw, dict):
        raise Rejected("malformed_payload", "the payload is not a JSON object")
    payload, command = _validated(raw)
    try:
        key_owner, _ = split_kid(jws.kid)
    except ValueError as exc:
        raise Rejected("unknown_key", str(exc)) from exc
    if key_owner != payload.signer:
        raise Rejected("signer_mismatch", f"key {shown(jws.kid)} does not belong to signer {payload.signer}")
    return Transaction(jws=jws, payload=payload, command=command, body=raw["body"])
