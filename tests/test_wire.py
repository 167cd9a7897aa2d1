"""Reading queries and checking responses on the wire, against dnspython as the reference."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from agent.dns import wire
from agent.dns.cache import AnswerCache, cache_ttl
from agent.dns.wire import Malformed, Query, check_response


def q(name="www.Example.com", rdtype="A", **kw) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)


def test_reads_the_question_and_keeps_its_case():
    msg = q("WwW.ExAmple.COM", "AAAA")
    query = Query(msg.to_wire(), "127.0.0.1")
    assert query.qname == b"\x03WwW\x07ExAmple\x03COM\x00"
    assert query.qname_key == b"\x03www\x07example\x03com\x00"
    assert query.qtype == 28 and query.qclass == 1
    assert query.id == msg.id
    assert query.name == "www.example.com"
    assert query.edns_version == -1 and query.udp_size == 512


@pytest.mark.parametrize(
    ("kwargs", "version", "size", "do", "shape"),
    [
        ({}, -1, 512, False, 0),
        ({"use_edns": 0, "payload": 4096}, 0, 4096, False, 1),
        ({"use_edns": 0, "payload": 100}, 0, 512, False, 1),
        ({"use_edns": 0, "want_dnssec": True}, 0, 1232, True, 2),
        ({"use_edns": 1}, 1, 1232, False, 1),
    ],
)
def test_reads_edns(kwargs, version, size, do, shape):
    if "payload" not in kwargs and kwargs.get("use_edns") is not None or kwargs.get("want_dnssec"):
        kwargs.setdefault("payload", 1232)
    query = Query(q(**kwargs).to_wire())
    assert (query.edns_version, query.udp_size, query.do, query.key[3]) == (
        version,
        size,
        do,
        shape,
    )


def test_key_ignores_case_and_separates_types_and_do():
    a = Query(q("A.example.com").to_wire()).key
    b = Query(q("a.EXAMPLE.com").to_wire()).key
    assert a == b
    assert a != Query(q("a.example.com", "AAAA").to_wire()).key
    assert a != Query(q("a.example.com", want_dnssec=True).to_wire()).key


def header(ident=1, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", ident, flags, qd, an, ns, ar)


QUESTION = b"\x07example\x03com\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (b"", None),
        (b"\x00\x01\x01", None),  # shorter than a header: drop
        (header(flags=0x8180) + QUESTION, None),  # a response: drop
        (header(flags=0x2800) + QUESTION, wire.NOTIMP),  # UPDATE
        (header(flags=0x1000) + QUESTION, wire.NOTIMP),  # STATUS
        (header(qd=0), wire.FORMERR),
        (header(qd=2) + QUESTION + QUESTION, wire.FORMERR),
        (header() + b"\x07example\x03co", wire.FORMERR),  # name cut short
        (header() + b"\x07example\x03com\x00\x00", wire.FORMERR),  # type/class cut short
        (header() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer in the question
        (header() + b"\x50" + b"a" * 80 + b"\x00\x00\x01\x00\x01", wire.FORMERR),  # label > 63
        (
            header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
            wire.FORMERR,
        ),
        (header(ar=1) + QUESTION + b"\x00\x00\x29", wire.FORMERR),  # OPT cut short
        (
            header(ar=2) + QUESTION + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
            wire.FORMERR,
        ),
        (
            header(ar=1) + QUESTION + b"\x01a\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",
            wire.FORMERR,
        ),
    ],
)
def test_malformed_queries(packet, rcode):
    with pytest.raises(Malformed) as caught:
        Query(packet)
    assert caught.value.rcode == rcode


def test_error_reply_keeps_id_and_opcode_without_a_question():
    packet = header(ident=0xBEEF, flags=0x2900, qd=0)
    reply = wire.error_reply(packet, wire.NOTIMP)
    assert reply is not None
    ident, flags, qd, an, ns, ar = struct.unpack("!6H", reply)
    assert (
        ident == 0xBEEF
        and flags & 0x8000
        and (flags >> 11) & 0xF == 5
        and flags & 0xF == wire.NOTIMP
    )
    assert (qd, an, ns, ar) == (0, 0, 0, 0)


def response_for(request: dns.message.Message, *rrsets, authority=(), rcode=0, ident=None) -> bytes:
    response = dns.message.make_response(request)
    response.answer.extend(rrsets)
    response.authority.extend(authority)
    response.set_rcode(rcode)
    if ident is not None:
        response.id = ident
    return response.to_wire()


def rr(text: str) -> dns.rrset.RRset:
    name, ttl, cls, rdtype, *rdata = text.split()
    return dns.rrset.from_text(name, int(ttl), cls, rdtype, " ".join(rdata))


def test_check_response_accepts_a_matching_answer_and_finds_ttls():
    request = q("www.example.com")
    data = response_for(
        request,
        rr("www.example.com. 300 IN CNAME web.example.com."),
        rr("web.example.com. 60 IN A 192.0.2.1"),
    )
    query = Query(request.to_wire())
    info = check_response(data, request.id, query.question)
    assert info is not None
    assert info.rcode == 0 and info.ancount == 2 and not info.truncated
    assert sorted(ttl for _, ttl in info.ttls) == [60, 300]
    assert info.min_ttl == 60
    for offset, ttl in info.ttls:
        assert struct.unpack_from("!I", data, offset)[0] == ttl


@pytest.mark.parametrize(
    "mutate",
    [
        lambda req, data: data[:1] + bytes([data[1] ^ 1]) + data[2:],  # wrong ID
        lambda req, data: response_for(q("other.example.com"), ident=req.id),  # wrong question
        lambda req, data: response_for(q("www.example.com", "AAAA"), ident=req.id),  # wrong type
        lambda req, data: data[:-3],  # cut short
        lambda req, data: data[:2] + bytes([data[2] & 0x7F]) + data[3:],  # not a response
        lambda req, data: b"\x00" * 5,
    ],
)
def test_check_response_rejects_what_does_not_match(mutate):
    request = q("www.example.com")
    good = response_for(request, rr("www.example.com. 300 IN A 192.0.2.1"))
    query = Query(request.to_wire())
    assert check_response(good, request.id, query.question) is not None
    assert check_response(mutate(request, good), request.id, query.question) is None


def test_check_response_compares_the_name_without_case_and_type_and_class_exactly():
    request = q("www.example.com", "HTTPS")  # type 65 = 0x41; 0x61 = 97 is 'a'
    good = response_for(request, rr("www.example.com. 300 IN HTTPS 1 ."))
    question = Query(request.to_wire()).question
    qend = 12 + len(question)
    recased = bytearray(good)
    recased[12 : qend - 4] = bytes(recased[12 : qend - 4]).upper()  # 0x20 randomisation
    assert check_response(bytes(recased), request.id, question) is not None
    other_type = bytearray(good)
    other_type[qend - 3] = 0x61  # type 97: lower-casing the bytes would make it 65
    assert check_response(bytes(other_type), request.id, question) is None


def test_check_response_rejects_forward_compression_pointers():
    request = q("www.example.com")
    good = bytearray(response_for(request, rr("www.example.com. 300 IN A 192.0.2.1")))
    answer_start = 12 + len(Query(request.to_wire()).question)
    good[answer_start : answer_start + 2] = b"\xc0\xff"  # points past itself
    assert check_response(bytes(good), request.id, Query(request.to_wire()).question) is None


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum():
    request = q("nope.example.com")
    soa = rr("example.com. 900 IN SOA ns.example.com. host.example.com. 1 3600 600 86400 120")
    data = response_for(request, authority=[soa], rcode=dns.rcode.NXDOMAIN)
    info = check_response(data, request.id, Query(request.to_wire()).question)
    assert info.rcode == wire.NXDOMAIN and info.negative_ttl == 120
    assert cache_ttl(info, 86400, 3600) == 120
    assert cache_ttl(info, 86400, 60) == 60
    # Without an SOA a negative answer is not cached (RFC 2308).
    bare = check_response(
        response_for(request, rcode=dns.rcode.NXDOMAIN),
        request.id,
        Query(request.to_wire()).question,
    )
    assert cache_ttl(bare, 86400, 3600) == 0
    servfail = check_response(
        response_for(request, rcode=dns.rcode.SERVFAIL),
        request.id,
        Query(request.to_wire()).question,
    )
    assert cache_ttl(servfail, 86400, 3600) == 0


def test_cached_answer_is_patched_with_id_case_and_counted_down_ttl():
    first = q("www.example.com", use_edns=0, payload=1232)
    data = response_for(
        first, rr("www.example.com. 300 IN A 192.0.2.1"), rr("www.example.com. 300 IN A 192.0.2.2")
    )
    query = Query(first.to_wire())
    info = check_response(data, first.id, query.question)
    cache = AnswerCache(100, 1 << 20, 86400, 3600, 86400)
    cache.entry_for(query.key, data, info, wire.RD, now=1000.0)

    later = q("WWW.example.COM", use_edns=0, payload=1232)
    later_query = Query(later.to_wire())
    entry = cache.fresh(later_query.key, 1100.4)
    assert entry is not None
    served = dns.message.from_wire(entry.serve(later_query, 1100.4))
    assert served.id == later.id
    assert served.question[0].name.to_text() == "WWW.example.COM."
    assert served.answer[0].name.to_text() == "WWW.example.COM."
    assert served.answer[0].ttl == 200
    assert sorted(r.address for r in served.answer[0]) == ["192.0.2.1", "192.0.2.2"]
    assert cache.fresh(later_query.key, 1300.0) is None  # expired
    stale = cache.stale(later_query.key, 1300.0)
    assert stale is not None
    assert dns.message.from_wire(stale.serve(later_query, 1300.0, stale=True)).answer[0].ttl == 30
    assert cache.stale(later_query.key, 1000.0 + 300 + 86400 + 1) is None


def test_a_capped_copy_lowers_only_the_ttls_above_the_cap_as_they_count_down():
    request = q("www.example.com", use_edns=0, payload=1232)
    data = response_for(
        request,
        rr("www.example.com. 300 IN CNAME web.example.com."),
        rr("web.example.com. 60 IN A 192.0.2.1"),
    )
    query = Query(request.to_wire())
    entry = AnswerCache(100, 1 << 20, 86400, 3600, 86400).entry_for(
        query.key, data, check_response(data, request.id, query.question), wire.RD, now=1000.0
    )

    def ttls(now, cap):
        return [
            rrset.ttl for rrset in dns.message.from_wire(entry.serve(query, now, cap=cap)).answer
        ]

    assert ttls(1000.0, 100) == [100, 60]
    assert ttls(1000.0, None) == [300, 60]  # the entry itself is never capped
    assert ttls(1250.5, 100) == [50, 0]  # nothing above the cap: the counted-down copy
    assert ttls(1250.5, 10) == [10, 0]


def test_cache_is_bounded_by_entries_and_bytes_lru():
    cache = AnswerCache(3, 1 << 20, 86400, 3600, 0)
    keys = []
    for i in range(5):
        request = q(f"n{i}.example.com")
        query = Query(request.to_wire())
        data = response_for(request, rr(f"n{i}.example.com. 300 IN A 192.0.2.{i}"))
        cache.entry_for(
            query.key, data, check_response(data, request.id, query.question), wire.RD, now=0.0
        )
        keys.append(query.key)
        if i == 2:
            assert cache.fresh(keys[0], 1.0) is not None  # touch n0: n1 becomes the oldest
    assert len(cache) == 3
    assert cache.fresh(keys[1], 1.0) is None and cache.fresh(keys[2], 1.0) is None
    assert cache.fresh(keys[0], 1.0) is not None and cache.fresh(keys[4], 1.0) is not None
    small = AnswerCache(1000, 2000, 86400, 3600, 0)
    for i in range(20):
        request = q(f"n{i}.example.com")
        query = Query(request.to_wire())
        data = response_for(request, rr(f"n{i}.example.com. 300 IN A 192.0.2.{i}"))
        small.entry_for(
            query.key, data, check_response(data, request.id, query.question), wire.RD, now=0.0
        )
    assert 0 < small.bytes <= 2000 and len(small) < 20


def _mutants(rng, seeds: list[bytes], count: int):
    """Packets a child on the LAN could send: random bytes, cuts, flipped bytes, spliced ones."""
    for i in range(count):
        seed = seeds[i % len(seeds)]
        kind = i % 5
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 64))
        elif kind == 1:
            yield seed[: rng.randrange(len(seed) + 1)]
        elif kind == 2:
            packet = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            yield bytes(packet)
        elif kind == 3:  # header counts that promise more records than there are
            packet = bytearray(seed)
            struct.pack_into("!4H", packet, 4, 1, *(rng.randrange(4) for _ in range(3)))
            yield bytes(packet)
        else:
            other = seeds[rng.randrange(len(seeds))]
            yield seed[: rng.randrange(12, len(seed) + 1)] + other[rng.randrange(len(other)) :]


def test_any_packet_gives_a_query_or_malformed_and_agrees_with_dnspython():
    """20,000 hostile packets: Query() raises nothing but Malformed (anything else would be our
    bug: SERVFAIL and a log line per packet), and what it reads is what dnspython reads. Run
    by CI on the plain and on the compiled (mypyc) modules alike."""
    import random

    rng = random.Random(20261128)
    seeds = [
        dns.message.make_query("www.example.test", "A").to_wire(),
        dns.message.make_query(
            "Mixed.Case.Example", "AAAA", use_edns=0, want_dnssec=True
        ).to_wire(),
        dns.message.make_query("a.b.c.d.e.f.example", "HTTPS", use_edns=0, payload=4096).to_wire(),
        dns.message.make_query(
            "x" * 63 + ".test", "TXT", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]
        ).to_wire(),
    ]
    parsed = 0
    for packet in _mutants(rng, seeds, 20_000):
        try:
            query = Query(packet, "192.168.1.9")
        except Malformed as exc:
            assert exc.rcode in (None, dns.rcode.FORMERR, dns.rcode.NOTIMP)
            continue
        parsed += 1
        assert query.question_end <= len(packet)
        assert query.key == (query.qname.lower(), query.qtype, query.qclass, query.key[3])
        try:
            theirs = dns.message.from_wire(packet, question_only=True)
        except Exception:
            continue  # dnspython refuses more (e.g. a bad label in a record we skip)
        question = theirs.question[0]
        assert query.qname_key == question.name.to_wire().lower()  # bytes: no escaping to compare
        assert (query.qtype, query.qclass) == (question.rdtype, question.rdclass)
    assert parsed > 2_000  # most seeds survive a flipped byte: the comparison really ran
