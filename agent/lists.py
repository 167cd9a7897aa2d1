"""The compiled lists in force: built from the list files off the hot path, kept on disk, swapped in whole.

The index holds every list of every criteria feed in force under ``DATA/feeds`` (see
``feed_sources``), of every age, so that the age policies can decide per profile: the default
feed ``safenest-default``, built on the Pi from the bundled ``blocklists/`` (top folder and
``age/``; or the ``blocklists_dir`` setting) by :func:`agent.feed.default.ensure_default_feed`,
and the feeds synced from publishers. Add the public lists fetched by URL (the ``sources``
setting, :mod:`agent.feed.extra`), and the top-level files of the lists folder that the default
feed cannot hold (a category not in the table), or all of them if there is no default feed.

Each list carries a category label in the index: the category id, or ``id@band``
(``online_games@18+``) for a list whose own ``min_age`` differs from its category's.
:func:`criteria_in_force` gives every category known and its age.

The resolver's policy engine (agent/policy/) decides per profile from these labels and
:func:`criteria_in_force`: what is blocked depends on the profile's age band. This module only
compiles and loads the index; it returns it as :class:`CompiledLists` (the index and a label
naming where it came from).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .index import DomainIndex, Source, build_in_subprocess, bundled_dir, sources_in

if TYPE_CHECKING:
    from .feed.format import Category

log = logging.getLogger(__name__)

INDEX_FILE = "lists.idx"
FEEDS_DIR = "feeds"
KEYS_DIR = "keys"


@dataclass(frozen=True, slots=True)
class CompiledLists:
    """The index in force and where it came from (the lists folder, "... (last good)" or "none")."""

    index: DomainIndex
    label: str


def feeds_dir(data_dir: str | os.PathLike) -> Path:
    """Where synced feeds are kept: DATA/feeds."""
    return Path(data_dir) / FEEDS_DIR


def keys_dir(feed_keys_dir: str, data_dir: str | os.PathLike) -> Path:
    """The folder of pinned publisher keys: the feed_keys_dir setting, or DATA/keys."""
    return Path(feed_keys_dir) if feed_keys_dir else Path(data_dir) / KEYS_DIR


# From least to most protective: a feed may move a default category up this scale, never down.
STRICTNESS = ("off", "00+", "12+", "16+", "18+", "always")


def criteria_in_force(data_dir: str | os.PathLike) -> dict[str, Category]:
    """Every category known, by id -> :class:`agent.feed.format.Category` (with its min_age).

    The default table (agent/feed/categories.py), then the default feed's table, then every
    other feed in force from the oldest ``issued_at`` to the newest (ties: by publisher id), each
    overriding the ones before: the newest publisher wins per id, deterministically. One limit,
    because a pinned third-party feed must never switch protection off: a feed may make a
    category of the default table stricter (a national criteria set that rates social networks
    18+ applies), never looser than the default table (a feed rating ``adult`` 00+ or ``off``, or
    ``malware`` anything but ``always``, is ignored for that category, with a warning naming the
    feed). Loosening is the parent's choice, per profile. A category that is ``always`` in any
    feed in force stays ``always``.
    """
    from .feed.categories import DEFAULT_CATEGORIES
    from .feed.default import PUBLISHER_ID as DEFAULT_PUBLISHER
    from .feed.sync import feeds_in_force

    defaults = {c.id: c for c in DEFAULT_CATEGORIES}
    table = dict(defaults)
    always: set[str] = set()
    feeds = feeds_in_force(feeds_dir(data_dir))
    feeds.sort(
        key=lambda f: (f.publisher_id != DEFAULT_PUBLISHER, f.manifest.issued_at, f.publisher_id)
    )
    for feed in feeds:
        for category in feed.manifest.categories:
            default = defaults.get(category.id)
            floor = "always" if category.id in always else default.min_age if default else None
            if floor is not None and _looser(category.min_age, floor):
                log.warning(
                    "feed %s v%d rates category %s %s; ignored: a feed may not rate it looser "
                    "than the default table or an earlier feed's always (%s)",
                    feed.publisher_id,
                    feed.version,
                    category.id,
                    category.min_age,
                    floor,
                )
                continue
            if category.min_age == "always":
                always.add(category.id)
            table[category.id] = category
    return table


def _looser(age: str, than: str) -> bool:
    """Whether min_age `age` protects less than `than` (unknown ages count as looser)."""
    if age not in STRICTNESS:
        return True
    return STRICTNESS.index(age) < STRICTNESS.index(than) if than in STRICTNESS else False


def _list_label(manifest, lst) -> str:
    own = lst.min_age
    if own is not None and own != manifest.category(lst.category).min_age:
        return f"{lst.category}@{own}"
    return lst.category


def feed_sources(data_dir: str | os.PathLike) -> list[Source]:
    """Every list of every feed in force, of every age, with its category label (``id`` or
    ``id@band``) and labelled ``feed <publisher> v<version> <list path>`` so that explanations
    name them."""
    from .feed.sync import feeds_in_force

    out: list[Source] = []
    for feed in feeds_in_force(feeds_dir(data_dir)):
        if feed.expired():
            log.warning(
                "feed %s v%d expired at %s; it stays in force until a newer version is synced",
                feed.publisher_id,
                feed.version,
                feed.manifest.expires_at.isoformat(),
            )
        used = 0
        for lst, path in feed.lists:
            label = f"feed {feed.publisher_id} v{feed.version} {lst.path}"
            if not path.is_file():  # the verified copy was damaged on disk: do not fail the build
                log.error(
                    "%s: %s is missing; the list is left out until the feed is synced again",
                    label,
                    path,
                )
                continue
            try:
                out.append(Source(_list_label(feed.manifest, lst), lst.kind, path, label))
            except ValueError as exc:
                log.warning("%s: skipped: %s", label, exc)
                continue
            used += 1
        log.info(
            "feed %s v%d: %d of its %d lists indexed",
            feed.publisher_id,
            feed.version,
            used,
            len(feed.manifest.lists),
        )
    return out


def lists_dir(setting: str) -> Path:
    return Path(setting) if setting else bundled_dir()


def index_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / INDEX_FILE


def _direct_sources(source_dir: Path, default) -> list[Source]:
    """Top-level files of the lists folder indexed as they are: those the default feed does
    not hold, or all of them when no default feed is in force (the behaviour before feeds)."""
    top = sources_in(source_dir)
    if default.in_force is None:
        return top
    left_out = {p.resolve() for p in default.left_out}
    return [s for s in top if s.path.resolve() in left_out]


def compile_lists(blocklists_dir: str, data_dir: str | Path) -> CompiledLists:
    """Compile every list in force into the on-disk index (in a child process) and open it.

    Builds the default feed first when the lists folder changed (in a child process too, so
    that the serving process never holds a list's worth of names; never fails because of it).
    The file is replaced atomically, so a failed build leaves the last good one.
    """
    from .feed.default import ensure_default_feed_in_child
    from .feed.extra import sources_in_force

    source_dir = lists_dir(blocklists_dir)
    if not sources_in(source_dir) and not any(source_dir.glob("*/*.txt")):
        # Compiling nothing would replace the last good lists with none: refuse instead.
        raise FileNotFoundError(f"no <category>.txt lists in {source_dir}")
    started = time.monotonic()
    default = ensure_default_feed_in_child(source_dir, data_dir)
    if default.built:
        log.info("default feed: new version built in %.2f s", time.monotonic() - started)
    from_feeds = feed_sources(data_dir)
    direct = _direct_sources(source_dir, default)
    from_urls = sources_in_force(data_dir)
    target = index_path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    every = direct + from_feeds + from_urls
    report = build_in_subprocess(every, target)
    log.info(
        "compiled %d names from %d lists in %s (%d of feeds, %d by URL, %d files of the folder) "
        "in %.2f s",
        report.domains,
        len(every),
        source_dir,
        len(from_feeds),
        len(from_urls),
        len(direct),
        report.seconds,
    )
    for label, skipped in sorted(report.skipped_lines.items()):
        if skipped:
            log.warning("%s: skipped %d lines that are not domain names", label, skipped)
    return CompiledLists(DomainIndex.open(target), f"{source_dir}")


def last_good(data_dir: str | Path) -> CompiledLists | None:
    """The index compiled last time, if it is still readable."""
    path = index_path(data_dir)
    if not path.exists():
        return None
    try:
        return CompiledLists(DomainIndex.open(path), f"{path} (last good)")
    except Exception as exc:  # a corrupt file must not stop DNS from starting
        log.error("cannot use the saved lists %s: %s", path, exc)
        return None


def load_lists(blocklists_dir: str, data_dir: str | Path) -> CompiledLists:
    """Compile the lists now; if that fails, the last good copy; failing that, block nothing (and say so)."""
    try:
        return compile_lists(blocklists_dir, data_dir)
    except Exception as exc:
        log.error("cannot compile the block lists: %s", exc)
    saved = last_good(data_dir)
    if saved is not None:
        log.warning("using the lists compiled last time")
        return saved
    log.error("no block lists are in force: every name is allowed until the lists compile")
    return CompiledLists(DomainIndex.empty(), "none")
