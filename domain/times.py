"""The one textual form of instants on the ledger: RFC 3339, UTC, 'Z', microseconds
only when non-zero. Canonical entry bytes depend on it, so it is defined once."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

#: Instants repeat a lot (a batch's timestamp, a consent's terms, a key's validity), and
#: the ledger formats and parses each several times per entry: cache both.
_CACHED = 4096


@lru_cache(maxsize=_CACHED)
def format_time(value: datetime) -> str:
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("instants on the ledger must be timezone-aware")
        value = value.astimezone(UTC)
    # isoformat() omits a zero microsecond part, which is the rule we want.
    return value.replace(tzinfo=None).isoformat() + "Z"


#: The canonical shape (ASCII digits only); ``fromisoformat`` then checks the values.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?Z")


@lru_cache(maxsize=_CACHED)
def parse_time(text: str) -> datetime:
    """The instant a canonical ledger time names; anything else is refused. A text of
    the canonical shape that ``fromisoformat`` accepts is exactly what ``format_time``
    writes for the value read, provided a zero microsecond part was left out."""
    if _CANONICAL.fullmatch(text) is None or text.endswith(".000000Z"):
        raise ValueError(f"{text!r} is not a canonical ledger time")
    return datetime.fromisoformat(text)


def optional_time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)
