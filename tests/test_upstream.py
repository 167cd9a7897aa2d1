"""The upstream side of a cache miss: response checks, the query we send, sockets and IDs,
failover on socket errors, and Pending.

The response checker of the UDP path is held to `wire.check_response` (the TCP path's)
on real responses built by dnspython and on thousands of damaged copies of them.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.renderer
import dns.rrset
import pytest

from agent.dns.pending import Pending
from agent.dns.udp_exchange import check_udp_response
from agent.dns.upstream import _QUERY_PARTS
from agent.dns.wire import CD, Query, ResponseInfo, check_response, make_query

# ---------------------------------------------------------------- the response checker


def _response(
    name: str, rdtype: str, *, edns: bool, rcode=dns.rcode.NOERROR, records=(), authority=()
):
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    query.id = 0x4321
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for text in records:
        response.answer.append(dns.rrset.from_text(*text))
    for text in authority:
        response.authority.append(dns.rrset.from_text(*text))
    return query, response


SOA = ("example.test.", 300, "IN", "SOA", "ns.example.test. host.example.test. 1 3600 600 86400 60")


def _corpus() -> list[tuple[bytes, bytes]]:
    """(query packet, response packet) pairs of many shapes."""
    cases = [
        _response(
            "www.example.test",
            "A",
            edns=True,
            records=[("www.example.test.", 300, "IN", "A", "192.0.2.1", "192.0.2.2")],
        ),
        _response(
            "www.example.test",
            "A",
            edns=False,
            records=[("www.example.test.", 0, "IN", "A", "192.0.2.1")],
        ),
        _response(
            "v6.example.test",
            "AAAA",
            edns=True,
            records=[("v6.example.test.", 60, "IN", "AAAA", "2001:db8::1")],
        ),
        _response(
            "alias.example.test",
            "A",
            edns=True,
            records=[
                ("alias.example.test.", 120, "IN", "CNAME", "www.example.test."),
                ("www.example.test.", 30, "IN", "A", "192.0.2.1"),
            ],
        ),
        _response(
            "example.test",
            "MX",
            edns=True,
            records=[("example.test.", 300, "IN", "MX", "10 mail.example.test.")],
        ),
        _response(
            "txt.example.test",
            "TXT",
            edns=False,
            records=[("txt.example.test.", 5, "IN", "TXT", '"hello" "world"')],
        ),
        _response(
            "missing.example.test", "A", edns=True, rcode=dns.rcode.NXDOMAIN, authority=[SOA]
        ),
        _response("nodata.example.test", "AAAA", edns=False, authority=[SOA]),
        _response("refused.example.test", "A", edns=True, rcode=dns.rcode.REFUSED),
        _response(
            "big.example.test",
            "A",
            edns=True,
            records=[("big.example.test.", 2**31 + 5, "IN", "A", "192.0.2.9")],
        ),
    ]
    pairs = []
    for query, response in cases:
        # Compressed (dnspython's default) and uncompressed names.
        pairs.append((query.to_wire(), response.to_wire()))
        pairs.append((query.to_wire(), _uncompressed(response)))
    # Truncated without a question (allowed only with TC), and with one.
    query, response = _response("tc.example.test", "A", edns=True)
    response.flags |= dns.flags.TC
    wire = response.to_wire()
    pairs.append((query.to_wire(), wire))
    pairs.append((query.to_wire(), wire[:4] + b"\x00\x00" + wire[6:12]))
    return pairs


def _uncompressed(response: dns.message.Message) -> bytes:
    renderer = dns.renderer.Renderer(response.id, response.flags, 65535)
    renderer.compress = None  # names written in full
    for section, rrsets in (
        (dns.renderer.QUESTION, response.question),
        (dns.renderer.ANSWER, response.answer),
        (dns.renderer.AUTHORITY, response.authority),
    ):
        for rrset in rrsets:
            if section == dns.renderer.QUESTION:
                renderer.add_question(rrset.name, rrset.rdtype, rrset.rdclass)
            else:
                renderer.add_rrset(section, rrset)
    if response.edns >= 0:
        renderer.add_edns(response.edns, response.ednsflags, response.payload)
    renderer.write_header()
    return renderer.get_wire()


def _fields(info: ResponseInfo | None):
    if info is None:
        return None
    return (
        info.rcode,
        info.truncated,
        info.ancount,
        info.ttls,
        info.min_ttl,
        info.negative_ttl,
        info.opt_offset,
    )


def _question_of(query_packet: bytes) -> bytes:
    return Query(query_packet).question


def _agree(data: bytes, question: bytes) -> None:
    fast = _fields(check_udp_response(data, b"\x43\x21", question))
    reference = _fields(check_response(data, 0x4321, question))
    assert fast == reference, (data.hex(), fast, reference)


def test_check_agrees_with_wire_on_real_responses():
    accepted = 0
    for query_packet, data in _corpus():
        question = _question_of(query_packet)
        _agree(data, question)
        accepted += check_udp_response(data, b"\x43\x21", question) is not None
    assert accepted >= 20  # the corpus is mostly valid: the comparison is not all None == None


def test_check_agrees_with_wire_on_damaged_responses():
    rng = random.Random(20261128)
    for query_packet, data in _corpus():
        question = _question_of(query_packet)
        for cut in range(len(data)):  # every truncation
            _agree(data[:cut], question)
        for _ in range(300):  # bytes flipped at random
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            _agree(bytes(damaged), question)


def test_check_rejects_wrong_id_question_and_non_responses():
    query_packet, data = _corpus()[0]
    question = _question_of(query_packet)
    assert check_udp_response(data, b"\x43\x21", question) is not None
    assert check_udp_response(data, b"\x43\x22", question) is None
    other = _question_of(dns.message.make_query("www.example.tesu", "A").to_wire())
    assert check_udp_response(data, b"\x43\x21", other) is None
    as_query = data[:2] + bytes([data[2] & 0x7F]) + data[3:]
    assert check_udp_response(as_query, b"\x43\x21", question) is None
    notify = data[:2] + bytes([data[2] | 0x20]) + data[3:]  # opcode NOTIFY
    assert check_udp_response(notify, b"\x43\x21", question) is None


def test_check_accepts_an_upstream_that_changed_the_letter_case():
    query_packet, data = _corpus()[0]
    question = _question_of(query_packet)
    upper = data[:12] + question[:-4].upper() + data[12 + len(question) - 4 :]
    info = check_udp_response(upper, b"\x43\x21", question)
    assert info is not None and info.ancount == 2


def test_check_reads_ttls_and_the_negative_ttl():
    query_packet, data = _corpus()[0]
    info = check_udp_response(data, b"\x43\x21", _question_of(query_packet))
    assert [ttl for _, ttl in info.ttls] == [300, 300]
    assert all(struct.unpack_from("!I", data, offset)[0] == 300 for offset, _ in info.ttls)
    assert (
        info.opt_offset == len(data) - 8
    )  # the class (UDP size) field of the OPT record, the last one
    query_packet, data = _corpus()[12]  # NXDOMAIN with an SOA
    info = check_udp_response(data, b"\x43\x21", _question_of(query_packet))
    assert info.rcode == 3 and info.negative_ttl == 60


# ---------------------------------------------------------------- the query we send


@pytest.mark.parametrize("cd", [False, True])
@pytest.mark.parametrize("shape", [0, 1, 2])
def test_query_parts_build_what_make_query_builds(shape, cd):
    client = dns.message.make_query(
        "Www.Example.TEST", "AAAA", use_edns=0 if shape else None, want_dnssec=shape == 2
    )
    if cd:
        client.flags |= dns.flags.CD
    query = Query(client.to_wire())
    assert query.key[3] == shape and bool(query.flags & CD) == cd
    head, opt = _QUERY_PARTS[query.key[3] + (3 if query.flags & CD else 0)]
    ident = os.urandom(2)
    expected = make_query(
        int.from_bytes(ident, "big"), query.question, edns=shape > 0, do=shape == 2, cd=cd
    )
    assert ident + head + query.question + opt == expected


# ---------------------------------------------------------------- sockets, IDs, failover


class RecordingUpstream:
    """A raw UDP upstream that answers every A query with 192.0.2.7 and records (source port, ID)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            request = dns.message.from_wire(data)
            self.seen.append((peer[1], request.id))
            response = dns.message.make_response(request)
            response.answer.append(
                dns.rrset.from_text(request.question[0].name, 60, "IN", "A", "192.0.2.7")
            )
            self.sock.sendto(response.to_wire(), peer)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def recording():
    upstream = RecordingUpstream()
    yield upstream
    upstream.close()


@pytest.fixture
def lists(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("fb88.test\n")
    return str(folder)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_upstream_query_has_its_own_port_and_id_and_its_socket_is_closed(
    safenest, recording, lists
):
    server = safenest(upstream=[f"127.0.0.1:{recording.port}"], blocklists_dir=lists)
    dns.query.udp(
        dns.message.make_query("first.test", "A"), server.host, port=server.port, timeout=5
    )
    recording.seen.clear()
    before = _open_fds()  # after the first miss, which opens the shared epoll set
    count = 60
    for i in range(count):
        query = dns.message.make_query(f"n{i}.fresh.test", "A")
        answer = dns.query.udp(query, server.host, port=server.port, timeout=5)
        assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.7"]
    ports = {port for port, _ in recording.seen}
    ids = {ident for _, ident in recording.seen}
    assert len(recording.seen) == count
    # Drawn at random by the kernel and the CSPRNG: a few repeats may happen by chance, many may not.
    assert len(ports) >= count - 5 and len(ids) >= count - 5
    assert server.port not in ports
    assert _open_fds() <= before  # every per-query socket was closed


def test_a_burst_of_distinct_misses_is_answered(safenest, recording, lists):
    """Many queries read in one wake-up: their upstream queries go out together, all are answered."""
    server = safenest(upstream=[f"127.0.0.1:{recording.port}"], blocklists_dir=lists)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    try:
        ids = set()
        for i in range(200):
            query = dns.message.make_query(f"b{i}.burst.test", "A", id=i)
            client.sendto(query.to_wire(), (server.host, server.port))
            ids.add(i)
        while ids:
            answer = dns.message.from_wire(client.recv(4096))
            assert answer.rcode() == dns.rcode.NOERROR
            assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.7"]
            assert answer.question[0].name.to_text() == f"b{answer.id}.burst.test."
            ids.discard(answer.id)
    finally:
        client.close()
    assert len(recording.seen) == 200


def test_a_refusing_port_fails_over_at_once(safenest, recording, lists):
    """Nothing listens on the first upstream: the ICMP error ends that try without waiting for a timeout."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    server = safenest(
        upstream=[f"127.0.0.1:{dead_port}", f"127.0.0.1:{recording.port}"],
        blocklists_dir=lists,
        upstream_timeout=30,
        query_timeout=40,
    )
    query = dns.message.make_query("refused-first.test", "A")
    answer = dns.query.udp(
        query, server.host, port=server.port, timeout=5
    )  # far below the 30 s timeout
    assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.7"]
    dead = server.agent.forwarder.upstreams[0]
    assert dead.port == dead_port and server.call(lambda: dead.errors) == 1


def test_an_upstream_that_cannot_be_sent_to_fails_over(safenest, recording, lists):
    """A broadcast address refuses the connect/send (no SO_BROADCAST): the next upstream answers."""
    server = safenest(
        upstream=["255.255.255.255:53", f"127.0.0.1:{recording.port}"],
        blocklists_dir=lists,
        upstream_timeout=30,
        query_timeout=40,
    )
    query = dns.message.make_query("unsendable-first.test", "A")
    answer = dns.query.udp(query, server.host, port=server.port, timeout=5)
    assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.7"]
    broadcast = server.agent.forwarder.upstreams[0]
    assert broadcast.host == "255.255.255.255" and server.call(lambda: broadcast.errors) == 1


# ---------------------------------------------------------------- Pending


def test_pending_runs_steps_in_order_and_passes_exceptions_as_values():
    pending = Pending()
    seen = []
    pending.then(lambda v: v + 1).then(lambda v: 1 / 0 if v == 2 else v).then(
        lambda v: seen.append(v) or "end"
    )
    assert not pending.settled
    pending.settle(1)
    assert isinstance(seen[0], ZeroDivisionError) and pending.value == "end"
    pending.settle(5)  # settles once
    assert pending.value == "end"
    assert pending.then(lambda v: v + "!").value == "end!"  # a step after settling runs at once


def test_no_upstream_can_be_sent_to_gives_servfail_at_once(safenest, lists):
    """Every try fails before anything is sent: SERVFAIL with EDE 23 (network error), never NXDOMAIN."""
    server = safenest(
        upstream=["255.255.255.255:53"], blocklists_dir=lists, upstream_timeout=30, query_timeout=40
    )
    query = dns.message.make_query("nowhere.test", "A", use_edns=0)
    answer = dns.query.udp(query, server.host, port=server.port, timeout=5)
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert [option.otype for option in answer.options] == [dns.edns.OptionType.EDE]
    assert answer.options[0].code == dns.edns.EDECode.NETWORK_ERROR
