"""The hand-curated lists bundled in blocklists/: format, header, names never to block, the
starter lists of the categories that had none (and csam, which never has one), and how the real
policy engine applies them per age band once `safenest run` has built the default feed."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from agent.feed.categories import DEFAULT_CATEGORIES
from agent.feed.default import PUBLISHER_ID
from agent.feed.sync import feeds_in_force
from agent.index import (
    DomainIndex,
    ParseStats,
    build_index,
    bundled_dir,
    read_domains,
    sources_in,
)
from agent.index.sources import CATEGORY_RE
from agent.lists import compile_lists
from tests.policy_fixtures import decide_as

BUNDLED = bundled_dir()
SOURCES = sources_in(BUNDLED)  # the top folder: blocked for every child
AGE_SOURCES = sources_in(BUNDLED / "age")  # applied by the profile's age band
ALL_SOURCES = SOURCES + AGE_SOURCES
EXPECTED_CATEGORIES = {
    "adult",
    "gambling",
    "malware",
    "phishing_scam",
    "weapons_dangerous",
    "hate_extremism",
    "self_harm",
}
EXPECTED_AGE_CATEGORIES = {"violence", "nudity_suggestive", "ads_trackers"}
# Names listed on purpose in two categories' lists (or one under the other's domain). None yet:
# a name belongs to one category, and the policy names that category when it blocks.
DELIBERATE_OVERLAPS: set[str] = set()

# Blocking any of these (or their www.) would break general browsing for a family or a class.
MUST_NEVER_BLOCK = [
    "google.com",
    "google.com.vn",
    "wikipedia.org",
    "gov.vn",
    "apple.com",
    "microsoft.com",
    "github.com",
    "appspot.com",
    "blogspot.com",
    "cloudflare.com",
    "akamaized.net",
    "zalo.me",
]


def test_bundled_dir_is_the_repo_folder():
    assert BUNDLED == Path(__file__).resolve().parent.parent / "blocklists"
    assert BUNDLED.is_dir()
    assert (BUNDLED / "README.md").is_file()
    readme = (BUNDLED / "README.md").read_text()
    assert "<category>.txt" in readme and "<category>.allow.txt" in readme


def test_expected_categories_present():
    cats = {s.category for s in SOURCES if s.kind == "block"}
    assert EXPECTED_CATEGORIES <= cats
    assert all(CATEGORY_RE.fullmatch(s.category) for s in SOURCES)
    assert all(s.label == f"blocklists/{s.path.name}" for s in SOURCES)
    # Every .txt file in the folder follows the naming convention (none silently ignored).
    assert {p.name for p in BUNDLED.glob("*.txt")} == {s.path.name for s in SOURCES}


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: s.label)
def test_file_parses_cleanly(source):
    stats = ParseStats()
    domains = list(read_domains(source.path, stats))
    assert stats.bad == 0, stats.examples
    assert stats.ignored == 0
    assert domains, "an empty list"
    # Bundled lists are plain, lower case, one registrable name a line, no duplicates.
    raw = [ln.strip() for ln in source.path.read_text().splitlines()]
    entries = [ln for ln in raw if ln and not ln.startswith("#")]
    assert entries == domains, "entries must already be in normalized form"
    dups = {d for d in domains if domains.count(d) > 1}
    assert not dups


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: s.label)
def test_header(source):
    lines = source.path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header).lower()
    assert lines[0].startswith("#")
    assert f"# category: {source.category}\n" in text + "\n"
    assert "by hand" in text
    assert "public knowledge" in text
    assert "2026-11" in text
    assert re.search(r"\bin:", text) and re.search(r"\bout:", text)
    assert "subdomains" in text


def test_no_duplicates_or_redundant_entries_within_a_category():
    by_cat: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in ALL_SOURCES:
        by_cat[(s.category, s.kind)].extend(read_domains(s.path))
    for (cat, kind), domains in by_cat.items():
        listed = set(domains)
        assert len(listed) == len(domains), f"duplicates in {cat} {kind}"
        for d in domains:
            labels = d.split(".")
            parents = {".".join(labels[i:]) for i in range(1, len(labels) - 1)}
            assert not parents & listed, f"{d} is already covered by a parent in {cat}"


@pytest.mark.parametrize(
    "category, low, high",
    [
        ("adult", 30, 150),
        ("gambling", 30, 150),
        # Starter lists: conservative, only sites whose main purpose is the category.
        ("weapons_dangerous", 10, 60),
        ("hate_extremism", 10, 60),
        ("self_harm", 4, 60),
        ("violence", 5, 60),
        ("nudity_suggestive", 4, 60),
        ("ads_trackers", 20, 100),
    ],
)
def test_sizes(category, low, high):
    src = next(s for s in ALL_SOURCES if s.category == category and s.kind == "block")
    n = len(set(read_domains(src.path)))
    assert low <= n <= high


def test_vietnamese_gambling_brands_present():
    src = next(s for s in SOURCES if s.category == "gambling" and s.kind == "block")
    listed = set(read_domains(src.path))
    for brand in ("fb88.com", "w88.com", "188bet.com", "fun88.com", "8xbet.com", "sv388.com"):
        assert brand in listed


@pytest.fixture(scope="module")
def bundled_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "index.bin"
    report = build_index(SOURCES, out)
    assert set(report.skipped_lines.values()) == {0}
    ix = DomainIndex.open(out)
    yield ix
    ix.close()


@pytest.mark.parametrize("name", MUST_NEVER_BLOCK)
def test_must_never_block(bundled_index, name):
    for q in (name, f"www.{name}", f"m.{name}"):
        assert bundled_index.lookup_text(q) is None, f"{q} would be blocked"


def test_nothing_listed_is_a_must_never_block_name():
    listed = {d for s in SOURCES if s.kind == "block" for d in read_domains(s.path)}
    assert not listed & set(MUST_NEVER_BLOCK)
    # Only exact test hosts may sit on a shared platform: never the platform, never "www".
    for d in listed:
        for platform in ("appspot.com", "blogspot.com", "github.io", "cloudflare.com"):
            if d.endswith("." + platform):
                assert d.count(".") >= 2 and not d.startswith("www.")


def test_bundled_lists_block_what_they_list(bundled_index):
    for s in SOURCES:
        for d in read_domains(s.path):
            m = bundled_index.lookup_text(f"www.{d}")
            assert m is not None and m.listed == d and s.category in m.categories
            assert s.label in m.sources


# ---------------------------------------------------------------- every default category but csam


def _header(path: Path) -> str:
    return "\n".join(ln for ln in path.read_text().splitlines() if ln.startswith("#")).lower()


def test_every_default_category_but_csam_has_a_bundled_list_in_the_right_folder():
    ages = {c.id: c.min_age for c in DEFAULT_CATEGORIES}
    top = {s.category for s in SOURCES}
    age = {s.category for s in AGE_SOURCES}
    assert EXPECTED_AGE_CATEGORIES <= age
    assert top | age == set(ages) - {"csam"}
    # The top folder is blocked for every child: only always and adults-only categories.
    assert all(ages[c] in ("always", "18+") for c in top), top
    assert not top & age
    # csam never has a bundled list, in any folder, under any name.
    assert not [p for p in BUNDLED.rglob("*") if "csam" in p.name.lower()]


@pytest.mark.parametrize("source", AGE_SOURCES, ids=lambda s: s.label)
def test_age_list_headers_state_the_default_age_of_their_category(source):
    min_age = next(c.min_age for c in DEFAULT_CATEGORIES if c.id == source.category)
    header = _header(source.path)
    assert f"{source.category} is {min_age} by default" in header
    if min_age == "off":
        assert "blocked for no profile" in header and "turns the category on" in header
    elif source.kind == "block" and min_age in ("12+", "16+"):
        assert "blocked for every profile under" in header


@pytest.mark.parametrize("name", ["weapons_dangerous", "hate_extremism", "self_harm"])
def test_new_adults_only_lists_say_they_block_every_child(name):
    header = _header(BUNDLED / f"{name}.txt")
    assert "default age 18+" in header and "blocked for every child band" in header


def test_no_name_is_in_two_categories():
    """A domain listed by one category must not equal, contain or sit under a domain of another
    category's list: the policy would then name whichever is more specific, not the intended one."""
    owners: dict[str, set[str]] = defaultdict(set)
    for s in ALL_SOURCES:
        for d in read_domains(s.path):
            owners[d].add(f"{s.category}/{s.kind}")
    clashes = []
    for d, cats in owners.items():
        if len(cats) > 1:
            clashes.append((d, sorted(cats)))
        labels = d.split(".")
        for i in range(1, len(labels) - 1):
            parent = ".".join(labels[i:])
            if parent in owners and owners[parent] != cats:
                clashes.append((d, sorted(cats), parent, sorted(owners[parent])))
    assert [c for c in clashes if c[0] not in DELIBERATE_OVERLAPS] == []


# Never listed in any folder: help services a child in crisis must reach, shops and news an
# ordinary family uses, and what ads_trackers leaves out because blocking it breaks sites.
MUST_STAY_REACHABLE = [
    # crisis lines and recovery (self_harm's "out:")
    "tongdai111.vn",
    "duongdaynongngaymai.vn",
    "findahelpline.com",
    "befrienders.org",
    "988lifeline.org",
    "samaritans.org",
    "nationaleatingdisorders.org",
    # sporting goods and outdoor shops (weapons_dangerous)
    "decathlon.vn",
    "decathlon.com",
    "basspro.com",
    "cabelas.com",
    # news and the sports magazine whose swimsuit host alone is listed
    "vnexpress.net",
    "tuoitre.vn",
    "bbc.com",
    "si.com",
    # breaks sites or links when blocked (ads_trackers)
    "googletagmanager.com",
    "connect.facebook.net",
    "appsflyer.com",
    "onelink.me",
    "vcmedia.vn",
    "unity3d.com",
]


@pytest.fixture(scope="module")
def full_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled-all") / "index.bin"
    report = build_index(ALL_SOURCES, out)
    assert set(report.skipped_lines.values()) == {0}
    ix = DomainIndex.open(out)
    yield ix
    ix.close()


@pytest.mark.parametrize("name", MUST_STAY_REACHABLE)
def test_must_stay_reachable(full_index, name):
    for q in (name, f"www.{name}", f"m.{name}"):
        assert full_index.lookup_text(q) is None, f"{q} is listed: {full_index.lookup_text(q)}"


def test_starter_lists_hold_what_their_category_means():
    def listed(category: str) -> set[str]:
        return {d for s in ALL_SOURCES if s.category == category for d in read_domains(s.path)}

    assert {"gunbroker.com", "armslist.com", "defcad.com"} <= listed("weapons_dangerous")
    assert {"stormfront.org", "dailystormer.com"} <= listed("hate_extremism")
    assert {"sanctioned-suicide.net", "myproana.com"} <= listed("self_harm")
    # A nude photo site is not a self-harm site, whatever its name says; nudity as the
    # product is adult (18+), not nudity_suggestive (16+).
    assert "suicidegirls.com" in listed("adult")
    assert "suicidegirls.com" not in listed("self_harm") | listed("nudity_suggestive")
    assert {"shudder.com", "funker530.com"} <= listed("violence")
    assert {"doubleclick.net", "googlesyndication.com"} <= listed("ads_trackers")
    assert {"admicro.vn", "eclick.vn", "adtimaserver.vn"} <= listed("ads_trackers")
    # Only Sports Illustrated's swimsuit host, never the sports magazine.
    assert "swimsuit.si.com" in listed("nudity_suggestive") and "si.com" not in listed(
        "nudity_suggestive"
    )


# ---------------------------------------------------------------- csam: official sources only


def test_csam_is_documented_as_official_sources_only():
    for path in (BUNDLED / "README.md", BUNDLED.parent / "docs" / "criteria-feed.md"):
        paragraphs = [" ".join(p.split()) for p in path.read_text().split("\n\n")]
        para = next(p for p in paragraphs if "`csam`" in p and "only from official" in p)
        assert "`sources`" in para and "feed" in para, path
        assert "csam=https://" in para, path


# ---------------------------------------------------------------- the default feed, per band


@pytest.fixture(scope="module")
def default_feed(tmp_path_factory):
    """The bundled lists as `safenest run` uses them: built into the signed default feed under
    a data folder, compiled into the index, decided by the real policy engine."""
    data = tmp_path_factory.mktemp("var")
    compiled = compile_lists("", data)
    return compiled, data


def test_the_default_feed_carries_the_starter_lists(default_feed):
    _, data = default_feed
    (feed,) = [f for f in feeds_in_force(data / "feeds") if f.publisher_id == PUBLISHER_ID]
    lists = {lst.path: lst for lst in feed.manifest.lists}
    for s in ALL_SOURCES:
        if s.category in EXPECTED_AGE_CATEGORIES | {
            "weapons_dangerous",
            "hate_extremism",
            "self_harm",
        }:
            lst = lists[f"lists/{s.path.name}"]
            assert (lst.category, lst.kind) == (s.category, "block")
            assert lst.count == len(set(read_domains(s.path)))


@pytest.mark.parametrize(
    "name, category, min_age",
    [
        ("gunbroker.com", "weapons_dangerous", "18+"),
        ("stormfront.org", "hate_extremism", "18+"),
        ("myproana.com", "self_harm", "18+"),
    ],
)
def test_adults_only_starter_lists_block_every_child_band(default_feed, name, category, min_age):
    compiled, data = default_feed
    for band in ("00+", "12+", "16+"):
        assert decide_as(compiled, data, f"www.{name}", band) == (
            True,
            f"category={category} min_age={min_age}",
        )
    assert decide_as(compiled, data, f"www.{name}", "18+") == (False, "default")


@pytest.mark.parametrize(
    "name, category", [("shudder.com", "violence"), ("maxim.com", "nudity_suggestive")]
)
def test_16_plus_starter_lists_follow_the_band(default_feed, name, category):
    compiled, data = default_feed
    for band in ("00+", "12+"):
        assert decide_as(compiled, data, name, band) == (True, f"category={category} min_age=16+")
    for band in ("16+", "18+"):
        assert decide_as(compiled, data, name, band) == (False, "default")


def test_ads_trackers_are_off_until_a_parent_turns_them_on(default_feed):
    compiled, data = default_feed
    for name in ("doubleclick.net", "pagead2.googlesyndication.com", "s.eclick.vn"):
        assert decide_as(compiled, data, name, "00+") == (False, "default")
        # Still in the index, so that turning the category on (or explain) finds it.
        m = compiled.index.lookup_text(name)
        assert m is not None and "ads_trackers" in m.categories


def test_help_services_stay_reachable_for_the_youngest(default_feed):
    compiled, data = default_feed
    for name in ("tongdai111.vn", "duongdaynongngaymai.vn", "findahelpline.com"):
        assert decide_as(compiled, data, name, "00+") == (False, "default")
