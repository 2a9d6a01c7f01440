"""A consent and its life: requested, given, declined, withdrawn, used, expired.

Aligned with ISO/IEC TS 27560 and the Kantara consent receipt: the record names the
controller, the subject (a pseudonym), purposes, data categories, the notice shown
(by URL and hash), validity and how it was collected. Expiry is not an event: a
consent is valid only while ``valid_from <= t < valid_until``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.commands import ConsentTerms
from domain.errors import DomainError
from domain.times import format_time, optional_time, parse_time


class Status(StrEnum):
    REQUESTED = "requested"
    GIVEN = "given"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"


class Refusal(StrEnum):
    """Why a consent does not cover a use at an instant (the consent check's answer)."""

    NEVER_GIVEN = "never_given"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    PURPOSE_NOT_COVERED = "purpose_not_covered"
    CATEGORY_NOT_COVERED = "category_not_covered"


@dataclass(frozen=True)
class Validity:
    """The facts needed to decide a use, kept small so read models can hold them too."""

    status: Status
    purposes: frozenset[str]
    data_categories: frozenset[str]
    valid_from: datetime | None
    valid_until: datetime | None
    withdrawn_at: datetime | None

    def refusal(self, purpose: str | None, categories: Iterable[str], at: datetime) -> Refusal | None:
        """None when the consent covers ``purpose`` and ``categories`` at ``at``."""
        if self.status is Status.WITHDRAWN and self.withdrawn_at is not None and at >= self.withdrawn_at:
            return Refusal.WITHDRAWN
        if self.status not in (Status.GIVEN, Status.WITHDRAWN) or self.valid_from is None:
            return Refusal.NEVER_GIVEN
        if at < self.valid_from:
            return Refusal.NOT_YET_VALID
        if self.valid_until is not None and at >= self.valid_until:
            return Refusal.EXPIRED
        if purpose is not None and purpose not in self.purposes:
            return Refusal.PURPOSE_NOT_COVERED
        if not self.data_categories.issuperset(categories):
            return Refusal.CATEGORY_NOT_COVERED
        return None


def terms_record(terms: ConsentTerms) -> dict[str, Any]:
    """Terms as they are written into events (JSON-native, canonical times)."""
    return {
        "purposes": list(terms.purposes),
        "data_categories": list(terms.data_categories),
        "notice": {"url": terms.notice.url, "sha256": terms.notice.sha256},
        "valid_from": optional_time(terms.valid_from),
        "valid_until": optional_time(terms.valid_until),
    }


class Consent(LedgerAggregate):
    """One consent, identified by (controller, consent_id)."""

    class Requested(Aggregate.Created):
        consent_id: str
        controller: str
        subject: str
        terms: dict[str, Any]

    class Given(Aggregate.Created):
        """Given without a prior request (a level 1 copy, or offered by the citizen)."""

        consent_id: str
        controller: str
        subject: str
        terms: dict[str, Any]
        level: int
        method: str
        given_by: str

    class RequestAccepted(Aggregate.Event):
        level: int
        method: str
        given_by: str
        valid_from: str

        def apply(self, aggregate: Consent) -> None:
            aggregate.status = Status.GIVEN
            aggregate.level = self.level
            aggregate.method = self.method
            aggregate.valid_from = parse_time(self.valid_from)

    class Declined(Aggregate.Event):
        declined_by: str

        def apply(self, aggregate: Consent) -> None:
            aggregate.status = Status.DECLINED

    class Withdrawn(Aggregate.Event):
        withdrawn_by: str

        def apply(self, aggregate: Consent) -> None:
            aggregate.status = Status.WITHDRAWN
            aggregate.withdrawn_at = self.timestamp

    class Utilized(Aggregate.Event):
        purpose: str
        data_categories: list[str]

        def apply(self, aggregate: Consent) -> None:
            aggregate.uses += 1

    def __init__(
        self,
        consent_id: str,
        controller: str,
        subject: str,
        terms: dict[str, Any],
        level: int = 2,
        method: str | None = None,
        given_by: str | None = None,
    ) -> None:
        self.consent_id = consent_id
        self.controller = controller
        self.subject = subject
        self.purposes = frozenset(terms["purposes"])
        self.data_categories = frozenset(terms["data_categories"])
        self.notice: dict[str, str] = terms["notice"]
        self.valid_until = parse_time(terms["valid_until"]) if terms["valid_until"] else None
        self.level = level
        self.method = method
        self.uses = 0
        self.withdrawn_at: datetime | None = None
        if given_by is None:
            self.status = Status.REQUESTED
            self.valid_from: datetime | None = None
            self.requested_from = parse_time(terms["valid_from"]) if terms["valid_from"] else None
        else:
            self.status = Status.GIVEN
            self.valid_from = parse_time(terms["valid_from"])
            self.requested_from = None

    # --- commands ------------------------------------------------------------------

    @classmethod
    def request(
        cls,
        *,
        aggregate_id: uuid.UUID,
        consent_id: uuid.UUID,
        controller: str,
        subject: str,
        terms: ConsentTerms,
        at: datetime,
    ) -> Consent:
        _check_terms(terms, at)
        return cls._create(
            cls.Requested,
            id=aggregate_id,
            timestamp=at,
            consent_id=str(consent_id),
            controller=controller,
            subject=subject,
            terms=terms_record(terms),
        )

    @classmethod
    def give_new(
        cls,
        *,
        aggregate_id: uuid.UUID,
        consent_id: uuid.UUID | str,
        controller: str,
        subject: str,
        terms: ConsentTerms,
        level: int,
        method: str,
        by: str,
        at: datetime,
    ) -> Consent:
        _check_terms(terms, at)
        record = terms_record(terms)
        # A level 2 consent starts no earlier than it is given, as when answering a
        # request; a level 1 copy keeps its start (collected before it was recorded).
        if terms.valid_from is None or (level == 2 and terms.valid_from < at):
            record["valid_from"] = format_time(at)
        return cls._create(
            cls.Given,
            id=aggregate_id,
            timestamp=at,
            consent_id=str(consent_id),
            controller=controller,
            subject=subject,
            terms=record,
            level=level,
            method=method,
            given_by=by,
        )

    def accept_request(self, *, terms: ConsentTerms | None, method: str, by: str, at: datetime) -> None:
        self._require(Status.REQUESTED, "consent_not_requested")
        if terms is not None and not self._same_as_requested(terms):
            raise DomainError(
                "terms_mismatch",
                "the terms given differ from the terms requested; omit them or copy them",
            )
        if self.valid_until is not None and at >= self.valid_until:
            raise DomainError("consent_expired", "the request expired before it was answered")
        valid_from = max(self.requested_from, at) if self.requested_from else at
        self.trigger_event(
            self.RequestAccepted,
            timestamp=at,
            level=2,
            method=method,
            given_by=by,
            valid_from=format_time(valid_from),
        )

    def decline(self, *, by: str, at: datetime) -> None:
        self._require(Status.REQUESTED, "consent_not_requested")
        self.trigger_event(self.Declined, timestamp=at, declined_by=by)

    def withdraw(self, *, by: str, at: datetime) -> None:
        if self.status is Status.WITHDRAWN:
            raise DomainError("consent_withdrawn", f"consent {self.consent_id} is already withdrawn")
        self._require(Status.GIVEN, "consent_not_given")
        self.trigger_event(self.Withdrawn, timestamp=at, withdrawn_by=by)

    def utilize(self, *, purpose: str, data_categories: list[str], at: datetime) -> None:
        refusal = self.validity.refusal(purpose, data_categories, at)
        if refusal is not None:
            raise DomainError(
                f"consent_{refusal.value}"
                if not refusal.value.startswith(("purpose", "category"))
                else refusal.value,
                f"consent {self.consent_id} does not cover this use now: {refusal.value}",
            )
        self.trigger_event(
            self.Utilized, timestamp=at, purpose=purpose, data_categories=list(data_categories)
        )

    # --- queries -------------------------------------------------------------------

    @property
    def validity(self) -> Validity:
        return Validity(
            status=self.status,
            purposes=self.purposes,
            data_categories=self.data_categories,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            withdrawn_at=self.withdrawn_at,
        )

    def _same_as_requested(self, terms: ConsentTerms) -> bool:
        return (
            frozenset(terms.purposes) == self.purposes
            and frozenset(terms.data_categories) == self.data_categories
            and terms.notice.model_dump() == self.notice
            and terms.valid_from == self.requested_from
            and terms.valid_until == self.valid_until
        )

    def _require(self, status: Status, code: str) -> None:
        if self.status is not status:
            raise DomainError(code, f"consent {self.consent_id} is {self.status.value}")


def _check_terms(terms: ConsentTerms, at: datetime) -> None:
    if terms.valid_until is not None:
        start = terms.valid_from or at
        if terms.valid_until <= start:
            raise DomainError("invalid_validity", "valid_until must be later than valid_from")
        if terms.valid_until <= at:
            raise DomainError("consent_expired", "valid_until is already in the past")
