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

from ..model import Answer
from .wire import Query

MEMO_LIMIT = 50_000  # packets (about 250 bytes each); the oldest goes first


class ReplayMemo:
    def __init__(self, limit: int = MEMO_LIMIT):
        self.limit = limit
        self.replayed = 0
        # OrderedDict: dropping the oldest is O(1); a plain dict's next(iter()) slows
        # down to ~12 µs once many entries have been deleted from its front.
        self._memo: OrderedDict[bytes, tuple[float, bytes, object, str]] = OrderedDict()
        self.get = self._memo.get  # (reuse_until, answer without its ID, kind, reason) or None

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
        memo[query.data[2:]] = (answer.reuse_until, wire[2:], answer.kind, answer.reason)

    def clear(self) -> None:
        self._memo.clear()
