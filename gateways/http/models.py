"""Request and response bodies of the HTTP API: validated here, and the source of the
OpenAPI document's schemas (so documentation and behaviour cannot drift apart)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.commands import Code, Instant, PrincipalId, Pseudonym

MAX_BATCH_TRANSACTIONS = 1000
MAX_BATCH_CHECKS = 10_000


class Strict(BaseModel):
    """Requests are validated strictly from their JSON text: no coercion (a number is not
    a date-time, a string is not a number), no unknown members."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TransactionBatch(Strict):
    transactions: Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_TRANSACTIONS)]


class AcceptedResult(Strict):
    status: Literal["accepted"]
    seq: int
    leaf_hash: str
    duplicate: bool
    entry: dict[str, Any]


class ProblemDocument(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str


class RejectedResult(Strict):
    status: Literal["rejected"]
    problem: ProblemDocument


class BatchResults(Strict):
    results: list[AcceptedResult | RejectedResult]


class ConsentQuestion(Strict):
    subject: Pseudonym
    controller: PrincipalId
    purpose: Code
    categories: Annotated[list[Code], Field(max_length=64)] = []
    at: Instant | None = None  # RFC 3339 with a time zone, as in transactions


class ConsentQuestions(Strict):
    questions: Annotated[list[ConsentQuestion], Field(min_length=1, max_length=MAX_BATCH_CHECKS)]


class ConsentAnswer(Strict):
    granted: bool
    consent_id: str | None
    seq: int | None
    reason: (
        Literal[
            "never_given",
            "withdrawn",
            "expired",
            "not_yet_valid",
            "purpose_not_covered",
            "category_not_covered",
        ]
        | None
    )


class ConsentAnswers(Strict):
    answers: list[ConsentAnswer]


class InclusionProof(Strict):
    leaf_index: int
    tree_size: int
    hashes: list[str]


class EntryReceipt(Strict):
    seq: int
    entry: str = Field(description="The entry's canonical bytes (leaf = SHA-256(0x00 || entry)).")
    leaf_hash: str
    proof: InclusionProof
    checkpoint: str = Field(description="C2SP signed checkpoint note the proof leads to.")
    jws: str
    event: dict[str, Any]


class WitnessedCheckpoint(Strict):
    size: int
    root: str = Field(description="Hex RFC 9162 root hash.")
    note: str = Field(description="The signed checkpoint note with its cosignature lines (C2SP).")
    cosigned_by: list[str] = Field(description="Registered witnesses whose cosignature verifies.")


class WitnessStatus(Strict):
    witnesses: list[str] = Field(description="Node operators registered on the ledger (n).")
    quorum: int = Field(description="Cosignatures that make a checkpoint final (k).")
    latest: WitnessedCheckpoint | None = Field(description="The newest checkpoint, final or not.")
    final: WitnessedCheckpoint | None = Field(description="The newest checkpoint k witnesses cosigned.")


class ConsistencyProof(Strict):
    first: int
    second: int
    hashes: list[str]


class HistoryEvent(Strict):
    seq: int
    ts: str
    kind: Literal["requested", "given", "declined", "withdrawn", "used"]
    controller: str
    consent_id: str
    details: dict[str, Any]


class SubjectHistory(Strict):
    subject: str
    events: list[HistoryEvent]
    next_before: int | None = Field(description="Pass as ?before= for the next (older) page.")


class PrincipalKey(Strict):
    kid: str
    jwk: dict[str, str]
    added_seq: int
    not_before: str | None
    not_after: str | None
    revoked_seq: int | None
    revoked_reason: str | None


class PrincipalView(Strict):
    principal: str
    kind: str
    roles: list[str]
    display_name: str | None
    custodian: str | None
    admitted_seq: int
    admitted_by: str
    keys: list[PrincipalKey]
    encryption_key: dict[str, str] | None = Field(
        description="A node's X25519 key: data providers seal its share bundles to it."
    )
    policy: dict[str, Any] | None = Field(
        description="A node organisation's output policy: min_cell, release_extremes, approval."
    )


class BadgeStatement(Strict):
    controller: str
    display_name: str | None
    entries_recorded: int
    consents_recorded: int
    uses_recorded: int
    first_seq: int | None
    last_seq: int | None
    checkpoint: str | None
    checkpoint_size: int | None
    verify: str


class ServiceIndex(Strict):
    """``GET /``: where the address ``make run`` prints leads a browser or a client that
    knows nothing else: which ledger this is, and where its documents are."""

    service: Literal["dfg"]
    version: str
    chain: str | None
    size: int
    links: dict[str, str]


class Health(Strict):
    status: Literal["ok"]
    chain: str | None
    size: int
    checkpoint_size: int | None
    views_lag: int
