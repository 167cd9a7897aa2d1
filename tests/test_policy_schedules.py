"""Weekly windows on the local wall clock: overnight, across Sunday->Monday, DST, next boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.policy.model import Schedule
from agent.policy.schedules import (
    active_windows,
    is_active,
    minutes_of,
    next_boundary,
    window_of,
)
from tests.policy_fixtures import BERLIN, HCM

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def sched(days, start, end, sid="w", mode="internet_off") -> Schedule:
    return Schedule(sid, "p", sid.title(), frozenset(days), start, end, mode)


# School nights: Sunday to Thursday evenings, until the next morning.
SCHOOL_NIGHTS = window_of(sched({SUN, MON, TUE, WED, THU}, "21:30", "06:30", "bedtime"))
SAT_AFTERNOON = window_of(sched({SAT}, "14:00", "16:00", "homework", "block"))
SUNDAY_LATE = window_of(sched({SUN}, "23:00", "01:00", "late"))  # crosses into next Monday
ALL_DAY_WED = window_of(sched({WED}, "08:00", "08:00", "wed"))  # start == end: 24 hours


def local(y, m, d, hh, mm, zone=HCM) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=zone)


# 2026-11-29 is a Sunday, 2026-11-30 a Monday.
@pytest.mark.parametrize(
    ("window", "when", "active"),
    [
        (SCHOOL_NIGHTS, local(2026, 11, 29, 21, 29), False),
        (SCHOOL_NIGHTS, local(2026, 11, 29, 21, 30), True),  # starts on Sunday evening
        (SCHOOL_NIGHTS, local(2026, 11, 29, 23, 59), True),
        (SCHOOL_NIGHTS, local(2026, 11, 30, 0, 0), True),  # across midnight into Monday
        (SCHOOL_NIGHTS, local(2026, 11, 30, 6, 29), True),
        (SCHOOL_NIGHTS, local(2026, 11, 30, 6, 30), False),  # the end is exclusive
        (SCHOOL_NIGHTS, local(2026, 12, 4, 5, 0), True),  # Friday morning: Thursday's window
        (SCHOOL_NIGHTS, local(2026, 12, 4, 21, 30), False),  # no window starts on Friday
        (SCHOOL_NIGHTS, local(2026, 12, 5, 2, 0), False),  # nor on Saturday morning
        (SCHOOL_NIGHTS, local(2026, 11, 29, 6, 0), False),  # Sunday morning: Saturday has none
        (SAT_AFTERNOON, local(2026, 11, 28, 13, 59), False),
        (SAT_AFTERNOON, local(2026, 11, 28, 14, 0), True),
        (SAT_AFTERNOON, local(2026, 11, 28, 15, 59), True),
        (SAT_AFTERNOON, local(2026, 11, 28, 16, 0), False),
        (SUNDAY_LATE, local(2026, 11, 29, 23, 30), True),
        (SUNDAY_LATE, local(2026, 11, 30, 0, 30), True),  # Sunday -> Monday, across the week
        (SUNDAY_LATE, local(2026, 11, 30, 1, 0), False),
        (SUNDAY_LATE, local(2026, 11, 23, 0, 30), True),  # the previous week's occurrence
        (ALL_DAY_WED, local(2026, 12, 2, 8, 0), True),
        (ALL_DAY_WED, local(2026, 12, 3, 7, 59), True),
        (ALL_DAY_WED, local(2026, 12, 3, 8, 0), False),
    ],
)
def test_window_active(window, when, active):
    assert is_active(window, when, HCM) is active
    # The same instant given in UTC reads the same local wall clock.
    assert is_active(window, when.astimezone(UTC), HCM) is active


def test_active_windows_keeps_order():
    when = local(2026, 11, 29, 23, 30)
    assert active_windows([SAT_AFTERNOON, SUNDAY_LATE, SCHOOL_NIGHTS], when, HCM) == (
        SUNDAY_LATE,
        SCHOOL_NIGHTS,
    )


@pytest.mark.parametrize("text", ["24:00", "7:30", "07:60", "0730", "", "07:30:00", "07:3x"])
def test_bad_times_are_refused(text):
    with pytest.raises(ValueError):
        minutes_of(text)


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        ([SCHOOL_NIGHTS], local(2026, 11, 28, 10, 0), local(2026, 11, 29, 21, 30)),  # Sat -> Sun
        ([SCHOOL_NIGHTS], local(2026, 11, 29, 21, 30), local(2026, 11, 30, 6, 30)),
        ([SCHOOL_NIGHTS], local(2026, 11, 30, 3, 0), local(2026, 11, 30, 6, 30)),
        ([SCHOOL_NIGHTS], local(2026, 12, 4, 6, 30), local(2026, 12, 6, 21, 30)),  # Fri -> Sun
        ([SCHOOL_NIGHTS, SAT_AFTERNOON], local(2026, 12, 4, 6, 30), local(2026, 12, 5, 14, 0)),
        ([SUNDAY_LATE], local(2026, 11, 29, 23, 59), local(2026, 11, 30, 1, 0)),
        ([], local(2026, 11, 28, 10, 0), None),
    ],
)
def test_next_boundary(windows, now, expected):
    got = next_boundary(windows, now, HCM)
    assert got == expected
    if got is not None:
        assert got.tzinfo is not None


def _assert_no_change_before_boundary(windows, start, stop, zone, step=timedelta(minutes=7)):
    """Walk the timeline: between `now` and next_boundary(now) the active set never changes,
    and at the boundary's exact instant it is re-evaluated (it may be unchanged)."""
    now = start
    while now < stop:
        boundary = next_boundary(windows, now, zone)
        assert boundary is not None and boundary > now
        state = active_windows(windows, now, zone)
        t = now
        while t < min(boundary, stop):
            assert active_windows(windows, t, zone) == state, (now, t, boundary)
            t += step
        # just before the boundary too
        last = boundary - timedelta(seconds=1)
        if last > now:
            assert active_windows(windows, last, zone) == state, (now, last, boundary)
        now = boundary


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        (HCM, datetime(2026, 11, 26, tzinfo=UTC)),
        (BERLIN, datetime(2026, 3, 26, tzinfo=UTC)),  # the spring-forward weekend (Mar 29)
        (BERLIN, datetime(2026, 10, 22, tzinfo=UTC)),  # the fall-back weekend (Oct 25)
    ],
)
def test_next_boundary_is_never_late(zone, start):
    windows = [
        SCHOOL_NIGHTS,
        SAT_AFTERNOON,
        SUNDAY_LATE,
        ALL_DAY_WED,
        window_of(sched(set(range(7)), "02:30", "03:15", "night")),  # in the skipped hour
    ]
    _assert_no_change_before_boundary(windows, start, start + timedelta(days=8), zone)


def test_wall_clock_semantics_in_a_dst_zone():
    """Saturday 22:00 to Sunday 07:00 in Berlin over the night the clocks go forward lasts
    8 hours of real time, not 9: the window follows the local clock."""
    night = window_of(sched({SAT}, "22:00", "07:00", "sat-night"))
    starts = datetime(2026, 3, 28, 21, 0, tzinfo=UTC)  # 22:00 CET
    ends = datetime(2026, 3, 29, 5, 0, tzinfo=UTC)  # 07:00 CEST
    assert ends - starts == timedelta(hours=8)
    assert not is_active(night, starts - timedelta(seconds=1), BERLIN)
    assert is_active(night, starts, BERLIN)
    assert is_active(night, ends - timedelta(seconds=1), BERLIN)
    assert not is_active(night, ends, BERLIN)
    # next_boundary may stop early at the clock change (01:00 UTC) but reaches the end.
    seen = []
    now = starts
    while now < ends:
        now = next_boundary([night], now, BERLIN)
        seen.append(now)
    assert seen[-1] == ends
    assert all(t <= ends for t in seen)
    # In Vietnam (no DST) the same window is 9 hours long.
    hcm_start = datetime(2026, 3, 28, 22, 0, tzinfo=HCM)
    assert next_boundary([night], hcm_start, HCM) - hcm_start == timedelta(hours=9)


def test_window_in_the_repeated_hour_of_fall_back():
    """02:30-03:15 on 2026-10-25 in Berlin: that wall-clock time happens twice; the window is
    active at both readings, and next_boundary never skips a change."""
    w = window_of(sched({SUN}, "02:30", "03:15", "x"))
    first = datetime(2026, 10, 25, 2, 40, tzinfo=BERLIN, fold=0)  # 00:40 UTC (CEST)
    second = datetime(2026, 10, 25, 2, 40, tzinfo=BERLIN, fold=1)  # 01:40 UTC (CET)
    assert is_active(w, first, BERLIN)
    assert is_active(w, second, BERLIN)
    between = datetime(2026, 10, 25, 1, 5, tzinfo=UTC)  # 02:05 CET, after the clock went back
    assert not is_active(w, between, BERLIN)
    boundary = next_boundary([w], first, BERLIN)
    assert boundary <= datetime(2026, 10, 25, 1, 0, tzinfo=UTC)  # the clock change at the latest
