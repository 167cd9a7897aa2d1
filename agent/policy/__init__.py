"""Deciding what a query may see: a pure function over an immutable snapshot.

The age-based policy: `build_snapshot` (snapshot.py) precomputes a `PolicySnapshot` from the
policy values (model.py), and `decision.decide` / `decide_for_client` answer allow, block or
rewrite with a reason. Its `Decision` is exported here as `PolicyDecision` and its `decide` as
`decide_policy`, because the legacy names (decide.py, still used by the resolver) keep `Decision`
and `decide` until the resolver switches over.
"""

from .bands import age_on, band_at, band_for_age, next_band_change
from .decide import ALLOWED, Decision, Snapshot, decide
from .decision import Decision as PolicyDecision
from .decision import decide as decide_policy
from .decision import decide_for_client
from .schedules import active_windows, next_boundary, window_of
from .snapshot import PolicySnapshot, build_snapshot

__all__ = [
    "ALLOWED",
    "Decision",
    "PolicyDecision",
    "PolicySnapshot",
    "Snapshot",
    "active_windows",
    "age_on",
    "band_at",
    "band_for_age",
    "build_snapshot",
    "decide",
    "decide_for_client",
    "decide_policy",
    "next_band_change",
    "next_boundary",
    "window_of",
]
