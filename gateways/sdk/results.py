"""What the consent API answers, as small immutable values (not raw JSON dicts), so a
provider's code is type-checked against the contract in gateways/http/models.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateways.sdk.errors import DfgApiError


@dataclass(frozen=True)
class Accepted:
    """The transaction is an entry of the ledger (durable and visible to checks).

    ``duplicate`` is True when this exact JWS had been accepted before: the answer is
    the existing entry, which is what makes resubmitting after a lost answer safe.
    """

    seq: int
    leaf_hash: str
    duplicate: bool
    entry: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Accepted:
        return cls(int(data["seq"]), str(data["leaf_hash"]), bool(data["duplicate"]), data["entry"])


@dataclass(frozen=True)
class Refused:
    """One transaction of a batch was refused (nothing recorded for it; the others stand)."""

    status: int
    code: str
    detail: str
    problem: dict[str, Any] = field(repr=False)

    @classmethod
    def from_problem(cls, problem: dict[str, Any]) -> Refused:
        return cls(int(problem["status"]), str(problem["code"]), str(problem["detail"]), problem)

    def error(self) -> DfgApiError:
        """The same refusal as the exception ``submit`` would have raised."""
        return DfgApiError(self.status, self.code, self.detail, self.problem)


@dataclass(frozen=True)
class ConsentQuestion:
    """Is ``subject``'s consent to ``controller`` valid for this use at ``at`` (default: now)?"""

    subject: str
    controller: str
    purpose: str
    categories: tuple[str, ...] = ()
    at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(code_list("categories", self.categories)))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "subject": self.subject,
            "controller": self.controller,
            "purpose": self.purpose,
            "categories": list(self.categories),
        }
        if self.at is not None:
            data["at"] = _instant(self.at)
        return data

    @classmethod
    def of(
        cls,
        subject: str,
        controller: str,
        purpose: str,
        categories: Iterable[str] = (),
        at: datetime | str | None = None,
    ) -> ConsentQuestion:
        """``at`` may also be RFC 3339 text (a question read from JSON)."""
        if isinstance(at, str):
            text = at
            try:
                at = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"at: {text[:40]!r} is not an RFC 3339 instant") from None
        elif at is not None and not isinstance(at, datetime):
            raise TypeError(f"at: a timezone-aware datetime or RFC 3339 text, not {type(at).__name__}")
        return cls(subject, controller, purpose, tuple(code_list("categories", categories)), at)


@dataclass(frozen=True)
class ConsentAnswer:
    """``granted`` or the ``reason`` why not (``never_given``, ``withdrawn``, ``expired``,
    ``not_yet_valid``, ``purpose_not_covered``, ``category_not_covered``); ``seq`` is the
    entry to fetch a receipt for: the one that gave the consent when granted, else the
    one that decided the consent's state."""

    granted: bool
    consent_id: str | None
    seq: int | None
    reason: str | None

    def __bool__(self) -> bool:
        return self.granted

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsentAnswer:
        return cls(bool(data["granted"]), data.get("consent_id"), data.get("seq"), data.get("reason"))


def code_list(name: str, codes: Iterable[str]) -> list[str]:
    """``codes`` as a list. One string is an iterable of its characters: ``"dpv:Health"``
    given for ``["dpv:Health"]`` was signed as the codes "d", "p", "v", ... (or, for a code
    of letters alone, silently, as one code per letter), and a check asked about them."""
    if isinstance(codes, str | bytes):
        raise TypeError(f"{name}: a list of codes, not one string: [{codes!r}]?")
    return list(codes)


def _instant(value: datetime) -> str:
    """RFC 3339 text of an aware instant; an offset with seconds (zoneinfo's local mean
    times), which RFC 3339 cannot write, is given as the same instant in UTC."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("consent checks need a timezone-aware instant")
    if offset % timedelta(minutes=1):
        value = value.astimezone(UTC)
    return value.isoformat()
