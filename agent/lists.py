"""The compiled lists in force: built from the list files off the hot path, kept on disk, swapped in whole.

The index is built from the bundled top-level ``blocklists/`` (or the ``blocklists_dir``
setting) plus the lists of every criteria feed in force under ``DATA/feeds`` (see
``feed_sources``). Until profiles with ages exist, only what applies to every child is
enforced: the feeds' block lists whose min_age is ``always`` or ``18+``, and their allow lists
that apply by 17 (min_age ``00+``, ``12+``, ``16+`` or ``always``); i.e. the policy of a
17-year-old.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .index import DomainIndex, Source, build_in_subprocess, bundled_dir, sources_in
from .policy import Snapshot

log = logging.getLogger(__name__)

INDEX_FILE = "lists.idx"
FEEDS_DIR = "feeds"
KEYS_DIR = "keys"

# Until the age profiles exist, the feeds' lists enforced are those that apply to every child.
ENFORCED_BLOCK_AGES = frozenset({"always", "18+"})
ENFORCED_ALLOW_AGES = frozenset({"always", "00+", "12+", "16+"})


def feeds_dir(data_dir: str | os.PathLike) -> Path:
    """Where synced feeds are kept: DATA/feeds."""
    return Path(data_dir) / FEEDS_DIR


def keys_dir(feed_keys_dir: str, data_dir: str | os.PathLike) -> Path:
    """The folder of pinned publisher keys: the feed_keys_dir setting, or DATA/keys."""
    return Path(feed_keys_dir) if feed_keys_dir else Path(data_dir) / KEYS_DIR


def feed_sources(data_dir: str | os.PathLike) -> list[Source]:
    """The lists of every feed in force that are enforced today (see the module docstring),
    labelled ``feed <publisher> v<version> <list path>`` so that explanations name them."""
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
            age = feed.manifest.min_age_of(lst)
            enforced = ENFORCED_BLOCK_AGES if lst.kind == "block" else ENFORCED_ALLOW_AGES
            if age not in enforced:
                continue
            label = f"feed {feed.publisher_id} v{feed.version} {lst.path}"
            if not path.is_file():  # the verified copy was damaged on disk: do not fail the build
                log.error("%s: %s is missing; the list is left out until the feed is synced again", label, path)
                continue
            try:
                out.append(Source(lst.category, lst.kind, path, label))
            except ValueError as exc:
                log.warning("%s: skipped: %s", label, exc)
                continue
            used += 1
        log.info(
            "feed %s v%d: %d of its %d lists enforced (until age profiles exist: what applies to every child)",
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


def compile_lists(blocklists_dir: str, data_dir: str | Path) -> Snapshot:
    """Compile every list file into the on-disk index (in a child process) and open it.

    The file is replaced atomically, so a failed build leaves the last good one.
    """
    source_dir = lists_dir(blocklists_dir)
    sources = sources_in(source_dir)
    if not sources:
        # Compiling nothing would replace the last good lists with none: refuse instead.
        raise FileNotFoundError(f"no <category>.txt lists in {source_dir}")
    from_feeds = feed_sources(data_dir)
    target = index_path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    report = build_in_subprocess(sources + from_feeds, target)
    log.info(
        "compiled %d names from %d lists in %s%s in %.2f s",
        report.domains,
        len(sources),
        source_dir,
        f" and {len(from_feeds)} of feeds" if from_feeds else "",
        report.seconds,
    )
    for label, skipped in sorted(report.skipped_lines.items()):
        if skipped:
            log.warning("%s: skipped %d lines that are not domain names", label, skipped)
    return Snapshot(DomainIndex.open(target), label=f"{source_dir}")


def last_good(data_dir: str | Path) -> Snapshot | None:
    """The index compiled last time, if it is still readable."""
    path = index_path(data_dir)
    if not path.exists():
        return None
    try:
        return Snapshot(DomainIndex.open(path), label=f"{path} (last good)")
    except Exception as exc:  # a corrupt file must not stop DNS from starting
        log.error("cannot use the saved lists %s: %s", path, exc)
        return None


def load_snapshot(blocklists_dir: str, data_dir: str | Path) -> Snapshot:
    """Compile the lists now; if that fails, the last good copy; failing that, block nothing (and say so)."""
    try:
        return compile_lists(blocklists_dir, data_dir)
    except Exception as exc:
        log.error("cannot compile the block lists: %s", exc)
    snapshot = last_good(data_dir)
    if snapshot is not None:
        log.warning("using the lists compiled last time")
        return snapshot
    log.error("no block lists are in force: every name is allowed until the lists compile")
    return Snapshot(DomainIndex.empty(), label="none")
