"""Device identity: the neighbour table, randomized MACs, the clients seen, the router check."""

from __future__ import annotations

import ipaddress
import shutil
import stat
from pathlib import Path

import pytest

from agent.devices import (
    RANDOMIZED_MAC_REASON,
    ROUTER_FORWARDING_TEXT,
    NeighbourTable,
    RandomizedMacWarnings,
    SeenClients,
    check_router_forwarding,
    default_gateways,
    is_randomized_mac,
    normalize_mac,
    parse_ip_neigh_json,
    parse_proc_arp,
    randomized_assignment_text,
    randomized_assignments,
)
from agent.devices import neighbours as neighbours_module
from agent.devices.router import parse_proc_ipv6_route, parse_proc_route
from agent.policy.model import Device

# /proc/net/arp as the kernel writes it: a complete entry, a permanent one (flags 0x6), an
# incomplete one (flags 0x0, zero MAC) and an upper-case MAC on a second interface.
PROC_ARP = """\
IP address       HW type     Flags       HW address            Mask     Device
192.168.1.1      0x1         0x2         a4:91:b1:0c:22:01     *        eth0
192.168.1.23     0x1         0x2         3a:7f:10:aa:bb:cc     *        eth0
192.168.1.40     0x1         0x0         00:00:00:00:00:00     *        eth0
192.168.1.50     0x1         0x6         DC:A6:32:01:02:03     *        eth0
10.0.7.5         0x1         0x2         F0:18:98:5E:4D:3C     *        wlan0
garbage line
"""

# `ip -j neigh show` output (iproute2 6.x): IPv4 and IPv6, with states that have no MAC.
IP_NEIGH_JSON = """[
 {"dst":"192.168.1.1","dev":"eth0","lladdr":"a4:91:b1:0c:22:01","state":["REACHABLE"]},
 {"dst":"192.168.1.23","dev":"eth0","lladdr":"3a:7f:10:aa:bb:cc","state":["STALE"]},
 {"dst":"192.168.1.99","dev":"eth0","state":["FAILED"]},
 {"dst":"192.168.1.98","dev":"eth0","lladdr":"00:00:00:00:00:00","state":["INCOMPLETE"]},
 {"dst":"2001:db8:1::23","dev":"eth0","lladdr":"3a:7f:10:aa:bb:cc","state":["REACHABLE"]},
 {"dst":"fe80::1","dev":"eth0","lladdr":"a4:91:b1:0c:22:01","router":null,"state":["STALE"]},
 {"dst":"2001:DB8:1:0:0:0:0:77","dev":"eth0","lladdr":"F0:18:98:5E:4D:3C","state":["DELAY"]},
 {"dst":"ff02::1","dev":"eth0","lladdr":"33:33:00:00:00:01","state":["NOARP"]}
]"""


def test_parse_proc_arp():
    assert parse_proc_arp(PROC_ARP) == {
        "192.168.1.1": "a4:91:b1:0c:22:01",
        "192.168.1.23": "3a:7f:10:aa:bb:cc",
        "192.168.1.50": "dc:a6:32:01:02:03",
        "10.0.7.5": "f0:18:98:5e:4d:3c",
    }
    assert parse_proc_arp("") == {}
    assert parse_proc_arp(PROC_ARP.splitlines()[0]) == {}


def test_parse_ip_neigh_json():
    assert parse_ip_neigh_json(IP_NEIGH_JSON) == {
        "192.168.1.1": "a4:91:b1:0c:22:01",
        "192.168.1.23": "3a:7f:10:aa:bb:cc",
        "2001:db8:1::23": "3a:7f:10:aa:bb:cc",
        "fe80::1": "a4:91:b1:0c:22:01",
        "2001:db8:1::77": "f0:18:98:5e:4d:3c",  # canonical text of an expanded address
    }
    assert parse_ip_neigh_json("[]") == {}
    for bad in ("", "not json", '{"dst": "1.2.3.4"}'):
        with pytest.raises(ValueError):
            parse_ip_neigh_json(bad)


@pytest.fixture
def arp_file(tmp_path):
    path = tmp_path / "arp"
    path.write_text(PROC_ARP)
    return path


def test_table_merges_both_sources_and_looks_up_every_form(arp_file):
    table = NeighbourTable(proc_arp=arp_file, ip_neigh=lambda: IP_NEIGH_JSON, clock=lambda: 5.0)
    assert table.refresh() == 7
    assert table.sources == (str(arp_file), "ip neigh")
    assert table.refreshed_at == 5.0
    assert table.lookup("192.168.1.23") == "3a:7f:10:aa:bb:cc"
    assert table.lookup("10.0.7.5") == "f0:18:98:5e:4d:3c"  # only in /proc/net/arp
    assert table.lookup("2001:db8:1::23") == "3a:7f:10:aa:bb:cc"  # only in ip neigh
    assert table.lookup("fe80::1%eth0") == "a4:91:b1:0c:22:01"  # zone from the socket
    assert table.lookup("::ffff:192.168.1.23") == "3a:7f:10:aa:bb:cc"  # dual-stack socket
    assert table.lookup("192.168.1.40") is None  # incomplete
    assert table.lookup("192.168.1.99") is None  # failed
    assert table.lookup("not an address") is None
    assert sorted(table.ips_of("3A-7F-10-AA-BB-CC")) == ["192.168.1.23", "2001:db8:1::23"]


def test_refresh_replaces_the_table(arp_file):
    neigh = {"text": IP_NEIGH_JSON}
    table = NeighbourTable(proc_arp=arp_file, ip_neigh=lambda: neigh["text"])
    table.refresh()
    before = table.snapshot()
    arp_file.write_text(PROC_ARP.splitlines()[0] + "\n")
    neigh["text"] = "[]"
    assert table.refresh() == 0
    assert table.lookup("192.168.1.23") is None
    assert len(before) == 7  # a snapshot is a copy


def test_missing_or_broken_sources_never_raise(tmp_path, arp_file, caplog):
    only_ip = NeighbourTable(proc_arp=tmp_path / "absent", ip_neigh=lambda: IP_NEIGH_JSON)
    assert only_ip.refresh() == 5 and only_ip.sources == ("ip neigh",)
    only_arp = NeighbourTable(proc_arp=arp_file, ip_neigh=lambda: None)
    assert only_arp.refresh() == 4 and only_arp.sources == (str(arp_file),)
    garbled = NeighbourTable(proc_arp=arp_file, ip_neigh=lambda: "Option -j is unknown")
    assert garbled.refresh() == 4
    assert "unreadable output" in caplog.text
    nothing = NeighbourTable(proc_arp=tmp_path / "absent", ip_neigh=lambda: None)
    assert nothing.refresh() == 0 and nothing.sources == ()


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_running_ip_fixed_arguments_and_failures(tmp_path, monkeypatch):
    run = neighbours_module._run_ip_neigh
    # The arguments are fixed; the fake prints them back.
    echo = _script(tmp_path, "echo-ip", 'printf "%s," "$@"')
    assert run(echo) == "-j,neigh,show,"
    assert run(str(tmp_path / "no-such-ip")) is None
    assert run(_script(tmp_path, "old-ip", 'echo "Option -j is unknown" >&2; exit 255')) is None
    monkeypatch.setattr(neighbours_module, "IP_TIMEOUT_SECONDS", 0.2)
    assert run(_script(tmp_path, "hung-ip", "exec sleep 30")) is None


def test_without_ip_the_table_comes_from_proc_alone(tmp_path, arp_file, monkeypatch):
    monkeypatch.setattr(neighbours_module, "_IP_DIRS", str(tmp_path / "empty"))
    table = NeighbourTable(proc_arp=arp_file)
    assert table.refresh() == 4 and table.sources == (str(arp_file),)


def test_live_read_of_this_machine():
    table = NeighbourTable()
    assert table.refresh() == len(table.snapshot())
    proc = Path("/proc/net/arp")
    if proc.exists():
        assert str(proc) in table.sources
        for ip, mac in parse_proc_arp(proc.read_text()).items():
            assert normalize_mac(mac) == mac and ipaddress.ip_address(ip)
    for ip, mac in table.snapshot().items():
        assert str(ipaddress.ip_address(ip)) == ip
        assert normalize_mac(mac) == mac
        assert table.lookup(ip) == mac
    if shutil.which("ip", path=neighbours_module._IP_DIRS):
        assert "ip neigh" in table.sources  # iproute2 here understands -j


@pytest.mark.parametrize(
    "text, normal",
    [
        ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
        ("AA-BB-CC-DD-EE-FF", "aa:bb:cc:dd:ee:ff"),
        ("a:b:c:d:e:f", "0a:0b:0c:0d:0e:0f"),
        ("aabbccddeeff", "aa:bb:cc:dd:ee:ff"),
        ("aabb.ccdd.eeff", "aa:bb:cc:dd:ee:ff"),
        (" aa:bb:cc:dd:ee:ff\n", "aa:bb:cc:dd:ee:ff"),
        ("aa:bb:cc:dd:ee", None),
        ("aa:bb-cc:dd:ee:ff", None),
        ("gg:bb:cc:dd:ee:ff", None),
        ("192.168.1.1", None),
        ("", None),
    ],
)
def test_normalize_mac(text, normal):
    assert normalize_mac(text) == normal


@pytest.mark.parametrize(
    "mac, randomized",
    [
        ("dc:a6:32:01:02:03", False),  # Raspberry Pi Foundation, burned in
        ("f0:18:98:5e:4d:3c", False),  # Apple, burned in
        ("00:1a:2b:3c:4d:5e", False),
        ("02:00:00:00:00:01", True),  # 0x02: locally administered
        ("3a:7f:10:aa:bb:cc", True),  # 0x3a = 0011 1010: an iPhone private address
        ("da:a1:19:00:00:01", True),  # 0xda = 1101 1010: Android randomized
        ("de:ad:be:ef:00:01", True),  # 0xde = 1101 1110
        ("a4:91:b1:0c:22:01", False),  # 0xa4 = 1010 0100
        ("AE-00-00-00-00-01", True),  # 0xae = 1010 1110
    ],
)
def test_randomized_mac(mac, randomized):
    assert is_randomized_mac(mac) is randomized


def test_randomized_mac_rejects_non_macs_and_explains():
    with pytest.raises(ValueError):
        is_randomized_mac("192.168.1.1")
    assert "MAC" in RANDOMIZED_MAC_REASON.en and "Private Wi-Fi" in RANDOMIZED_MAC_REASON.en
    assert "MAC" in RANDOMIZED_MAC_REASON.vi and "riêng tư" in RANDOMIZED_MAC_REASON.vi


def test_devices_assigned_by_a_randomized_mac_are_warned_about_once_per_mac():
    devices = [
        Device("phone", "Lan's phone", "mac", "3A-7F-10-AA-BB-CC", "lan"),  # randomized
        Device("tablet", "", "mac", "f0:18:98:5e:4d:3c", "lan"),  # burned in
        Device("laptop", "Minh's laptop", "ip", "192.168.1.31", "minh"),
        Device("other", "", "mac", "de:ad:be:ef:00:01", "minh"),  # randomized
        Device("broken", "", "mac", "not a mac", "minh"),
    ]
    assert [d.id for d in randomized_assignments(devices)] == ["phone", "other"]
    warned = RandomizedMacWarnings()
    assert [d.id for d in warned.new(devices)] == ["phone", "other"]
    assert warned.new(devices) == []  # once per MAC
    renamed = Device("phone2", "", "mac", "3a:7f:10:aa:bb:cc", "minh")
    assert warned.new([renamed]) == []  # the same MAC, whatever the entry
    assert [d.id for d in warned.new([Device("new", "", "mac", "02:00:00:00:00:01", "lan")])] == [
        "new"
    ]
    text = randomized_assignment_text(devices[0])
    assert text.en.startswith("device phone (Lan's phone) is assigned by MAC 3a:7f:10:aa:bb:cc,")
    assert "fixed IP" in text.en
    assert text.vi.startswith("thiết bị phone (Lan's phone) được gán theo MAC 3a:7f:10:aa:bb:cc,")
    assert "IP cố định" in text.vi


# ---------------------------------------------------------------- clients seen


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_seen_counts_and_drains_with_macs(arp_file):
    table = NeighbourTable(proc_arp=arp_file, ip_neigh=lambda: None)
    table.refresh()
    clock = Clock()
    seen = SeenClients(table, clock=clock)
    seen.note("192.168.1.23")
    clock.t = 1010.0
    for _ in range(4):
        seen.note("192.168.1.23")
    seen.note("192.168.1.77")
    clock.t = 1060.0
    batch = {c.ip: c for c in seen.drain()}
    assert set(batch) == {"192.168.1.23", "192.168.1.77"}
    c = batch["192.168.1.23"]
    assert (c.mac, c.queries, c.first_seen, c.last_seen) == ("3a:7f:10:aa:bb:cc", 5, 1000.0, 1060.0)
    assert c.randomized_mac
    assert batch["192.168.1.77"].mac is None and not batch["192.168.1.77"].randomized_mac
    assert seen.drain() == []  # a fresh window
    # The registry keeps totals across windows and the first time ever seen.
    seen.note("192.168.1.23")
    clock.t = 1120.0
    [again] = seen.drain()
    assert again.queries == 1 and again.first_seen == 1060.0
    total = {k.ip: k for k in seen.known()}["192.168.1.23"]
    assert (total.queries, total.first_seen, total.last_seen) == (6, 1000.0, 1120.0)
    assert seen.known()[0].ip == "192.168.1.23"  # most recently seen first
    assert seen.query_counts() == {"192.168.1.77": 1, "192.168.1.23": 6}


def test_seen_window_is_bounded():
    seen = SeenClients(max_clients=3, clock=Clock())
    for i in range(10):
        seen.note(f"10.0.0.{i}")
    seen.note("10.0.0.0")  # a tracked address still counts
    assert seen.overflow == 7
    batch = seen.drain()
    assert sorted(c.ip for c in batch) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert {c.ip: c.queries for c in batch}["10.0.0.0"] == 2
    assert seen.last_overflow == 7 and seen.overflow == 0
    seen.note("10.0.0.9")  # room again in the new window
    assert [c.ip for c in seen.drain()] == ["10.0.0.9"]


def test_seen_registry_is_bounded_oldest_out():
    clock = Clock()
    seen = SeenClients(max_known=2, clock=clock)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        seen.note(ip)
        clock.t += 1
        seen.drain()
    assert [c.ip for c in seen.known()] == ["10.0.0.3", "10.0.0.2"]
    seen.note("10.0.0.2")
    seen.drain()
    assert [c.ip for c in seen.known()] == ["10.0.0.2", "10.0.0.3"]


def test_unassigned_leaves_out_devices_by_ip_cidr_and_mac(arp_file):
    table = NeighbourTable(proc_arp=arp_file, ip_neigh=lambda: IP_NEIGH_JSON)
    table.refresh()
    seen = SeenClients(table, clock=Clock())
    for ip in (
        "192.168.1.1",  # the router: assigned by IP
        "192.168.1.23",  # by MAC (a phone with a private address)
        "2001:db8:1::23",  # the same phone over IPv6: by MAC too
        "10.0.7.5",  # in the classroom subnet
        "::ffff:192.168.1.50",  # a dual-stack socket's form of an address assigned by IP
        "192.168.1.77",  # unassigned
        "2001:db8:1::77",  # unassigned (its MAC is not assigned)
    ):
        seen.note(ip)
    seen.drain()
    devices = [
        Device("router", "Router", "ip", "192.168.1.1", "default"),
        Device("phone", "Lan's phone", "mac", "3a:7f:10:aa:bb:cc", "lan"),
        Device("class7a", "7A", "cidr", "10.0.7.0/24", "class7a"),
        Device("pi", "Pi", "ip", "192.168.1.50", "default"),
    ]
    assert sorted(c.ip for c in seen.unassigned(devices)) == ["192.168.1.77", "2001:db8:1::77"]
    assert len(seen.unassigned([])) == 7


# ---------------------------------------------------------------- the router

PROC_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
eth1\t00000000\t0101A8AC\t0002\t0\t0\t50\t00000000\t0\t0\t0
"""

# The format of this machine's /proc/net/ipv6_route, with a link-local default next hop.
PROC_IPV6_ROUTE = """\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000a69129fffe0c2201 00000400 00000003 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001       lo
"""


def test_parse_routes():
    # Two IPv4 defaults (eth0 has the lower metric); the down route on eth1 is skipped.
    assert sorted(parse_proc_route(PROC_ROUTE)) == [(100, "10.0.0.1"), (600, "192.168.1.1")]
    assert parse_proc_ipv6_route(PROC_IPV6_ROUTE) == [(0x400, "fe80::a691:29ff:fe0c:2201")]
    assert parse_proc_route("") == [] and parse_proc_ipv6_route("junk\n") == []


def test_default_gateways_from_files(tmp_path):
    (tmp_path / "route").write_text(PROC_ROUTE)
    (tmp_path / "ipv6_route").write_text(PROC_IPV6_ROUTE)
    got = default_gateways(tmp_path / "route", tmp_path / "ipv6_route")
    assert got == ("10.0.0.1", "192.168.1.1", "fe80::a691:29ff:fe0c:2201")
    assert default_gateways(tmp_path / "absent", tmp_path / "absent6") == ()


def test_default_gateways_live():
    for gw in default_gateways():
        ipaddress.ip_address(gw)


@pytest.mark.parametrize(
    "counts, warns",
    [
        ({"192.168.1.1": 95, "192.168.1.23": 5}, True),  # 95 % of 100
        ({"192.168.1.1": 90, "192.168.1.23": 10}, True),  # exactly 90 %
        ({"192.168.1.1": 89, "192.168.1.23": 11}, False),
        ({"192.168.1.1": 99}, False),  # too few queries to judge
        ({"192.168.1.23": 500}, False),  # one busy child, not the router
        ({"::ffff:192.168.1.1": 300}, True),  # dual-stack socket form
        ({}, False),
    ],
)
def test_router_forwarding_check(counts, warns):
    got = check_router_forwarding(counts, ["192.168.1.1", "fe80::1"])
    assert (got is not None) is warns
    if got is not None:
        assert got.gateway == "192.168.1.1"
        assert got.queries == sum(counts.values())
        assert 0.9 <= got.share <= 1.0
        assert "DHCP" in got.text.en and "DHCP" in got.text.vi
        assert "router" in got.text.en.lower()


def test_router_forwarding_texts():
    assert "forwards DNS to SafeNest" in ROUTER_FORWARDING_TEXT.en
    assert "chuyển tiếp DNS" in ROUTER_FORWARDING_TEXT.vi
