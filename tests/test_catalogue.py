"""The bundled catalogue: blocked services and SafeSearch hosts (agent/policy/data)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from agent.feed.categories import DEFAULT_CATEGORY_IDS
from agent.index import normalize_domain
from agent.policy.catalogue import (
    SAFESEARCH_FILE,
    SERVICES_FILE,
    CatalogueError,
    load_catalogue,
    parse_catalogue,
)

MUST_INCLUDE = (
    "tiktok", "youtube", "facebook", "instagram", "zalo", "messenger", "discord", "roblox",
    "minecraft", "fortnite", "free_fire", "garena", "lien_quan", "telegram", "snapchat", "x",
    "netflix", "twitch", "steam", "chatgpt", "fpt_play", "vieon", "tv360", "nhaccuatui",
    "zing_mp3", "whatsapp", "reddit", "pinterest", "threads", "spotify", "disney_plus",
    "epic_games", "pubg", "hoyoverse", "mobile_legends", "riot_games", "tinder", "character_ai",
    "gemini", "claude", "copilot", "bilibili", "douyin", "likee", "bigo_live", "random_chat",
)  # fmt: skip

# Shared infrastructure: blocking any of these (or a parent of them) breaks unrelated apps.
NEVER_WHOLE = (
    "googleapis.com", "gstatic.com", "googleusercontent.com", "ggpht.com", "google.com",
    "google.com.vn", "fbcdn.net", "akamaized.net", "cloudfront.net", "amazonaws.com",
    "microsoft.com", "live.com", "apple.com", "icloud.com", "openai.com", "anthropic.com",
    "bing.com", "qq.com", "zadn.vn", "zing.vn", "fpt.vn", "viettel.vn", "amazon.com",
)  # fmt: skip

# A service's host inside another service's domain: the inner app depends on the outer one.
EXPECTED_NESTING = {
    ("fortnite", "epic_games"),
    ("free_fire", "garena"),
    ("lien_quan", "garena"),
}


def _read(name: str) -> str:
    return (resources.files("agent.policy") / "data" / name).read_text(encoding="utf-8")


def _covered(name: str, domains) -> bool:
    return any(name == d or name.endswith("." + d) for d in domains)


@pytest.fixture(scope="module")
def cat():
    return load_catalogue()


def test_loads_once(cat):
    assert load_catalogue() is cat


def test_at_least_40_services_and_the_must_include_ones(cat):
    assert len(cat.services) >= 40
    missing = [s for s in MUST_INCLUDE if s not in cat.services]
    assert not missing


def test_every_service_is_complete(cat):
    for sid, s in cat.services.items():
        assert s.id == sid
        assert s.names.vi.strip() and s.names.en.strip()
        assert s.category in DEFAULT_CATEGORY_IDS
        assert s.domains
        for d in s.domains:
            assert normalize_domain(d) == d, f"{sid}: {d}"
        assert set(s.shared) <= set(s.domains)
        if s.note is not None:
            assert s.note.vi.strip() and s.note.en.strip()


@pytest.mark.parametrize(
    "sid, category",
    [
        ("tiktok", "social_networks"),
        ("roblox", "online_games"),
        ("chatgpt", "ai_chat"),
        ("zalo", "messaging"),
        ("youtube", "video_streaming"),
        ("tinder", "dating"),
        ("random_chat", "stranger_chat"),
    ],
)
def test_categories(cat, sid, category):
    assert cat.services[sid].category == category


def test_no_domain_in_two_services_unless_shared(cat):
    owners: dict[str, list[str]] = {}
    for s in cat.services.values():
        for d in s.domains:
            owners.setdefault(d, []).append(s.id)
    for d, sids in owners.items():
        if len(sids) > 1:
            assert all(d in cat.services[sid].shared for sid in sids), (d, sids)


def test_nesting_between_services_is_only_the_declared_dependencies(cat):
    nested = set()
    for inner in cat.services.values():
        for outer in cat.services.values():
            if inner.id != outer.id and any(
                d.endswith("." + o) for d in inner.domains for o in outer.domains
            ):
                nested.add((inner.id, outer.id))
    assert nested == EXPECTED_NESTING


def test_no_shared_infrastructure_listed_whole(cat):
    for s in cat.services.values():
        for d in s.domains:
            for infra in NEVER_WHOLE:
                assert not _covered(infra, [d]), f"{s.id} lists {d}, which covers {infra}"


def test_youtube_service_covers_what_youtube_needs(cat):
    yt = cat.services["youtube"].domains
    for host in (
        "www.youtube.com",
        "m.youtube.com",
        "youtu.be",
        "i.ytimg.com",
        "rr3---sn-8qj-i5ozr.googlevideo.com",
        "youtubei.googleapis.com",
        "www.youtube-nocookie.com",
        "yt3.ggpht.com",
    ):
        assert _covered(host, yt), host
    for not_youtube in ("www.googleapis.com", "fonts.gstatic.com", "lh3.ggpht.com"):
        assert not _covered(not_youtube, yt)


def test_youtube_safesearch_hosts_are_youtube_service_hosts(cat):
    engine = cat.safesearch["youtube"]
    assert set(engine.hosts) == {
        "www.youtube.com",
        "m.youtube.com",
        "youtubei.googleapis.com",
        "youtube.googleapis.com",
        "www.youtube-nocookie.com",
    }
    for h in engine.hosts:
        assert _covered(h, cat.services["youtube"].domains), h
    assert engine.target("strict") == "restrict.youtube.com"
    assert engine.target("moderate") == "restrictmoderate.youtube.com"
    with pytest.raises(KeyError, match="strict, moderate"):
        engine.target("on")


def test_google_every_country_domain(cat):
    g = cat.safesearch["google"]
    hosts = set(g.hosts)
    for d in ("google.com", "google.com.vn", "google.co.uk", "google.co.jp", "google.cat"):
        assert d in hosts and f"www.{d}" in hosts
    assert len(hosts) >= 2 * 180
    assert g.target("on") == "forcesafesearch.google.com"
    # Exact hosts only: Google's other services stay as they are.
    for other in ("mail.google.com", "maps.google.com", "accounts.google.com"):
        assert cat.safesearch_host(other) is None
    assert cat.safesearch_host("www.google.com.vn") is g


@pytest.mark.parametrize(
    "host, engine, level, target",
    [
        ("www.bing.com", "bing", "on", "strict.bing.com"),
        ("duckduckgo.com", "duckduckgo", "on", "safe.duckduckgo.com"),
        ("www.duckduckgo.com", "duckduckgo", "on", "safe.duckduckgo.com"),
        ("start.duckduckgo.com", "duckduckgo", "on", "safe.duckduckgo.com"),
        ("html.duckduckgo.com", "duckduckgo", "on", "safe.duckduckgo.com"),
        ("pixabay.com", "pixabay", "on", "safesearch.pixabay.com"),
        ("www.ecosia.org", "ecosia", "on", "strict-safe-search.ecosia.org"),
        ("yandex.ru", "yandex", "on", "familysearch.yandex.ru"),
        ("www.yandex.com", "yandex", "on", "familysearch.yandex.ru"),
        ("ya.ru", "yandex", "on", "familysearch.yandex.ru"),
        ("m.youtube.com", "youtube", "strict", "restrict.youtube.com"),
    ],
)
def test_safesearch_targets(cat, host, engine, level, target):
    e = cat.safesearch_host(host)
    assert e is not None and e.id == engine
    assert e.target(level) == target


def test_safesearch_hosts_and_targets_are_normalized_and_unique(cat):
    seen: set[str] = set()
    for e in cat.safesearch.values():
        for h in e.hosts:
            assert normalize_domain(h) == h
            assert h not in seen
            seen.add(h)
        for t in e.targets.values():
            assert normalize_domain(t) == t and t not in e.hosts
    assert set(cat.safesearch) == {
        "google", "youtube", "bing", "duckduckgo", "pixabay", "ecosia", "yandex",
    }  # fmt: skip
    # Safe hosts are never themselves rewritten (that would loop).
    for e in cat.safesearch.values():
        for t in e.targets.values():
            assert cat.safesearch_host(t) is None


def test_catalogue_is_read_only(cat):
    with pytest.raises(TypeError):
        cat.services["evil"] = cat.services["tiktok"]
    with pytest.raises(TypeError):
        cat.safesearch["youtube"].targets["strict"] = "example.com"


# ---------------------------------------------------------------- a bad bundled file is a bug

GOOD_SERVICE = '[[service]]\nid = "a"\nvi = "A"\nen = "A"\ncategory = "online_games"\n'
GOOD_ENGINE = (
    '[[engine]]\nid = "e"\nname = "E"\nhosts = ["www.e.com"]\ntargets = { on = "safe.e.com" }\n'
)


def test_minimal_files_parse():
    c = parse_catalogue(GOOD_SERVICE + 'domains = ["a.com"]\n', GOOD_ENGINE)
    assert c.services["a"].domains == ("a.com",)
    assert c.safesearch["e"].target("on") == "safe.e.com"


@pytest.mark.parametrize(
    "services, message",
    [
        (GOOD_SERVICE + 'domains = ["A.com"]\n', "service[0] (a).domains: 'A.com' is not a normalized"),
        (GOOD_SERVICE + 'domains = ["a.com."]\n', "not a normalized"),
        (GOOD_SERVICE + 'domains = ["*.a.com"]\n', "not a normalized"),
        (GOOD_SERVICE + "domains = []\n", "non-empty list"),
        (GOOD_SERVICE.replace("online_games", "games") + 'domains = ["a.com"]\n', "unknown category id 'games'"),
        (GOOD_SERVICE.replace('"a"', '"A b"', 1) + 'domains = ["a.com"]\n', "expected a slug"),
        (
            GOOD_SERVICE + 'domains = ["a.com"]\n' + GOOD_SERVICE + 'domains = ["b.com"]\n',
            "duplicate service id 'a'",
        ),
        (
            GOOD_SERVICE + 'domains = ["a.com"]\n'
            + GOOD_SERVICE.replace('"a"', '"b"', 1) + 'domains = ["a.com"]\n',
            "'a.com' is also in service 'a'; declare it shared",
        ),
        (GOOD_SERVICE + 'domains = ["a.com"]\nshared = ["b.com"]\n', "not one of this service's domains"),
        (GOOD_SERVICE + 'domains = ["a.com"]\nnote_en = "x"\n', "a note needs both"),
        (GOOD_SERVICE + 'domains = ["a.com"]\ncolour = "red"\n', "unknown field"),
        ("not toml [", "services.toml: not valid TOML"),
        ("", "expected one or more [[service]]"),
    ],
)  # fmt: skip
def test_bad_services_file_raises_clearly(services, message):
    with pytest.raises(CatalogueError, match=re.escape(message)):
        parse_catalogue(services, GOOD_ENGINE)


def test_shared_domain_declared_in_both_is_accepted():
    two = (
        GOOD_SERVICE + 'domains = ["a.com", "login.x.com"]\nshared = ["login.x.com"]\n'
        + GOOD_SERVICE.replace('"a"', '"b"', 1) + 'domains = ["login.x.com"]\nshared = ["login.x.com"]\n'
    )  # fmt: skip
    c = parse_catalogue(two, GOOD_ENGINE)
    assert c.services["b"].shared == ("login.x.com",)


@pytest.mark.parametrize(
    "engines, message",
    [
        (GOOD_ENGINE.replace('on = "safe.e.com"', 'on = "www.e.com"'), "rewrite to itself"),
        (GOOD_ENGINE.replace("on =", "loud ="), "unknown level 'loud'"),
        (GOOD_ENGINE + GOOD_ENGINE.replace('"e"', '"f"', 1), "'www.e.com' is listed twice"),
        (GOOD_ENGINE.replace('hosts = ["www.e.com"]', "hosts = []"), "at least one host"),
        (GOOD_ENGINE.replace('hosts = ["www.e.com"]', 'hosts = []\ndomains = ["e.com"]'), "needs `prefixes`"),
    ],
)  # fmt: skip
def test_bad_safesearch_file_raises_clearly(engines, message):
    with pytest.raises(CatalogueError, match=re.escape(message)):
        parse_catalogue(GOOD_SERVICE + 'domains = ["a.com"]\n', engines)


def test_bundled_files_have_curation_headers():
    for name in (SERVICES_FILE, SAFESEARCH_FILE):
        head = _read(name)[:1500]
        assert "Curated by hand" in head and "2026-11" in head
        assert "Not copied from any third-party list" in head
