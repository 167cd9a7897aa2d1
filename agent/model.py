"""The small shared vocabulary: what kind of answer a query got, and why.

The values of AnswerKind are stable: the query log, metrics and the admin page
store and show them.
"""

from __future__ import annotations

from enum import StrEnum


class AnswerKind(StrEnum):
    FORWARDED = "forwarded"  # fetched from an upstream just now
    CACHED = "cached"  # served from the cache
    STALE = "stale"  # expired cache data served because every upstream failed (RFC 8767)
    BLOCKED = "blocked"  # the policy blocked the name
    REWRITTEN = "rewritten"  # the policy sent the name elsewhere (SafeSearch: a CNAME to the safe host)
    LOCAL = "local"  # answered by SafeNest itself (its own name, ANY, special names)
    REFUSED = "refused"  # the client is not allowed to use this resolver
    RATE_LIMITED = "rate_limited"  # dropped: the client sent too many queries
    SERVFAIL = "servfail"  # no answer could be had, or our own error
    MALFORMED = "malformed"  # FORMERR, NOTIMP or BADVERS for a bad or unsupported query


class Answer:
    """The bytes to send (None: send nothing) and the reason they were chosen.

    `reuse_until` (monotonic seconds) says until when the same query packet may
    be given the same bytes with only its ID changed; 0 means never.
    """

    __slots__ = ("wire", "kind", "reason", "reuse_until", "entry")

    def __init__(
        self, wire: bytes | None, kind: AnswerKind, reason: str = "", reuse_until: float = 0.0, entry=None
    ):
        self.wire = wire
        self.kind = kind
        self.reason = reason
        self.reuse_until = reuse_until
        self.entry = entry  # the cache entry it came from, so a replay can count its TTLs down

    def __repr__(self) -> str:
        return f"Answer({self.kind.value}, {self.reason!r}, {len(self.wire or b'')} bytes)"
