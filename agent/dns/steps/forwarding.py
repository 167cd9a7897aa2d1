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


class Forwarding(Step):
    def __init__(self, forwarder: Forwarder):
        self.forwarder = forwarder

    def describe(self) -> str:
        f = self.forwarder
        return f"Forwarding: to {', '.join(map(str, f.upstreams))}; {f.timeout} s each, {f.query_timeout} s in all"

    def __call__(self, query: Query) -> Pending:
        return self.forwarder.resolve(query).then(lambda outcome: self._answer(query, outcome))

    def _answer(self, query: Query, outcome) -> Answer | BaseException:
        if isinstance(outcome, UpstreamFailure):
            ede = ede_option(EDE_NETWORK_ERROR, "upstream unreachable")
            return Answer(reply(query, SERVFAIL, ede=ede), AnswerKind.SERVFAIL, f"upstream: {outcome}")
        if isinstance(outcome, BaseException):
            return outcome  # our own bug: the server logs it and answers SERVFAIL
        data, info, upstream = outcome
        # The Entry does the patching (ID, the client's letter case, RD/CD); the cache may keep it.
        entry = Entry(data, info, RD | (query.flags & CD), time.monotonic())
        answer = Fetched(entry.serve(query, entry.stored), AnswerKind.FORWARDED, f"upstream {upstream}")
        answer.fetched = (entry, info)
        return answer
