"""SafeNest end to end: real sockets on loopback, dnsmasq or a fake upstream, dnspython and dig clients."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

DNSMASQ_RECORDS = [
    "local-ttl=300",
    "host-record=www.example.test,192.0.2.10,2001:db8::10",
    "host-record=two.example.test,192.0.2.21",
    "txt-record=txt.example.test,\"hello world\",\"second string\"",
    "mx-host=example.test,mail.example.test,10",
    "cname=alias.example.test,www.example.test",
    "srv-host=_sip._udp.example.test,sip.example.test,5060,1,2",
    "ptr-record=10.2.0.192.in-addr.arpa,www.example.test",
    "caa-record=example.test,0,issue,letsencrypt.org",
    "host-record=ads.tracker.test,192.0.2.99",
    "host-record=fine.fb88-lookalike.test,192.0.2.55",
]


@pytest.fixture
def lists(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("# test list\nfb88.test\ncasino.test\n")
    (folder / "adult.txt").write_text("# test list\nadult.test\n")
    (folder / "sex_education.allow.txt").write_text("# test allow list (12+, the default profile)\nhealth.adult.test\n")
    return folder


@pytest.fixture
def upstream(dnsmasq):
    return dnsmasq(DNSMASQ_RECORDS)


@pytest.fixture
def server(safenest, upstream, lists):
    return safenest(upstream=[upstream.address], blocklists_dir=str(lists))


def ask(server, name, rdtype="A", *, tcp=False, timeout=5, **kw) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, timeout=timeout)


def direct(upstream, name, rdtype="A", **kw) -> dns.message.Message:
    host, port = upstream.address.rsplit(":", 1)
    return dns.query.udp(dns.message.make_query(name, rdtype, **kw), host, port=int(port), timeout=5)


def rrsets(message: dns.message.Message) -> list[tuple]:
    return sorted(
        (r.name.to_text().lower(), r.rdtype, tuple(sorted(x.to_text() for x in r))) for r in message.answer
    )


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("www.example.test", "A"),
        ("www.example.test", "AAAA"),
        ("txt.example.test", "TXT"),
        ("example.test", "MX"),
        ("alias.example.test", "A"),
        ("_sip._udp.example.test", "SRV"),
        ("10.2.0.192.in-addr.arpa", "PTR"),
        ("example.test", "CAA"),
        ("two.example.test", "AAAA"),  # NODATA
        ("missing.example.test", "A"),  # NXDOMAIN
    ],
)
def test_allowed_names_resolve_exactly_as_upstream(server, upstream, name, rdtype):
    ours = ask(server, name, rdtype)
    theirs = direct(upstream, name, rdtype)
    assert ours.rcode() == theirs.rcode()
    assert rrsets(ours) == rrsets(theirs)
    again = ask(server, name, rdtype)  # now from the cache
    assert again.rcode() == theirs.rcode()
    assert rrsets(again) == rrsets(theirs)


def test_question_case_is_preserved_from_cache(server):
    ask(server, "www.example.test")
    answer = ask(server, "WwW.eXample.TEST")
    assert answer.question[0].name.to_text() == "WwW.eXample.TEST."
    assert answer.answer[0].name.to_text() == "WwW.eXample.TEST."


def test_ttl_counts_down_in_the_cache(server):
    first = ask(server, "www.example.test")
    time.sleep(2.1)
    second = ask(server, "www.example.test")
    assert second.answer[0].ttl <= first.answer[0].ttl - 2


@pytest.mark.parametrize("name", ["fb88.test", "www.fb88.test", "a.b.c.casino.test", "FB88.Test"])
def test_blocked_names_and_subdomains_get_the_null_answer_with_ede(server, name):
    answer = ask(server, name, use_edns=0)
    assert answer.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in answer.answer[0]] == ["0.0.0.0"]
    assert answer.answer[0].ttl == 10
    ede = [o for o in answer.options if o.otype == dns.edns.EDE]
    assert ede and ede[0].code == 15 and ede[0].text == "category=gambling min_age=18+"
    aaaa = ask(server, name, "AAAA", use_edns=0)
    assert [r.to_text() for r in aaaa.answer[0]] == ["::"]
    mx = ask(server, name, "MX", use_edns=0)
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer


def test_lookalike_and_parent_names_are_not_blocked(server):
    assert ask(server, "fine.fb88-lookalike.test").answer[0][0].to_text() == "192.0.2.55"
    tld = ask(server, "test")
    assert tld.rcode() != dns.rcode.NOERROR or not tld.answer  # the bare TLD is not blocked


def test_allow_list_beats_block_list(server):
    assert ask(server, "adult.test", use_edns=0).answer[0][0].to_text() == "0.0.0.0"
    allowed = ask(server, "health.adult.test")
    assert allowed.rcode() == dns.rcode.NXDOMAIN  # forwarded: dnsmasq has no such record


def test_nxdomain_mode(safenest, upstream, lists):
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists), block_mode="nxdomain")
    answer = ask(server, "www.casino.test", use_edns=0)
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.authority and answer.authority[0].rdtype == dns.rdatatype.SOA
    assert [o.text for o in answer.options if o.otype == dns.edns.EDE] == ["category=gambling min_age=18+"]


def test_tcp_answers_and_pipelines(server):
    with socket.create_connection((server.host, server.port), timeout=5) as conn:
        names = ["www.example.test", "fb88.test", "two.example.test", "txt.example.test"]
        queries = [dns.message.make_query(n, "A") for n in names]
        conn.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        answers = {}
        for _ in queries:
            length = struct.unpack("!H", _read(conn, 2))[0]
            message = dns.message.from_wire(_read(conn, length))
            answers[message.id] = message
    assert {q.id for q in queries} == set(answers)
    for q in queries:
        assert answers[q.id].question[0].name == q.question[0].name


def test_tcp_accepts_a_query_split_across_writes(server):
    wire = dns.message.make_query("www.example.test", "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with socket.create_connection((server.host, server.port), timeout=5) as conn:
        for i in range(len(framed)):
            conn.send(framed[i : i + 1])
            time.sleep(0.001)
        length = struct.unpack("!H", _read(conn, 2))[0]
        assert dns.message.from_wire(_read(conn, length)).answer


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_dig_over_udp_and_tcp(server):
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is not installed: .ci/run installs bind9-dnsutils")
    for transport in ("+notcp", "+tcp"):
        out = subprocess.run(
            [dig, "@" + server.host, "-p", str(server.port), transport, "+short", "www.example.test"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        assert out == ["192.0.2.10"]
        blocked = subprocess.run(
            [dig, "@" + server.host, "-p", str(server.port), transport, "www.fb88.test"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert "EDE: 15 (Blocked): (category=gambling min_age=18+)" in blocked


def test_edns_buffer_is_advertised_and_badvers_answered(server):
    answer = ask(server, "www.example.test", use_edns=0, payload=4096)
    assert answer.edns == 0 and answer.payload == 1232
    bad = ask(server, "www.example.test", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS


def test_do_bit_is_passed_upstream(safenest, fake_upstream, lists):
    upstream = fake_upstream().answer("signed.test", "A", "192.0.2.7")
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists))
    ask(server, "signed.test", use_edns=0, want_dnssec=True)
    ask(server, "signed.test", use_edns=0)
    flags = [bool(q.ednsflags & dns.flags.DO) for _, q in upstream.queries]
    assert flags == [True, False]  # separate cache entries per DO bit


def test_unknown_opcode_gets_notimp(server):
    query = dns.message.make_query("www.example.test", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    answer = dns.query.udp(query, server.host, port=server.port, timeout=5)
    assert answer.rcode() == dns.rcode.NOTIMP


def test_any_gets_a_minimal_answer(server):
    answer = ask(server, "example.test", "ANY")
    assert [r.rdtype for r in answer.answer] == [dns.rdatatype.HINFO]
    assert answer.answer[0][0].cpu == b"RFC8482"


def test_own_name_answers_with_our_address(server):
    answer = ask(server, "SafeNest.Home.Arpa")
    assert [r.to_text() for r in answer.answer[0]] == ["127.0.0.1"]
    assert answer.answer[0].name.to_text() == "SafeNest.Home.Arpa."
    assert ask(server, "safenest.lan").answer[0][0].to_text() == "127.0.0.1"


def test_big_answer_sets_tc_for_small_udp_buffer_then_tcp_works(safenest, fake_upstream, lists):
    upstream = fake_upstream()
    for i in range(40):
        upstream.answer("big.test", "TXT", f'"{"x" * 60} {i}"')
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists))
    small = ask(server, "big.test", "TXT")  # no EDNS: 512 bytes
    assert small.flags & dns.flags.TC and not small.answer
    full = ask(server, "big.test", "TXT", tcp=True)
    assert len(full.answer[0]) == 40
    edns = ask(server, "big.test", "TXT", use_edns=0, payload=1232)
    assert edns.flags & dns.flags.TC  # 40 x 64 bytes exceed 1232 too


def test_upstream_truncation_falls_back_to_tcp(safenest, fake_upstream, lists):
    upstream = fake_upstream().answer("tc.test", "A", "192.0.2.33")
    upstream.truncate_udp = True
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists))
    answer = ask(server, "tc.test")
    assert answer.answer[0][0].to_text() == "192.0.2.33"
    assert [t for t, _ in upstream.queries] == ["udp", "tcp"]


def test_upstream_outage_gives_stale_answers_then_servfail(safenest, fake_upstream, lists):
    upstream = fake_upstream().answer("short.test", "A", "192.0.2.44", ttl=1)
    server = safenest(
        upstream=[upstream.address], blocklists_dir=str(lists), upstream_timeout=0.3, query_timeout=0.8
    )
    assert ask(server, "short.test").answer[0][0].to_text() == "192.0.2.44"
    upstream.silent = True
    time.sleep(1.2)
    stale = ask(server, "short.test")
    assert stale.rcode() == dns.rcode.NOERROR
    assert stale.answer[0][0].to_text() == "192.0.2.44" and stale.answer[0].ttl <= 30
    never_seen = ask(server, "never.test")
    assert never_seen.rcode() == dns.rcode.SERVFAIL


def test_stale_window_ends(safenest, fake_upstream, lists):
    upstream = fake_upstream().answer("short.test", "A", "192.0.2.44", ttl=1)
    server = safenest(
        upstream=[upstream.address],
        blocklists_dir=str(lists),
        upstream_timeout=0.3,
        query_timeout=0.8,
        serve_stale_seconds=1,
    )
    ask(server, "short.test")
    upstream.silent = True
    time.sleep(2.2)
    assert ask(server, "short.test").rcode() == dns.rcode.SERVFAIL


def test_killed_dnsmasq_gives_stale_then_servfail_never_nxdomain(safenest, dnsmasq, lists):
    upstream = dnsmasq(["host-record=www.example.test,192.0.2.10", "local-ttl=1"])
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists), upstream_timeout=0.3, query_timeout=0.8)
    assert ask(server, "www.example.test").answer[0][0].to_text() == "192.0.2.10"
    upstream.stop()
    time.sleep(1.2)
    assert ask(server, "www.example.test").answer[0][0].to_text() == "192.0.2.10"
    for name in ("other.example.test", "missing.test"):
        assert ask(server, name).rcode() == dns.rcode.SERVFAIL


def test_failover_to_the_second_upstream(safenest, fake_upstream, lists):
    dead = fake_upstream()
    dead.silent = True
    alive = fake_upstream().answer("fo.test", "A", "192.0.2.66").answer("fo2.test", "A", "192.0.2.67")
    server = safenest(
        upstream=[dead.address, alive.address], blocklists_dir=str(lists), upstream_timeout=0.3, query_timeout=2
    )
    assert ask(server, "fo.test").answer[0][0].to_text() == "192.0.2.66"
    started = time.monotonic()
    assert ask(server, "fo2.test").answer[0][0].to_text() == "192.0.2.67"
    assert time.monotonic() - started < 0.25  # the dead upstream is skipped now


def test_wrong_ids_and_garbage_are_ignored(safenest, fake_upstream, lists):
    upstream = fake_upstream()

    def spoof_then_answer(request, transport):
        good = dns.message.make_response(request)
        good.answer.append(dns.rrset.from_text(request.question[0].name, 60, "IN", "A", "192.0.2.77"))
        wrong_id = dns.message.make_response(request)
        wrong_id.id = (request.id + 1) & 0xFFFF
        wrong_id.answer.append(dns.rrset.from_text(request.question[0].name, 60, "IN", "A", "6.6.6.6"))
        other = dns.message.make_response(dns.message.make_query("evil.test.", "A", id=request.id))
        other.answer.append(dns.rrset.from_text("evil.test.", 60, "IN", "A", "6.6.6.6"))
        return [b"\xff\x00garbage", wrong_id, other, good]

    upstream.handler = spoof_then_answer
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists))
    answer = ask(server, "spoof.test")
    assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.77"]


def test_identical_queries_in_flight_are_coalesced(safenest, fake_upstream, lists):
    upstream = fake_upstream().answer("slow.test", "A", "192.0.2.88")
    upstream.delay = 0.4
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists))
    socks = []
    for _ in range(5):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(dns.message.make_query("slow.test", "A").to_wire(), (server.host, server.port))
        socks.append(s)
    for s in socks:
        assert dns.message.from_wire(s.recv(4096)).answer[0][0].to_text() == "192.0.2.88"
        s.close()
    assert upstream.count("slow.test") == 1


def test_malformed_flood_does_not_stop_answers(server):
    import random

    rng = random.Random(7)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setblocking(False)
    valid = dns.message.make_query("www.example.test", "A").to_wire()
    for i in range(3000):
        kind = i % 4
        if kind == 0:
            packet = rng.randbytes(rng.randrange(0, 40))
        elif kind == 1:
            packet = valid[:rng.randrange(0, len(valid))]
        elif kind == 2:
            packet = bytearray(valid)
            packet[rng.randrange(len(packet))] = rng.randrange(256)
            packet = bytes(packet)
        else:
            packet = valid[:2] + b"\x81\x80" + valid[4:]  # a "response"
        try:
            flood.sendto(packet, (server.host, server.port))
        except BlockingIOError:
            pass
    flood.close()
    for _ in range(5):
        assert ask(server, "www.example.test").answer[0][0].to_text() == "192.0.2.10"
    assert server.agent.server.errors == 0


def test_formerr_for_a_bad_question(server):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(struct.pack("!6H", 0x1234, 0x0100, 2, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 2, (server.host, server.port))
    reply = s.recv(512)
    s.close()
    ident, flags = struct.unpack_from("!HH", reply)
    assert ident == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR


def test_clients_outside_the_allowed_ranges_are_refused(safenest, upstream, lists):
    server = safenest(
        listen="127.0.0.1:0", upstream=[upstream.address], blocklists_dir=str(lists), allowed_clients=["127.0.0.2/32"]
    )
    refused = ask(server, "www.example.test")  # we ask from 127.0.0.1
    assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
    query = dns.message.make_query("www.example.test", "A")
    allowed = dns.query.udp(query, server.host, port=server.port, source="127.0.0.2", timeout=5)
    assert allowed.answer[0][0].to_text() == "192.0.2.10"


def test_rate_limit_drops_the_excess_and_counts_it(safenest, upstream, lists):
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists), rate_limit_queries=20, rate_limit_seconds=60)
    answered = 0
    for _ in range(30):
        try:
            ask(server, "www.example.test", timeout=0.3)
            answered += 1
        except dns.exception.Timeout:
            pass
    assert answered == 20
    assert server.agent.gate.dropped == 10
    other = dns.query.udp(dns.message.make_query("www.example.test", "A"), server.host, port=server.port, source="127.0.0.3", timeout=5)
    assert other.answer  # the limit is per client


def test_ipv6_listener(safenest, upstream, lists):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured here")
    server = safenest(listen="[::1]:0", upstream=[upstream.address], blocklists_dir=str(lists))
    for tcp in (False, True):
        answer = ask(server, "www.example.test", tcp=tcp)
        assert answer.answer[0][0].to_text() == "192.0.2.10"
    assert ask(server, "safenest.lan", "AAAA").rcode() == dns.rcode.NOERROR


def test_internal_error_answers_servfail_and_logs(server, caplog):
    def boom(*args):
        raise RuntimeError("a bug")

    # The clock the Policy link asks for every new decision: an attribute, so this works with
    # the link compiled by mypyc too (a compiled class's methods cannot be replaced).
    server.call(setattr, server.agent.policy, "clock", boom)
    answer = ask(server, "www.example.test")
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert server.agent.server.errors == 1
    assert "internal error answering www.example.test" in caplog.text


def test_a_bug_on_the_replay_path_is_logged_and_the_chain_answers(server, caplog):
    class BrokenGate:  # what the server's fast path asks before replaying a remembered answer
        def admit(self, client):
            raise RuntimeError("a bug")

    assert ask(server, "www.example.test").answer  # remembered for replay
    assert ask(server, "www.example.test").answer
    dns_server = server.agent.server
    server.call(setattr, dns_server, "gate", BrokenGate())
    answer = ask(server, "www.example.test")
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.answer[0][0].to_text() == "192.0.2.10"
    assert dns_server.errors == 1
    assert "replaying an answer to 127.0.0.1 failed" in caplog.text


def test_tcp_idle_connections_are_closed(safenest, upstream, lists):
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists), tcp_idle_timeout=0.3)
    with socket.create_connection((server.host, server.port), timeout=5) as conn:
        started = time.monotonic()
        assert conn.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 3


def test_tcp_connections_are_capped(safenest, upstream, lists):
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists), tcp_max_connections=2)
    wire = dns.message.make_query("www.example.test", "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    held = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(2)]
    try:
        for conn in held:  # both are served
            conn.sendall(framed)
            length = struct.unpack("!H", _read(conn, 2))[0]
            assert dns.message.from_wire(_read(conn, length)).answer
        with socket.create_connection((server.host, server.port), timeout=5) as extra:
            try:
                extra.sendall(framed)
                closed = extra.recv(2) == b""
            except ConnectionResetError:
                closed = True
            assert closed  # over the cap: closed without an answer
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.2)
    assert ask(server, "www.example.test", tcp=True).answer  # a slot is free again


def test_udp_receive_buffer_is_enlarged(server):
    import os

    granted = server.agent.server._udp_socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if os.geteuid() != 0:
        limit = int(open("/proc/sys/net/core/rmem_max").read())
        assert granted >= min(4 * 1024 * 1024, limit // 2)
    else:
        assert granted >= 4 * 1024 * 1024  # root may go past net.core.rmem_max


def test_a_reload_blocks_a_name_that_was_answered_before(server, lists):
    query = dns.message.make_query("www.example.test", "A")
    for _ in range(3):  # the same packet again and again: answered from the replay memo
        answer = dns.query.udp(query, server.host, port=server.port, timeout=5)
        assert answer.answer[0][0].to_text() == "192.0.2.10"
    (lists / "adult.txt").write_text("# test list\nadult.test\nexample.test\n")
    server.call(server.agent.reload)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = dns.query.udp(query, server.host, port=server.port, timeout=5)
        if answer.answer and answer.answer[0][0].to_text() == "0.0.0.0":
            break
        time.sleep(0.05)
    assert answer.answer[0][0].to_text() == "0.0.0.0"
    assert ask(server, "two.example.test").answer[0][0].to_text() == "0.0.0.0"


def test_repeated_answers_count_as_cached(server):
    query = dns.message.make_query("two.example.test", "A")
    for _ in range(4):
        dns.query.udp(query, server.host, port=server.port, timeout=5)
    counts = server.agent.server.answers
    assert counts["forwarded"] == 1 and counts["cached"] == 3


def test_own_name_gives_the_other_family_from_the_interfaces(server):
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("iproute2's ip is not installed")
    listing = subprocess.run([ip, "-o", "-6", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=10)
    v6 = [line.split()[3].split("/")[0] for line in listing.stdout.splitlines()]
    answer = ask(server, "safenest.home.arpa", "AAAA")  # asked over IPv4
    assert answer.rcode() == dns.rcode.NOERROR
    assert sorted(r.to_text() for rrset in answer.answer for r in rrset) == sorted(v6)


def test_internal_errors_are_all_answered_but_not_all_logged(server, caplog):
    def boom(*args):
        raise RuntimeError("a bug")

    # The clock the Policy link asks for every new decision: an attribute, so this works with
    # the link compiled by mypyc too (a compiled class's methods cannot be replaced).
    server.call(setattr, server.agent.policy, "clock", boom)
    for i in range(15):
        assert ask(server, f"n{i}.example.test").rcode() == dns.rcode.SERVFAIL
    assert server.agent.server.errors == 15
    assert caplog.text.count("internal error answering") == 10
