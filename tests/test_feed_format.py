"""Format 1 of the criteria feed: the manifest parser accepts exactly the spec and names bad fields."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.feed.categories import DEFAULT_CATEGORIES, DEFAULT_CATEGORY_IDS, default_category
from agent.feed.format import (
    AGE_BANDS,
    MIN_AGES,
    FeedList,
    Manifest,
    ManifestError,
    Publisher,
    parse_manifest,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "criteria-feed.md"
SHA = "ab" * 32
ISSUED = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def manifest() -> Manifest:
    return Manifest(
        format=1,
        publisher=Publisher("moet.gov.vn", "Bộ Giáo dục và Đào tạo", "ed25519:0123456789abcdef"),
        version=7,
        issued_at=ISSUED,
        expires_at=ISSUED + timedelta(days=30),
        age_bands=AGE_BANDS,
        categories=DEFAULT_CATEGORIES,
        lists=(
            FeedList("gambling", "lists/gambling.txt", SHA, 120, "block"),
            FeedList("sex_education", "lists/sex_education.allow.txt", "cd" * 32, 10, "allow"),
            FeedList("online_games", "lists/online_games.18.txt", "ef" * 32, 3, "block", "18+"),
        ),
    )


def doc() -> dict:
    return manifest().to_dict()


def encode(d) -> bytes:
    return json.dumps(d, ensure_ascii=False, indent=2).encode("utf-8")


def error_of(raw: bytes) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    return info.value


# ---------------------------------------------------------------- valid documents


def test_roundtrip_is_exact():
    m = manifest()
    raw = m.to_bytes()
    assert parse_manifest(raw) == m
    assert parse_manifest(raw).to_bytes() == raw
    assert raw.endswith(b"}\n")
    # Vietnamese stays readable UTF-8 in the file, not \u escapes.
    assert "Bộ Giáo dục và Đào tạo".encode() in raw
    assert b"\\u" not in raw


def test_model_helpers():
    m = parse_manifest(manifest().to_bytes())
    assert m.category("gambling").names.vi == "Cờ bạc, cá cược"
    assert m.min_age_of(m.lists[0]) == "18+"  # the category's
    assert m.min_age_of(m.lists[2]) == "18+"  # the list's own rating
    assert m.min_age_of(m.lists[1]) == "12+"
    assert m.entries == 133
    assert not m.expired(ISSUED + timedelta(days=29))
    assert m.expired(ISSUED + timedelta(days=30))
    with pytest.raises(KeyError):
        m.category("nope")


def test_extension_keys_are_ignored():
    d = doc()
    d["x_contact"] = "feeds@example.vn"
    d["categories"][0]["x_note"] = {"anything": [1, 2]}
    d["lists"][0]["x_source"] = "hand"
    assert parse_manifest(encode(d)) == manifest()


def test_categories_without_lists_and_feed_without_lists_are_valid():
    d = doc()
    d["lists"] = []
    assert parse_manifest(encode(d)).lists == ()


# ---------------------------------------------------------------- every rule names its field


def _set(path: str, value):
    def mutate(d):
        target = d
        parts = re.findall(r"[a-z0-9_]+|\[\d+\]", path)
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        last = parts[-1]
        if value is _DELETE:
            del target[last]
        elif last.startswith("["):
            target[int(last[1:-1])] = value
        else:
            target[last] = value
        return d

    return mutate


_DELETE = object()

CASES = [
    (
        _set("categories[3].min_age", "13+"),
        'categories[3].min_age: expected one of "00+", "12+", "16+", "18+", "always", "off" (got "13+")',
    ),
    (_set("format", 2), "format: expected 1; this SafeNest reads format 1 only (got 2)"),
    (_set("format", "1"), 'format: expected 1; this SafeNest reads format 1 only (got "1")'),
    (_set("format", True), "format: expected 1; this SafeNest reads format 1 only (got true)"),
    (_set("version", 0), "version: expected an integer from 1 to 2^53 (got 0)"),
    (_set("version", "8"), 'version: expected an integer (got a string "8")'),
    (_set("version", 7.0), "version: expected an integer (got a number 7.0)"),
    (_set("version", True), "version: expected an integer (got a boolean true)"),
    (_set("publisher.key_id", _DELETE), "publisher.key_id: missing"),
    (_set("publisher.key_id", "ed25519:XYZ"), 'publisher.key_id: expected "ed25519:" and 16 hex digits (got "ed25519:XYZ")'),
    (_set("publisher.id", "Bộ GD"), 'publisher.id: expected an id of [a-z0-9._-], at most 64 (got "Bộ GD")'),
    (_set("publisher.name", "  "), "publisher.name: must not be empty"),
    (_set("expire_at", "2026-12-28T09:00:00Z"), "expire_at: unknown field (format 1 has no such field)"),
    (_set("lists[0].sha", SHA), "lists[0].sha: unknown field (format 1 has no such field)"),
    (_set("issued_at", "2026-11-28 09:00:00"), 'issued_at: expected a UTC time like "2026-11-28T09:00:00Z" (got "2026-11-28 09:00:00")'),
    (_set("issued_at", "2026-11-28T09:00:00+07:00"), 'issued_at: expected a UTC time like "2026-11-28T09:00:00Z" (got "2026-11-28T09:00:00+07:00")'),
    (_set("issued_at", "2026-02-30T09:00:00Z"), 'issued_at: expected a UTC time like "2026-11-28T09:00:00Z" (got "2026-02-30T09:00:00Z")'),
    (_set("expires_at", "2026-11-28T09:00:00Z"), "expires_at: must be later than issued_at"),
    (_set("expires_at", "2028-01-01T00:00:00Z"), "expires_at: at most 366 days after issued_at (got 398 days)"),
    (_set("age_bands", ["00+", "13+", "16+", "18+"]), 'age_bands: expected ["00+", "12+", "16+", "18+"] in format 1 (got ["00+", "13+", "16+", "18+"])'),
    (_set("categories", []), "categories: must list at least one category"),
    (_set("categories", {}), "categories: expected an array (got an object)"),
    (_set("categories[1].id", "Malware"), 'categories[1].id: expected a category id of [a-z0-9_] (got "Malware")'),
    (_set("categories[2].id", "csam"), 'categories[2].id: duplicate category id "csam"'),
    (_set("categories[5].names", {"vi": "Giáo dục giới tính"}), "categories[5].names.en: missing"),
    (_set("categories[5].names.fr", "Éducation"), "categories[5].names.fr: unknown field (format 1 has no such field)"),
    (_set("categories[6].names.vi", ""), "categories[6].names.vi: must not be empty"),
    (_set("categories[0].description", "two\nlines"), "categories[0].description: contains a control character (line breaks included)"),
    (_set("categories[0].basis", 5), "categories[0].basis: expected a string (got an integer)"),
    (_set("lists[0].kind", "deny"), 'lists[0].kind: expected one of "block", "allow" (got "deny")'),
    (_set("lists[0].count", -1), "lists[0].count: expected an integer from 0 to 2^53 (got -1)"),
    (_set("lists[0].count", 1.5), "lists[0].count: expected an integer (got a number 1.5)"),
    (_set("lists[0].sha256", SHA.upper()), f'lists[0].sha256: expected 64 lower-case hex digits (got "{SHA.upper()[:56]}...)'),
    (_set("lists[2].min_age", "18"), 'lists[2].min_age: expected one of "00+", "12+", "16+", "18+", "always", "off" (got "18")'),
    (_set("lists[1].path", "lists/gambling.txt"), 'lists[1].path: duplicate path "lists/gambling.txt"'),
    (_set("lists[0]", "lists/gambling.txt"), "lists[0]: expected an object (got a string)"),
]


@pytest.mark.parametrize("mutate, message", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_field_is_named(mutate, message):
    raw = encode(mutate(copy.deepcopy(doc())))
    exc = error_of(raw)
    assert str(exc) == message
    assert exc.reason == "malformed"
    assert "\n" not in str(exc)


@pytest.mark.parametrize(
    "path",
    ["../gambling.txt", "/etc/passwd.txt", "lists/../../x.txt", "lists/./x.txt", "lists\\x.txt",
     "lists/x.csv", "lists//x.txt", "lists/.hidden.txt", "manifest.json", "https://evil/x.txt", ""],
)
def test_list_paths_stay_inside_the_feed(path):
    d = doc()
    d["lists"][0]["path"] = path
    exc = error_of(encode(d))
    assert exc.field == "lists[0].path"
    assert str(exc).startswith('lists[0].path: expected a relative path of [A-Za-z0-9._-] names joined by "/"')


def test_unknown_category_has_its_own_reason():
    d = doc()
    d["lists"][0]["category"] = "casino"
    exc = error_of(encode(d))
    assert exc.reason == "unknown_category"
    assert str(exc).startswith('lists[0].category: unknown category "casino" (not in categories: ads_trackers, adult, ai_chat,')


def test_document_level_errors():
    assert str(error_of(b"[]")) == "expected an object (got an array)"
    assert str(error_of(b"{")).startswith("not valid JSON:")
    assert str(error_of(b"\xef\xbb\xbf{}")) == "the manifest starts with a byte-order mark; write plain UTF-8"
    assert str(error_of(b'{"format": 1, "x": "\xff"}')) == "not UTF-8 (byte 20)"
    assert str(error_of(b"{}")) == "format: missing"
    raw = encode(doc()).replace(b'"version": 7', b'"version": NaN')
    assert str(error_of(raw)).startswith("not valid JSON: NaN is not allowed")
    assert "the limit is 1048576" in str(error_of(b" " * (1024 * 1024 + 1)))
    with pytest.raises(TypeError):
        parse_manifest(encode(doc()).decode())  # type: ignore[arg-type]


def test_duplicate_keys_are_rejected():
    # Two parsers could read a duplicated key differently: a signed document must not have one.
    raw = encode(doc()).replace(b'"id": "moet.gov.vn",', b'"id": "moet.gov.vn", "id": "evil",')
    assert str(error_of(raw)) == 'publisher: duplicate key "id"'
    raw = encode(doc()).replace(b'"version": 7,', b'"version": 7, "version": 99,')
    assert str(error_of(raw)) == 'duplicate key "version"'


# ---------------------------------------------------------------- the default category table

ISSUE_DEFAULTS = {
    "csam": "always", "malware": "always", "phishing_scam": "always", "adult": "18+",
    "nudity_suggestive": "16+", "sex_education": "12+", "gambling": "18+", "dating": "18+",
    "drugs": "18+", "alcohol_tobacco": "18+", "violence": "16+", "gore_shock": "18+",
    "weapons_dangerous": "18+", "hate_extremism": "18+", "self_harm": "18+",
    "online_games": "12+", "social_networks": "16+", "messaging": "12+", "stranger_chat": "18+",
    "video_streaming": "00+", "search_unsafe": "16+", "filter_bypass": "18+", "piracy": "16+",
    "ai_chat": "16+", "ads_trackers": "off",
}  # fmt: skip


def test_default_table_matches_the_issue():
    assert DEFAULT_CATEGORY_IDS == tuple(ISSUE_DEFAULTS)
    assert {c.id: c.min_age for c in DEFAULT_CATEGORIES} == ISSUE_DEFAULTS
    for c in DEFAULT_CATEGORIES:
        assert c.min_age in MIN_AGES
        assert c.names.vi.strip() and c.names.en.strip() and c.description and c.basis
    assert default_category("messaging").names.en == "Messaging"


def test_vietnamese_names():
    vi = {c.id: c.names.vi for c in DEFAULT_CATEGORIES}
    assert vi["gambling"] == "Cờ bạc, cá cược"
    assert vi["adult"] == "Nội dung người lớn"
    assert vi["social_networks"] == "Mạng xã hội"
    assert vi["online_games"] == "Trò chơi trực tuyến"
    assert vi["malware"] == "Mã độc"
    # Every Vietnamese name differs from the English one and is in NFC (as typed on a VN keyboard).
    import unicodedata

    for c in DEFAULT_CATEGORIES:
        assert c.names.vi != c.names.en
        assert unicodedata.normalize("NFC", c.names.vi) == c.names.vi


def test_the_default_table_is_valid_format_1():
    raw = manifest().to_bytes()
    assert parse_manifest(raw).categories == DEFAULT_CATEGORIES


def test_docs_table_agrees_with_the_code():
    text = DOC.read_text(encoding="utf-8")
    assert 'format 1' in text.lower()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`([a-z_]+)`\s*\|([^|]*)\|([^|]*)\|\s*([^|]*?)\s*\|", line)
        if m and m.group(1) in ISSUE_DEFAULTS:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip(), m.group(4).strip("` "))
    assert set(rows) == set(ISSUE_DEFAULTS)
    for c in DEFAULT_CATEGORIES:
        vi, en, min_age = rows[c.id]
        assert (vi, en, min_age) == (c.names.vi, c.names.en, c.min_age), c.id
