"""The last link: ask the upstreams. An outage is SERVFAIL, never NXDOMAIN."""

from __future__ import annotations

import time

from ...model import Answer, AnswerKind
from ..cache import Entry
from ..pending import Pending
from ..upstream import Forwarder, UpstreamFailure
from ..wire import CD, EDE_NETWORK_ERROR, RD, SERVFAIL, Query, ede_option, reply
from .base import Step


class Fetched(Answer):
    """A forwarded answer that also carries the upstream's answer as an Entry, for the cache to keep."""

    __slots__ = ("fetched",)
    fetched: tuple


class Forwarding(Step):
    def __init__(self, forwarder: Forwarder, reason: str = "upstream "):
        """`reason`: what an answer's reason says before the name of the upstream that gave it."""
        self.forwarder = forwarder
        self.reason = reason
        self._resolve = forwarder.resolve
        self._finish = self._answer  # one bound method, not one per query

    def describe(self) -> str:
        f = self.forwarder
        return f"Forwarding: to {', '.join(map(str, f.upstreams))}; {f.timeout} s each, {f.query_timeout} s in all"

    def __call__(self, query: Query) -> Pending:
        return self._resolve(query, self._finish)

    def _answer(self, query: Query, outcome) -> Answer | BaseException:
        if outcome.__class__ is not tuple:
            if isinstance(outcome, UpstreamFailure):
                ede = ede_option(EDE_NETWORK_ERROR, "upstream unreachable")
                return Answer(
                    reply(query, SERVFAIL, ede=ede), AnswerKind.SERVFAIL, f"upstream: {outcome}"
                )
            return outcome  # our own bug: the server logs it and answers SERVFAIL
        data, info, upstream = outcome
        # The Entry does the patching (ID, the client's letter case, RD/CD); the cache may keep it.
        flags = query.flags
        entry = Entry(data, info, RD | (flags & CD), time.monotonic())
        packet = query.data
        end = query.question_end
        cap = query.ttl_cap  # the asker's profile's (set by the Policy link)
        if flags & RD and data[12:end] == packet[12:end]:
            # What entry.serve gives at age 0 when the upstream echoed the question byte for
            # byte and the client's RD/CD are those we sent: the client's ID on our copy
            # (capped in the same single copy).
            wire = packet[:2] + (entry.wire if cap is None else entry._capped_body(0, cap))[2:]
        else:
            wire = entry.serve(query, entry.stored, cap=cap)
        answer = Fetched(wire, AnswerKind.FORWARDED, self.reason + upstream.name)
        answer.fetched = (entry, info)
        return answer
