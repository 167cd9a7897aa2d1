"""SafeSearch answers: the asked name as a CNAME to the engine's safe host, plus that host's records.

A profile with SafeSearch on asks for www.google.com.vn and must get the addresses of
forcesafesearch.google.com, under a CNAME so the browser still talks to "Google" (the
certificate matches). The target's records come from the rest of the chain (cache, then
upstream) through an internal query for the target, so they are cached and shared like any
answer. The combined message is unusual (a CNAME we made up, records we fetched), so it is
built with dnslib; this is a rare path (the replay memo serves the repeats).

An upstream failure for the target is SERVFAIL, never NXDOMAIN: NXDOMAIN would tell the
child's device that Google does not exist, and it would cache that.
"""

from __future__ import annotations

from dnslib import CNAME, EDNS0, QTYPE, RR, DNSRecord, EDNSOption

from ...model import Answer, AnswerKind
from ..wire import (
    CD,
    EDE_NETWORK_ERROR,
    HEADER,
    NOERROR,
    NXDOMAIN,
    RD,
    SERVFAIL,
    TYPE_CLASS,
    Query,
    ede_option,
    name_to_wire,
    opt_record,
    reply,
)

EDE_FORGED_ANSWER = 4  # RFC 8914: the answer was rewritten by policy
NEGATIVE_CNAME_TTL = 60  # the CNAME's TTL when the target has no records of the asked type


def internal_query(query: Query, target: str) -> Query:
    """The same question for `target`: same type, class, CD bit and EDNS shape (so the
    cache entry it finds or makes is one a direct client would share)."""
    edns = query.edns_version >= 0
    head = HEADER.pack(0, RD | (query.flags & CD), 1, 0, 0, 1 if edns else 0)
    question = name_to_wire(target) + TYPE_CLASS.pack(query.qtype, query.qclass)
    return Query(
        head + question + (opt_record(0, query.do) if edns else b""), query.client, query.transport
    )


def combine(
    query: Query, target: str, reason: str, inner, cap: int | None
) -> Answer | BaseException:
    """The client's answer: CNAME qname -> target, then the target's records as fetched."""
    if not isinstance(inner, Answer):
        return inner  # our own exception, on its way to the server's SERVFAIL
    parsed = DNSRecord.parse(inner.wire) if inner.wire is not None else None
    if parsed is None or parsed.header.rcode not in (NOERROR, NXDOMAIN):
        ede = ede_option(EDE_NETWORK_ERROR, f"cannot resolve {target}")
        return Answer(
            reply(query, SERVFAIL, ede=ede), AnswerKind.SERVFAIL, f"{reason}: {inner.reason}"
        )
    request = DNSRecord.parse(query.data)
    response = request.reply()
    response.header.aa = 0
    response.header.rd = request.header.rd
    response.header.cd = request.header.cd
    response.header.rcode = parsed.header.rcode
    ttls = [rr.ttl for rr in parsed.rr] or [
        min([rr.ttl for rr in parsed.auth] or [NEGATIVE_CNAME_TTL])
    ]
    ttl = min(ttls)
    if cap is not None:
        ttl = min(ttl, cap)
    # The owner is the question's own name, so the client's letter case comes back to it.
    response.add_answer(RR(request.q.qname, QTYPE.CNAME, ttl=ttl, rdata=CNAME(target)))
    for rr in parsed.rr:
        if cap is not None and rr.ttl > cap:
            rr.ttl = cap
        response.add_answer(rr)
    for rr in parsed.auth:
        if cap is not None and rr.ttl > cap:
            rr.ttl = cap
        response.add_auth(rr)
    if query.edns_version >= 0:
        # Its own name: `ede` above is bytes, and compiled code (mypyc) checks that type.
        option = EDNSOption(15, ede_option(EDE_FORGED_ANSWER, reason)[4:])
        response.add_ar(EDNS0(udp_len=1232, flags="do" if query.do else "", opts=[option]))
    # A rewrite is rebuilt at most once a second per packet: reuse only as long as the
    # target's answer itself stays the same (no cache entry: the TTLs must not tick alone).
    # Its kind is REWRITTEN whether the target came from the cache or the upstream: the query
    # log keeps rewrites under every privacy level that keeps blocks.
    return Answer(bytes(response.pack()), AnswerKind.REWRITTEN, reason, inner.reuse_until)
