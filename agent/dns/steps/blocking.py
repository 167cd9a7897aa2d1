"""Blocks what the policy forbids, with the reason in an Extended DNS Error (RFC 8914)."""

from __future__ import annotations

from ...model import Answer, AnswerKind
from ...policy import Decision, Snapshot, decide
from ..release import release_gradually
from ..wire import (
    EDE_BLOCKED,
    NOERROR,
    NXDOMAIN,
    T_A,
    T_AAAA,
    T_SOA,
    U32,
    Query,
    ede_option,
    name_to_wire,
    record,
    reply,
)
from .base import Result, Step

MEMO_LIMIT = 20_000  # names; cleared when full, replaced when the snapshot changes


def _soa(ttl: int) -> bytes:
    # An SOA owned by the blocked name lets resolvers cache the negative answer for block_ttl.
    rdata = name_to_wire("safenest.home.arpa") + name_to_wire("blocked.safenest.home.arpa")
    rdata += U32.pack(1) + U32.pack(3600) + U32.pack(600) + U32.pack(86400) + U32.pack(ttl)
    return record(T_SOA, ttl, rdata)


class Blocking(Step):
    """Asks `decide` for each name (memoised per snapshot) and answers blocked ones itself."""

    def __init__(self, snapshot: Snapshot, mode: str, ttl: int):
        self.snapshot = snapshot
        self.mode = mode
        self.ttl = ttl
        self.blocked = 0
        self._memo: dict[bytes, Decision] = {}
        self._soa = _soa(ttl)
        self._null = {T_A: record(T_A, ttl, bytes(4)), T_AAAA: record(T_AAAA, ttl, bytes(16))}

    def describe(self) -> str:
        return f"Blocking: {len(self.snapshot.index)} listed names ({self.snapshot.label}); answer {self.mode}, TTL {self.ttl} s"

    def swap(self, snapshot: Snapshot) -> None:
        """Put a new snapshot in force; one assignment, so a query sees the old or the new one."""
        self.snapshot = snapshot
        old, self._memo = self._memo, {}
        release_gradually(old)  # and with it the last reference to the old index

    def decision(self, qname_key: bytes) -> Decision:
        memo = self._memo
        found = memo.get(qname_key)
        if found is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            found = memo[qname_key] = decide(qname_key, self.snapshot)
        return found

    def __call__(self, query: Query) -> Result:
        found = self.decision(query.qname_key)
        if not found.blocked:
            return self.next(query)
        self.blocked += 1
        # Reusable until the snapshot changes (the server's replay memo is emptied then).
        return Answer(self.blocked_reply(query, found), AnswerKind.BLOCKED, found.reason, float("inf"))

    def blocked_reply(self, query: Query, found: Decision) -> bytes:
        ede = ede_option(EDE_BLOCKED, found.reason)
        if self.mode == "nxdomain":
            return reply(query, NXDOMAIN, authority=self._soa, nscount=1, ede=ede)
        null = self._null.get(query.qtype)
        if null is not None:
            return reply(query, NOERROR, null, 1, ede=ede)
        return reply(query, NOERROR, authority=self._soa, nscount=1, ede=ede)
