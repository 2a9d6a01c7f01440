"""The body of every transaction type: what a signer asks the ledger to do.

One pydantic model per type. They check shape only (types, formats, lengths);
rules that depend on state or on who signs live in the aggregates and in
``authorization``. Field names are the wire contract (docs/transactions.md).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from domain.identifiers import CODE_PATTERN, PRINCIPAL_ID_PATTERN, PSEUDONYM_PATTERN
from domain.jwk import PublicJwk

PrincipalId = Annotated[str, Field(pattern=PRINCIPAL_ID_PATTERN)]
Pseudonym = Annotated[str, Field(pattern=PSEUDONYM_PATTERN)]
Code = Annotated[str, Field(pattern=CODE_PATTERN)]
Codes = Annotated[list[Code], Field(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]

_UUID_TEXT = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def _uuid_text(value: Any) -> Any:
    """A UUID travels as its 36-character text; not as the other spellings Python reads
    (``urn:uuid:``, braces, 32 bare digits), which another implementation need not."""
    if isinstance(value, uuid.UUID) or (isinstance(value, str) and _UUID_TEXT.match(value)):
        return value
    raise ValueError("a UUID as text: 8-4-4-4-12 hexadecimal digits")


def _rfc3339_text(value: Any) -> Any:
    """An instant travels as RFC 3339 text with a time zone; not as a number or a number
    in a string, which pydantic would otherwise read as Unix seconds."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.match(value)):
        return value
    raise ValueError("an RFC 3339 date-time with a time zone, e.g. 2026-11-23T19:54:42Z")


#: JSON carries these as strings: the models are strict, these fields read their text.
Uuid = Annotated[uuid.UUID, Field(strict=False), BeforeValidator(_uuid_text)]
Instant = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339_text)]


class Kind(StrEnum):
    """What sort of principal an identity is; also its first role."""

    OPERATOR = "operator"
    IDENTITY_SERVICE = "identity_service"
    SERVICE_PROVIDER = "service_provider"
    DATA_PROVIDER = "data_provider"
    ANALYST_ORG = "analyst_org"
    NODE_OPERATOR = "node_operator"
    AUDITOR = "auditor"
    CITIZEN = "citizen"


Role = Kind  # roles and kinds share names; a principal may hold several roles


class Command(BaseModel):
    """A transaction body. Strict, as the envelope: a value of the wrong JSON type is
    refused, not converted (``true`` is not 1, ``"10"`` is not 10), so that a verifier
    written from docs/transactions.md accepts exactly what this one does. Enumerations,
    UUIDs and instants are read from their text (``Field(strict=False)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _utc(value: datetime | None) -> datetime | None:
    """The instant in UTC. Near the ends of the calendar (0001-01-01 with a positive
    offset, 9999-12-31 with a negative one) it has no UTC form: that is a validation
    error (``ValueError``), not the ``OverflowError`` Python raises, which pydantic
    would let escape from parsing."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date-time is outside the years 1 to 9999 in UTC") from None


# --- ledger and principals -------------------------------------------------------


class LedgerParameters(Command):
    chain: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{2,62}$")]
    origin: Annotated[str, Field(min_length=3, max_length=200, pattern=r"^[^\s+]+$")]
    checkpoint_key: Annotated[str, Field(min_length=10, max_length=300)]
    #: The rules version the ledger follows from its first entry (``domain.rules``);
    #: absent, as in the first release's genesis entries: version 1.
    rules: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class Genesis(Command):
    """The first entry: names the ledger and admits the federation's first operator."""

    ledger: LedgerParameters
    operator: PrincipalId
    display_name: ShortText
    jwk: PublicJwk


class AdoptRules(Command):
    """The operator moves the ledger to a newer version of its rules, from the next entry."""

    version: Annotated[int, Field(ge=2, le=1_000_000)]


class AdmitPrincipal(Command):
    principal: PrincipalId
    kind: Annotated[Kind, Field(strict=False)]
    display_name: ShortText | None = None
    jwk: PublicJwk | None = None
    custodian: PrincipalId | None = None

    @model_validator(mode="after")
    def _no_name_for_citizens(self) -> AdmitPrincipal:
        if self.kind is Kind.CITIZEN and self.display_name is not None:
            raise ValueError("a citizen is a pseudonym: no display_name on the ledger")
        if self.kind is not Kind.CITIZEN and self.custodian is not None:
            raise ValueError("only citizens have a custodian")
        return self


class GrantRole(Command):
    principal: PrincipalId
    role: Annotated[Role, Field(strict=False)]


class RevokeRole(Command):
    principal: PrincipalId
    role: Annotated[Role, Field(strict=False)]


class AddKey(Command):
    principal: PrincipalId
    jwk: PublicJwk
    not_before: Instant | None = None
    not_after: Instant | None = None

    _normalise = field_validator("not_before", "not_after")(classmethod(lambda cls, v: _utc(v)))


class RotateKey(Command):
    principal: PrincipalId
    old_kid: Annotated[str, Field(min_length=3, max_length=200)]
    jwk: PublicJwk


class RevokeKey(Command):
    principal: PrincipalId
    kid: Annotated[str, Field(min_length=3, max_length=200)]
    reason: Literal["compromised", "superseded", "retired"] = "retired"


# --- consents ---------------------------------------------------------------------


class Notice(Command):
    """The notice the person saw: where it lives and a hash of its exact text."""

    url: Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://\S+$")]
    sha256: Sha256Hex


class CollectionMethod(StrEnum):
    """How consent was collected (ISO/IEC TS 27560 'method')."""

    WEB_FORM = "web_form"
    APP = "app"
    PAPER = "paper"
    VERBAL = "verbal"
    WALLET = "wallet"
    API = "api"


class ConsentTerms(Command):
    """What is consented to: ISO/IEC TS 27560 / Kantara receipt fields."""

    purposes: Codes
    data_categories: Codes
    notice: Notice
    valid_from: Instant | None = None
    valid_until: Instant | None = None

    _normalise = field_validator("valid_from", "valid_until")(classmethod(lambda cls, v: _utc(v)))

    @field_validator("purposes", "data_categories")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("codes must be distinct")
        return values


class RequestConsent(Command):
    """A controller asks a subject for consent (the subject answers with give/decline)."""

    consent_id: Uuid
    subject: Pseudonym
    terms: ConsentTerms


class GiveConsent(Command):
    """Level 1: the controller records a copy of a consent it collected itself.
    Level 2: the subject (or their custodial wallet) gives it on the platform."""

    consent_id: Uuid
    controller: PrincipalId
    subject: Pseudonym
    level: Annotated[int, Field(ge=1, le=2)]  # strict: not true, not 1.0
    method: Annotated[CollectionMethod, Field(strict=False)]
    terms: ConsentTerms | None = None


class DeclineConsent(Command):
    consent_id: Uuid
    controller: PrincipalId
    subject: Pseudonym


class WithdrawConsent(Command):
    consent_id: Uuid
    controller: PrincipalId
    subject: Pseudonym


class UtilizeConsent(Command):
    """The controller records that it used the consent, for a purpose and categories."""

    consent_id: Uuid
    purpose: Code
    data_categories: Codes


#: Transaction type -> body model for principals, keys and consents (the analysis
#: platform's are in ``domain.analysis_commands``; ``domain.handlers.COMMANDS`` has all).
LEDGER_COMMANDS: dict[str, type[Command]] = {
    "ledger.genesis": Genesis,
    "ledger.adopt_rules": AdoptRules,
    "principal.admit": AdmitPrincipal,
    "principal.grant_role": GrantRole,
    "principal.revoke_role": RevokeRole,
    "key.add": AddKey,
    "key.rotate": RotateKey,
    "key.revoke": RevokeKey,
    "consent.request": RequestConsent,
    "consent.give": GiveConsent,
    "consent.decline": DeclineConsent,
    "consent.withdraw": WithdrawConsent,
    "consent.utilize": UtilizeConsent,
}
