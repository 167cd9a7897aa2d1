"""Queries we answer by rule rather than by asking upstream: ANY (RFC 8482) and non-IN classes."""

from __future__ import annotations

from dnslib import EDNS0, QTYPE, RD, RR, DNSRecord

from ...model import Answer, AnswerKind
from ..wire import C_IN, REFUSED, T_ANY, Query, reply
from .base import Result, Step

ANY_TTL = 3600
# HINFO "RFC8482" "": dnslib has no HINFO type, so the rdata is given as bytes.
HINFO_RDATA = b"\x07RFC8482\x00"


class SpecialQueries(Step):
    def describe(self) -> str:
        return "SpecialQueries: ANY gets a minimal HINFO answer (RFC 8482); classes other than IN are refused"

    def __call__(self, query: Query) -> Result:
        if query.qclass != C_IN:
            return Answer(
                reply(query, REFUSED), AnswerKind.LOCAL, f"class {query.qclass} not served"
            )
        if query.qtype != T_ANY:
            return self.next(query)
        request = DNSRecord.parse(query.data)
        response = request.reply()
        response.header.aa = 0
        ttl = ANY_TTL if query.ttl_cap is None else min(ANY_TTL, query.ttl_cap)
        response.add_answer(RR(request.q.qname, QTYPE.HINFO, ttl=ttl, rdata=RD(HINFO_RDATA)))
        if query.edns_version >= 0:
            response.add_ar(EDNS0(udp_len=1232))
        return Answer(bytes(response.pack()), AnswerKind.LOCAL, "ANY (RFC 8482)")
