"""The compiled lists in force: built from the list files off the hot path, kept on disk, swapped in whole."""

from __future__ import annotations

import logging
from pathlib import Path

from .index import DomainIndex, build_in_subprocess, bundled_dir, sources_in
from .policy import Snapshot

log = logging.getLogger(__name__)

INDEX_FILE = "lists.idx"


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
    target = index_path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    report = build_in_subprocess(sources, target)
    log.info(
        "compiled %d names from %d lists in %s in %.2f s",
        report.domains,
        len(sources),
        source_dir,
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
