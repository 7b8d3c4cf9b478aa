"""Time as the project writes it: ISO-8601 in UTC with second precision, e.g. `2026-05-01T12:00:00+00:00`."""
from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def now_iso() -> str:
    return isoformat(utc_now())


def iso_from_timestamp(timestamp: float | None) -> str | None:
    """Unix seconds as ISO-8601 (None stays None)."""
    return None if timestamp is None else isoformat(datetime.fromtimestamp(timestamp, UTC))


def timestamp_from_iso(text: str) -> float:
    """ISO-8601 (as `isoformat` writes it) as unix seconds."""
    return datetime.fromisoformat(text).timestamp()
