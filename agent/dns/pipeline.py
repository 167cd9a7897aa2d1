"""The resolver chain: its order, written in one place, with the reason for each position."""

from __future__ import annotations

from .steps.base import Step
from .steps.caching import Caching
from .steps.client_gate import ClientGate
from .steps.forwarding import Forwarding
from .steps.local_names import LocalNames
from .steps.local_zones import LocalZones
from .steps.policy import Policy
from .steps.special_queries import SpecialQueries


def chain(*steps: Step) -> Step:
    """Link each step to the one after it; return the first."""
    for step, after in zip(steps, steps[1:], strict=False):
        step.next = after
    return steps[0]


def build_chain(
    gate: ClientGate,
    local: LocalNames,
    policy: Policy,
    special: SpecialQueries,
    caching: Caching,
    local_zones: LocalZones,
    forwarding: Forwarding,
) -> list[Step]:
    steps: list[Step] = [
        # 1. Refuse outsiders and drop floods before any other work is spent on them.
        gate,
        # 2. Our own names answer even when the lists or every upstream are broken,
        #    so a parent can always reach the admin page.
        local,
        # 3. Policy before the cache: a cached answer must never leak past a block, a
        #    name unblocked later must not wait for a cached block to expire, and the
        #    cache is shared by every profile (the policy, not the cache, differs per
        #    child). A SafeSearch rewrite asks the links below for its target.
        policy,
        # 4. ANY and other classes after the policy, so a blocked name is blocked for every type.
        special,
        # 5. The cache answers what it has, keeps what the upstreams return, and
        #    serves stale data when they fail (RFC 8767).
        caching,
        # 6. Private names (reverse lookups of LAN ranges, dotless names, home.arpa) never
        #    reach the upstreams: the router is asked, or NXDOMAIN answered here. After the
        #    cache, so the router's answers are cached like any other.
        local_zones,
        # 7. Last: the upstreams.
        forwarding,
    ]
    chain(*steps)
    return steps
