"""Weekly windows on the local wall clock: which are active at an instant, and when that changes.

A window starts on each of its `days` at `start` and lasts until the next `end` on the clock:
"21:30-06:30" on Sunday runs from Sunday 21:30 to Monday 06:30, and "22:00-06:00" starting on
a Sunday crosses into Monday of the next week. `end` equal to `start` is a full 24 hours.

Wall-clock semantics: a window is active when the local time in the policy's zone reads inside
it, so "21:30" stays 21:30 across a daylight-saving change (the window is an hour shorter or
longer that night). `next_boundary` may return an instant earlier than the real change (a
time-zone offset change, or both readings of a clock time that the change makes ambiguous or
skips), never a later one: a caller that re-evaluates at that instant finds nothing changed and
asks again.

Pure: the instant and the zone are arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from .model import TIME_PATTERN, Schedule

__all__ = ["Window", "window_of", "active_windows", "is_active", "next_boundary", "minutes_of"]

_DAY = 24 * 60  # minutes
_WEEK = 7 * _DAY


def minutes_of(text: str) -> int:
    """Minutes after midnight of "HH:MM"; ValueError for anything else."""
    if not TIME_PATTERN.match(text) or len(text) != 5:
        raise ValueError(f"bad time {text!r}: expected HH:MM (00:00-23:59)")
    return int(text[:2]) * 60 + int(text[3:])


@dataclass(frozen=True, slots=True)
class Window:
    """A schedule in minutes of the week (0 = Monday 00:00): where each occurrence starts, and
    how long every occurrence lasts."""

    schedule: Schedule
    starts: tuple[int, ...]  # minute of the week, sorted
    length: int  # minutes, 1 .. 1440

    def active_at_minute(self, minute_of_week: float) -> bool:
        length = self.length
        for start in self.starts:
            if (minute_of_week - start) % _WEEK < length:
                return True
        return False


def window_of(schedule: Schedule) -> Window:
    start = minutes_of(schedule.start)
    end = minutes_of(schedule.end)
    length = end - start if end > start else end - start + _DAY  # end <= start: overnight
    days = sorted(d for d in schedule.days if 0 <= d <= 6)
    return Window(schedule, tuple(d * _DAY + start for d in days), length)


def _minute_of_week(now: datetime, zone: tzinfo) -> float:
    local = now.astimezone(zone)
    return (
        local.weekday() * _DAY
        + local.hour * 60
        + local.minute
        + (local.second + local.microsecond / 1e6) / 60
    )


def is_active(window: Window, now: datetime, zone: tzinfo) -> bool:
    return window.active_at_minute(_minute_of_week(now, zone))


def active_windows(windows: Iterable[Window], now: datetime, zone: tzinfo) -> tuple[Window, ...]:
    """The windows active at `now`, in the order given."""
    minute = _minute_of_week(now, zone)
    return tuple(w for w in windows if w.active_at_minute(minute))


def _instants(local_naive: datetime, zone: tzinfo) -> tuple[datetime, ...]:
    """Both readings of a wall-clock time (they differ only when a clock change skips or repeats
    it): the earlier of the two is never later than the real change."""
    # In UTC: aware datetimes sharing one tzinfo compare by wall clock, ignoring fold.
    return tuple(local_naive.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))


def _offset_change(zone: tzinfo, after: datetime, before: datetime) -> datetime | None:
    """The first instant in (after, before] at which the zone's UTC offset changes, to the
    second, or None. Assumes at most one change in the interval (they are months apart)."""
    lo = after.astimezone(UTC)
    hi = before.astimezone(UTC)
    if lo.astimezone(zone).utcoffset() == hi.astimezone(zone).utcoffset():
        return None
    base = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == base:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0) if hi.replace(microsecond=0) > after else hi


def next_boundary(windows: Iterable[Window], now: datetime, zone: tzinfo) -> datetime | None:
    """The earliest instant after `now` at which a window starts or ends (or the zone's offset
    changes before that), or None when there are no windows."""
    windows = tuple(windows)
    if not any(w.starts for w in windows):
        return None
    now = now.astimezone(UTC)
    local = now.astimezone(zone).replace(tzinfo=None)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    week_start = midnight - timedelta(days=local.weekday())  # Monday 00:00 of this week
    best: datetime | None = None
    # Occurrences that started in the previous week may still be running: look one week back
    # and one ahead (a window lasts at most a day).
    for week in (-1, 0, 1):
        base = week_start + timedelta(days=7 * week)
        for w in windows:
            for start in w.starts:
                for minute in (start, start + w.length):
                    wall = base + timedelta(minutes=minute)
                    for instant in _instants(wall, zone):
                        if instant > now and (best is None or instant < best):
                            best = instant
    if best is not None:
        change = _offset_change(zone, now, best)
        if change is not None and now < change < best:
            best = change
    return best
