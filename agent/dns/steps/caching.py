"""Answers from the cache; on a miss, keeps what the next link fetched; stale data when upstreams fail."""

from __future__ import annotations

import time

from ...model import Answer, AnswerKind
from ..cache import AnswerCache
from ..wire import Query
from .base import Result, Step


class Caching(Step):
    def __init__(self, cache: AnswerCache):
        self.cache = cache

    def describe(self) -> str:
        c = self.cache
        return (
            f"Caching: up to {c.max_entries} answers / {c.max_bytes // 1024} KiB, "
            f"serve-stale for {c.stale_window:.0f} s"
        )

    def __call__(self, query: Query) -> Result:
        now = time.monotonic()
        entry = self.cache.fresh(query.key, now)
        if entry is not None:
            wire = entry.serve(query, now, cap=query.ttl_cap)
            return Answer(wire, AnswerKind.CACHED, "cache", entry.same_until(), entry)
        result = self.next(query)
        if isinstance(result, Answer):
            return self._after(query, result)
        return result.then(lambda answer: self._after(query, answer))

    def _after(self, query: Query, answer: Answer):
        if not isinstance(answer, Answer):
            return answer  # an exception travelling to the server
        fetched = getattr(answer, "fetched", None)
        if fetched is not None:
            # Kept for the cache, but not marked reusable: the replay memo takes a packet on
            # its second answer (a cache hit), so the many names asked once (trackers, CDN
            # hosts) never take a memo slot and a miss does a tenth less work.
            self.cache.keep(query.key, *fetched)
            return answer
        if answer.kind is AnswerKind.SERVFAIL:
            now = time.monotonic()
            entry = self.cache.stale(query.key, now)
            if entry is not None:
                wire = entry.serve(query, now, stale=True, cap=query.ttl_cap)
                return Answer(wire, AnswerKind.STALE, "stale: " + answer.reason)
        return answer
