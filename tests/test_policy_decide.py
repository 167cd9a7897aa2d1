"""The policy decision: precedence tables, overrides, schedules, SafeSearch, canaries, devices,
next_change and ttl_cap, over a real DomainIndex compiled from list files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent.policy import Decision, build_snapshot, decide_for_client
from agent.policy import decide as decide_policy  # `decide` below is the tests' shorthand
from agent.policy.model import Device, Override, Profile, Rule, Schedule
from tests.policy_fixtures import (
    CATALOGUE,
    CRITERIA,
    DAD,
    DEFAULT,
    FAMILY,
    HCM,
    LAN,
    LINH,
    MINH,
    NOW,
    build_test_index,
    family_policy,
    q,
)

A, AAAA, MX, TXT, HTTPS = 1, 28, 15, 16, 65
EVERY_DAY = frozenset(range(7))
SAT = 5


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    ix = build_test_index(tmp_path_factory.mktemp("policy"))
    yield ix
    ix.close()


@pytest.fixture
def snap(index):
    def make(**changes):
        return build_snapshot(family_policy(**changes), CRITERIA, index, CATALOGUE, "test")

    return make


def decide(snapshot, name, profile, now=NOW, qtype=A) -> Decision:
    return decide_policy(q(name), qtype, profile, now, snapshot)


def hm(h: int, m: int = 0, day: int = 28) -> datetime:
    """A time on Saturday 2026-11-28 (or another day of that week) in Vietnam."""
    return datetime(2026, 11, day, h, m, tzinfo=HCM)


# -- categories by band ----------------------------------------------------------------------

ALL = ("lan", "minh", "linh", "dad", "default")
ADULT = "category=adult min_age=18+"
GAMES12 = "category=online_games min_age=12+"
GAMES18 = "category=online_games min_age=18+"
SEXED = "allowlist=sex_education"

# fmt: off
CATEGORY_TABLE = [
    # name, {profile id: expected reason}
    ("evil.example", dict.fromkeys(ALL, "always=malware")),
    ("x.adultsite.example", {"lan": ADULT, "minh": ADULT, "linh": ADULT, "dad": "default"}),
    # the sex_education (12+) allow list beats adult from 12 on, never for a 9-year-old
    ("health.adultsite.example", {"lan": ADULT, "minh": SEXED, "linh": SEXED, "dad": SEXED}),
    ("game.example", {"lan": GAMES12, "minh": "default", "dad": "default"}),
    # a list with its own age: online_games@18+
    ("battle.example", {"lan": GAMES18, "minh": GAMES18, "linh": GAMES18, "dad": "default"}),
    # the most specific suffix is online_games (12+), a parent domain is social_networks (16+)
    ("play.social.example", {"lan": GAMES12, "minh": "category=social_networks min_age=16+",
                             "linh": "default"}),
    ("video.example", {"lan": "default", "minh": "default"}),  # 00+: never blocked by age
    ("ads.example", {"lan": "default", "dad": "default"}),  # off: never blocked by age
    ("mystery.example", {"lan": "category=mystery min_age=18+", "dad": "default"}),  # unknown: 18+
    ("example.org", {"lan": "default", "dad": "default"}),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "profile", "reason"),
    [(n, p, r) for n, table in CATEGORY_TABLE for p, r in table.items()],
)
def test_categories_by_band(snap, name, profile, reason):
    s = snap()
    d = decide(s, name, s.policy.profile(profile))
    assert d.reason == reason
    allowed = reason == "default" or reason.startswith("allowlist")
    assert d.action == ("allow" if allowed else "block")
    assert d.profile == profile


def test_a_domain_on_both_an_allow_and_a_block_list(snap):
    s = snap()
    assert decide(s, "sexed.example", MINH).reason == SEXED
    assert decide(s, "sexed.example", LAN).reason == ADULT  # the allow list applies from 12


def test_category_block_names_its_list_and_age(snap):
    d = decide(snap(), "www.battle.example", LAN)
    assert (d.category, d.min_age, d.band) == ("online_games", "18+", "00+")
    assert d.match is not None and d.match.listed == "battle.example"
    assert d.match.sources == ("test/online_games@18+.block.txt",)
    text = d.explain()
    assert "profile lan (00+)" in text and "online_games is for 18+" in text
    assert "test/online_games@18+.block.txt" in text


# fmt: off
@pytest.mark.parametrize(
    ("choices", "name", "profile", "reason"),
    [
        ({"video_streaming": "block"}, "video.example", MINH, "category=video_streaming choice=block"),
        ({"ads_trackers": "block"}, "ads.example", MINH, "category=ads_trackers choice=block"),
        ({"online_games": "allow"}, "game.example", LAN, "default"),
        ({"online_games": "allow"}, "battle.example", LAN, "default"),  # the id covers id@band
        ({"adult": "allow"}, "adultsite.example", MINH, "default"),
        ({"malware": "allow"}, "evil.example", MINH, "always=malware"),  # never loosened
        ({"sex_education": "allow"}, "health.adultsite.example", LAN, SEXED),
        ({"sex_education": "block"}, "health.adultsite.example", MINH, ADULT),
    ],
)
# fmt: on
def test_parent_choices_per_profile(snap, choices, name, profile, reason):
    changed = replace(profile, categories=choices)
    s = snap(profiles=tuple(changed if p.id == profile.id else p for p in FAMILY))
    assert decide(s, name, changed).reason == reason


def test_band_follows_the_birthday(snap):
    s = snap()
    # Minh (born May 2012) turns 16 on 2028-05-01 in Vietnam; Lan (March 2017) 12 on 2029-03-01.
    before = datetime(2028, 4, 30, 23, 59, tzinfo=HCM)
    after = datetime(2028, 5, 1, 0, 0, tzinfo=HCM)
    social16 = "category=social_networks min_age=16+"
    assert decide(s, "play.social.example", MINH, before).reason == social16
    assert decide(s, "play.social.example", MINH, after).reason == "default"
    assert decide(s, "game.example", LAN, datetime(2029, 2, 28, 23, 59, tzinfo=HCM)).blocked
    assert not decide(s, "game.example", LAN, datetime(2029, 3, 1, tzinfo=HCM)).blocked
    assert decide(s, "game.example", LAN, after).band == "00+"


# -- precedence: every pair ------------------------------------------------------------------

PAUSE_NOW = Override("stop", "lan", "pause", hm(9), hm(11), note="dinner")
BEDTIME = Schedule("bed", "lan", "Bedtime", EVERY_DAY, "09:00", "11:00", "internet_off")


def reward(**what) -> dict:
    """Lan gets a reward all Saturday."""
    return {"overrides": (Override("r1", "lan", "reward", hm(0), hm(23, 59), **what),)}


def lan(**settings) -> dict:
    """Lan's profile with other settings."""
    return {"profiles": tuple(replace(LAN, **settings) if p is LAN else p for p in FAMILY)}


def rules(*items: tuple) -> dict:
    return {"rules": tuple(Rule(*item) for item in items)}


def homework(**what) -> dict:
    hw = Schedule("hw", "lan", "Homework", EVERY_DAY, "09:00", "11:00", "block", **what)
    return {"schedules": (hw,)}


def case(cid, changes, name, action, reason, answer="", qtype=A):
    return pytest.param(changes, name, qtype, action, reason, answer, id=cid)


BED = {"schedules": (BEDTIME,)}
GAMES = frozenset({"online_games"})

# fmt: off
PRECEDENCE = [
    # always beats everything below it
    case("always>bypass", {}, "proxy.evil.example", "block", "always=malware"),
    case("always>reward", reward(domains=frozenset({"evil.example"})), "evil.example", "block", "always=malware"),
    case("always>reward-category", reward(categories=GAMES), "bad.play.game.example", "block", "always=malware"),
    case("always>rule", rules(("evil.example", "allow", "lan")), "evil.example", "block", "always=malware"),
    case("always>everyone-rule", rules(("evil.example", "allow")), "evil.example", "block", "always=malware"),
    case("always>schedule", BED, "evil.example", "block", "always=malware"),
    case("always>service", lan(services=frozenset({"tiktok"})), "x.bad.tiktokcdn.com", "block", "always=malware"),
    case("always>allowlist-mode", lan(allowlist_mode=True), "evil.example", "block", "always=malware"),
    # bypass defaults beat overrides, rules and the rest
    case("bypass>pause", {"overrides": (PAUSE_NOW,)}, "use-application-dns.net", "block", "bypass=doh-canary", "nxdomain"),
    case("bypass>reward", reward(domains=frozenset({"vpn.example"})), "vpn.example", "block", "bypass=filter_bypass"),
    case("bypass>rule", rules(("mask.icloud.com", "allow", "lan")), "mask.icloud.com", "block", "bypass=private-relay", "nxdomain"),
    case("bypass>everyone-rule", rules(("resolver.arpa", "allow")), "_dns.resolver.arpa", "block", "bypass=resolver-discovery", "nodata"),
    case("bypass>schedule", BED, "mask-h2.icloud.com", "block", "bypass=private-relay", "nxdomain"),
    case("bypass>category-choice", lan(categories={"filter_bypass": "allow"}), "vpn.example", "block", "bypass=filter_bypass"),
    case("bypass>allowlist-mode", lan(allowlist_mode=True), "use-application-dns.net", "block", "bypass=doh-canary", "nxdomain"),
    # overrides beat rules, schedules, services, categories
    case("pause>rule", {"overrides": (PAUSE_NOW,), **rules(("example.org", "allow", "lan"))}, "example.org", "block", "override=pause:stop"),
    case("reward>rule", {**reward(domains=frozenset({"casino.example"})), **rules(("casino.example", "block", "lan"))}, "casino.example", "allow", "override=reward:r1"),
    case("reward>schedule", {**reward(services=frozenset({"youtube"})), **BED}, "youtube.com", "allow", "override=reward:r1"),
    case("reward>service", {**reward(services=frozenset({"tiktok"})), **lan(services=frozenset({"tiktok"}))}, "tiktok.com", "allow", "override=reward:r1"),
    case("reward>category", reward(categories=GAMES), "game.example", "allow", "override=reward:r1"),
    case("reward-not-other-category", reward(categories=GAMES), "play.social.example", "block", GAMES12),
    case("reward>allowlist-mode", {**reward(categories=GAMES), **lan(allowlist_mode=True)}, "game.example", "allow", "override=reward:r1"),
    case("pause>reward", {"overrides": (PAUSE_NOW, *reward(categories=GAMES)["overrides"])}, "game.example", "block", "override=pause:stop"),
    case("reward-then-safesearch", reward(domains=frozenset({"google.com"})), "www.google.com", "rewrite", "safesearch=google"),
    # rules beat schedules, services, categories; the profile's beat everyone's
    case("rule>schedule", {**BED, **rules(("wiki.example", "allow", "lan"))}, "en.wiki.example", "allow", "rule=allow:wiki.example"),
    case("everyone-rule>schedule", {**BED, **rules(("school.example", "allow"))}, "school.example", "allow", "rule=allow:school.example"),
    case("rule>service", {**lan(services=frozenset({"youtube"})), **rules(("youtube.com", "allow", "lan"))}, "youtube.com", "allow", "rule=allow:youtube.com"),
    case("rule>category", rules(("game.example", "allow", "lan")), "game.example", "allow", "rule=allow:game.example"),
    case("everyone-rule>category", rules(("casino.example", "allow")), "casino.example", "allow", "rule=allow:casino.example"),
    case("block-rule", rules(("example.org", "block", "lan")), "www.example.org", "block", "rule=block:example.org"),
    case("profile-rule>everyone-rule", rules(("social.example", "block"), ("social.example", "allow", "lan")), "social.example", "allow", "rule=allow:social.example"),
    case("profile-rule-less-specific>everyone", rules(("www.social.example", "allow"), ("social.example", "block", "lan")), "www.social.example", "block", "rule=block:social.example"),
    case("most-specific-rule", rules(("adultsite.example", "block", "lan"), ("www.adultsite.example", "allow", "lan")), "www.adultsite.example", "allow", "rule=allow:www.adultsite.example"),
    case("equal-specificity-block-wins", rules(("example.org", "allow", "lan"), ("example.org", "block", "lan")), "example.org", "block", "rule=block:example.org"),
    case("equal-specificity-block-wins-2", rules(("example.org", "block"), ("example.org", "allow")), "example.org", "block", "rule=block:example.org"),
    case("other-profile-rule-ignored", rules(("game.example", "allow", "minh")), "game.example", "block", GAMES12),
    # schedules beat services and categories
    case("schedule>service", {**BED, **lan(services=frozenset({"tiktok"}))}, "tiktok.com", "block", "schedule=bed"),
    case("schedule>default", BED, "example.org", "block", "schedule=bed"),
    case("schedule>category-choice", {**homework(categories=GAMES), **lan(categories={"online_games": "allow"})}, "game.example", "block", "schedule=hw"),
    case("schedule>allowlist-mode", {**BED, **lan(allowlist_mode=True)}, "example.org", "block", "schedule=bed"),
    case("bedtime-lets-allow-categories", {**BED, **lan(categories={"video_streaming": "allow"})}, "video.example", "allow", "default"),
    case("homework-blocks-categories", homework(categories=frozenset({"video_streaming"})), "video.example", "block", "schedule=hw"),
    case("homework-blocks-services", homework(services=frozenset({"roblox"})), "www.roblox.com", "block", "schedule=hw"),
    case("homework-leaves-the-rest", homework(services=frozenset({"roblox"})), "example.org", "allow", "default"),
    # services beat categories
    case("service>category", lan(services=frozenset({"tiktok"})), "www.tiktok.com", "block", "service=tiktok"),
    case("service-unlisted-domain", lan(services=frozenset({"tiktok"})), "v16.tiktokcdn.com", "block", "service=tiktok"),
    case("service>category-choice", lan(services=frozenset({"roblox"}), categories={"online_games": "allow"}), "roblox.com", "block", "service=roblox"),
    case("service>allowlist-mode", lan(services=frozenset({"tiktok"}), allowlist_mode=True), "tiktok.com", "block", "service=tiktok"),
    # categories beat allow-list mode; allow lists, rules and "allow" categories pass it
    case("category>allowlist-mode", lan(allowlist_mode=True), "casino.example", "block", "category=gambling min_age=18+"),
    case("allowlist-mode", lan(allowlist_mode=True), "example.org", "block", "allowlist-mode"),
    case("allowlist-mode-allow-category", lan(allowlist_mode=True, categories={"video_streaming": "allow"}), "video.example", "allow", "category=video_streaming choice=allow"),
    case("allowlist-mode-rule", {**lan(allowlist_mode=True), **rules(("school.example", "allow", "lan"))}, "school.example", "allow", "rule=allow:school.example"),
    case("allowlist-mode-safesearch", {**lan(allowlist_mode=True), **rules(("google.com", "allow", "lan"))}, "www.google.com", "rewrite", "safesearch=google"),
]
# fmt: on


@pytest.mark.parametrize(("changes", "name", "qtype", "action", "reason", "answer"), PRECEDENCE)
def test_precedence(snap, changes, name, qtype, action, reason, answer):
    s = snap(**changes)
    assert s.warnings == ()
    d = decide(s, name, s.policy.profile("lan"), hm(10), qtype)
    assert (d.action, d.reason, d.answer) == (action, reason, answer)
    assert d.blocked is (action == "block")
    assert d.explain()


# -- overrides over time ---------------------------------------------------------------------


def test_reward_ends_by_itself(snap):
    games = Override(
        "sat-games",
        "lan",
        "reward",
        hm(10),
        hm(11),
        categories=frozenset({"online_games"}),
        note="extra hour",
    )
    s = snap(overrides=(games,))
    assert decide(s, "game.example", LAN, hm(9, 59)).reason == "category=online_games min_age=12+"
    d = decide(s, "game.example", LAN, hm(10))
    assert (d.action, d.reason, d.detail) == ("allow", "override=reward:sat-games", "extra hour")
    assert "a reward allows it" in d.explain() and "extra hour" in d.explain()
    assert decide(s, "game.example", LAN, hm(10, 59)).action == "allow"
    assert decide(s, "game.example", LAN, hm(11)).reason == "category=online_games min_age=12+"
    # Asked again for an earlier instant (explain --at): the memo does not leak across times.
    assert decide(s, "game.example", LAN, hm(10, 30)).action == "allow"
    assert decide(s, "game.example", MINH, hm(10, 30)).reason == "default"  # Minh's own policy


def test_pause_blocks_everything_until_it_ends(snap):
    s = snap(overrides=(Override("p", "minh", "pause", hm(10), hm(10, 30)),))
    assert decide(s, "example.org", MINH, hm(9, 59)).action == "allow"
    d = decide(s, "example.org", MINH, hm(10))
    assert (d.action, d.reason, d.answer) == ("block", "override=pause:p", "")
    assert decide(s, "www.google.com", MINH, hm(10, 29)).action == "block"
    assert decide(s, "example.org", MINH, hm(10, 30)).action == "allow"
    assert decide(s, "example.org", LAN, hm(10)).action == "allow"  # only Minh is paused


def test_schedule_in_the_decision(snap):
    nights = frozenset({6, 0, 1, 2, 3})  # Sunday to Thursday evenings
    bed = Schedule(
        "school-nights", "minh", "School nights", nights, "21:30", "06:30", "internet_off"
    )
    s = snap(schedules=(bed,))
    sunday_evening = datetime(2026, 11, 29, 21, 30, tzinfo=HCM)
    monday_morning = datetime(2026, 11, 30, 6, 29, tzinfo=HCM)
    assert decide(s, "example.org", MINH, sunday_evening - timedelta(minutes=1)).action == "allow"
    d = decide(s, "example.org", MINH, sunday_evening)
    assert (d.reason, d.detail) == ("schedule=school-nights", "School nights")
    assert "School nights" in d.explain()
    assert decide(s, "example.org", MINH, monday_morning).blocked
    assert not decide(s, "example.org", MINH, monday_morning + timedelta(minutes=1)).blocked
    friday_night = datetime(2026, 12, 5, 1, 0, tzinfo=HCM)
    assert not decide(s, "example.org", MINH, friday_night).blocked
    assert not decide(s, "example.org", LAN, sunday_evening).blocked


# -- SafeSearch ------------------------------------------------------------------------------

# fmt: off
SAFESEARCH = [
    # profile, host, qtype, expected target ("" = allowed as is)
    (LAN, "www.google.com", A, "forcesafesearch.google.com"),
    (LAN, "www.google.com.vn", AAAA, "forcesafesearch.google.com"),
    (LAN, "google.com", HTTPS, "forcesafesearch.google.com"),
    (LAN, "www.google.com", MX, ""),
    (LAN, "www.google.com", TXT, ""),
    (LAN, "mail.google.com", A, ""),  # exact hosts only
    (LAN, "www.youtube.com", A, "restrict.youtube.com"),  # 00+: strict
    (MINH, "www.youtube.com", A, "restrictmoderate.youtube.com"),  # 12+: moderate
    (LINH, "m.youtube.com", HTTPS, "restrictmoderate.youtube.com"),  # 16+: moderate
    (DEFAULT, "www.youtube.com", AAAA, "restrictmoderate.youtube.com"),
    (DAD, "www.youtube.com", A, ""),  # 18+: off
    (DAD, "www.google.com", A, ""),
    (MINH, "www.bing.com", A, "strict.bing.com"),
    (replace(MINH, youtube="strict"), "www.youtube.com", A, "restrict.youtube.com"),
    (replace(MINH, youtube="off"), "www.youtube.com", A, ""),
    (replace(MINH, safesearch="off"), "www.google.com", A, ""),
    (replace(DAD, safesearch="on"), "www.google.com", A, "forcesafesearch.google.com"),
    (replace(DAD, youtube="moderate"), "www.youtube.com", A, "restrictmoderate.youtube.com"),
]
# fmt: on


@pytest.mark.parametrize(("profile", "host", "qtype", "target"), SAFESEARCH)
def test_safesearch(snap, profile, host, qtype, target):
    s = snap(profiles=tuple(profile if p.id == profile.id else p for p in FAMILY))
    d = decide(s, host, profile, NOW, qtype)
    if target:
        assert (d.action, d.target) == ("rewrite", target)
        assert d.reason.startswith("safesearch=")
        assert target in d.explain()
    else:
        assert (d.action, d.target) == ("allow", "")


def test_a_blocked_safesearch_host_stays_blocked(snap):
    s = snap(**lan(services=frozenset({"youtube"})))
    assert decide(s, "www.youtube.com", s.policy.profile("lan")).reason == "service=youtube"


# -- bypass defaults ---------------------------------------------------------------------------

CANARIES = [
    ("use-application-dns.net", "block", "bypass=doh-canary", "nxdomain"),
    ("mask.icloud.com", "block", "bypass=private-relay", "nxdomain"),
    ("mask-h2.icloud.com", "block", "bypass=private-relay", "nxdomain"),
    ("resolver.arpa", "block", "bypass=resolver-discovery", "nodata"),
    ("_dns.resolver.arpa", "block", "bypass=resolver-discovery", "nodata"),
    ("vpn.example", "block", "bypass=filter_bypass", ""),
    ("www.use-application-dns.net", "allow", "default", ""),  # the canary is the exact name
    ("x.mask.icloud.com", "allow", "default", ""),
    ("icloud.com", "allow", "default", ""),
]


@pytest.mark.parametrize(("name", "action", "reason", "answer"), CANARIES)
@pytest.mark.parametrize("profile", [LAN, MINH, LINH, DEFAULT])
def test_bypass_defaults_for_children(snap, profile, name, action, reason, answer):
    d = decide(snap(), name, profile)
    assert (d.action, d.reason, d.answer) == (action, reason, answer)


@pytest.mark.parametrize("name", [c[0] for c in CANARIES])
def test_no_bypass_defaults_for_adults_or_when_off(snap, name):
    s = snap(**lan(bypass_defaults=False))
    for profile in (DAD, s.policy.profile("lan")):
        d = decide(s, name, profile)
        assert d.answer == ""
        assert not d.reason.startswith("bypass="), (profile.id, d.reason)
    # Without the defaults, filter_bypass is an ordinary 18+ category for Lan.
    vpn = decide(s, "vpn.example", s.policy.profile("lan"))
    assert vpn.reason == "category=filter_bypass min_age=18+"


# -- devices -----------------------------------------------------------------------------------

DEVICE_TABLE = [
    # ip, mac, expected profile id
    ("127.0.0.2", None, "lan"),  # exact IP
    # A known MAC beats an IP: Lan's tablet (by MAC) taking Minh's static IP stays Lan's.
    ("127.0.0.3", "aa:bb:cc:dd:ee:01", "lan"),
    ("127.0.0.3", "11:22:33:44:55:66", "minh"),  # an unknown MAC: the IP decides
    ("127.0.0.3", None, "minh"),
    ("127.0.0.9", "aa:bb:cc:dd:ee:01", "lan"),  # MAC
    ("127.0.0.9", "AA-BB-CC-DD-EE-01", "lan"),  # MAC in another spelling
    ("10.7.1.5", "aa:bb:cc:dd:ee:01", "lan"),  # MAC beats CIDR
    ("10.7.1.5", None, "linh"),  # the longest CIDR: 10.7.1.0/24 over 10.7.0.0/16 and 10.0.0.0/8
    ("10.7.2.5", None, "minh"),  # 10.7.0.0/16
    ("10.9.9.9", None, "dad"),  # 10.0.0.0/8
    ("::ffff:127.0.0.2", None, "lan"),  # IPv4-mapped IPv6
    ("192.168.1.50", None, "default"),  # unknown
    ("192.168.1.50", "11:22:33:44:55:66", "default"),
    ("not an ip", None, "default"),
    ("fd00::1", None, "default"),
]


@pytest.mark.parametrize(("ip", "mac", "expected"), DEVICE_TABLE)
def test_profile_for(snap, ip, mac, expected):
    assert snap().profile_for(ip, mac).id == expected


def test_decide_for_client_is_profile_for_and_decide(snap):
    s = snap()
    assert decide_for_client(q("game.example"), A, "127.0.0.2", None, NOW, s).reason == (
        "category=online_games min_age=12+"
    )
    assert decide_for_client(q("game.example"), A, "127.0.0.3", None, NOW, s).reason == "default"
    assert decide_for_client(q("casino.example"), A, "10.9.9.9", None, NOW, s).reason == "default"
    d = decide_for_client(q("casino.example"), A, "192.168.1.50", None, NOW, s)
    assert (d.profile, d.reason) == ("default", "category=gambling min_age=18+")


def test_unknown_profile_is_decided_as_the_default(snap):
    stranger = Profile("nobody", "Nobody", kind="adult")
    d = decide(snap(), "casino.example", stranger)
    assert (d.profile, d.reason) == ("default", "category=gambling min_age=18+")


def test_policy_mistakes_are_skipped_and_reported(index):
    from agent.policy.model import Policy

    naive = datetime(2026, 11, 28, 9, 0)
    # fmt: off
    policy = Policy(
        profiles=(LAN, Profile("odd", "Odd", birth=(2015, 13)), Profile("odd2", "Odd", band="13+")),
        devices=(Device("x", "X", "ip", "127.0.0.2", "ghost"), Device("y", "Y", "cidr", "10.0.0.0/99", "lan")),
        rules=(Rule("not a domain!", "block"), Rule("casino.example", "allow", "ghost")),
        schedules=(Schedule("s", "ghost", "S", EVERY_DAY, "09:00", "10:00", "internet_off"),
                   Schedule("t", "lan", "T", EVERY_DAY, "9:00", "10:00", "internet_off")),
        overrides=(Override("o", "lan", "pause", naive, naive + timedelta(hours=1)),
                   Override("o2", "lan", "pause", hm(11), hm(10))),
        default_profile="missing",
        timezone="Mars/Olympus",
    )
    # fmt: on
    s = build_snapshot(policy, CRITERIA, index, CATALOGUE)
    assert len(s.warnings) == 12, s.warnings
    assert s.profile_for("127.0.0.2").id == "missing"  # the built-in 12+ default
    assert decide(s, "casino.example", s.profile_for("127.0.0.2")).blocked
    d = decide(s, "game.example", LAN)
    assert d.reason == "category=online_games min_age=12+"  # no pause, no schedule
    assert s.next_change(NOW) == datetime(2029, 3, 1, tzinfo=HCM)  # only Lan's 12th birthday
    # Bad ages fall back to the strictest band rather than to an adult's.
    assert decide(s, "game.example", s.policy.profile("odd")).band == "00+"
    assert decide(s, "game.example", s.policy.profile("odd2")).band == "00+"


def test_with_the_bundled_catalogue(index):
    from agent.policy.catalogue import load_catalogue

    s = build_snapshot(
        family_policy(**lan(services=frozenset({"tiktok"}))), CRITERIA, index, load_catalogue()
    )
    assert s.warnings == ()
    d = decide(s, "www.google.com.vn", LAN, qtype=AAAA)
    assert (d.action, d.target) == ("rewrite", "forcesafesearch.google.com")
    d = decide(s, "www.tiktok.com", s.policy.profile("lan"))
    assert (d.reason, d.detail) == ("service=tiktok", "TikTok")
    assert "the service TikTok is blocked" in d.explain()
    assert decide(s, "www.youtube.com", LAN).target == "restrict.youtube.com"
    assert decide(s, "www.youtube.com", MINH).target == "restrictmoderate.youtube.com"
    assert decide(s, "www.youtube.com", DAD).action == "allow"


def test_no_catalogue(index):
    s = build_snapshot(family_policy(), CRITERIA, index, None)
    assert decide(s, "www.google.com", LAN).action == "allow"


# -- time: next_change, ttl_cap ----------------------------------------------------------------


def test_next_change_without_schedules_is_the_next_birthday(snap):
    s = snap()
    # Lan turns 12 on 2029-03-01, Minh 16 on 2028-05-01: Minh's comes first.
    assert s.next_change(NOW) == datetime(2028, 5, 1, tzinfo=HCM)
    assert s.next_change(NOW).tzinfo is UTC
    only_fixed = snap(profiles=(LINH, DAD, DEFAULT))
    assert only_fixed.next_change(NOW) is None


@pytest.mark.parametrize(
    ("changes", "now", "expected"),
    [
        ({"schedules": (BEDTIME,)}, hm(8), hm(9)),
        ({"schedules": (BEDTIME,)}, hm(9), hm(11)),
        ({"schedules": (BEDTIME,)}, hm(10, 59), hm(11)),
        ({"schedules": (BEDTIME,)}, hm(11), hm(9, day=29)),
        ({"overrides": (PAUSE_NOW,)}, hm(8), hm(9)),
        ({"overrides": (PAUSE_NOW,)}, hm(9, 30), hm(11)),
        ({"overrides": (PAUSE_NOW,)}, hm(12), datetime(2028, 5, 1, tzinfo=HCM)),
        ({"overrides": (PAUSE_NOW,), "schedules": (BEDTIME,)}, hm(9, 30), hm(11)),
        (
            {"overrides": (Override("s", "dad", "pause", hm(9, 45), hm(9, 50)),), **BED},
            hm(9, 30),
            hm(9, 45),
        ),
    ],
)
def test_next_change(snap, changes, now, expected):
    assert snap(**changes).next_change(now) == expected


def test_decisions_change_exactly_at_next_change(snap):
    """Walk a day: between two next_change instants every decision stays the same."""
    hw = Schedule(
        "hw", "minh", "Homework", frozenset({SAT}), "14:00", "16:00", "block", categories=GAMES
    )
    games = Override("g", "lan", "reward", hm(12), hm(13), categories=GAMES)
    s = snap(schedules=(BEDTIME, hw), overrides=(games,))
    names = ["example.org", "game.example", "play.social.example", "www.youtube.com"]

    def all_decisions(t):
        return [decide(s, n, p, t).reason for n in names for p in (LAN, MINH)]

    t = hm(0)
    changes = 0
    while t < hm(23, 59):
        nxt = s.next_change(t)
        before = all_decisions(t)
        probe = t + (nxt - t) / 2
        assert all_decisions(probe) == before
        assert all_decisions(nxt - timedelta(seconds=1)) == before
        changes += all_decisions(nxt) != before
        t = nxt
    assert changes == 7  # bedtime on/off, reward on/off, homework on/off, Sunday's bedtime


def test_ttl_cap(snap):
    s = snap(schedules=(BEDTIME,), overrides=(Override("p", "dad", "pause", hm(9), hm(11)),))
    assert s.ttl_cap("lan") == 300
    assert s.ttl_cap("dad") == 300
    assert s.ttl_cap("dad", now=hm(10)) == 300
    assert s.ttl_cap("dad", now=hm(11)) is None  # an adult's override has ended
    assert s.ttl_cap("ghost") is None


@pytest.mark.parametrize(
    ("profile", "now", "cap"),
    [
        # Every child band is capped, schedules or not, so a "pause now" acts within the cap.
        ("lan", NOW, 300),  # 00+
        ("minh", NOW, 300),  # 12+
        ("linh", NOW, 300),  # 16+
        ("default", NOW, 300),  # the default profile is a 12+ child
        ("dad", NOW, None),  # 18+, no schedule or override
        ("minh", datetime(2030, 5, 1, tzinfo=HCM), None),  # Minh is 18 from May 2030
        ("minh", datetime(2030, 4, 30, 23, 59, tzinfo=HCM), 300),
        ("minh", None, 300),  # without an instant: a child at some time
    ],
)
def test_ttl_cap_for_every_child_band(snap, profile, now, cap):
    s = snap()
    assert (s.policy.schedules, s.policy.overrides) == ((), ())
    assert s.ttl_cap(profile, now) == cap
    from agent.policy.model import Policy

    short = Policy(profiles=FAMILY, schedules=(BEDTIME,), schedule_ttl_cap=60)
    assert build_snapshot(short, CRITERIA, s.index, CATALOGUE).ttl_cap("lan") == 60


# -- cost: decisions are reused, not rebuilt -----------------------------------------------------


def test_decisions_without_a_match_are_shared_objects(snap):
    s = snap(schedules=(BEDTIME,))
    assert decide(s, "example.org", MINH) is decide(s, "example.net", MINH)
    assert decide(s, "example.org", LAN, hm(10)) is decide(s, "example.net", LAN, hm(10, 30))
    assert decide(s, "www.google.com", MINH) is decide(s, "google.com", MINH, qtype=HTTPS)
    assert decide(s, "example.org", MINH) is not decide(s, "example.org", LAN)


def test_bad_wire_names_do_not_raise(snap):
    s = snap()
    for raw in (b"\x00", b"\x05ab\x00", b"\x3fabc", b"\x03abc\x00trailing"):
        assert decide_policy(raw, A, MINH, NOW, s).action in ("allow", "block")


# -- a list's own age cannot switch protection off -----------------------------------------------


def test_a_lists_own_age_cannot_switch_protection_off(tmp_path):
    lists = {
        "malware@18+": ("block", ("evil18.example",)),
        "malware@off": ("block", ("eviloff.example",)),
        "adult@off": ("block", ("porn.example",)),
        "ads_trackers@off": ("block", ("ads.example",)),  # off in the default table: stays off
        "sex_education@off": ("allow", ("health.porn.example",)),  # an "off" allow list: off
        "social_networks@12+": ("block", ("social.example",)),  # a re-rating that is not off
    }
    index = build_test_index(tmp_path, lists)
    try:
        s = build_snapshot(family_policy(), CRITERIA, index, CATALOGUE)
        for name in ("evil18.example", "eviloff.example"):
            assert decide(s, name, DAD).reason == "always=malware"
        assert decide(s, "porn.example", MINH).reason == "category=adult min_age=18+"
        assert decide(s, "health.porn.example", MINH).reason == "category=adult min_age=18+"
        assert decide(s, "porn.example", DAD).reason == "default"
        assert decide(s, "ads.example", LAN).reason == "default"
        assert decide(s, "social.example", LAN).reason == "category=social_networks min_age=12+"
        assert decide(s, "social.example", MINH).reason == "default"
        assert s.warnings == (
            "lists labelled adult@off: a feed may not switch adult off; its block lists are "
            "blocked as adult (18+), its allow lists stay off",
            "lists labelled sex_education@off: a feed may not switch sex_education off; its "
            "block lists are blocked as sex_education (12+), its allow lists stay off",
        )
    finally:
        index.close()


# Every engine of the bundled SafeSearch data, through decide (the index in these tests does not
# list search_unsafe, so Ecosia and Yandex are allowed and rewritten here).
@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("www.bing.com", "strict.bing.com"),
        ("duckduckgo.com", "safe.duckduckgo.com"),
        ("html.duckduckgo.com", "safe.duckduckgo.com"),
        ("pixabay.com", "safesearch.pixabay.com"),
        ("www.ecosia.org", "strict-safe-search.ecosia.org"),
        ("yandex.ru", "familysearch.yandex.ru"),
        ("www.yandex.com.tr", "familysearch.yandex.ru"),
        ("ya.ru", "familysearch.yandex.ru"),
    ],
)
def test_every_bundled_safesearch_engine(index, host, target):
    from agent.policy.catalogue import load_catalogue

    s = build_snapshot(family_policy(), CRITERIA, index, load_catalogue())
    for qtype in (A, AAAA, HTTPS):
        d = decide(s, host, MINH, qtype=qtype)
        assert (d.action, d.target) == ("rewrite", target), (host, qtype)
    assert decide(s, host, DAD).action == "allow"  # 18+: off
    assert decide(s, "mail." + host.removeprefix("www."), MINH).action == "allow"
