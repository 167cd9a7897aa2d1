"""Deciding what a query may see: a pure function over an immutable snapshot.

The age-based policy: `build_snapshot` (snapshot.py) precomputes a `PolicySnapshot` from the
policy values (model.py), and `decide` / `decide_for_client` (decision.py) answer allow, block or
rewrite with a reason.
"""

from .bands import age_on, band_at, band_for_age, next_band_change
from .decision import Decision, decide, decide_for_client
from .schedules import active_windows, next_boundary, window_of
from .snapshot import PolicySnapshot, build_snapshot

__all__ = [
    "Decision",
    "PolicySnapshot",
    "active_windows",
    "age_on",
    "band_at",
    "band_for_age",
    "build_snapshot",
    "decide",
    "decide_for_client",
    "next_band_change",
    "next_boundary",
    "window_of",
]
