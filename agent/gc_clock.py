"""The DNS process's garbage collections, run by the event loop on a clock.

CPython collects its young generation once so many objects have been allocated, net of those
freed. The answer cache makes a few per miss, so with the threshold at 50,000 a young
collection came every 11 s or so at 5,000 queries/s and scanned 50,000 to 80,000 objects while
no packet was read: 3 to 30 ms, and a benchmark round's slowest answer was its longest
collection (docs/performance.md). Freed objects also hold the count back, so a collection could
come late and long: the query log's queue, freed after a burst, did that.

On a clock, each pause covers one interval's objects and never depends on what was freed: a
young collection every second (0.5 ms on average at 5,000 queries/s, at most 4 ms), and a middle
one every ten, which scans what survived them (0.5 to 7 ms; 9 to 18 ms after a burst of 50,000
new names). A cached answer leaves nothing behind for it (dns/cache.py). The automatic
threshold stays, far above a second's allocations, for bursts such as a policy rebuild; its
other two numbers are the clock's own, so they keep their meaning.
"""

from __future__ import annotations

import asyncio
import gc

YOUNG_SECONDS = 1.0  # a young collection this often
MIDDLE_EVERY = 10  # young collections per middle one (its pause grows with the interval)
OLD_EVERY = 2160  # middle collections per full one: every six hours
BURST_THRESHOLD = 200_000  # allocations between ticks that still start a collection at once


class CollectorClock:
    """Young, middle and full collections at fixed intervals from the event loop."""

    def __init__(
        self,
        interval: float = YOUNG_SECONDS,
        middle_every: int = MIDDLE_EVERY,
        old_every: int = OLD_EVERY,
    ):
        self.interval = interval
        self.middle_every = middle_every
        self.old_every = old_every
        self.ticks = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved: tuple[int, int, int] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._saved = gc.get_threshold()
        gc.set_threshold(BURST_THRESHOLD, self.middle_every, self.old_every)
        self._timer = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def _tick(self) -> None:
        assert self._loop is not None
        # Scheduled first: a collection that raises (a callback's bug) must not stop the clock.
        self._timer = self._loop.call_later(self.interval, self._tick)
        self.ticks += 1
        if self.ticks % (self.middle_every * self.old_every) == 0:
            gc.collect(2)
        elif self.ticks % self.middle_every == 0:
            gc.collect(1)
        else:
            gc.collect(0)
