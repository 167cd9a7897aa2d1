"""The hand-curated lists bundled in blocklists/: format, header, and names never to block."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from agent.index import (
    DomainIndex,
    ParseStats,
    build_index,
    bundled_dir,
    read_domains,
    sources_in,
)
from agent.index.sources import CATEGORY_RE

BUNDLED = bundled_dir()
SOURCES = sources_in(BUNDLED)
EXPECTED_CATEGORIES = {"adult", "gambling", "malware", "phishing_scam"}

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


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.path.name)
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


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.path.name)
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
    for s in SOURCES:
        by_cat[(s.category, s.kind)].extend(read_domains(s.path))
    for (cat, kind), domains in by_cat.items():
        listed = set(domains)
        assert len(listed) == len(domains), f"duplicates in {cat} {kind}"
        for d in domains:
            labels = d.split(".")
            parents = {".".join(labels[i:]) for i in range(1, len(labels) - 1)}
            assert not parents & listed, f"{d} is already covered by a parent in {cat}"


@pytest.mark.parametrize("category, low, high", [("adult", 30, 150), ("gambling", 30, 150)])
def test_sizes(category, low, high):
    src = next(s for s in SOURCES if s.category == category and s.kind == "block")
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
