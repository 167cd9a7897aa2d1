"""Age policies end to end: a real SafeNest, a policy in DATA/safenest.db, clients on 127.0.0.2-4.

127.0.0.2 is Lan (9 years old, band 00+), 127.0.0.3 is Minh (14, band 12+, who may use social
networks), 127.0.0.4 is unknown (the default 12+ profile). Each asks over real UDP and TCP
from its own source address; the upstream is a local fake.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from agent.policy.model import Device, Override, Policy, Profile, Rule, Schedule
from agent.storage.policy_store import open_policy_store
from tests.dnsfakes import RunningSafeNest

KID, TEEN, UNKNOWN = "127.0.0.2", "127.0.0.3", "127.0.0.4"
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
GOOGLE_SAFE = ("216.239.38.120", "2001:4860:4802:32::78")
YT_STRICT, YT_MODERATE = "216.239.38.119", "216.239.38.121"


def family(**changes) -> Policy:
    year = datetime.now(ZONE).year
    lan = Profile("lan", "Lan", birth=(year - 9, 1))
    minh = Profile("minh", "Minh", birth=(year - 14, 1), categories={"social_networks": "allow"})
    values = dict(
        profiles=(Profile("default", "Default", band="12+"), lan, minh),
        devices=(
            Device("lan-phone", "Lan's phone", "ip", KID, "lan"),
            Device("minh-phone", "Minh's phone", "ip", TEEN, "minh"),
        ),
    )
    values.update(changes)
    return Policy(**values)


@pytest.fixture
def lists(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("casino.test\n")
    (folder / "messaging.txt").write_text("chat.test\n")  # 12+
    (folder / "social_networks.txt").write_text("social.test\n")  # 16+
    return folder


@pytest.fixture
def upstream(fake_upstream):
    up = fake_upstream()
    for name in ("chat.test", "social.test", "www.example.test", "casino.test"):
        up.answer(name, "A", "192.0.2.10", ttl=3600)
    up.answer("forcesafesearch.google.com", "A", GOOGLE_SAFE[0], ttl=3600)
    up.answer("forcesafesearch.google.com", "AAAA", GOOGLE_SAFE[1], ttl=3600)
    up.answer("forcesafesearch.google.com", "HTTPS", "1 . alpn=h2,h3", ttl=3600)
    up.answer("restrict.youtube.com", "A", YT_STRICT)
    up.answer("restrictmoderate.youtube.com", "A", YT_MODERATE)
    return up


@pytest.fixture
def start(tmp_path, upstream, lists):
    """start(policy) -> a running SafeNest whose database held `policy` before it started."""
    running = []

    def make(policy: Policy | None = None, **overrides) -> RunningSafeNest:
        data = tmp_path / f"var{len(running)}"
        store = open_policy_store(data)
        store.replace(policy or family())
        store.database.close()
        settings = {
            "dns": ["127.0.0.1:0"],
            "upstream": [upstream.address],
            "blocklists_dir": str(lists),
        }
        server = RunningSafeNest(data, {**settings, **overrides})
        running.append(server)
        return server

    yield make
    for server in running:
        server.stop()


def ask(server, name, rdtype="A", *, client=UNKNOWN, tcp=False, **kw) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, source=client, timeout=5)


def ede(message) -> str | None:
    texts = [o.text for o in message.options if o.otype == dns.edns.EDE]
    return texts[0] if texts else None


def addresses(message) -> list[str]:
    return sorted(r.to_text() for rrset in message.answer if rrset.rdtype in (1, 28) for r in rrset)


def store_of(server):
    return open_policy_store(server.agent.settings.data)


def wait_for(check, seconds=10.0):
    """Poll `check` until it gives a true value (queries are cheap; the policy watcher polls
    the database every half second)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# ---------------------------------------------------------------- who asks decides


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_the_same_names_get_different_answers_per_profile(start, tcp):
    server = start()
    # messaging is 12+: blocked for the 9-year-old, allowed for the 14-year-old and the default.
    kid = ask(server, "chat.test", client=KID, tcp=tcp)
    assert addresses(kid) == ["0.0.0.0"] and ede(kid) == "category=messaging min_age=12+"
    assert addresses(ask(server, "chat.test", client=TEEN, tcp=tcp)) == ["192.0.2.10"]
    assert addresses(ask(server, "chat.test", client=UNKNOWN, tcp=tcp)) == ["192.0.2.10"]
    # social networks are 16+, but Minh's parent allows them for him.
    assert (
        ede(ask(server, "social.test", client=KID, tcp=tcp))
        == "category=social_networks min_age=16+"
    )
    assert addresses(ask(server, "social.test", client=TEEN, tcp=tcp)) == ["192.0.2.10"]
    assert (
        ede(ask(server, "social.test", client=UNKNOWN, tcp=tcp))
        == "category=social_networks min_age=16+"
    )
    # And gambling (18+) for all three.
    for client in (KID, TEEN, UNKNOWN):
        assert (
            ede(ask(server, "www.casino.test", client=client, tcp=tcp))
            == "category=gambling min_age=18+"
        )


def test_the_same_packet_from_two_clients_is_not_replayed_across_profiles(start):
    server = start()
    query = dns.message.make_query("chat.test", "A", use_edns=0)
    for _ in range(3):  # identical packets, alternating clients: each gets its own profile's answer
        kid = dns.query.udp(query, server.host, port=server.port, source=KID, timeout=5)
        teen = dns.query.udp(query, server.host, port=server.port, source=TEEN, timeout=5)
        assert addresses(kid) == ["0.0.0.0"]
        assert addresses(teen) == ["192.0.2.10"]
    assert server.agent.server.answers["cached"] >= 2  # the teen's repeats came from the memo


# ---------------------------------------------------------------- SafeSearch


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_google_is_answered_with_a_cname_to_forcesafesearch(start, upstream, tcp):
    server = start()
    for rdtype, expected in (("A", GOOGLE_SAFE[0]), ("AAAA", GOOGLE_SAFE[1])):
        answer = ask(server, "WWW.Google.Com.VN", rdtype, client=KID, tcp=tcp)
        assert answer.rcode() == dns.rcode.NOERROR
        cname, target = answer.answer[0], answer.answer[1]
        assert cname.rdtype == dns.rdatatype.CNAME
        assert cname.name.to_text() == "WWW.Google.Com.VN."  # the question's case comes back
        assert cname[0].target.to_text() == "forcesafesearch.google.com."
        assert target.name.to_text() == "forcesafesearch.google.com."
        assert [r.to_text() for r in target] == [expected]
        assert ede(answer) == "safesearch=google"
    https = ask(server, "www.google.com", "HTTPS", client=TEEN, tcp=tcp)
    assert [r.rdtype for r in https.answer] == [dns.rdatatype.CNAME, dns.rdatatype.HTTPS]
    assert "alpn" in https.answer[1][0].to_text()
    # Another type is not rewritten: it is forwarded as asked.
    assert ask(server, "www.google.com", "TXT", client=KID, tcp=tcp).answer == []
    assert upstream.count("www.google.com.vn") == 0


def test_youtube_is_strict_for_the_child_and_moderate_for_the_teen(start):
    server = start()
    kid = ask(server, "www.youtube.com", client=KID)
    teen = ask(server, "www.youtube.com", client=TEEN)
    assert kid.answer[0][0].target.to_text() == "restrict.youtube.com." and addresses(kid) == [
        YT_STRICT
    ]
    assert teen.answer[0][0].target.to_text() == "restrictmoderate.youtube.com."
    assert addresses(teen) == [YT_MODERATE]


def test_a_safesearch_target_that_cannot_be_resolved_is_servfail_never_nxdomain(start, upstream):
    server = start(upstream_timeout=0.3, query_timeout=0.8)
    upstream.silent = True
    answer = ask(server, "www.bing.com", client=KID)
    assert answer.rcode() == dns.rcode.SERVFAIL


# ---------------------------------------------------------------- bypass canaries


@pytest.mark.parametrize("client", [KID, TEEN, UNKNOWN])
def test_the_bypass_canaries(start, upstream, client):
    server = start()
    for name, reason in (
        ("use-application-dns.net", "bypass=doh-canary"),
        ("mask.icloud.com", "bypass=private-relay"),
        ("mask-h2.icloud.com", "bypass=private-relay"),
    ):
        answer = ask(server, name, "A", client=client)
        assert answer.rcode() == dns.rcode.NXDOMAIN and ede(answer) == reason
    nodata = ask(server, "x.resolver.arpa", "SVCB", client=client)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert ede(nodata) == "bypass=resolver-discovery"
    assert len(upstream.queries) == 0  # none of them leaves the Pi


# ---------------------------------------------------------------- changes while running


def test_a_policy_change_takes_effect_while_running(start):
    server = start()
    assert addresses(ask(server, "chat.test", client=TEEN)) == ["192.0.2.10"]
    # The same packet again and again: the replay memo must not keep the old answer.
    query = dns.message.make_query("chat.test", "A", use_edns=0)
    store_of(server).add_rule(Rule("chat.test", "block", profile="minh"))

    def blocked() -> bool:
        answer = dns.query.udp(query, server.host, port=server.port, source=TEEN, timeout=5)
        return ede(answer) == "rule=block:chat.test"

    assert wait_for(blocked)
    assert addresses(ask(server, "chat.test", client=UNKNOWN)) == ["192.0.2.10"]  # only Minh's rule


def test_a_pause_starts_on_time_without_any_write(start):
    server = start()
    starts = datetime.now(UTC) + timedelta(seconds=3)
    pause = Override("homework", "minh", "pause", starts, starts + timedelta(hours=1))
    store = store_of(server)
    store.add_override(pause)
    revision = store.revision()
    assert wait_for(
        lambda: server.call(lambda: bool(server.agent.policy.snapshot.policy.overrides))
    )
    query = dns.message.make_query("www.example.test", "A", use_edns=0)
    first = dns.query.udp(query, server.host, port=server.port, source=TEEN, timeout=5)
    assert datetime.now(UTC) < starts, "the machine is too slow for this test"
    assert addresses(first) == ["192.0.2.10"]

    def paused() -> bool:
        answer = dns.query.udp(query, server.host, port=server.port, source=TEEN, timeout=5)
        return ede(answer) == "override=pause:homework"

    assert wait_for(paused)
    assert datetime.now(UTC) >= starts
    assert store.revision() == revision  # nothing was written: the clock did it
    assert addresses(ask(server, "www.example.test", client=KID)) == ["192.0.2.10"]


@pytest.mark.timeout(120)
def test_a_schedule_window_starts_while_the_server_runs(start):
    now = datetime.now(ZONE)
    begin = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (begin - now).total_seconds() < 3:
        begin += timedelta(minutes=1)  # too close: the policy must be in force first
    bedtime = Schedule(
        "bedtime",
        "lan",
        "Bedtime",
        frozenset(range(7)),
        begin.strftime("%H:%M"),
        (begin + timedelta(hours=1)).strftime("%H:%M"),
        "internet_off",
    )
    server = start(family(schedules=(bedtime,)))
    query = dns.message.make_query("www.example.test", "A", use_edns=0)
    before = dns.query.udp(query, server.host, port=server.port, source=KID, timeout=5)
    assert datetime.now(ZONE) < begin
    assert addresses(before) == ["192.0.2.10"]

    def bedtime_started() -> bool:
        answer = dns.query.udp(query, server.host, port=server.port, source=KID, timeout=5)
        return ede(answer) == "schedule=bedtime"

    assert wait_for(bedtime_started, seconds=90)
    assert datetime.now(ZONE) >= begin
    assert addresses(ask(server, "www.example.test", client=TEEN)) == ["192.0.2.10"]  # only Lan's


def test_ttls_are_capped_for_every_child_not_for_an_adult_without_schedules(start):
    later = Schedule(
        "school",
        "lan",
        "School",
        frozenset({0}),
        "03:00",
        "04:00",
        "block",
        frozenset({"online_games"}),
    )
    year = datetime.now(ZONE).year
    adult_default = Profile("default", "Default", kind="adult", band="18+")
    profiles = (
        adult_default,
        Profile("lan", "Lan", birth=(year - 9, 1)),
        Profile("minh", "Minh", birth=(year - 14, 1)),
    )
    server = start(family(schedules=(later,), profiles=profiles))
    for tcp in (False, True):  # forwarded first, then from the cache
        kid = ask(server, "www.example.test", client=KID, tcp=tcp)
        assert addresses(kid) == ["192.0.2.10"] and kid.answer[0].ttl <= 300
        # Minh has no schedule, but a "pause now" must reach a child's device within the cap.
        teen = ask(server, "www.example.test", client=TEEN, tcp=tcp)
        assert addresses(teen) == ["192.0.2.10"] and teen.answer[0].ttl <= 300
    adult = ask(server, "www.example.test", client=UNKNOWN)
    assert adult.answer[0].ttl > 3000  # an adult without schedules: the upstream's TTL
    query = dns.message.make_query("www.example.test", "A", use_edns=0)
    for _ in range(3):  # replayed answers stay capped too
        again = dns.query.udp(query, server.host, port=server.port, source=KID, timeout=5)
        assert again.answer[0].ttl <= 300
    rewrite = ask(server, "www.google.com", client=KID)
    assert all(rrset.ttl <= 300 for rrset in rewrite.answer)
    # Answers made below the Policy link carry the cap too (ANY: 3600 s uncapped).
    assert ask(server, "www.example.test", "ANY", client=KID).answer[0].ttl == 300
    assert ask(server, "www.example.test", "ANY", client=UNKNOWN).answer[0].ttl == 3600


def test_a_device_known_by_mac_keeps_its_profile_when_its_address_moves(start, tmp_path):
    from agent.devices import NeighbourTable

    tablet = Device("tablet", "Family tablet", "mac", "a4:83:e7:00:00:07", "lan")
    server = start(family(devices=(tablet,)))
    arp = tmp_path / "arp"

    def neighbours(*rows: tuple[str, str]) -> None:
        header = "IP address       HW type     Flags       HW address            Mask     Device\n"
        arp.write_text(header + "".join(f"{ip} 0x1 0x2 {mac} * eth0\n" for ip, mac in rows))
        server.call(table.refresh)
        server.call(server.agent._neighbours_refreshed)

    table = NeighbourTable(proc_arp=arp, ip_neigh=lambda: None)
    server.call(setattr, server.agent.policy, "neighbours", table)
    query = dns.message.make_query("chat.test", "A", use_edns=0)

    def answer_to(client):
        return addresses(
            dns.query.udp(query, server.host, port=server.port, source=client, timeout=5)
        )

    neighbours((TEEN, "a4:83:e7:00:00:07"))
    assert answer_to(TEEN) == ["0.0.0.0"]  # the tablet is Lan's, whatever its address
    assert answer_to(KID) == ["192.0.2.10"]  # no device there now: the default profile
    # DHCP gives the tablet another address, and its old one to someone else.
    neighbours((KID, "a4:83:e7:00:00:07"), (TEEN, "a4:83:e7:00:00:99"))
    assert answer_to(KID) == ["0.0.0.0"]
    assert answer_to(TEEN) == ["192.0.2.10"]


def test_clients_seen_are_recorded_for_the_admin_page(start):
    server = start()
    for client in (KID, UNKNOWN, UNKNOWN):
        ask(server, "www.example.test", client=client)
    server.agent._flush_seen()  # what the watcher thread does every minute
    seen = {d.ip: d.queries for d in store_of(server).seen_devices()}
    assert set(seen) == {KID, UNKNOWN} and all(n >= 1 for n in seen.values())
    assert [d.ip for d in store_of(server).unassigned_devices()] == [UNKNOWN]


def test_the_seen_flush_forgets_old_devices_and_warns_once_per_randomized_mac(start, caplog):
    phone = Device("lan-phone", "Lan's phone", "mac", "3a:11:22:33:44:55", "lan")  # randomized
    tablet = Device("tablet", "Tablet", "mac", "3c:22:fb:10:20:30", "lan")  # a maker's address
    server = start(family(devices=(phone, tablet)))
    store = store_of(server)
    long_ago = datetime.now(UTC) - timedelta(days=31)
    recently = datetime.now(UTC) - timedelta(days=29)
    store.record_seen(
        [("10.9.0.1", None, 5, long_ago, long_ago), ("10.9.0.2", None, 5, long_ago, recently)]
    )
    ask(server, "www.example.test", client=UNKNOWN)
    with caplog.at_level("WARNING", logger="safenest"):
        server.agent._flush_seen()
        server.agent._flush_seen()  # the next minute: no second warning
    seen = {d.ip: d for d in store.seen_devices()}
    assert set(seen) == {"10.9.0.2", UNKNOWN}  # unseen for 30 days: forgotten
    assert seen["10.9.0.2"].first_seen == long_ago
    warnings = [r.getMessage() for r in caplog.records if "randomized" in r.getMessage()]
    assert warnings == [
        "policy: device lan-phone (Lan's phone) is assigned by MAC 3a:11:22:33:44:55, a "
        "randomized (private Wi-Fi) address: when it changes, this entry no longer recognises "
        "the device. Turn the private address off for this network, or give it a fixed IP in "
        "the router and assign that."
    ]


def test_a_damaged_policy_database_still_filters_with_the_default_profile(
    tmp_path, upstream, lists
):
    data = tmp_path / "damaged"
    data.mkdir()
    (data / "safenest.db").write_bytes(b"this is not a database\x00" * 100)
    settings = {
        "dns": ["127.0.0.1:0"],
        "upstream": [upstream.address],
        "blocklists_dir": str(lists),
    }
    server = RunningSafeNest(data, settings)
    try:
        assert ede(ask(server, "chat.test", client=KID)) is None  # Lan is unknown now: 12+
        assert ede(ask(server, "social.test", client=KID)) == "category=social_networks min_age=16+"
        assert ask(server, "www.google.com", client=KID).answer[0].rdtype == dns.rdatatype.CNAME
    finally:
        server.stop()


def test_a_wall_clock_jump_makes_the_policy_look_at_the_time_again(start):
    server = start()
    policy = server.agent.policy
    query = dns.message.make_query("chat.test", "A", use_edns=0)
    for _ in range(2):  # the second answer (from the cache) is the one remembered
        dns.query.udp(query, server.host, port=server.port, source=TEEN, timeout=5)
    assert server.call(len, server.agent.server.replay) == 1
    # As if NTP had moved the clock by an hour since the decisions were made.
    server.call(setattr, policy, "wall_offset", policy.wall_offset - 3600)
    assert wait_for(
        lambda: server.call(lambda: abs(policy.wall_offset - (time.time() - time.monotonic())) < 1)
    )
    assert server.call(len, server.agent.server.replay) == 0  # nothing decided before is reused
