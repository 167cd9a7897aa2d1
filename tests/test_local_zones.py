"""Names that must not leave the LAN: private reverse lookups, dotless names, home.arpa and the
like are answered here or asked of the LAN's own resolver, never of the upstreams.

Real SafeNest, real UDP, fake upstreams that record what they were asked."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from agent.dns.steps.local_zones import _ends_with_zone, private_upstreams
from agent.dns.upstream import parse_upstream
from agent.dns.wire import name_to_wire
from agent.settings import SettingsError, load_settings


def ask(server, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0)
    return dns.query.udp(query, server.host, port=server.port, timeout=5)


PRIVATE_NAMES = [
    ("20.1.168.192.in-addr.arpa", "PTR"),
    ("5.0.0.10.in-addr.arpa", "PTR"),
    ("9.9.20.172.in-addr.arpa", "PTR"),
    ("1.0.64.100.in-addr.arpa", "PTR"),  # CGNAT
    ("7.0.254.169.in-addr.arpa", "PTR"),
    ("1.0.0.127.in-addr.arpa", "PTR"),
    ("b.a.9.8.7.6.5.4.3.2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa", "PTR"),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "PTR"),
    ("printer", "A"),
    ("printer", "AAAA"),
    ("nas.home.arpa", "A"),
    ("nas.lan", "A"),
    ("tv.internal", "AAAA"),
    ("speaker.local", "A"),
    ("home.arpa", "SOA"),
]

FORWARDED_NAMES = [
    ("10.2.0.192.in-addr.arpa", "PTR"),  # documentation range: public, nothing to leak
    ("8.8.8.8.in-addr.arpa", "PTR"),
    ("1.0.32.172.in-addr.arpa", "PTR"),  # 172.32/16 is public
    ("com", "NS"),  # a dotless name of another type: a TLD, asked by validators
    ("www.example.test", "A"),
    ("plan.test", "A"),  # ends in "lan" letters, not in the lan domain
    ("lan.example.test", "A"),
]


@pytest.mark.parametrize("name,rdtype", PRIVATE_NAMES)
def test_without_a_private_upstream_private_names_get_nxdomain_here(
    safenest, fake_upstream, name, rdtype
):
    up = fake_upstream()  # on loopback: "auto" does not count it as the LAN's resolver
    server = safenest(upstream=[up.address])
    answer = ask(server, name, rdtype)
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.authority and answer.authority[0].rdtype == dns.rdatatype.SOA
    assert up.count(name) == 0  # never sent upstream
    # A repeat gets the same answer (from the replay memo), still without the upstream.
    assert ask(server, name, rdtype).rcode() == dns.rcode.NXDOMAIN
    assert up.queries == []


@pytest.mark.parametrize("name,rdtype", FORWARDED_NAMES)
def test_other_names_still_go_upstream(safenest, fake_upstream, name, rdtype):
    up = fake_upstream()
    server = safenest(upstream=[up.address])
    ask(server, name, rdtype)
    assert up.count(name) == 1


def test_localhost_and_invalid_are_answered_here(safenest, fake_upstream):
    up = fake_upstream()
    server = safenest(upstream=[up.address])
    a = ask(server, "localhost", "A")
    assert a.rcode() == dns.rcode.NOERROR and [r.to_text() for r in a.answer[0]] == ["127.0.0.1"]
    aaaa = ask(server, "app.localhost", "AAAA")
    assert [r.to_text() for r in aaaa.answer[0]] == ["::1"]
    mx = ask(server, "localhost", "MX")
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer
    assert ask(server, "anything.invalid", "A").rcode() == dns.rcode.NXDOMAIN
    assert up.queries == []


def test_a_private_upstream_gets_the_lans_names_and_its_answers_are_cached(safenest, fake_upstream):
    public = fake_upstream()
    router = fake_upstream("127.0.0.2")
    router.answer("20.1.168.192.in-addr.arpa", "PTR", "lan-phone.lan.")
    router.answer("printer", "A", "192.168.1.30")
    server = safenest(upstream=[public.address], private_upstream=[router.address])
    ptr = ask(server, "20.1.168.192.in-addr.arpa", "PTR")
    assert [r.to_text() for r in ptr.answer[0]] == ["lan-phone.lan."]
    printer = ask(server, "PRINTER", "A")
    assert [r.to_text() for r in printer.answer[0]] == ["192.168.1.30"]
    assert printer.question[0].name.to_text() == "PRINTER."  # the asker's case kept
    ask(server, "printer", "A")
    assert router.count("printer") == 1  # the second came from the cache
    assert public.queries == []
    # Ordinary names still go to the public upstream only.
    ask(server, "www.example.test", "A")
    assert public.count("www.example.test") == 1 and router.count("www.example.test") == 0


def test_private_upstream_none_answers_here_even_with_a_lan_upstream():
    upstreams = [parse_upstream("192.168.1.1"), parse_upstream("1.1.1.1")]
    assert private_upstreams(["none"], upstreams) == []


def test_auto_takes_the_upstreams_on_the_lan_only():
    upstreams = [
        parse_upstream(text)
        for text in (
            "192.168.1.1",
            "1.1.1.1",
            "127.0.0.1:5353",
            "[fd00::1]:53",
            "100.64.0.1",
            "10.0.0.1",
        )
    ]
    chosen = private_upstreams(["auto"], upstreams)
    assert [str(u) for u in chosen] == [str(upstreams[0]), str(upstreams[3]), str(upstreams[5])]


@pytest.mark.parametrize(
    "name,zone,expected",
    [
        ("x.168.192.in-addr.arpa", "168.192.in-addr.arpa", True),
        ("168.192.in-addr.arpa", "168.192.in-addr.arpa", True),
        ("x.1168.192.in-addr.arpa", "168.192.in-addr.arpa", False),
        ("nas.lan", "lan", True),
        ("plan", "lan", False),
    ],
)
def test_a_zone_matches_on_label_boundaries_only(name, zone, expected):
    assert _ends_with_zone(name_to_wire(name), name_to_wire(zone)) is expected


def test_a_label_that_ends_in_a_zones_bytes_is_not_in_the_zone():
    # One label whose last bytes are "\x03168": the bytes end like 168.192.in-addr.arpa.
    name = b"\x05a\x03168" + name_to_wire("192.in-addr.arpa")
    assert name.endswith(name_to_wire("168.192.in-addr.arpa"))
    assert not _ends_with_zone(name, name_to_wire("168.192.in-addr.arpa"))


@pytest.mark.parametrize("value", [["auto", "192.168.1.1"], ["not-an-address"], ["none", "auto"]])
def test_bad_private_upstream_settings_are_refused(value):
    with pytest.raises(SettingsError, match="private_upstream"):
        load_settings(None, environ={}, overrides={"private_upstream": value})


def test_an_empty_private_upstream_is_refused():
    with pytest.raises(SettingsError, match="private_upstream"):
        load_settings(None, environ={"SAFENEST_PRIVATE_UPSTREAM": " "})
