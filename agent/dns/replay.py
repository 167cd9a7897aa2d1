"""Identical query packets get identical answers, but for the ID, while the answer stays valid.

Clients repeat the same packet (same flags, name case, type and EDNS options)
again and again. Keyed by the packet without its ID, a remembered answer is
served with two dict lookups and one join, before the question is even read; this
is what makes a cache hit or a block cost about as much CPU as in dnsmasq. Only
answers the resolver chain marked reusable (`Answer.reuse_until`) are
remembered, and the memo is emptied whenever the policy or the cache changes.

Two clients sending the same packet may deserve different answers (a 9-year-old and
a parent), so there is one memo per *profile tag*: `tags` maps a client address to
its tag, a ``(profile id, TTL cap or None)`` pair the Policy step fills when it
first decides for that client. A client without a tag is always asked through the
chain. `get_for(client)` gives the bound `get` of that client's memo in one lookup.

Each remembered answer also carries what the server needs to count it and log it without
building anything per query: its counter key (the kind, or ``(BLOCKED, reason)`` so blocks
are counted by reason at no extra cost) and its query log entry, prebuilt once as
``(profile id, lower-cased wire name, type, kind, reason)``; None when that profile's
privacy level is ``off`` (or there is no query log), so a replay then logs nothing.

A remembered cache answer is reused while its bytes stay the same: until the next second of
age (its TTLs tick), or for a capped profile until its lowest TTL drops below the cap
(`capped_until`); then `refresh` serves it again from its cache entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ..model import Answer, AnswerKind
from .release import release_gradually
from .wire import Query

MEMO_LIMIT = 50_000  # packets (about 250 bytes each) in all memos together; the oldest goes first
MAX_CLIENTS = 65_536  # client addresses mapped to a memo; a flood of sources must not grow memory


def count_key(kind: AnswerKind, reason: str):
    """The server's counter for an answer: its kind, or (BLOCKED, reason) for a block."""
    return (kind, reason) if kind is AnswerKind.BLOCKED else kind


def capped_until(entry, cap: int, now: float) -> float:
    """Until when `entry` served with TTLs capped at `cap` gives the same bytes as at `now`.

    While every TTL of the entry, counted down, is still at or above the cap, each is served
    as the cap: the copy does not change each second (as an uncapped one does) but only when
    the lowest TTL drops below the cap, or the entry expires. Every child's answers are capped
    (300 s by default against TTLs of hours), so a child's remembered answer is refreshed
    once rather than once a second per name. Call it after serving the entry at `now`."""
    lowest = min(entry.ttls[1::2], default=0)  # (offset, TTL, offset, TTL, ...)
    # Served at age int(t - stored); all capped while that age <= lowest - cap.
    last = entry.stored + (lowest - cap + 1)
    if now >= last:
        return entry.same_until()  # some TTL already ticks below the cap
    return last if last < entry.expires else entry.expires


class ReplayMemo:
    def __init__(self, tags: dict | None = None, limit: int = MEMO_LIMIT):
        self.limit = limit
        self.tags: dict = {} if tags is None else tags  # client address -> (profile id, ttl cap)
        self.until = float("inf")  # monotonic: the policy's next change; no reuse past it
        # OrderedDict: dropping the oldest is O(1); a plain dict's next(iter()) slows
        # down to ~12 µs once many entries have been deleted from its front.
        # tag -> {packet[2:]: (reuse_until, answer without its ID, kind, reason,
        #                      cache entry or None, question end, ttl cap,
        #                      counter key, query log entry or None)}
        self._memos: dict[tuple, OrderedDict[bytes, tuple]] = {}
        # client address -> its memo's bound get
        self._gets: dict[str, Callable[[bytes], tuple | None]] = {}
        self.get_for = self._gets.get  # cleared in place, so a bound copy stays valid
        self._size = 0
        # profile id -> whether its answers go to the query log (None: there is no log).
        self.logs: Callable[[str], bool] | None = None
        self._logged: dict[str, bool] = {}  # logs(profile), asked once per profile per clear()

    def __len__(self) -> int:
        return self._size

    def lookup(self, client: str, key: bytes) -> tuple | None:
        get = self._gets.get(client)
        return None if get is None else get(key)

    def remember(self, query: Query, answer: Answer) -> None:
        wire = answer.wire
        # Only answers that fit the asker's UDP buffer, so a replay never needs truncating.
        if wire is None or len(wire) > query.udp_size:
            return
        tag = self.tags.get(query.client)
        if tag is None:
            return  # answered before the policy knew this client (refused, own names, ...)
        memo = self._memos.get(tag)
        if memo is None:
            memo = self._memos[tag] = OrderedDict()
        if query.client not in self._gets:
            if len(self._gets) >= MAX_CLIENTS:
                self._gets.clear()
            self._gets[query.client] = memo.get
        key = query.data[2:]
        if key not in memo:
            if self._size >= self.limit:
                self._evict(memo)
            self._size += 1
        kind, reason = answer.kind, answer.reason
        if kind is AnswerKind.FORWARDED:
            kind, reason = AnswerKind.CACHED, "cache"  # what a repeat of it is
        until = answer.reuse_until if answer.reuse_until < self.until else self.until
        profile = tag[0]
        logged = self._logged.get(profile)
        if logged is None:
            # Asked once per profile until the memo is emptied (attach_log empties it).
            logged = self._logged[profile] = self.logs is not None and bool(self.logs(profile))
        memo[key] = (
            until,
            wire[2:],
            kind,
            reason,
            answer.entry,
            query.question_end,
            tag[1],
            kind if kind is not AnswerKind.BLOCKED else (kind, reason),  # count_key(), inlined
            # The log's part: plain types only (the kind's value), which the hand-off marshals.
            (profile, query.qname_key, query.qtype, kind.value, reason) if logged else None,
        )

    def _evict(self, memo: OrderedDict) -> None:
        victim = memo if memo else max(self._memos.values(), key=len)
        if victim:
            victim.popitem(last=False)
            self._size -= 1

    def refresh(self, client: str, key: bytes, hit: tuple, data: bytes, now: float) -> tuple | None:
        """A remembered cache answer whose TTLs have ticked: count them down from its
        cache entry while that is fresh (the chain's decision for this packet still
        holds until the policy's next change, when the memo is emptied). None: ask the chain."""
        entry = hit[4]
        if entry is None or entry.expires <= now or now >= self.until:
            return None
        memo = self._memos.get(self.tags.get(client))  # type: ignore[arg-type]
        if memo is None or key not in memo:
            return None
        cap = hit[6]
        wire = entry.serve_packet(data, hit[5], data[2] << 8 | data[3], now, cap=cap)
        until = entry.same_until() if cap is None else capped_until(entry, cap, now)
        fresh = (min(until, self.until), wire[2:], *hit[2:4], entry, *hit[5:])
        memo[key] = fresh
        return fresh

    def clear(self, until: float | None = None) -> None:
        """Forget every answer (the policy, the lists or the time changed); `until`: the next change."""
        if until is not None:
            self.until = until
        old = self._memos
        self._memos = {}
        self._gets.clear()
        self._logged.clear()
        self._size = 0
        for memo in old.values():
            release_gradually(memo)
