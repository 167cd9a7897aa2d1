"""Ages and bands: birthdays by month in the policy's zone, fixed bands, the next change."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from agent.policy.bands import age_on, band_at, band_changes, band_for_age, next_band_change
from agent.policy.model import Profile
from tests.policy_fixtures import BERLIN, HCM

BORN = (2014, 6)  # turns 12 on 2026-06-01, 16 on 2030-06-01, 18 on 2032-06-01


@pytest.mark.parametrize(
    ("day", "age"),
    [
        (date(2026, 5, 1), 11),  # the month before the 12th birthday
        (date(2026, 5, 31), 11),
        (date(2026, 6, 1), 12),  # the birthday month counts from its first day
        (date(2026, 6, 30), 12),
        (date(2026, 7, 1), 12),  # the month after
        (date(2027, 5, 31), 12),
        (date(2027, 6, 1), 13),
        (date(2014, 6, 1), 0),
        (date(2013, 1, 1), 0),  # born in the future: age 0, not negative
    ],
)
def test_age_on(day, age):
    assert age_on(BORN, day) == age


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "00+"),
        (11, "00+"),
        (12, "12+"),
        (15, "12+"),
        (16, "16+"),
        (17, "16+"),
        (18, "18+"),
        (70, "18+"),
    ],
)
def test_band_for_age(age, band):
    assert band_for_age(age) == band


@pytest.mark.parametrize(
    ("instant", "band"),
    [
        # 2026-06-01 00:00 in Ho Chi Minh City (UTC+7) is 2026-05-31 17:00 UTC.
        (datetime(2026, 5, 31, 16, 59, 59, tzinfo=UTC), "00+"),
        (datetime(2026, 5, 31, 17, 0, 0, tzinfo=UTC), "12+"),
        (datetime(2026, 4, 15, 12, 0, tzinfo=UTC), "00+"),  # the month before
        (datetime(2026, 6, 15, 12, 0, tzinfo=UTC), "12+"),  # the month of
        (datetime(2026, 7, 15, 12, 0, tzinfo=UTC), "12+"),  # the month after
        (datetime(2030, 5, 31, 16, 59, tzinfo=UTC), "12+"),
        (datetime(2030, 5, 31, 17, 0, tzinfo=UTC), "16+"),
        (datetime(2032, 5, 31, 17, 0, tzinfo=UTC), "18+"),
    ],
)
def test_band_moves_up_at_local_midnight_of_the_birthday_month(instant, band):
    assert band_at(Profile("c", "C", birth=BORN), instant, HCM) == band


def test_the_zone_decides_which_day_it_is():
    instant = datetime(2026, 5, 31, 20, 0, tzinfo=UTC)  # June 1st in Vietnam, May 31st in Berlin
    child = Profile("c", "C", birth=BORN)
    assert band_at(child, instant, HCM) == "12+"
    assert band_at(child, instant, BERLIN) == "00+"


@pytest.mark.parametrize(
    ("profile", "band"),
    [
        (Profile("a", "A", band="00+"), "00+"),
        (Profile("a", "A", band="16+"), "16+"),
        (Profile("a", "A", kind="adult"), "18+"),  # neither birth nor band: an adult
        (Profile("a", "A", birth=(2000, 1), band="00+"), "18+"),  # birth wins over band
    ],
)
def test_fixed_and_chosen_bands(profile, band):
    assert band_at(profile, datetime(2026, 11, 28, tzinfo=UTC), HCM) == band


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 5, 31, 17, 0, tzinfo=UTC)),
        (datetime(2026, 5, 31, 17, 0, tzinfo=UTC), datetime(2030, 5, 31, 17, 0, tzinfo=UTC)),
        (datetime(2031, 1, 1, tzinfo=UTC), datetime(2032, 5, 31, 17, 0, tzinfo=UTC)),
        (datetime(2032, 6, 1, tzinfo=UTC), None),
    ],
)
def test_next_band_change(now, expected):
    assert next_band_change(Profile("c", "C", birth=BORN), now, HCM) == expected


def test_fixed_bands_never_change():
    assert (
        next_band_change(Profile("a", "A", band="12+"), datetime(2026, 1, 1, tzinfo=UTC), HCM)
        is None
    )
    assert band_changes(Profile("a", "A", band="12+"), HCM) == ()
    assert [b for _, b in band_changes(Profile("c", "C", birth=BORN), HCM)] == ["12+", "16+", "18+"]
