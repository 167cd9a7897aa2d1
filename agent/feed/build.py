"""The publisher's side: turn a folder of hand-kept list files into a signed feed folder.

Source files (any depth under SRC_DIR, hidden files and folders skipped):

* ``<category>.txt``: a block list of that category;
* ``<category>.allow.txt``: an allow list;
* ``<category>.<NN>.txt`` with NN one of 00, 12, 16, 18: a block list with its own age band,
  e.g. ``online_games.18.txt`` for games rated 18+ (the category's ``min_age`` is for the rest).

Files of the same category, kind and band are merged (``blocklists/age/messaging.txt`` and a
``messaging.txt`` elsewhere make one list). Every line is read with the loader's
:func:`~agent.index.sources.read_domains` (plain, hosts and ``||domain^`` lines), so a bad line
is counted and reported, never guessed at. The categories are the default table
(:mod:`agent.feed.categories`) unless SRC_DIR holds a ``categories.json`` (a JSON array in the
manifest's ``categories`` form).

The output folder gets ``lists/<category>[.allow|.NN].txt`` (sorted, deduplicated, names
covered by a listed parent dropped), ``manifest.json`` and ``manifest.json.sig``, each written to
a temporary file and renamed into place; list files no longer in the manifest are removed last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.feed.categories import DEFAULT_CATEGORIES
from agent.feed.format import (
    AGE_BANDS,
    FORMAT,
    MANIFEST_NAME,
    MAX_VALIDITY,
    SIGNATURE_NAME,
    Category,
    FeedError,
    FeedList,
    Manifest,
    ManifestError,
    Publisher,
    parse_categories,
    parse_manifest,
)
from agent.feed.sign import SecretKey, load_secret_key, sign
from agent.feed.verify import write_atomic
from agent.index.sources import ParseStats, read_domains

__all__ = [
    "BuildError",
    "BuildReport",
    "FeedSource",
    "ListReport",
    "SourceReport",
    "build_feed",
    "feed_sources",
    "CATEGORIES_FILE",
    "DEFAULT_VALID_DAYS",
]

CATEGORIES_FILE = "categories.json"
DEFAULT_VALID_DAYS = 30
LISTS_DIR = "lists"
PUBLIC = 0o644  # a feed is served by a web server: readable by all
_SOURCE_NAME = re.compile(r"([a-z0-9_]+)(?:\.(allow)|\.(00|12|16|18))?\.txt")


class BuildError(FeedError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "build")


@dataclass(frozen=True)
class FeedSource:
    category: str
    kind: str  # "block" | "allow"
    min_age: str | None  # a band for <category>.<NN>.txt, else None (the category's)
    path: Path
    label: str  # e.g. "blocklists/age/messaging.txt"

    @property
    def output_path(self) -> str:
        if self.kind == "allow":
            return f"{LISTS_DIR}/{self.category}.allow.txt"
        if self.min_age is not None:
            return f"{LISTS_DIR}/{self.category}.{self.min_age[:2]}.txt"
        return f"{LISTS_DIR}/{self.category}.txt"


@dataclass(frozen=True)
class SourceReport:
    label: str
    category: str
    kind: str
    domains: int  # entries read, duplicates included
    bad: int  # lines skipped as not a domain
    examples: tuple[tuple[int, str], ...]  # (line number, text) of the first bad lines


@dataclass(frozen=True)
class ListReport:
    path: str
    category: str
    kind: str
    min_age: str | None
    count: int
    sha256: str
    duplicates: int  # the same name more than once, across the merged sources
    redundant: int  # names already covered by a listed parent domain
    sources: tuple[str, ...]


@dataclass(frozen=True)
class BuildReport:
    out_dir: Path
    manifest: Manifest
    previous_version: int | None
    lists: tuple[ListReport, ...]
    sources: tuple[SourceReport, ...]
    removed: tuple[str, ...] = field(default=())  # stale list files deleted from out_dir

    @property
    def bad_lines(self) -> int:
        return sum(s.bad for s in self.sources)


def feed_sources(src_dir: str | os.PathLike) -> list[FeedSource]:
    """The list files under ``src_dir``, in a stable order; BuildError for a misnamed .txt file."""
    root = Path(src_dir)
    if not root.is_dir():
        raise BuildError(f"{root} is not a folder")
    out: list[FeedSource] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(".txt"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            m = _SOURCE_NAME.fullmatch(name)
            if m is None:
                raise BuildError(
                    f"{root.name}/{rel}: a list file is named <category>.txt, <category>.allow.txt "
                    "or <category>.<00|12|16|18>.txt, with a category id of [a-z0-9_]"
                )
            category, allow, band = m.groups()
            out.append(
                FeedSource(
                    category=category,
                    kind="allow" if allow else "block",
                    min_age=f"{band}+" if band else None,
                    path=path,
                    label=f"{root.name}/{rel}",
                )
            )
    return out


def _load_categories(src: Path, categories: tuple[Category, ...] | None) -> tuple[Category, ...]:
    if categories is not None:
        return tuple(categories)
    path = src / CATEGORIES_FILE
    if not path.exists():
        return DEFAULT_CATEGORIES
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return parse_categories(doc, "categories")
    except (ValueError, OSError, ManifestError) as exc:
        raise BuildError(f"{src.name}/{CATEGORIES_FILE}: {exc}") from None


def _previous(out: Path) -> Manifest | None:
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return parse_manifest(path.read_bytes())
    except (FeedError, OSError) as exc:
        raise BuildError(
            f"cannot read the version of the feed already in {path} ({exc}); "
            "pass a version to build over it"
        ) from None


def _without_covered(domains: set[str]) -> set[str]:
    """Drop names whose parent domain is also listed (the parent already covers them)."""
    keep = set()
    for d in domains:
        labels = d.split(".")
        if not any(".".join(labels[i:]) in domains for i in range(1, len(labels) - 1)):
            keep.add(d)
    return keep


def _list_bytes(publisher_id: str, src: FeedSource, domains: list[str]) -> bytes:
    band = f", min_age {src.min_age}" if src.min_age else ""
    header = (
        f"# SafeNest criteria feed, format {FORMAT}\n"
        f"# publisher: {publisher_id}\n"
        f"# category: {src.category}, kind: {src.kind}{band}\n"
        f"# entries: {len(domains)}\n"
    )
    body = "".join(d + "\n" for d in domains)
    return (header + body).encode("ascii")


def build_feed(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    key: SecretKey | str | os.PathLike,
    publisher: str | None = None,
    *,
    now: datetime | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
    version: int | None = None,
    strict: bool = False,
    categories: tuple[Category, ...] | None = None,
    sources: list[FeedSource] | None = None,
) -> BuildReport:
    """Build and sign a feed from ``src_dir`` into ``out_dir``.

    ``key`` is the publisher's secret key (or its file); the publisher id comes from it, since a
    pinned public key names its publisher. ``publisher`` overrides the publisher's display name.
    The version is one more than the feed already in ``out_dir`` (1 for a new folder), or
    ``version``, which must be higher. With ``strict``, any line that is not a domain fails the
    build; otherwise such lines are skipped and reported. ``sources`` replaces the files found
    in ``src_dir`` (the default feed passes the files it chose, see agent/feed/default.py).
    """
    src = Path(src_dir)
    out = Path(out_dir)
    secret = key if isinstance(key, SecretKey) else load_secret_key(key)
    if not isinstance(valid_days, int) or not 1 <= valid_days <= MAX_VALIDITY.days:
        raise BuildError(f"valid_days must be 1 to {MAX_VALIDITY.days} (got {valid_days!r})")
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or src_real in out_real.parents:
        raise BuildError(f"{out} is inside {src}: the next build would read the feed as a source")

    table = _load_categories(src, categories)
    known = {c.id: c for c in table}
    sources = feed_sources(src) if sources is None else list(sources)
    for s in sources:
        if s.category not in known:
            raise BuildError(
                f"{s.label}: unknown category {s.category!r} (known: {', '.join(known)}); "
                f"add it to {CATEGORIES_FILE} or rename the file"
            )

    try:
        previous = _previous(out)
    except BuildError:
        if version is None:
            raise
        previous = None  # an unreadable old manifest: the explicit version decides
    if version is None:
        version = previous.version + 1 if previous else 1
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BuildError(f"the version must be a whole number from 1 (got {version!r})")
    elif previous is not None and version <= previous.version:
        raise BuildError(f"version {version} is not above version {previous.version} already in {out}")
    if previous is not None and previous.publisher.id != secret.publisher_id:
        raise BuildError(
            f"{out} holds a feed of publisher {previous.publisher.id}, not {secret.publisher_id}: "
            "build into another folder"
        )

    # Read, validate and merge the sources.
    groups: dict[tuple[str, str, str | None], list[FeedSource]] = {}
    source_reports: list[SourceReport] = []
    merged: dict[tuple[str, str, str | None], list[str]] = {}
    for s in sources:
        stats = ParseStats()
        names = list(read_domains(s.path, stats))
        source_reports.append(
            SourceReport(s.label, s.category, s.kind, stats.domains, stats.bad, tuple(stats.examples))
        )
        if strict and stats.bad:
            lineno, text = stats.examples[0]
            raise BuildError(
                f"{s.label} line {lineno}: {text.strip()!r} is not a domain name "
                f"({stats.bad} bad {'line' if stats.bad == 1 else 'lines'}; fix them, or build "
                "without strict to skip them)"
            )
        k = (s.category, s.kind, s.min_age)
        groups.setdefault(k, []).append(s)
        merged.setdefault(k, []).extend(names)

    order = {c.id: i for i, c in enumerate(table)}
    keys = sorted(groups, key=lambda k: (order[k[0]], k[1] != "block", k[2] or ""))
    list_reports: list[ListReport] = []
    feed_lists: list[FeedList] = []
    payloads: dict[str, bytes] = {}
    for k in keys:
        first = groups[k][0]
        names = merged[k]
        unique = set(names)
        kept = _without_covered(unique)
        domains = sorted(kept)
        data = _list_bytes(secret.publisher_id, first, domains)
        digest = hashlib.sha256(data).hexdigest()
        path = first.output_path
        payloads[path] = data
        feed_lists.append(FeedList(k[0], path, digest, len(domains), k[1], k[2]))
        list_reports.append(
            ListReport(
                path=path,
                category=k[0],
                kind=k[1],
                min_age=k[2],
                count=len(domains),
                sha256=digest,
                duplicates=len(names) - len(unique),
                redundant=len(unique) - len(kept),
                sources=tuple(s.label for s in groups[k]),
            )
        )

    issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    manifest = Manifest(
        format=FORMAT,
        publisher=Publisher(secret.publisher_id, publisher or secret.publisher_name, secret.key_id),
        version=version,
        issued_at=issued,
        expires_at=issued + timedelta(days=valid_days),
        age_bands=AGE_BANDS,
        categories=table,
        lists=tuple(feed_lists),
    )
    manifest_bytes = manifest.to_bytes()
    parse_manifest(manifest_bytes)  # what we sign must read back as valid format 1

    out.mkdir(parents=True, exist_ok=True)
    for path, data in payloads.items():
        write_atomic(out.joinpath(*path.split("/")), data, PUBLIC)
    write_atomic(out / MANIFEST_NAME, manifest_bytes, PUBLIC)
    write_atomic(out / SIGNATURE_NAME, sign(secret, manifest_bytes), PUBLIC)

    removed: list[str] = []
    lists_dir = out / LISTS_DIR
    if lists_dir.is_dir():
        for p in sorted(lists_dir.rglob("*.txt")):
            rel = p.relative_to(out).as_posix()
            if rel not in payloads:
                p.unlink()
                removed.append(rel)

    return BuildReport(
        out_dir=out,
        manifest=manifest,
        previous_version=previous.version if previous else None,
        lists=tuple(list_reports),
        sources=tuple(source_reports),
        removed=tuple(removed),
    )
