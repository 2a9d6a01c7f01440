"""The one textual form of instants on the ledger: RFC 3339, UTC, 'Z', microseconds
only when non-zero. Canonical entry bytes depend on it, so it is defined once."""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: Instants repeat a lot (a batch's timestamp, a consent's terms, a key's validity), and
#: the ledger formats and parses each several times per entry. One cache serves both
#: directions: a text parsed is the text ``format_time`` writes for the instant read
#: (see ``parse_time``), so the audit, which parses each entry's time and then writes
#: it into the entry it rebuilds, formats it for free. Cleared when full.
_CACHED = 8192
_TEXT_OF: dict[datetime, str] = {}
_INSTANT_OF: dict[str, datetime] = {}


def _remember(text: str, value: datetime) -> None:
    if len(_TEXT_OF) >= _CACHED or len(_INSTANT_OF) >= _CACHED:
        _TEXT_OF.clear()
        _INSTANT_OF.clear()
    _TEXT_OF[value] = text
    _INSTANT_OF[text] = value


def format_time(value: datetime) -> str:
    text = _TEXT_OF.get(value)
    if text is None:
        if value.tzinfo is not UTC:
            if value.tzinfo is None:
                raise ValueError("instants on the ledger must be timezone-aware")
            value = value.astimezone(UTC)
        # isoformat() omits a zero microsecond part, which is the rule we want.
        text = value.replace(tzinfo=None).isoformat() + "Z"
        _remember(text, value)
    return text


#: The canonical shape (ASCII digits only); ``fromisoformat`` then checks the values.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?Z")


def parse_time(text: str) -> datetime:
    """The instant a canonical ledger time names; anything else is refused. A text of
    the canonical shape that ``fromisoformat`` accepts is exactly what ``format_time``
    writes for the value read, provided a zero microsecond part was left out."""
    value = _INSTANT_OF.get(text)
    if value is None:
        if _CANONICAL.fullmatch(text) is None or text.endswith(".000000Z"):
            raise ValueError(f"{text!r} is not a canonical ledger time")
        value = datetime.fromisoformat(text)
        _remember(text, value)
    return value


def optional_time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)
