"""A profile's age band at an instant, and when it next changes.

A child's band follows the age (00+ under 12, 12+ from 12, 16+ from 16, 18+ from 18) and moves
up on its own. Only the birth year and month are known, so a birthday counts as reached on the
first day of the birth month, at 00:00 in the policy's time zone. A profile without a birth uses
the band chosen for it; with neither it is an adult (18+).

Pure: every function takes the instant and the zone; none reads the clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo

from .model import BAND_START, BANDS, Profile

__all__ = [
    "ADULT_BAND",
    "age_on",
    "band_for_age",
    "band_at",
    "band_changes",
    "next_band_change",
    "is_child_band",
]

ADULT_BAND = "18+"
# The ages at which the band changes, youngest first (12, 16, 18).
_THRESHOLDS: tuple[tuple[int, str], ...] = tuple((BAND_START[b], b) for b in BANDS[1:])


def age_on(birth: tuple[int, int], day: date) -> int:
    """Whole years on `day` for someone born in (year, month); the birthday month counts from
    its first day. Never negative (a birth in the future reads as age 0)."""
    year, month = birth
    age = day.year - year - (1 if day.month < month else 0)
    return max(age, 0)


def band_for_age(age: int) -> str:
    band = BANDS[0]
    for start, name in _THRESHOLDS:
        if age >= start:
            band = name
    return band


def _fixed_band(profile: Profile) -> str:
    return profile.band if profile.band in BANDS else ADULT_BAND


def band_at(profile: Profile, now: datetime, zone: tzinfo) -> str:
    """The profile's band at the aware instant `now`, with dates read in `zone`."""
    if profile.birth is None:
        return _fixed_band(profile)
    return band_for_age(age_on(profile.birth, now.astimezone(zone).date()))


def band_changes(profile: Profile, zone: tzinfo) -> tuple[tuple[datetime, str], ...]:
    """Every instant at which the profile's band changes, with the band from then on, oldest
    first; () for a profile with a fixed band. The instants are the first day of the birth month
    at 00:00 local time in the years the child turns 12, 16 and 18 (given in UTC)."""
    if profile.birth is None:
        return ()
    year, month = profile.birth
    return tuple(
        (datetime(year + start, month, 1, tzinfo=zone).astimezone(UTC), band)
        for start, band in _THRESHOLDS
    )


def next_band_change(profile: Profile, now: datetime, zone: tzinfo) -> datetime | None:
    """The first instant after `now` at which the band changes, or None (fixed band, or 18+)."""
    for instant, _band in band_changes(profile, zone):
        if instant > now:
            return instant
    return None


def is_child_band(band: str) -> bool:
    """00+, 12+ and 16+ are children: the bypass defaults and SafeSearch "auto" apply to them."""
    return band != ADULT_BAND
