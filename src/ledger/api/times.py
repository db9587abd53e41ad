"""Times in query strings: ISO 8601 (a date means its midnight; no offset means UTC), and
only instants inside years 1-9999 once their offset is applied (else 400 naming the
parameter: such an instant cannot be compared or stored)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from litestar.params import QueryParameter

from ledger.api.params import MAX_TIME
from ledger.api.problems import problem

AsOf = Annotated[
    str | None,
    QueryParameter(
        max_length=MAX_TIME, description="only events received at or before this ISO 8601 time"
    ),
]
From = Annotated[
    str | None, QueryParameter(name="from", max_length=MAX_TIME, description="ISO 8601")
]
To = Annotated[str | None, QueryParameter(max_length=MAX_TIME, description="ISO 8601, exclusive")]


def parse_time(name: str, value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        raise problem(
            400,
            "invalid-time",
            "Invalid time",
            f"query parameter {name!r} must be an ISO 8601 date or time, got {value[:40]!r}",
        ) from None
    aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    in_calendar(name, aware)
    return aware


def in_calendar(name: str, moment: datetime) -> None:
    """400 naming ``name`` when ``moment`` leaves years 1-9999 once its offset is applied
    (e.g. ``9999-12-31T23:59:59-23:59``): such an instant cannot be compared or stored."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise problem(
            400,
            "time-out-of-range",
            "Time out of range",
            f"query parameter {name!r} falls outside years 1-9999 once its offset is applied",
            parameter=name,
        ) from None


def day_window(date_: str, tz: str) -> tuple[date, datetime, datetime]:
    """The day ``date_`` (YYYY-MM-DD) in zone ``tz``: (day, its start, the next day's start)."""
    try:
        day = date.fromisoformat(date_)
    except ValueError:
        raise problem(
            400,
            "invalid-date",
            "Invalid date",
            f"'date' must be YYYY-MM-DD, got {date_[:40]!r}",
        ) from None
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: e.g. a name too long
        raise problem(
            400, "invalid-tz", "Unknown time zone", f"'tz' {tz[:60]!r} is not an IANA zone"
        ) from None
    try:
        since = datetime.combine(day, datetime.min.time(), tzinfo=zone)
        until = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    except OverflowError:  # the day after 9999-12-31
        raise problem(
            400,
            "time-out-of-range",
            "Date out of range",
            "'date' is the last day of the calendar; its end cannot be represented",
            parameter="date",
        ) from None
    in_calendar("date", since)
    in_calendar("date", until)
    return day, since, until
