"""Ledger times: one canonical text per instant, and nothing else is read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import times
from domain.times import format_time, parse_time


@given(st.datetimes(timezones=st.just(UTC)) | st.datetimes(timezones=st.just(timezone(timedelta(hours=5)))))
def test_every_instant_has_one_text_that_reads_back_as_it(value: datetime) -> None:
    text = format_time(value)
    assert parse_time(text) == value
    assert parse_time(text).tzinfo is not None
    assert format_time(parse_time(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T04:30:54.000000Z",  # a zero microsecond part is left out
        "2026-11-24T04:30:54.679Z",
        "2026-11-24T04:30:54+00:00",
        "2026-11-24T04:30:54z",
        "2026-11-24 04:30:54Z",
        "2026-11-24T04:30:54",
        "20261124T043054Z",
        "2026-11-24T043054.6Z",
        "2026-13-24T04:30:54Z",
        "2026-02-30T04:30:54Z",
        "2026-11-24T24:00:00Z",
        "\uff12\uff10\uff12\uff16-11-24T04:30:54Z",  # fullwidth digits
        "2026-11-24T04:30:54.679041Z\n",
        "",
    ],
)
def test_any_other_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_the_cache_keeps_instants_and_refusals_apart() -> None:
    """A naive time with the fields of a cached instant is still refused, and an
    instant given in another zone reads back as the UTC text."""
    aware = parse_time("2026-11-24T04:30:54.679041Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(aware.replace(tzinfo=None))
    elsewhere = aware.astimezone(timezone(timedelta(hours=-3)))
    assert format_time(elsewhere) == "2026-11-24T04:30:54.679041Z"
    assert parse_time(format_time(elsewhere)).tzinfo is UTC


def test_the_cache_stays_bounded() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for second in range(20_000):
        format_time(start + timedelta(seconds=second))
    assert len(times._TEXT_OF) <= times._CACHED and len(times._INSTANT_OF) <= times._CACHED
