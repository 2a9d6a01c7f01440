"""The body of every transaction type: what a signer asks the ledger to do.

One pydantic model per type. They check shape only (types, formats, lengths);
rules that depend on state or on who signs live in the aggregates and in
``authorization``. Field names are the wire contract (docs/transactions.md).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from domain.identifiers import CODE_PATTERN, PRINCIPAL_ID_PATTERN, PSEUDONYM_PATTERN
from domain.jwk import PublicJwk

PrincipalId = Annotated[str, Field(pattern=PRINCIPAL_ID_PATTERN)]
Pseudonym = Annotated[str, Field(pattern=PSEUDONYM_PATTERN)]
Code = Annotated[str, Field(pattern=CODE_PATTERN)]
Codes = Annotated[list[Code], Field(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]


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
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class Genesis(Command):
    """The first entry: names the ledger and admits the federation's first operator."""

    ledger: LedgerParameters
    operator: PrincipalId
    display_name: ShortText
    jwk: PublicJwk


class AdmitPrincipal(Command):
    principal: PrincipalId
    kind: Kind
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
    role: Role


class RevokeRole(Command):
    principal: PrincipalId
    role: Role


class AddKey(Command):
    principal: PrincipalId
    jwk: PublicJwk
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None

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
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None

    _normalise = field_validator("valid_from", "valid_until")(classmethod(lambda cls, v: _utc(v)))

    @field_validator("purposes", "data_categories")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("codes must be distinct")
        return values


class RequestConsent(Command):
    """A controller asks a subject for consent (the subject answers with give/decline)."""

    consent_id: uuid.UUID
    subject: Pseudonym
    terms: ConsentTerms


class GiveConsent(Command):
    """Level 1: the controller records a copy of a consent it collected itself.
    Level 2: the subject (or their custodial wallet) gives it on the platform."""

    consent_id: uuid.UUID
    controller: PrincipalId
    subject: Pseudonym
    level: Literal[1, 2]
    method: CollectionMethod
    terms: ConsentTerms | None = None


class DeclineConsent(Command):
    consent_id: uuid.UUID
    controller: PrincipalId
    subject: Pseudonym


class WithdrawConsent(Command):
    consent_id: uuid.UUID
    controller: PrincipalId
    subject: Pseudonym


class UtilizeConsent(Command):
    """The controller records that it used the consent, for a purpose and categories."""

    consent_id: uuid.UUID
    purpose: Code
    data_categories: Codes


#: Transaction type -> body model for principals, keys and consents (the analysis
#: platform's are in ``domain.analysis_commands``; ``domain.handlers.COMMANDS`` has all).
LEDGER_COMMANDS: dict[str, type[Command]] = {
    "ledger.genesis": Genesis,
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
