"""What the admin pages read from the running Agent, from the admin server's threads.

Only reads: integers, copies of dicts made in one C call (atomic under the GIL), the
Agent's attributes, and the feeds' files. Nothing here may block or change the DNS thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.feed.sync import feeds_in_force
from agent.lists import feeds_dir


@dataclass(frozen=True)
class FeedReading:
    publisher: str
    version: int
    issued_at: datetime
    expires_at: datetime
    expired: bool
    lists: tuple[tuple[str, int], ...]  # (path, entries)

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.issued_at).total_seconds()


FEEDS_CACHE_SECONDS = 5.0  # the feeds' manifests are read again at most this often
_feeds_cache: dict[str, tuple[float, list[FeedReading]]] = {}


def dns_up(agent) -> bool:
    """The DNS sockets are open and the event loop that serves them is running."""
    if agent is None:
        return False
    loop = getattr(agent, "_loop", None)
    return (
        bool(agent.server.addresses)
        and bool(agent.server._udp_socks)
        and loop is not None
        and loop.is_running()
    )


def feeds(agent) -> list[FeedReading]:
    """The criteria feeds in force, one per publisher (the default feed among them)."""
    if agent is None:
        return []
    store = str(feeds_dir(agent.settings.data))
    cached = _feeds_cache.get(store)
    now = time.monotonic()
    if cached is not None and now - cached[0] < FEEDS_CACHE_SECONDS:
        return cached[1]
    readings = []
    for feed in feeds_in_force(store):
        m = feed.manifest
        readings.append(
            FeedReading(
                feed.publisher_id,
                m.version,
                m.issued_at,
                m.expires_at,
                m.expired(),
                tuple((lst.path, lst.count) for lst in m.lists),
            )
        )
    _feeds_cache[store] = (now, readings)
    return readings


def block_category(reason: str) -> tuple[str, str]:
    """(category or "", what decided) of a block reason: 'category=gambling min_age=18+' ->
    ('gambling', 'category'); 'always=malware' -> ('malware', 'always'); 'rule=block:x.com'
    -> ('', 'rule'). The second part keeps the metric's labels few (no domains in them)."""
    kind, _, value = reason.partition("=")
    if kind in ("category", "always", "allowlist"):
        return value.split(" ", 1)[0], kind
    if reason == "bypass=filter_bypass":
        return "filter_bypass", "bypass"
    return "", kind
