"""Identical query packets get identical answers, but for the ID, while the answer stays valid.

Clients repeat the same packet (same flags, name case, type and EDNS options)
again and again. Keyed by the packet without its ID, a remembered answer is
served with a dict lookup and one join, before the question is even read; this
is what makes a cache hit or a block cost about as much CPU as in dnsmasq. Only
answers the resolver chain marked reusable (`Answer.reuse_until`) are
remembered, and the memo is emptied whenever the policy or the cache changes.
"""

from __future__ import annotations

from collections import OrderedDict

from ..model import Answer, AnswerKind
from .release import release_gradually
from .wire import Query

MEMO_LIMIT = 50_000  # packets (about 250 bytes each); the oldest goes first


class ReplayMemo:
    def __init__(self, limit: int = MEMO_LIMIT):
        self.limit = limit
        # OrderedDict: dropping the oldest is O(1); a plain dict's next(iter()) slows
        # down to ~12 µs once many entries have been deleted from its front.
        self._memo: OrderedDict[bytes, tuple] = OrderedDict()
        # (reuse_until, answer without its ID, kind, reason, cache entry or None, question end) or None
        self.get = self._memo.get

    def __len__(self) -> int:
        return len(self._memo)

    def remember(self, query: Query, answer: Answer) -> None:
        wire = answer.wire
        # Only answers that fit the asker's UDP buffer, so a replay never needs truncating.
        if wire is None or len(wire) > query.udp_size:
            return
        memo = self._memo
        if len(memo) >= self.limit:
            memo.popitem(last=False)
        kind, reason = answer.kind, answer.reason
        if kind is AnswerKind.FORWARDED:
            kind, reason = AnswerKind.CACHED, "cache"  # what a repeat of it is
        memo[query.data[2:]] = (answer.reuse_until, wire[2:], kind, reason, answer.entry, query.question_end)

    def refresh(self, key: bytes, hit: tuple, data: bytes, now: float) -> tuple | None:
        """A remembered cache answer whose TTLs have ticked: count them down from its
        cache entry while that is fresh (the chain's decision for this packet still
        holds: the memo is emptied when the policy changes). None: ask the chain."""
        entry = hit[4]
        if entry is None or entry.expires <= now:
            return None
        wire = entry.serve_packet(data, hit[5], data[2] << 8 | data[3], now)
        fresh = (entry.same_until(), wire[2:], hit[2], hit[3], entry, hit[5])
        self._memo[key] = fresh
        return fresh

    def clear(self) -> None:
        old = self._memo
        self._memo = OrderedDict()
        self.get = self._memo.get
        release_gradually(old)
