"""The publisher's tool and the consumer's check: build real feeds, verify them, break them.

Remote feeds are served by a real HTTP server on 127.0.0.1 (port chosen by the OS), allowed with
allow_insecure=True as a test or local mirror would be.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.feed.build import BuildError, build_feed, feed_sources
from agent.feed.categories import DEFAULT_CATEGORIES
from agent.feed.format import FeedError, format_time, parse_manifest
from agent.feed.sign import generate_key, load_public_key, sign, write_keypair
from agent.feed.verify import verify_feed
from agent.index import ParseStats, bundled_dir, read_domains

BUNDLED = bundled_dir()
NOW = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    key = generate_key("test.example.vn", "Trường Thử Nghiệm")
    secret_path, public_path = write_keypair(tmp_path / "keys" / "feed.key", key)
    return key, secret_path, public_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    write(
        root / "gambling.txt",
        "# gambling, by hand\n"
        "fb88.com\n"
        "FB88.com.\n"  # the same name, not yet normalized
        "www.fb88.com\n"  # covered by fb88.com
        "new88.com\n"
        "0.0.0.0 kubet.com\n"  # hosts-file line
        "||jun88.com^\n"  # adblock line
        "not a domain\n"
        "http://w88.com/path\n",
    )
    write(root / "more" / "gambling.txt", "new88.com\nsv388.com\n")  # merged with the above
    write(root / "online_games.18.txt", "game18.example.vn\n")
    write(root / "online_games.txt", "roblox.com\n")
    write(root / "sex_education.allow.txt", "amaze.org\nxn--bcher-kva.de\n")
    write(root / "README.md", "not a list\n")
    write(root / ".hidden" / "adult.txt", "ignored.example\n")
    return root


def rebuild(src, out, key, *args, **kw):
    kw.setdefault("now", NOW)
    return build_feed(src, out, key, *args, **kw)


def verify(out, pub, **kw):
    kw.setdefault("now", NOW + timedelta(days=1))
    return verify_feed(out, pub, **kw)


def resign(out: Path, key, edit) -> None:
    """Change the manifest and sign it again, as a careless (or malicious) publisher could."""
    doc = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    edit(doc)
    raw = json.dumps(doc, ensure_ascii=False, indent=2).encode() + b"\n"
    (out / "manifest.json").write_bytes(raw)
    (out / "manifest.json.sig").write_bytes(sign(key, raw))


def feed_error(out, pub, **kw) -> FeedError:
    with pytest.raises(FeedError) as info:
        verify(out, pub, **kw)
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------- building


def test_sources_are_found_and_named(src):
    found = [(s.label, s.category, s.kind, s.min_age) for s in feed_sources(src)]
    assert found == [
        ("src/gambling.txt", "gambling", "block", None),
        ("src/online_games.18.txt", "online_games", "block", "18+"),
        ("src/online_games.txt", "online_games", "block", None),
        ("src/sex_education.allow.txt", "sex_education", "allow", None),
        ("src/more/gambling.txt", "gambling", "block", None),
    ]


def test_build_from_a_temp_source(src, tmp_path, keys):
    key, secret_path, public_path = keys
    out = tmp_path / "out"
    report = rebuild(src, out, secret_path)
    m = report.manifest
    assert m.version == 1 and report.previous_version is None
    assert m.publisher.id == "test.example.vn" and m.publisher.name == "Trường Thử Nghiệm"
    assert m.publisher.key_id == key.key_id
    assert m.issued_at == NOW and m.expires_at == NOW + timedelta(days=30)
    assert m.categories == DEFAULT_CATEGORIES
    assert [(x.path, x.category, x.kind, x.min_age, x.count) for x in m.lists] == [
        ("lists/sex_education.allow.txt", "sex_education", "allow", None, 2),
        ("lists/gambling.txt", "gambling", "block", None, 5),
        ("lists/online_games.txt", "online_games", "block", None, 1),
        ("lists/online_games.18.txt", "online_games", "block", "18+", 1),
    ]
    gambling = (out / "lists" / "gambling.txt").read_text()
    assert gambling == (
        "# SafeNest criteria feed, format 1\n"
        "# publisher: test.example.vn\n"
        "# category: gambling, kind: block\n"
        "# entries: 5\n"
        "fb88.com\njun88.com\nkubet.com\nnew88.com\nsv388.com\n"
    )
    assert "xn--bcher-kva.de" in (out / "lists" / "sex_education.allow.txt").read_text()
    for lst in m.lists:
        data = (out / lst.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == lst.sha256
    # Duplicates, covered names and bad lines are counted, per list and per source.
    g = next(r for r in report.lists if r.path == "lists/gambling.txt")
    assert (g.duplicates, g.redundant) == (2, 1)  # FB88.com. and the second new88.com; www.fb88.com
    assert g.sources == ("src/gambling.txt", "src/more/gambling.txt")
    bad = {s.label: s.bad for s in report.sources}
    assert bad == {
        "src/gambling.txt": 2,
        "src/more/gambling.txt": 0,
        "src/online_games.18.txt": 0,
        "src/online_games.txt": 0,
        "src/sex_education.allow.txt": 0,
    }
    assert report.bad_lines == 2
    first = next(s for s in report.sources if s.label == "src/gambling.txt")
    assert [n for n, _ in first.examples] == [8, 9]
    # Files are readable by a web server; the signature verifies; the manifest reads back.
    assert (out / "manifest.json").stat().st_mode & 0o044 == 0o044
    assert parse_manifest((out / "manifest.json").read_bytes()) == m
    assert verify(out, public_path) == m
    assert not list(out.rglob(".tmp-*"))


def test_version_bumps_and_stale_lists_go(src, tmp_path, keys):
    _, secret_path, public_path = keys
    out = tmp_path / "out"
    assert rebuild(src, out, secret_path).manifest.version == 1
    r2 = rebuild(src, out, secret_path)
    assert (r2.manifest.version, r2.previous_version) == (2, 1)
    (src / "online_games.txt").unlink()
    r3 = rebuild(src, out, secret_path)
    assert r3.manifest.version == 3
    assert r3.removed == ("lists/online_games.txt",)
    assert not (out / "lists" / "online_games.txt").exists()
    assert verify(out, public_path).version == 3
    r9 = rebuild(src, out, secret_path, version=9)
    assert r9.manifest.version == 9
    with pytest.raises(BuildError, match=f"version 9 is not above version 9 already in {out}"):
        rebuild(src, out, secret_path, version=9)
    with pytest.raises(BuildError, match="version 4 is not above version 9"):
        rebuild(src, out, secret_path, version=4)
    assert rebuild(src, out, secret_path).manifest.version == 10


def test_unreadable_previous_manifest_needs_an_explicit_version(src, tmp_path, keys):
    _, secret_path, _ = keys
    out = tmp_path / "out"
    write(out / "manifest.json", "{not json")
    with pytest.raises(
        BuildError, match=r"cannot read the version of the feed already in .*pass a version"
    ):
        rebuild(src, out, secret_path)
    assert rebuild(src, out, secret_path, version=5).manifest.version == 5


def test_build_refuses_another_publishers_folder(src, tmp_path, keys):
    _, secret_path, _ = keys
    out = tmp_path / "out"
    other = generate_key("other.example", "Other")
    rebuild(src, out, other)
    with pytest.raises(
        BuildError, match="holds a feed of publisher other.example, not test.example.vn"
    ):
        rebuild(src, out, secret_path)


def test_build_errors(src, tmp_path, keys):
    _, secret_path, _ = keys
    with pytest.raises(
        BuildError, match=r"src/sub/casino\.txt: unknown category 'casino' \(known: csam, malware,"
    ):
        write(src / "sub" / "casino.txt", "a.com\n")
        rebuild(src, tmp_path / "out", secret_path)
    (src / "sub" / "casino.txt").unlink()
    with pytest.raises(
        BuildError, match=r"src/Gambling\.txt: a list file is named <category>\.txt"
    ):
        write(src / "Gambling.txt", "a.com\n")
        rebuild(src, tmp_path / "out", secret_path)
    (src / "Gambling.txt").unlink()
    with pytest.raises(BuildError, match="is inside"):
        rebuild(src, src / "feed", secret_path)
    with pytest.raises(BuildError, match="is inside"):
        rebuild(src, src, secret_path)
    with pytest.raises(BuildError, match="valid_days must be 1 to 366"):
        rebuild(src, tmp_path / "out", secret_path, valid_days=400)
    with pytest.raises(BuildError, match="is not a folder"):
        rebuild(tmp_path / "missing", tmp_path / "out", secret_path)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_strict_build_names_the_first_bad_line(src, tmp_path, keys):
    _, secret_path, _ = keys
    with pytest.raises(BuildError) as info:
        rebuild(src, tmp_path / "out", secret_path, strict=True)
    assert str(info.value) == (
        "src/gambling.txt line 8: 'not a domain' is not a domain name "
        "(2 bad lines; fix them, or build without strict to skip them)"
    )
    assert not (tmp_path / "out").exists()


def test_categories_json_replaces_the_table(src, tmp_path, keys):
    _, secret_path, public_path = keys
    table = [
        c.to_dict()
        for c in DEFAULT_CATEGORIES
        if c.id in ("gambling", "online_games", "sex_education")
    ]
    table.append(
        {
            "id": "lottery",
            "names": {"vi": "Xổ số", "en": "Lottery"},
            "min_age": "18+",
            "description": "Lottery results and tickets.",
            "basis": "Our school's policy.",
        }
    )
    write(src / "categories.json", json.dumps(table, ensure_ascii=False))
    write(src / "lottery.txt", "xoso.example.vn\n")
    m = rebuild(src, tmp_path / "out", secret_path).manifest
    assert [c.id for c in m.categories] == ["sex_education", "gambling", "online_games", "lottery"]
    assert m.category("lottery").names.vi == "Xổ số"
    assert verify(tmp_path / "out", public_path).lists[-1].path == "lists/lottery.txt"
    table[3]["min_age"] = "21+"
    write(src / "categories.json", json.dumps(table))
    with pytest.raises(
        BuildError, match=r"src/categories\.json: categories\[3\]\.min_age: expected one of"
    ):
        rebuild(src, tmp_path / "out2", secret_path)


def test_publisher_name_override(src, tmp_path, keys):
    _, secret_path, public_path = keys
    m = rebuild(src, tmp_path / "out", secret_path, "Trường THCS Mới").manifest
    assert m.publisher.name == "Trường THCS Mới"
    assert verify(tmp_path / "out", public_path).publisher.name == "Trường THCS Mới"


# ---------------------------------------------------------------- the default feed from blocklists/


def test_every_bundled_file_parses_cleanly_with_a_header():
    files = sorted(BUNDLED.rglob("*.txt"))
    assert any(p.parent.name == "age" for p in files)
    for path in files:
        stats = ParseStats()
        domains = list(read_domains(path, stats))
        assert stats.bad == 0 and domains and len(domains) == len(set(domains)), path
        header = "\n".join(
            line for line in path.read_text().splitlines() if line.startswith("#")
        ).lower()
        category = path.name.split(".")[0]
        assert f"# category: {category}\n" in header + "\n", path
        for word in ("by hand", "public knowledge", "2026-11", "in:", "out:", "subdomains"):
            assert word in header, (path, word)
        if path.parent.name == "age":
            # Each says its default age and for which profiles that blocks it, never "not yet".
            assert "by default" in header and "default criteria feed" in header, path
            assert "profile" in header and "not read yet" not in header, path


def test_age_dependent_categories_are_in_age_and_the_top_folder_is_for_every_child():
    top = {s.category for s in feed_sources(BUNDLED) if s.path.parent == BUNDLED}
    age = {s.category for s in feed_sources(BUNDLED) if s.path.parent.name == "age"}
    by_id = {c.id: c.min_age for c in DEFAULT_CATEGORIES}
    # The top folder holds only "always" or adults-only categories: blocked for every child.
    assert all(by_id[c] in ("always", "18+") for c in top), top
    for c in (
        "social_networks",
        "messaging",
        "online_games",
        "video_streaming",
        "ai_chat",
        "search_unsafe",
    ):
        assert c in age and c not in top
    age_files = {p.name for p in (BUNDLED / "age").iterdir()}
    assert "sex_education.allow.txt" in age_files
    messaging = set(read_domains(BUNDLED / "age" / "messaging.txt"))
    assert {"zalo.me", "messenger.com", "whatsapp.com", "telegram.org", "discord.com"} <= messaging
    games = set(read_domains(BUNDLED / "age" / "online_games.txt"))
    assert {"garena.vn", "vtcgame.vn", "roblox.com"} <= games
    assert "minecraft.net" not in games  # Minecraft Education runs on it in classrooms
    bypass = set(read_domains(BUNDLED / "filter_bypass.txt"))
    assert {"dns.google", "cloudflare-dns.com", "mask.icloud.com", "nordvpn.com"} <= bypass
    # Never a whole platform, never a name that looks like an IP resolver's address.
    for name in ("google.com", "icloud.com", "cloudflare.com", "one.one.one.one", "apple.com"):
        assert name not in bypass
    assert not any(re.fullmatch(r"[\d.]+", d) for d in bypass)


def test_default_feed_builds_from_blocklists_and_verifies(tmp_path, keys):
    _, secret_path, public_path = keys
    out = tmp_path / "default-feed"
    report = rebuild(BUNDLED, out, secret_path)
    m = report.manifest
    assert report.bad_lines == 0
    by_path = {lst.path: lst for lst in m.lists}
    for s in feed_sources(BUNDLED):
        lst = by_path[s.output_path]
        assert lst.count == len(set(read_domains(s.path))), s.label  # the lists are already clean
        assert lst.kind == s.kind and lst.category == s.category
    assert by_path["lists/sex_education.allow.txt"].kind == "allow"
    assert {"lists/gambling.txt", "lists/social_networks.txt", "lists/filter_bypass.txt"} <= set(
        by_path
    )
    assert verify(out, public_path) == m
    # Nothing was written into the source folder.
    assert not list(BUNDLED.rglob("manifest.json*")) and not (BUNDLED / "lists").exists()


# ---------------------------------------------------------------- verifying: every failure, exactly


@pytest.fixture
def feed(src, tmp_path, keys):
    key, secret_path, public_path = keys
    out = tmp_path / "out"
    rebuild(src, out, secret_path)
    return out, key, public_path


def test_tampered_list_gives_the_exact_error(feed):
    out, _, pub = feed
    path = out / "lists" / "gambling.txt"
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "a") as f:
        f.write("example.com\n")
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    exc = feed_error(out, pub)
    assert exc.reason == "sha256_mismatch"
    assert str(exc) == (
        f"sha256 mismatch for list lists/gambling.txt (lists[1], category gambling): "
        f"the manifest says {old}, the file is {new}"
    )


def test_truncated_and_missing_lists(feed):
    out, _, pub = feed
    path = out / "lists" / "sex_education.allow.txt"
    path.write_bytes(path.read_bytes()[:-5])
    assert feed_error(out, pub).reason == "sha256_mismatch"
    path.unlink()
    exc = feed_error(out, pub)
    assert exc.reason == "not_found"
    assert str(exc) == f"lists/sex_education.allow.txt is missing: no file {path}"


def test_tampered_manifest_is_a_bad_signature(feed):
    out, key, pub = feed
    raw = (out / "manifest.json").read_bytes()
    (out / "manifest.json").write_bytes(raw.replace(b'"count": 5', b'"count": 6'))
    exc = feed_error(out, pub)
    assert exc.reason == "bad_signature"
    assert str(exc).startswith(
        f"bad signature: manifest.json.sig does not match manifest.json under the pinned key {key.key_id}"
    )


def test_truncated_or_missing_signature(feed):
    out, _, pub = feed
    sig = out / "manifest.json.sig"
    sig.write_bytes(sig.read_bytes()[:50])
    exc = feed_error(out, pub)
    assert (exc.reason, str(exc)) == (
        "bad_signature",
        "bad signature: manifest.json.sig is not one line of base64 holding a 64-byte Ed25519 signature",
    )
    sig.unlink()
    assert (
        str(feed_error(out, pub))
        == f"bad signature: the feed is not signed (no manifest.json.sig in {out})"
    )


def test_wrong_key(feed, tmp_path):
    out, key, _ = feed
    other = generate_key("other.example", "Another publisher")
    _, other_pub = write_keypair(tmp_path / "other.key", other)
    exc = feed_error(out, other_pub)
    assert exc.reason == "wrong_key"
    assert str(exc) == (
        f"wrong key: the feed is signed with key {key.key_id} of publisher test.example.vn, "
        f"but the pinned key is {other.key_id} of publisher other.example"
    )


def test_right_key_pinned_for_another_publisher(feed, tmp_path):
    out, key, pub = feed
    # The same key bytes, pinned by the admin as publisher "someone.else": not this feed.
    text = pub.read_text().replace("publisher=test.example.vn", "publisher=someone.else")
    renamed = write(tmp_path / "renamed.pub", text)
    exc = feed_error(out, renamed)
    assert (exc.reason, str(exc)) == (
        "wrong_key",
        "wrong key: the feed is from publisher test.example.vn, but the pinned key belongs to publisher someone.else",
    )


def test_expired(src, tmp_path, keys):
    _, secret_path, public_path = keys
    out = tmp_path / "out"
    rebuild(src, out, secret_path, now=NOW, valid_days=1)
    assert verify(out, public_path, now=NOW + timedelta(hours=23, minutes=59)).version == 1
    now = NOW + timedelta(days=1)
    with pytest.raises(FeedError) as info:
        verify_feed(out, public_path, now=now)
    assert (info.value.reason, str(info.value)) == (
        "expired",
        f"expired: version 1 of feed test.example.vn expired at {format_time(NOW + timedelta(days=1))} "
        f"(now {format_time(now)})",
    )
    # With the real clock: a feed issued "now" by default verifies, one from 2020 does not.
    rebuild(src, out, secret_path, now=datetime.now(UTC))
    assert verify_feed(out, public_path).version == 2
    rebuild(src, out, secret_path, now=datetime(2020, 1, 1, tzinfo=UTC))
    assert "expired at 2020-01-31T00:00:00Z" in str(
        pytest.raises(FeedError, verify_feed, out, public_path).value
    )


def test_malformed_field_is_named(feed):
    out, key, pub = feed

    def edit(doc):
        doc["categories"][3]["min_age"] = "13+"

    resign(out, key, edit)
    exc = feed_error(out, pub)
    assert (exc.reason, str(exc)) == (
        "malformed",
        'malformed manifest.json: categories[3].min_age: expected one of "00+", "12+", "16+", "18+", '
        '"always", "off" (got "13+")',
    )


def test_unknown_category(feed):
    out, key, pub = feed
    resign(out, key, lambda doc: doc["lists"][1].update(category="casino"))
    exc = feed_error(out, pub)
    assert exc.reason == "unknown_category"
    assert str(exc).startswith(
        'manifest.json: lists[1].category: unknown category "casino" (not in categories: '
    )


def test_count_mismatch(feed):
    out, key, pub = feed
    resign(out, key, lambda doc: doc["lists"][1].update(count=6))
    exc = feed_error(out, pub)
    assert (exc.reason, str(exc)) == (
        "count_mismatch",
        "count mismatch for list lists/gambling.txt (lists[1]): the manifest says 6 entries, the file has 5",
    )


def test_list_with_a_bad_line_signed_anyway(feed):
    out, key, pub = feed
    path = out / "lists" / "online_games.txt"
    path.write_bytes(b"roblox.com\nRoblox.COM\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    resign(out, key, lambda doc: doc["lists"][2].update(sha256=digest, count=2))
    exc = feed_error(out, pub)
    assert (exc.reason, str(exc)) == (
        "bad_list",
        "list lists/online_games.txt line 2: 'Roblox.COM' is not a domain name in canonical form "
        "(lower case, punycode, no trailing dot)",
    )


def test_key_id_in_manifest_must_be_the_signing_key(feed):
    out, key, pub = feed
    resign(out, key, lambda doc: doc["publisher"].update(key_id="ed25519:0000000000000000"))
    exc = feed_error(out, pub)
    assert str(exc) == (
        f"malformed manifest.json: publisher.key_id is ed25519:0000000000000000, but the feed is signed with key {key.key_id}"
    )


def test_list_size_cap(feed):
    out, _, pub = feed
    exc = feed_error(out, pub, max_list_bytes=100)
    assert (exc.reason, str(exc)) == (
        "too_large",
        "lists/sex_education.allow.txt is larger than the limit of 100 bytes",
    )


def test_local_sources(feed, tmp_path):
    out, _, pub = feed
    assert verify(out / "manifest.json", pub).version == 1  # the manifest's path works too
    assert (
        str(feed_error(tmp_path / "nothing", pub))
        == f"no feed at {tmp_path / 'nothing'}: not a folder"
    )
    exc = feed_error("ftp://example.com/feed/", pub)
    assert (
        str(exc)
        == "ftp://example.com/feed/: unsupported URL scheme 'ftp'; give an https URL or a folder"
    )


# ---------------------------------------------------------------- over HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_feed(feed):
    out, key, pub = feed
    root = out.parent
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/{out.name}/"
    yield base, out, key, pub
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_verify_over_http(http_feed, tmp_path):
    base, out, _, pub = http_feed
    m = verify(base, pub, allow_insecure=True)
    assert m == parse_manifest((out / "manifest.json").read_bytes())
    assert verify(base + "manifest.json", pub, allow_insecure=True) == m
    assert verify(base.rstrip("/"), pub, allow_insecure=True) == m
    # A verified copy can be kept (what a sync does), and it verifies on its own.
    copy = tmp_path / "copy"
    verify(base, pub, allow_insecure=True, save_to=copy)
    assert (copy / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert (copy / "lists" / "gambling.txt").read_bytes() == (
        out / "lists" / "gambling.txt"
    ).read_bytes()
    assert verify(copy, pub) == m
    assert not list(copy.rglob(".tmp-*"))


def test_plain_http_needs_explicit_permission(http_feed):
    base, _, _, pub = http_feed
    exc = feed_error(base, pub)
    assert exc.reason == "insecure"
    assert str(exc).startswith(f"{base}: plain http is not allowed; use https")


def test_http_failures(http_feed, tmp_path):
    base, out, _, pub = http_feed
    # Tampered list on the server: the same exact error as on disk.
    with open(out / "lists" / "online_games.18.txt", "a") as f:
        f.write("evil.example\n")
    exc = feed_error(base, pub, allow_insecure=True)
    assert exc.reason == "sha256_mismatch"
    assert str(exc).startswith(
        "sha256 mismatch for list lists/online_games.18.txt (lists[3], category online_games)"
    )
    # A list bigger than the cap stops the download (Content-Length is checked first).
    exc = feed_error(base, pub, allow_insecure=True, max_list_bytes=50)
    assert (exc.reason, str(exc)) == (
        "too_large",
        f"lists/sex_education.allow.txt is larger than the limit of 50 bytes (143 bytes at {base}lists/sex_education.allow.txt)",
    )
    # No feed at that address.
    exc = feed_error(base.replace("/out/", "/nowhere/"), pub, allow_insecure=True)
    assert exc.reason == "not_found"
    assert (
        str(exc)
        == f"manifest.json is missing: {base.replace('/out/', '/nowhere/')}manifest.json answered HTTP 404"
    )
    # A failed copy leaves no half-written list behind.
    copy = tmp_path / "copy"
    with pytest.raises(FeedError):
        verify(base, pub, allow_insecure=True, save_to=copy)
    assert not (copy / "manifest.json").exists() and not list(copy.rglob(".tmp-*"))


def test_server_down(feed):
    _, _, pub = feed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on that port now.
    exc = feed_error(f"http://127.0.0.1:{port}/feed/", pub, allow_insecure=True, timeout=2)
    assert exc.reason == "fetch"
    assert (
        str(exc)
        == f"cannot fetch http://127.0.0.1:{port}/feed/manifest.json: [Errno 111] Connection refused"
    )


def test_copy_of_feed_over_http_keeps_working_after_the_server_changes(http_feed, tmp_path, keys):
    base, out, key, pub = http_feed
    copy = tmp_path / "copy"
    verify(base, pub, allow_insecure=True, save_to=copy)
    shutil.rmtree(out / "lists")
    assert feed_error(base, pub, allow_insecure=True).reason == "not_found"
    assert verify(copy, load_public_key(pub)).version == 1


class _TrickyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the feed, but lists come without Content-Length: endless, or slow."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes
    mode = "endless"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if "/lists/" not in self.path:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        try:
            if self.mode == "endless":
                line = b"a.example.com\n" * 1000
                for _ in range(1000):  # bounded: 14 MB at most
                    self.wfile.write(line)
            else:
                for _ in range(50):  # 5 s at most
                    self.wfile.write(b"a.example.com\n")
                    self.wfile.flush()
                    time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.mark.parametrize("mode", ["endless", "slow"])
def test_caps_hold_without_content_length(feed, mode):
    out, _, pub = feed
    handler_class = type("H", (_TrickyHandler,), {"mode": mode})
    handler = lambda *a, **kw: handler_class(*a, directory=str(out.parent), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/out/"
        started = time.monotonic()
        if mode == "endless":
            exc = feed_error(base, pub, allow_insecure=True, max_list_bytes=100_000)
            assert (exc.reason, str(exc)) == (
                "too_large",
                "lists/sex_education.allow.txt is larger than the limit of 100000 bytes",
            )
        else:
            exc = feed_error(base, pub, allow_insecure=True, deadline=0.5)
            assert (exc.reason, str(exc)) == (
                "fetch",
                f"cannot fetch {base}lists/sex_education.allow.txt: slower than the limit of 0.5 s",
            )
        assert time.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def https_feed(feed, tmp_path):
    """The feed over real TLS, with a self-signed certificate for 127.0.0.1."""
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key_file), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    out, _, pub = feed
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(out.parent), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/out/", out, pub, cert
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_https(https_feed, monkeypatch):
    base, out, pub, cert = https_feed
    # An untrusted certificate is a fetch error, not a silent downgrade.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    exc = feed_error(base, pub)
    assert (exc.reason, str(exc)) == (
        "fetch",
        f"cannot fetch {base}manifest.json: the server's TLS certificate could not be verified",
    )
    # Trusted (as a local mirror's own CA would be): https needs no allow_insecure.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    assert verify(base, pub) == parse_manifest((out / "manifest.json").read_bytes())
