"""A cache of upstream answers kept as wire bytes.

An entry is served by copying its bytes with the client's ID and question (so
the client's letter case comes back to it) and TTLs counted down. The counted
down copy is kept per whole second, so most hits only join three slices.
Expired entries stay (within the LRU bounds) to be served stale when every
upstream fails (RFC 8767).
"""

from __future__ import annotations

import ctypes
import time
from collections import OrderedDict

from .wire import (
    CD,
    EDNS_UDP_SIZE,
    NOERROR,
    NXDOMAIN,
    RD,
    U16,
    U32,
    Query,
    ResponseInfo,
)

STALE_TTL = 30  # RFC 8767 recommends 30 s for stale answers

# The collector leaves a kept Entry alone: it refers only to bytes, numbers and tuples of them,
# so it can never be in a reference cycle (the rule by which CPython itself stops tracking such
# tuples), and refcounting frees it. Tracked, the entries of a burst of misses were all scanned
# by the next middle collection (gc_clock.py; docs/performance.md, "The collector on a clock").
_untrack = ctypes.pythonapi.PyObject_GC_UnTrack
_untrack.argtypes = (ctypes.py_object,)
_untrack.restype = None


def _footprint(entry: Entry) -> int:
    # The answer and its counted-down copy, plus the entry, key and dict slot
    # (inlined in AnswerCache.keep: change both).
    return 2 * len(entry.wire) + 320


class Entry:
    """One upstream answer, with what is needed to serve it to any client asking the same."""

    __slots__ = (
        "wire",
        "ttls",
        "stored",
        "expires",
        "stale_until",
        "rdcd",
        "_age",
        "_aged",
        "_capped",
    )

    def __init__(self, wire: bytes, info: ResponseInfo, rdcd: int, now: float):
        if info.opt_offset >= 0:
            # Clients see our buffer size, not the upstream's.
            patched = bytearray(wire)
            U16.pack_into(patched, info.opt_offset, EDNS_UDP_SIZE)
            wire = bytes(patched)
        self.wire = wire
        # Flat (offset, TTL, offset, TTL, ...): a tuple of ints is no longer tracked after the
        # first young collection. A list would be scanned by every collection for as long as
        # the entry lives, and a tuple of pairs by one middle collection (gc_clock.py).
        self.ttls: tuple[int, ...] = tuple([x for pair in info.ttls for x in pair])
        self.stored = now
        self.expires = now  # until AnswerCache.keep gives it a lifetime
        self.stale_until = now
        self.rdcd = rdcd  # the RD and CD bits of the query that fetched it
        self._age = 0
        self._aged = wire
        self._capped: tuple | None = None  # (age, cap, bytes): the last capped copy

    def serve(self, query: Query, now: float, stale: bool = False, cap: int | None = None) -> bytes:
        return self.serve_packet(query.data, query.question_end, query.flags, now, stale, cap)

    def serve_packet(
        self,
        data: bytes,
        question_end: int,
        flags: int,
        now: float,
        stale: bool = False,
        cap: int | None = None,
    ) -> bytes:
        """The answer for the query packet `data` (its question ends at `question_end`).

        `cap`: no TTL above this many seconds (a profile with schedules must not keep
        answers past the start of its bedtime)."""
        if stale:
            body = self._with_ttls(lambda ttl: min(ttl, STALE_TTL, cap or STALE_TTL) if ttl else 0)
        else:
            age = int(now - self.stored)
            if age != self._age:
                self._aged = self._with_ttls(lambda ttl: ttl - age if ttl > age else 0)
                self._age = age
            body = self._aged
            if cap is not None:
                body = self._capped_body(age, cap)
        flags &= RD | CD
        if flags != self.rdcd:
            # Echo the client's RD and CD bits (rare: nearly every client sets RD).
            head = bytes((body[2] & 0xFE | flags >> 8, body[3] & 0xEF | flags & CD))
            body = body[:2] + head + body[4:]
        return data[:2] + body[2:12] + data[12:question_end] + body[question_end:]

    def _capped_body(self, age: int, cap: int) -> bytes:
        capped = self._capped
        if capped is None or capped[0] != age or capped[1] != cap:
            # Kept per (age, cap): a second client of the same profile reuses it. Only the
            # TTLs above the cap are written; none (short TTLs): the aged copy itself.
            out = None
            aged = self._aged
            ttls = self.ttls
            for i in range(0, len(ttls), 2):
                offset, ttl = ttls[i], ttls[i + 1]
                if ttl - age > cap:
                    if out is None:
                        out = bytearray(aged)
                    U32.pack_into(out, offset, cap)
            capped = self._capped = (age, cap, aged if out is None else bytes(out))
        return capped[2]

    def same_until(self) -> float:
        """Until when `serve` gives the same bytes: the next whole second of age, or expiry."""
        changes = self.stored + self._age + 1
        return changes if changes < self.expires else self.expires

    def _with_ttls(self, new_ttl) -> bytes:
        aged = bytearray(self.wire)
        ttls = self.ttls
        for i in range(0, len(ttls), 2):
            U32.pack_into(aged, ttls[i], new_ttl(ttls[i + 1]))
        return bytes(aged)


def cache_ttl(info: ResponseInfo, max_ttl: int, negative_max_ttl: int) -> int:
    """How long an answer may be cached: 0 means not at all.

    Positive answers live for their smallest TTL; negative ones (NXDOMAIN and
    NODATA) for the SOA's TTL or minimum, whichever is smaller (RFC 2308), and are
    not cached without an SOA. Anything else (SERVFAIL, REFUSED) is not cached.
    """
    if info.rcode == NOERROR and info.ancount:
        return min(info.min_ttl or 0, max_ttl)
    if info.rcode in (NOERROR, NXDOMAIN) and info.negative_ttl is not None:
        return min(info.negative_ttl, negative_max_ttl)
    return 0


class AnswerCache:
    """LRU bounded by entries and bytes; keys are Query.key."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        max_ttl: int,
        negative_max_ttl: int,
        stale_window: float,
    ):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_ttl = max_ttl
        self.negative_max_ttl = negative_max_ttl
        self.stale_window = stale_window
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key: tuple, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires <= now:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def stale(self, key: tuple, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.stale_until <= now:
            return None
        self.stale_served += 1
        return entry

    def entry_for(
        self, key: tuple, wire: bytes, info: ResponseInfo, rdcd: int, now: float | None = None
    ) -> Entry:
        """Wrap an upstream answer as an Entry, and keep it if it may be cached."""
        entry = Entry(wire, info, rdcd, time.monotonic() if now is None else now)
        self.keep(key, entry, info)
        return entry

    def keep(self, key: tuple, entry: Entry, info: ResponseInfo) -> bool:
        """Give `entry` its lifetime and keep it, if the answer may be cached at all."""
        ttl = cache_ttl(info, self.max_ttl, self.negative_max_ttl)
        size = 2 * len(entry.wire) + 320  # _footprint(entry), inlined: once per cache miss
        if ttl <= 0 or not self.max_entries or size > self.max_bytes:
            return False
        entry.expires = expires = entry.stored + ttl
        entry.stale_until = expires + self.stale_window
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= _footprint(old)
        entries[key] = entry
        _untrack(entry)
        self.bytes += size
        if len(entries) > self.max_entries or self.bytes > self.max_bytes:
            self._evict()
        return True

    def _evict(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            _, old = entries.popitem(last=False)
            self.bytes -= _footprint(old)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
