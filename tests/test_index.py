"""The compiled domain index: parsing, building, the file format and lookup semantics."""

from __future__ import annotations

import json
import os
import random
import string
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import agent.index.build as build_mod
from agent.index import (
    BuildReport,
    DomainIndex,
    IndexBuildError,
    IndexFormatError,
    Match,
    ParseStats,
    Source,
    build_in_subprocess,
    build_index,
    normalize_domain,
    read_domains,
    sources_in,
    to_wire,
    wire_to_text,
)
from agent.index.lookup import HEADER_FORMAT, HEADER_SIZE
from agent.index.sources import read_entries

REPO = Path(__file__).resolve().parent.parent
SHARED_LISTS = REPO.parent / "shared" / "data" / "lists"


# -- helpers --------------------------------------------------------------------------------


def write_lists(directory: Path, lists: dict[str, list[str]]) -> list[Source]:
    """{file name: lines} -> files in directory, and their sources (by the naming rule)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (directory / name).write_text("".join(f"{line}\n" for line in lines))
    return sources_in(directory)


@pytest.fixture
def opened():
    """Open index files and close them at teardown."""
    indexes: list[DomainIndex] = []

    def _open(path: Path) -> DomainIndex:
        ix = DomainIndex.open(path)
        indexes.append(ix)
        return ix

    yield _open
    for ix in indexes:
        ix.close()


def listed_set(index: DomainIndex, name: str):
    m = index.lookup_text(name)
    return None if m is None else (m.listed, m.kind, m.categories)


# -- domains.py -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("example.com", "example.com"),
        ("  WWW.Example.COM.  ", "www.example.com"),
        ("a_b.-x-.example.org", "a_b.-x-.example.org"),  # real lists have these
        ("bücher.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("a.b.c.d.e.f.example.net", "a.b.c.d.e.f.example.net"),
        ("localhost", None),
        ("com", None),
        ("1.2.3.4", None),
        ("::1", None),
        ("2001:db8::1", None),
        ("example.com:443", None),
        ("http://example.com/", None),
        ("example.com/path", None),
        ("*.example.com", None),
        ("exa mple.com", None),
        ("example..com", None),
        (".example.com", None),
        ("example.com..", None),
        ("", None),
        ("   ", None),
        ("a" * 64 + ".com", None),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 49] * 5) + ".com", ".".join(["a" * 49] * 5) + ".com"),  # 253 chars
        ("b" + ".".join(["a" * 49] * 5) + ".com", None),  # 254 characters
        ("exa$mple.com", None),
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
    ],
)
def test_normalize_domain(text, expected):
    assert normalize_domain(text) == expected


def test_wire_round_trip():
    assert to_wire("www.Example.com") == b"\x03www\x07example\x03com\x00"
    assert to_wire("www.example.com.") == b"\x03www\x07example\x03com\x00"
    assert to_wire("") == b"\x00"
    assert wire_to_text(b"\x03www\x07example\x03com\x00") == "www.example.com"
    assert wire_to_text(b"\x00") == ""
    for name in ("a.b", "x-y_z.example.co.uk", "a" * 63 + ".com"):
        assert wire_to_text(to_wire(name)) == name
    with pytest.raises(ValueError):
        to_wire("a..b")
    with pytest.raises(ValueError):
        to_wire("a" * 64 + ".com")
    with pytest.raises(ValueError):
        wire_to_text(b"\x03www\x07exa")  # label runs past the end
    with pytest.raises(ValueError):
        wire_to_text(b"\x03www")  # no root label
    # Odd bytes are escaped, never mistaken for dots.
    assert wire_to_text(b"\x03a.b\x03com\x00") == "a\\x2eb.com"


# -- sources.py -----------------------------------------------------------------------------


def test_read_domains_formats_and_bad_lines(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_bytes(
        "\ufeff# a comment\n"
        "! adblock comment\n"
        "[Adblock Plus 2.0]\n"
        "\n"
        "Plain.Example.com\n"
        "plain2.example.com.   # trailing comment\r\n"
        "0.0.0.0 hosts1.example.net\n"
        "127.0.0.1\thosts2.example.net hosts3.example.net\n"
        "::1 localhost ip6-localhost\n"
        "0.0.0.0 0.0.0.0\n"
        "255.255.255.255 broadcasthost\n"
        "||adblock1.example.org^\n"
        "||adblock2.example.org^$important\n"
        "||adblock3.example.org^|\n"
        "bücher.de\n"
        # bad ones:
        "http://url.example.com/path\n"
        "*.wildcard.example.com\n"
        "||path.example.org/ads^\n"
        "||opts.example.org^$third-party\n"
        "@@||exception.example.org^\n"
        "example.com##.banner\n"
        "not-an-ip hostsbad.example.net\n"
        "0.0.0.0 good.example.net bad_name!.example.net\n"
        "1.2.3.4\n"
        "singlelabel\n"
        "bad\xffbyte.example.com\n".encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff")
    )
    stats = ParseStats()
    got = list(read_domains(f, stats))
    assert got == [
        "plain.example.com",
        "plain2.example.com",
        "hosts1.example.net",
        "hosts2.example.net",
        "hosts3.example.net",
        "adblock1.example.org",
        "adblock2.example.org",
        "adblock3.example.org",
        "xn--bcher-kva.de",
        "good.example.net",
    ]
    assert stats.domains == len(got)
    assert stats.bad == 11
    assert stats.comments == 4
    assert stats.ignored == 4  # localhost, ip6-localhost, 0.0.0.0, broadcasthost
    assert stats.lines == 26
    assert stats.examples[0] == (16, "http://url.example.com/path")
    assert len(stats.examples) == 5


def test_read_domains_without_stats_and_empty_file(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("")
    assert list(read_domains(f)) == []
    f.write_text("a.example\nnot valid\n")
    assert list(read_domains(f)) == ["a.example"]


def test_sources_in_naming_rule(tmp_path):
    for name in [
        "gambling.txt",
        "gambling.allow.txt",
        "adult.txt",
        "README.md",
        "Bad-Name.txt",
        "x.y.txt",
        "kids_2.allow.txt",
        "notes.txt.bak",
    ]:
        (tmp_path / name).write_text("")
    (tmp_path / "dir.txt").mkdir()
    got = [(s.category, s.kind, s.path.name, s.label) for s in sources_in(tmp_path)]
    d = tmp_path.name
    assert got == [
        ("adult", "block", "adult.txt", f"{d}/adult.txt"),
        ("gambling", "allow", "gambling.allow.txt", f"{d}/gambling.allow.txt"),
        ("gambling", "block", "gambling.txt", f"{d}/gambling.txt"),
        ("kids_2", "allow", "kids_2.allow.txt", f"{d}/kids_2.allow.txt"),
    ]
    assert sources_in(tmp_path / "missing") == []


def test_source_validation():
    with pytest.raises(ValueError):
        Source("Gambling", "block", Path("x"), "x")
    with pytest.raises(ValueError):
        Source("gambling", "deny", Path("x"), "x")
    s = Source("gambling", "block", "lists/g.txt")  # type: ignore[arg-type]
    assert s.path == Path("lists/g.txt") and s.label == "g.txt"


@pytest.mark.parametrize("band", ["00+", "12+", "16+", "18+", "always", "off"])
def test_a_category_label_may_carry_an_age_band(band, tmp_path):
    assert Source(f"online_games@{band}", "block", Path("x")).category == f"online_games@{band}"
    # The label survives the build in a child process and comes back in matches.
    path = tmp_path / "games.18.txt"
    path.write_text("game18.example\n")
    out = tmp_path / "idx"
    build_in_subprocess([Source(f"online_games@{band}", "block", path, "games")], out)
    with DomainIndex.open(out) as index:
        assert index.lookup_text("www.game18.example").categories == (f"online_games@{band}",)
        assert index.categories == {f"online_games@{band}"}


@pytest.mark.parametrize(
    "label", ["online_games@13+", "online_games@", "@18+", "a@18+@18+", "Games@18+"]
)
def test_bad_category_labels_are_refused(label):
    with pytest.raises(ValueError, match="bad category id"):
        Source(label, "block", Path("x"))


def test_read_entries_takes_exceptions_and_wildcards(tmp_path):
    f = tmp_path / "public.txt"
    f.write_text(
        "! adblock list\n"
        "||block.example^\n"
        "@@||allow.example^\n"
        "@@||allow2.example^$important\n"
        "*.wild.example\n"
        "||*.wild2.example^\n"
        "0.0.0.0 hosts.example localhost\n"
        "plain.example\n"
        # bad ones:
        "@@allow3.example\n"
        "@@|https://x.example/\n"
        "*.\n"
        "||*.^\n"
        "*.*.deep.example\n"
        "example.com##.banner\n"
    )
    stats = ParseStats()
    got = list(read_entries(f, stats))
    assert got == [
        ("block", "block.example"),
        ("allow", "allow.example"),
        ("allow", "allow2.example"),
        ("block", "wild.example"),
        ("block", "wild2.example"),
        ("block", "hosts.example"),
        ("block", "plain.example"),
    ]
    assert (stats.domains, stats.bad, stats.ignored, stats.comments) == (7, 6, 1, 1)
    # read_domains, for feeds and bundled lists, still refuses both forms.
    stats = ParseStats()
    assert "allow.example" not in list(read_domains(f, stats)) and stats.bad == 10


# -- lookup semantics -----------------------------------------------------------------------

LISTS = {
    "gambling.txt": [
        "# gambling",
        "bet.example",
        "casino.test.org",
        "deep.a.b.example.net",
        "sub.adult.example.com",
        "both.example",
    ],
    "adult.txt": ["bet.example", "adult.example.com", "BET.example"],  # dup, other case
    "gambling.allow.txt": ["ok.bet.example", "both.example"],
    "malware.txt": ["bad.ok.bet.example", "evil.example.com"],
    "kids.allow.txt": ["example.com"],  # allows all of example.com, above the blocks in it
}

G, A, M = "gambling", "adult", "malware"


@pytest.fixture(scope="module")
def semantic_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("lists")
    srcs = write_lists(d / "lists", LISTS)
    report = build_index(srcs, d / "index.bin")
    ix = DomainIndex.open(d / "index.bin")
    yield ix, report
    ix.close()


@pytest.mark.parametrize(
    "name, expected",
    [
        # exact and subdomain
        ("bet.example", ("bet.example", "block", (A, G))),
        ("www.bet.example", ("bet.example", "block", (A, G))),
        ("a.b.c.www.bet.example", ("bet.example", "block", (A, G))),
        ("casino.test.org", ("casino.test.org", "block", (G,))),
        ("x.casino.test.org", ("casino.test.org", "block", (G,))),
        # a listed child does not list its parent, nor a sibling, nor a lookalike
        ("test.org", None),
        ("org", None),
        ("b.example.net", None),
        ("a.b.example.net", None),
        ("other.test.org", None),
        ("xcasino.test.org", None),
        ("bet.example.io", None),
        ("notbet.example", None),
        # allow beats block, at any level
        ("ok.bet.example", ("ok.bet.example", "allow", (G,))),
        ("x.ok.bet.example", ("ok.bet.example", "allow", (G,))),
        ("bad.ok.bet.example", ("ok.bet.example", "allow", (G,))),  # block below an allow
        ("y.bad.ok.bet.example", ("ok.bet.example", "allow", (G,))),
        ("both.example", ("both.example", "allow", (G,))),  # same name on block and allow
        ("x.both.example", ("both.example", "allow", (G,))),
        ("adult.example.com", ("example.com", "allow", ("kids",))),  # allow above a block
        ("x.evil.example.com", ("example.com", "allow", ("kids",))),
        # the most specific block wins
        ("deep.a.b.example.net", ("deep.a.b.example.net", "block", (G,))),
        # names longer than anything listed
        ("q.w.e.r.t.y.u.i.o.p.deep.a.b.example.net", ("deep.a.b.example.net", "block", (G,))),
        # case and trailing dot handled by lookup_text
        ("WWW.Bet.EXAMPLE.", ("bet.example", "block", (A, G))),
        # not hostnames
        ("example", None),
        ("localhost", None),
        ("", None),
        ("1.2.3.4", None),
    ],
)
def test_lookup_table(semantic_index, name, expected):
    ix, _ = semantic_index
    assert listed_set(ix, name) == expected
    d = normalize_domain(name)
    if d is not None:  # lookup() on the wire form agrees with lookup_text()
        assert ix.lookup(to_wire(d)) == ix.lookup_text(name)


def test_bare_tld_only_if_literally_listed(tmp_path, opened, monkeypatch):
    import agent.index.sources as sources_mod

    srcs = write_lists(tmp_path / "l", {"gambling.txt": ["casino", "bet.example"]})
    build_index(srcs, tmp_path / "strict.bin")  # normalize_domain rejects single labels
    strict = opened(tmp_path / "strict.bin")
    assert len(strict) == 1 and strict.lookup_text("x.casino") is None
    # A reader must still honour a TLD that is in the file (flagged in the header).
    monkeypatch.setattr(sources_mod, "normalize_domain", lambda t: t.strip().lower() or None)
    build_index(srcs, tmp_path / "tld.bin")
    ix = opened(tmp_path / "tld.bin")
    assert len(ix) == 2
    assert ix.lookup(to_wire("x.casino")).listed == "casino"
    assert ix.lookup(to_wire("casino")).listed == "casino"
    assert ix.lookup(to_wire("a.bet.example")).listed == "bet.example"
    assert ix.lookup(to_wire("example")) is None


def test_most_specific_block_wins_without_allow_lists(tmp_path, opened):
    srcs = write_lists(
        tmp_path / "l",
        {
            "adult.txt": ["example.com"],
            "gambling.txt": ["sub.example.com"],
            "malware.txt": ["x.sub.example.com"],
        },
    )
    build_index(srcs, tmp_path / "i.bin")
    ix = opened(tmp_path / "i.bin")
    assert listed_set(ix, "a.x.sub.example.com") == ("x.sub.example.com", "block", (M,))
    assert listed_set(ix, "a.sub.example.com") == ("sub.example.com", "block", (G,))
    assert listed_set(ix, "a.example.com") == ("example.com", "block", (A,))
    assert ix.lookup_text("com") is None


def test_match_details_and_metadata(semantic_index):
    ix, report = semantic_index
    m = ix.lookup_text("www.bet.example")
    assert isinstance(m, Match)
    assert m.sources == ("lists/adult.txt", "lists/gambling.txt")
    with pytest.raises(AttributeError):
        m.kind = "allow"  # type: ignore[misc]
    assert ix.categories == frozenset({"adult", "gambling", "malware", "kids"})
    assert ix.path is not None and ix.path.name == "index.bin"
    # 5 + 2 (bet.example, adult.example.com; BET.example is a duplicate) + 2 + 2 + 1, with
    # bet.example and both.example each listed twice
    assert len(ix) == 10 == report.domains
    assert report.per_source == {
        "lists/gambling.txt": 5,
        "lists/adult.txt": 2,
        "lists/gambling.allow.txt": 2,
        "lists/malware.txt": 2,
        "lists/kids.allow.txt": 1,
    }
    assert set(report.skipped_lines.values()) == {0}
    assert report.slots >= 2 * report.domains and report.slots & (report.slots - 1) == 0


def test_matches_lists_every_listed_suffix(semantic_index):
    ix, _ = semantic_index
    got = [(m.listed, m.kind, m.categories) for m in ix.matches(to_wire("x.bad.ok.bet.example"))]
    assert got == [
        ("bad.ok.bet.example", "block", (M,)),
        ("ok.bet.example", "allow", (G,)),
        ("bet.example", "block", (A, G)),
    ]
    assert ix.matches(to_wire("nothing.example.io")) == []
    assert ix.matches(b"\x00") == []
    assert DomainIndex.empty().matches(to_wire("bet.example")) == []


def test_lookup_wire_contract(semantic_index):
    ix, _ = semantic_index
    wire = to_wire("www.bet.example")
    assert ix.lookup(wire).listed == "bet.example"
    assert ix.lookup(memoryview(wire)).listed == "bet.example"
    # The caller lower-cases the name read from the packet (0x20 mixed case must not reach us).
    assert ix.lookup(b"\x03WWW\x03BET\x07EXAMPLE\x00") is None
    assert ix.lookup(b"\x00") is None  # the root
    assert ix.lookup(b"") is None
    assert ix.lookup(wire[:-1]) is None  # no root byte
    assert ix.lookup(b"\x3fwww\x03bet\x07example\x00") is None  # label length overruns
    assert ix.lookup(b"\x07example\x00") is None  # a bare TLD


def test_empty_index():
    ix = DomainIndex.empty()
    assert len(ix) == 0
    assert ix.lookup_text("bet.example") is None
    assert ix.lookup(to_wire("a.b.c.d")) is None
    assert ix.categories == frozenset()
    assert ix.path is None
    ix.close()


def test_empty_build(tmp_path, opened):
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "gambling.txt").write_text("# nothing yet\n")
    report = build_index(sources_in(tmp_path / "l"), tmp_path / "i.bin")
    assert report.domains == 0
    ix = opened(tmp_path / "i.bin")
    assert len(ix) == 0 and ix.lookup_text("x.example.com") is None
    assert ix.categories == frozenset({"gambling"})
    report = build_index([], tmp_path / "j.bin")
    assert report.domains == 0 and opened(tmp_path / "j.bin").lookup_text("a.b") is None


def test_closed_index_refuses_lookups(tmp_path):
    srcs = write_lists(tmp_path / "l", {"gambling.txt": ["bet.example"]})
    build_index(srcs, tmp_path / "i.bin")
    ix = DomainIndex.open(tmp_path / "i.bin")
    lookup = ix.lookup  # a reference taken before close keeps working (in-flight calls)
    ix.close()
    with pytest.raises(ValueError):
        ix.lookup(to_wire("bet.example"))
    with pytest.raises(ValueError):
        ix.matches(to_wire("bet.example"))
    assert lookup(to_wire("bet.example")).listed == "bet.example"
    ix.close()  # idempotent


def test_growth_and_shrink_paths(tmp_path, opened):
    # One hosts line with many names: more domains than lines, so the table must grow.
    names = [f"h{i}.example.org" for i in range(200)]
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "adult.txt").write_text("0.0.0.0 " + " ".join(names) + "\n")
    # Mostly comments: fewer domains than lines, so the table is shrunk to fit.
    (tmp_path / "l" / "gambling.txt").write_text("# c\n" * 5000 + "g.example.org\n")
    report = build_index(sources_in(tmp_path / "l"), tmp_path / "i.bin")
    assert report.domains == 201
    assert report.slots == 512  # the smallest power of two >= 2 x 201
    ix = opened(tmp_path / "i.bin")
    assert all(ix.lookup_text(n).listed == n for n in names)
    assert ix.lookup_text("x.g.example.org").categories == ("gambling",)


# -- property-style -------------------------------------------------------------------------


def _reference(block: dict[str, set[str]], allow: dict[str, set[str]], name: str):
    """The documented semantics, by brute force over dotted suffixes."""
    labels = name.split(".")
    suffixes = [".".join(labels[i:]) for i in range(len(labels) - 1)]  # no bare TLD
    for s in suffixes:
        if s in allow:
            return (s, "allow", tuple(sorted(allow[s])))
    for s in suffixes:
        if s in block:
            return (s, "block", tuple(sorted(block[s])))
    return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_lists_match_reference(tmp_path, opened, seed):
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits + "-_"
    tlds = ["com", "net", "org", "vn", "io", "xyz"]

    def label() -> str:
        return "".join(rng.choices(alphabet, k=rng.randint(1, 12)))

    def domain() -> str:
        return ".".join([label() for _ in range(rng.randint(1, 4))] + [rng.choice(tlds)])

    listed = [domain() for _ in range(3000)]
    listed += [label() + "." + d for d in rng.sample(listed, 300)]  # nested entries
    cats = ["adult", "gambling", "malware"]
    files: dict[str, list[str]] = {f"{c}.txt": [] for c in cats}
    block: dict[str, set[str]] = {}
    allow: dict[str, set[str]] = {}
    for d in listed:
        for c in rng.sample(cats, rng.choice([1, 1, 1, 2])):
            files[f"{c}.txt"].append(d)
            block.setdefault(d, set()).add(c)
    allowed = rng.sample(listed, 100) + [label() + "." + d for d in rng.sample(listed, 100)]
    files["adult.allow.txt"] = allowed
    for d in allowed:
        allow.setdefault(d, set()).add("adult")
    srcs = write_lists(tmp_path / "l", files)
    report = build_index(srcs, tmp_path / "i.bin")
    assert report.domains == len(set(block) | set(allow))
    ix = opened(tmp_path / "i.bin")

    queries = list(dict.fromkeys(listed + allowed))
    queries += [label() + "." + d for d in rng.sample(listed, 1000)]  # subdomains of listed
    queries += [domain() for _ in range(2000)]  # mostly unlisted
    hits = 0
    for q in queries:
        want = _reference(block, allow, q)
        got = ix.lookup_text(q)
        assert (None if got is None else (got.listed, got.kind, got.categories)) == want, q
        hits += want is not None
    assert hits >= 4000  # the test does exercise matches, not only misses


# -- build: atomicity, file format errors ---------------------------------------------------


def _only_index(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_build_keeps_previous_file(tmp_path, monkeypatch, opened):
    out_dir = tmp_path / "out"
    srcs = write_lists(tmp_path / "l", {"gambling.txt": ["bet.example"]})
    build_index(srcs, out_dir / "index.bin")
    before = (out_dir / "index.bin").read_bytes()

    # 1. a source that cannot be read
    missing = Source("adult", "block", tmp_path / "nope.txt", "nope")
    with pytest.raises(IndexBuildError, match="nope"):
        build_index(srcs + [missing], out_dir / "index.bin")
    assert (out_dir / "index.bin").read_bytes() == before
    assert _only_index(out_dir) == ["index.bin"]

    # 2. a failure while writing (the disk fills up at fsync time)
    srcs2 = write_lists(tmp_path / "l2", {"gambling.txt": ["other.example"]})

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_mod.os, "fsync", boom)
    with pytest.raises(IndexBuildError, match="No space"):
        build_index(srcs2, out_dir / "index.bin")
    monkeypatch.undo()
    assert (out_dir / "index.bin").read_bytes() == before
    assert _only_index(out_dir) == ["index.bin"]
    ix = opened(out_dir / "index.bin")
    assert ix.lookup_text("bet.example") is not None
    assert ix.lookup_text("other.example") is None

    # 3. a successful rebuild replaces it; an index opened before keeps its own data
    build_index(srcs2, out_dir / "index.bin")
    assert ix.lookup_text("bet.example") is not None
    fresh = opened(out_dir / "index.bin")
    assert fresh.lookup_text("bet.example") is None
    assert fresh.lookup_text("other.example") is not None
    assert _only_index(out_dir) == ["index.bin"]


@pytest.fixture
def good_index_bytes(tmp_path) -> bytes:
    srcs = write_lists(tmp_path / "l", {"gambling.txt": ["bet.example", "casino.example"]})
    build_index(srcs, tmp_path / "good.bin")
    return (tmp_path / "good.bin").read_bytes()


def _patched_header(data: bytes, **fields) -> bytes:
    names = ["magic", "version", "flags", "slots", "domains", "meta_len", "body_hash"]
    values = dict(zip(names, struct.unpack_from(HEADER_FORMAT, data), strict=True))
    values.update(fields)
    header = struct.pack(HEADER_FORMAT, *(values[n] for n in names))
    return header + data[len(header) :]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"", "too short"),
        (lambda b: b[:40], "too short"),
        (lambda b: b"garbage!" * 100, "magic"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[: HEADER_SIZE + 100], "truncated"),
        (lambda b: b + b"\0", "expected"),
        (lambda b: _patched_header(b, version=2), "version"),
        (lambda b: _patched_header(b, flags=0x80), "flags"),
        (lambda b: _patched_header(b, slots=12), "table size"),
        (lambda b: _patched_header(b, domains=1 << 20), "table size"),
        (
            lambda b: b[: HEADER_SIZE + 8] + bytes([b[HEADER_SIZE + 8] ^ 1]) + b[HEADER_SIZE + 9 :],
            "checksum",
        ),
    ],
)
def test_bad_files_raise_index_format_error(tmp_path, good_index_bytes, mutate, message):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(good_index_bytes))
    with pytest.raises(IndexFormatError, match=message):
        DomainIndex.open(bad)


def test_good_bytes_open(tmp_path, good_index_bytes, opened):
    (tmp_path / "copy.bin").write_bytes(good_index_bytes)
    assert (
        opened(tmp_path / "copy.bin").lookup_text("www.casino.example").listed == "casino.example"
    )
    with pytest.raises(FileNotFoundError):
        DomainIndex.open(tmp_path / "missing.bin")


# -- build in a subprocess -----------------------------------------------------------------


def test_build_in_subprocess(tmp_path, opened):
    srcs = write_lists(
        tmp_path / "l",
        {
            "gambling.txt": [
                "bet.example",
                "0.0.0.0 casino.example",
                "not a domain",
                "||poker.example^",
            ],
            "adult.txt": ["x.example", "bet.example"],
        },
    )
    # A label with colons and odd characters survives the trip to the child.
    srcs = [
        Source(s.category, s.kind, s.path, "https://lists.example/" + s.path.name + "?a=1")
        for s in srcs
    ]
    report = build_in_subprocess(srcs, tmp_path / "out" / "index.bin", timeout=60)
    assert isinstance(report, BuildReport)
    assert report.domains == 4
    assert report.per_source == {
        "https://lists.example/adult.txt?a=1": 2,
        "https://lists.example/gambling.txt?a=1": 3,
    }
    assert report.skipped_lines == {
        "https://lists.example/adult.txt?a=1": 0,
        "https://lists.example/gambling.txt?a=1": 1,
    }
    assert report.examples["https://lists.example/gambling.txt?a=1"] == [(3, "not a domain")]
    assert report.peak_rss_kib > 0 and report.seconds >= 0
    ix = opened(tmp_path / "out" / "index.bin")
    assert ix.lookup_text("www.bet.example").sources == (
        "https://lists.example/adult.txt?a=1",
        "https://lists.example/gambling.txt?a=1",
    )


def test_build_in_subprocess_failure_keeps_previous(tmp_path):
    srcs = write_lists(tmp_path / "l", {"gambling.txt": ["bet.example"]})
    out = tmp_path / "index.bin"
    build_in_subprocess(srcs, out)
    before = out.read_bytes()
    missing = Source("adult", "block", tmp_path / "does-not-exist.txt", "missing-list")
    with pytest.raises(IndexBuildError) as err:
        build_in_subprocess(srcs + [missing], out)
    assert "does-not-exist.txt" in str(err.value)
    assert out.read_bytes() == before
    assert _only_index(tmp_path) == ["index.bin", "l"]


def test_build_in_subprocess_timeout(tmp_path):
    srcs = write_lists(tmp_path / "l", {"gambling.txt": ["bet.example"]})
    with pytest.raises(IndexBuildError, match="timed out"):
        build_in_subprocess(srcs, tmp_path / "index.bin", timeout=0.001)
    assert not (tmp_path / "index.bin").exists()
    assert _only_index(tmp_path) == ["l"]


def test_build_cli_source_syntax(tmp_path, opened):
    srcs = write_lists(
        tmp_path / "l", {"gambling.txt": ["bet.example"], "adult.txt": ["x.example"]}
    )
    by = {s.category: s for s in srcs}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.index.build",
            "--out",
            str(tmp_path / "i.bin"),
            "--source",
            f"gambling:block:{by['gambling'].path}:my:label",
            "--source",
            f"adult:block:{by['adult'].path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # e.g. no runpy warning about importing the module twice
    report = json.loads(proc.stdout)
    assert report["domains"] == 2
    assert report["per_source"] == {"my:label": 1, "adult.txt": 1}
    assert opened(tmp_path / "i.bin").lookup_text("a.bet.example").sources == ("my:label",)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.index.build",
            "--out",
            str(tmp_path / "j.bin"),
            "--source",
            "Bad:block:x",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "category" in bad.stderr
    assert not (tmp_path / "j.bin").exists()


# -- real third-party lists, read in place --------------------------------------------------

needs_shared = pytest.mark.skipif(
    not SHARED_LISTS.is_dir(),
    reason=f"third-party test lists not present at {SHARED_LISTS} (see its README.md)",
)


@needs_shared
@pytest.mark.parametrize(
    "fmt_a, fmt_b",
    [
        ("hostsVN/gambling-hosts-VN", "hostsVN/gambling-domain-VN.txt"),  # hosts vs plain
        (
            "blocklistproject/drugs-hosts.txt",
            "blocklistproject/drugs-adblock.txt",
        ),  # hosts vs adblock
        ("hostsVN/adult-filter-VN.txt", "hostsVN/adult-domain-VN.txt"),  # adblock vs plain
    ],
)
def test_real_lists_same_content_in_different_formats(tmp_path, opened, fmt_a, fmt_b):
    """The same list published in two formats blocks exactly the same names."""
    stats_a, stats_b = ParseStats(), ParseStats()
    a = set(read_domains(SHARED_LISTS / fmt_a, stats_a))
    b = set(read_domains(SHARED_LISTS / fmt_b, stats_b))
    assert stats_a.bad == stats_b.bad == 0, (stats_a.examples, stats_b.examples)
    assert len(a) > 1000 and len(b) > 1000
    assert stats_a.lines == stats_a.domains + stats_a.comments + stats_a.ignored
    build_index([Source("c", "block", SHARED_LISTS / fmt_a, "a")], tmp_path / "a.bin")
    build_index([Source("c", "block", SHARED_LISTS / fmt_b, "b")], tmp_path / "b.bin")
    ia, ib = opened(tmp_path / "a.bin"), opened(tmp_path / "b.bin")
    assert all(ia.lookup_text(d) is not None for d in b)
    if fmt_a.endswith("adult-filter-VN.txt"):
        # hostsVN's adblock edition writes "||x^" where the plain one has only "www.x".
        assert all(ib.lookup_text(d) is not None or f"www.{d}" in b for d in a)
        assert 0 < len(a - b) < 10
    else:
        assert a == b


@needs_shared
def test_real_lists_bad_lines_counted_and_built(tmp_path, opened):
    path = SHARED_LISTS / "hostsVN" / "gambling-domain.txt"
    stats = ParseStats()
    domains = list(read_domains(path, stats))
    # This list has one bare IP address line; everything else is a hostname (some with
    # '_' or upper case, which are accepted and normalized).
    assert stats.bad == 1 and stats.examples[0][1] == "180.215.200.9"
    assert stats.lines == stats.domains + stats.bad + stats.comments
    assert "www.188betcn2.com" in domains and "nnbnpdk_deu.126002.com" in domains
    assert len(domains) - len(set(domains)) == 1  # www.188Betcn2.com and www.188betcn2.com
    srcs = [
        Source("gambling", "block", path, "hostsVN/gambling-domain.txt"),
        Source(
            "phishing_scam",
            "block",
            SHARED_LISTS / "blocklistproject" / "phishing-nl.txt",
            "blocklistproject/phishing-nl.txt",
        ),
    ]
    report = build_index(srcs, tmp_path / "i.bin")
    assert report.skipped_lines == {
        "hostsVN/gambling-domain.txt": 1,
        "blocklistproject/phishing-nl.txt": 0,
    }
    assert report.per_source["hostsVN/gambling-domain.txt"] == len(set(domains))
    ix = opened(tmp_path / "i.bin")
    assert len(ix) == report.domains > 200_000
    m = ix.lookup_text("m.www.188BETCN2.com")
    assert m is not None and m.categories == ("gambling",)


def test_a_domain_on_both_kinds_of_list_keeps_its_block_lists(tmp_path, opened):
    # lookup() lets the allow list win; matches() also gives the block lists, for profiles
    # the allow list does not apply to (sex_education is allowed from 12, adult is blocked).
    srcs = write_lists(
        tmp_path / "l",
        {
            "adult.txt": ["sexed.example", "porn.example"],
            "sex_education.allow.txt": ["sexed.example"],
        },
    )
    build_index(srcs, tmp_path / "i.bin")
    ix = opened(tmp_path / "i.bin")
    assert listed_set(ix, "www.sexed.example") == ("sexed.example", "allow", ("sex_education",))
    got = [
        (m.listed, m.kind, m.categories, m.sources)
        for m in ix.matches(to_wire("www.sexed.example"))
    ]
    assert got == [
        ("sexed.example", "allow", ("sex_education",), ("l/sex_education.allow.txt",)),
        ("sexed.example", "block", (A,), ("l/adult.txt",)),
    ]
    assert [m.kind for m in ix.matches(to_wire("porn.example"))] == ["block"]


def test_run_python_module_reports_a_failed_child():
    with pytest.raises(build_mod.ChildFailed) as err:
        build_mod.run_python_module(
            "agent.index.build", ["--out", "x", "--no-such-flag"], "", 60, "the test build"
        )
    message = str(err.value)
    assert message.startswith("the test build failed (exit status 2):")
    assert "--no-such-flag" in message and not err.value.timed_out
