"""The query log end to end: a real SafeNest, real UDP and TCP clients, rows read back from
DATA/querylog.db after the writer's flush.

127.0.0.2 is Lan (9 years old, band 00+, device "lan-phone"), 127.0.0.3 is Minh (14, device
"minh-phone"). Repeated packets are served by the replay memo (the inlined UDP path), and
must be logged like any other answer.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import dns.message
import dns.query
import dns.rcode
import pytest

from agent.cli import _local_answer
from agent.dns.wire import name_to_wire
from agent.policy.model import Device, Policy, Profile
from agent.querylog import QueryLogStore
from agent.storage.policy_store import open_policy_store
from agent.storage.querylog import QUERY_COLUMNS
from tests.dnsfakes import RunningSafeNest

KID, TEEN = "127.0.0.2", "127.0.0.3"
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
GAMBLING = "category=gambling min_age=18+"


def family() -> Policy:
    year = datetime.now(ZONE).year
    return Policy(
        profiles=(
            Profile("default", "Default", band="12+"),
            Profile("lan", "Lan", birth=(year - 9, 1)),
            Profile("minh", "Minh", birth=(year - 14, 1)),
        ),
        devices=(
            Device("lan-phone", "Lan's phone", "ip", KID, "lan"),
            Device("minh-phone", "Minh's phone", "ip", TEEN, "minh"),
            Device("guests", "Guest Wi-Fi", "cidr", "127.0.0.8/29", "default"),
            Device("lan-subnet", "Lan's old subnet", "cidr", "127.0.0.0/29", "lan"),
        ),
    )


@pytest.fixture
def start(tmp_path, fake_upstream):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "gambling.txt").write_text("casino.test\n")
    up = fake_upstream()
    for name in ("www.example.test", "chat.test", "casino.test"):
        up.answer(name, "A", "192.0.2.10", ttl=3600)
    up.answer("forcesafesearch.google.com", "A", "216.239.38.120", ttl=3600)
    running = []

    def make(**overrides) -> RunningSafeNest:
        data = tmp_path / f"var{len(running)}"
        store = open_policy_store(data)
        store.replace(family())
        store.database.close()
        settings = {
            "dns": ["127.0.0.1:0"],
            "upstream": [up.address],
            "blocklists_dir": str(lists),
            "querylog_flush_seconds": 0.2,
            **overrides,
        }
        server = RunningSafeNest(data, settings)
        server.upstream = up
        running.append(server)
        return server

    yield make
    for server in running:
        server.stop()


def ask(server, name, *, client, tcp=False, query=None):
    query = query or dns.message.make_query(name, "A", use_edns=0)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, source=client, timeout=5)


def same_packet(server, name, times, *, client, tcp=False):
    """The same packet (a new ID each time) `times` times: after the first, replayed."""
    query = dns.message.make_query(name, "A", use_edns=0)
    for _ in range(times):
        query.id = (query.id + 1) % 65536
        ask(server, name, client=client, tcp=tcp, query=query)


def logged(server, count, seconds=20.0):
    """The raw rows once at least `count` are stored (the writer flushes every 0.2 s)."""
    path = server.agent.settings.data + "/querylog.db"
    deadline = time.monotonic() + seconds
    while True:
        store = QueryLogStore.open(path)
        try:
            rows = list(store.export_queries(0, time.time() + 60))
        finally:
            store.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return [dict(zip(COLUMNS, row, strict=True)) for row in rows]
        time.sleep(0.1)


COLUMNS = QUERY_COLUMNS  # the raw log's columns, as export_queries yields them


def pick(rows, name, client=None):
    return [r for r in rows if r["name"] == name and (client is None or r["client"] == client)]


def test_udp_and_tcp_answers_are_logged_with_kind_reason_profile_and_device(start):
    server = start()
    same_packet(server, "casino.test", 3, client=KID)  # blocked, then replayed twice
    same_packet(server, "www.example.test", 3, client=TEEN)  # forwarded, then cached twice
    same_packet(server, "chat.test", 2, client=TEEN, tcp=True)  # forwarded, then cached (TCP)
    answer = ask(server, "www.google.com", client=KID)  # SafeSearch for a child
    assert answer.answer[0].rdtype == dns.rdatatype.CNAME
    rows = logged(server, 9)
    assert len(rows) == 9

    blocked = pick(rows, "casino.test")
    assert [r["kind"] for r in blocked] == ["blocked"] * 3
    for r in blocked:
        assert (r["client"], r["profile"], r["device"], r["reason"], r["qtype"]) == (
            KID,
            "lan",
            "lan-phone",
            GAMBLING,
            1,
        )
        assert r["upstream"] == ""

    allowed = pick(rows, "www.example.test")
    assert [r["kind"] for r in allowed] == ["forwarded", "cached", "cached"]
    first = allowed[0]
    assert first["upstream"] == server.upstream.address
    assert first["reason"] == "upstream " + server.upstream.address
    assert float(first["latency_ms"]) > 0  # time since the packet arrived
    assert all(r["profile"] == "minh" and r["device"] == "minh-phone" for r in allowed)
    assert [r["reason"] for r in allowed[1:]] == ["cache", "cache"]

    over_tcp = pick(rows, "chat.test")
    assert [r["kind"] for r in over_tcp] == ["forwarded", "cached"]
    assert all(r["client"] == TEEN and r["profile"] == "minh" for r in over_tcp)

    (rewritten,) = pick(rows, "www.google.com")
    assert rewritten["kind"] == "rewritten" and rewritten["reason"] == "safesearch=google"
    assert rewritten["profile"] == "lan"
    # The internal query for the SafeSearch target is not a client's: it is not logged.
    assert pick(rows, "forcesafesearch.google.com") == []
    # The metrics' counts agree.
    counts = server.agent.server.answers
    assert counts["blocked"] == 3 and counts["rewritten"] == 1
    assert counts["forwarded"] == 2 and counts["cached"] == 3


def test_hide_allowed_logs_only_blocks_and_rewrites_but_counts_everything(start):
    server = start(querylog_privacy="hide_allowed")
    same_packet(server, "casino.test", 2, client=KID)
    same_packet(server, "www.example.test", 3, client=TEEN)
    ask(server, "www.google.com", client=KID)
    rows = logged(server, 3)
    time.sleep(0.5)  # a further flush would bring any allowed row that should not be there
    rows = logged(server, 3)
    assert sorted((r["name"], r["kind"]) for r in rows) == [
        ("casino.test", "blocked"),
        ("casino.test", "blocked"),
        ("www.google.com", "rewritten"),
    ]
    ql = server.agent.querylog
    deadline = time.monotonic() + 20  # the writer's count comes back after its write
    while ql.written < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ql.written == 6  # every answer counted in the hourly rollups
    store = QueryLogStore.open(server.agent.settings.data + "/querylog.db")
    try:
        counted = {
            (profile, kind): queries
            for _, profile, kind, _, queries, _ in store.export_rollups(0, time.time() + 3600)
        }
    finally:
        store.close()
    assert counted == {
        ("lan", "blocked"): 2,
        ("lan", "rewritten"): 1,
        ("minh", "forwarded"): 1,
        ("minh", "cached"): 2,
    }


def test_privacy_off_hands_nothing_to_the_log(start):
    server = start(querylog_privacy="off")
    same_packet(server, "casino.test", 3, client=KID)
    same_packet(server, "www.example.test", 3, client=TEEN)
    ql = server.agent.querylog
    ql.stop()  # writes whatever is queued (the start's privacy change: saved, nothing else)
    # Nothing was even queued: the replay memo's entries carry no log entry, so the writer
    # never had a batch to write (a batch of entries of a profile that is off counts a flush).
    assert (ql.written, ql.flushes, ql.dropped, ql.queued) == (0, 0, 0, 0)
    assert server.agent.server.answers["blocked"] == 3  # the counters still count


def test_rate_limited_drops_are_logged_at_most_once_a_second_per_client(start):
    server = start(rate_limit_queries=3, rate_limit_seconds=3600)
    query = dns.message.make_query("www.example.test", "A", use_edns=0).to_wire()
    began = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((TEEN, 0))
        sock.settimeout(5)
        sock.sendto(query, (server.host, server.port))
        sock.recvfrom(4096)  # the first is forwarded and remembered; the rest are replays
        for _ in range(19):
            sock.sendto(query, (server.host, server.port))
    counts = server.agent.server.answers
    deadline = time.monotonic() + 10
    while counts["rate_limited"] + counts["cached"] < 19 and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = server.agent.server.answers
    elapsed = time.monotonic() - began
    assert counts["rate_limited"] == 17  # 3 tokens: one forwarded, two replayed, 17 dropped
    rows = logged(server, 4)
    limited = [r for r in rows if r["kind"] == "rate_limited"]
    assert 1 <= len(limited) <= 1 + int(elapsed)
    assert limited[0]["name"] == "www.example.test" and limited[0]["profile"] == "minh"
    assert limited[0]["reason"] == "rate limit"


def test_the_device_is_the_policy_entry_that_placed_the_client(start):
    server = start()
    ask(server, "www.example.test", client="127.0.0.9")  # in the guests' subnet
    ask(server, "www.example.test", client="127.0.0.4")  # in Lan's old subnet
    ask(server, "www.example.test", client=KID)  # its own IP entry beats the subnet
    ask(server, "www.example.test", client="127.0.0.20")  # no entry: the default profile
    rows = {r["client"]: (r["device"], r["profile"]) for r in logged(server, 4)}
    assert rows == {
        "127.0.0.9": ("guests", "default"),
        "127.0.0.4": ("lan-subnet", "lan"),
        KID: ("lan-phone", "lan"),
        "127.0.0.20": ("", "default"),
    }


@pytest.mark.parametrize("with_router", [True, False])
def test_names_kept_on_the_lan_are_logged_with_the_reason_explain_gives(
    start, fake_upstream, with_router
):
    router = fake_upstream("127.0.0.2")
    router.answer("printer", "A", "192.168.1.30")
    server = start(private_upstream=[router.address] if with_router else ["none"])
    assert ask(server, "printer", client=TEEN).rcode() == (
        dns.rcode.NOERROR if with_router else dns.rcode.NXDOMAIN
    )
    (row,) = pick(logged(server, 1), "printer")
    # `safenest explain printer` computes its reason with the same function and settings.
    explained, _answer = _local_answer(server.agent.settings, name_to_wire("printer"), 1)
    assert row["reason"] == explained
    assert row["reason"] == (
        f"local name: asked of {router.address}" if with_router else "local name: not sent upstream"
    )
    assert server.upstream.count("printer") == 0
