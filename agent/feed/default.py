"""The default feed: SafeNest's own criteria feed, built on the Pi from the bundled lists.

``ensure_default_feed(src_dir, data_dir)`` turns ``blocklists/`` (the top folder and ``age/``,
or the folder of the ``blocklists_dir`` setting) into a signed feed of publisher
``safenest-default`` and installs it under ``DATA/feeds/`` like any synced feed, so that the
index, ``safenest explain`` and the age policies see one kind of thing. It is trusted like the
installed code: its key is generated on first use and kept in ``DATA/keys/``
(``safenest-default.key``, mode 0600, and ``safenest-default.key.pub``), and nothing outside
the Pi ever signs it.

A new version is built when there is no default feed in force, when the sources changed (a
hash of the list files, their names and the category table, e.g. after an upgrade), when the
key changed, or when the feed in force expires within 30 days (it is valid for 365). The build
goes to a hidden folder and is installed by :func:`agent.feed.sync.sync_feed`, which verifies
it and swaps it in in one step. Whatever fails leaves the last good copy in force: this
function logs and returns, it never raises, so DNS always starts.

Files whose category is not in the table (or whose name is not a list name) are left out of
the feed; ``agent.lists`` indexes such files of the top folder directly, as before.

The serving process calls :func:`ensure_default_feed_in_child`: it checks in place whether the
copy in force is up to date (names, the key and one streamed hash of the files: no list is
held in memory) and otherwise builds in a child ``python -m agent.feed.default``, because
reading, deduplicating and hashing a million names costs some 170 MiB that CPython would keep
in the resolver after the build. The child's log lines are logged again by the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.feed.build import _SOURCE_NAME, FeedSource, _load_categories, build_feed
from agent.feed.format import Category, FeedError, format_time
from agent.feed.sign import SecretKey, generate_key, load_secret_key, write_keypair
from agent.feed.sync import (
    ACCEPTED,
    RESERVED_PUBLISHER,
    InstalledFeed,
    _installed,
    _write_status,
    read_status,
    sync_feed,
)
from agent.feed.verify import write_atomic
from agent.index.build import ChildFailed, run_python_module

__all__ = [
    "PUBLISHER_ID",
    "DefaultFeed",
    "bundled_feed_sources",
    "ensure_default_feed",
    "ensure_default_feed_in_child",
    "sources_digest",
]

log = logging.getLogger("safenest.feed.default")

PUBLISHER_ID = RESERVED_PUBLISHER  # "safenest-default": no synced feed may use it
PUBLISHER_NAME = "SafeNest (bundled lists)"
KEY_FILE = f"{PUBLISHER_ID}.key"
STATE_FILE = (
    "default-feed.json"  # in DATA/feeds/safenest-default/: what the copy in force was built from
)
VALID_DAYS = 365
RENEW_BEFORE = timedelta(days=30)
CHILD_TIMEOUT = 600.0  # seconds for a build in a child (a million names: about 4 s on a PC)
CHILD_NICE = 10  # the build yields the CPU to serving
_BUILD_PREFIX = ".default-build-"
_DIGEST_VERSION = (
    b"safenest-default-feed 1\n"  # bump to force a rebuild when the build itself changes
)


@dataclass(frozen=True)
class DefaultFeed:
    """What :func:`ensure_default_feed` did: the feed in force afterwards (None if none),
    whether a new version was built and installed, and the error when a build failed."""

    in_force: InstalledFeed | None
    built: bool
    error: str | None = None
    left_out: tuple[Path, ...] = ()  # files not in the feed (unknown category or name)


def bundled_feed_sources(
    src_dir: Path, table: tuple[Category, ...]
) -> tuple[list[FeedSource], list[Path]]:
    """The list files under ``src_dir`` that go into the default feed, in a stable order, and the
    ``.txt`` files that do not (misnamed, or of a category not in ``table``)."""
    known = {c.id for c in table}
    chosen: list[FeedSource] = []
    left_out: list[Path] = []
    if not src_dir.is_dir():
        return chosen, left_out
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(".txt"):
                continue
            path = Path(dirpath) / name
            m = _SOURCE_NAME.fullmatch(name)
            if m is None or m.group(1) not in known:
                left_out.append(path)
                continue
            category, allow, band = m.groups()
            rel = path.relative_to(src_dir).as_posix()
            chosen.append(
                FeedSource(
                    category,
                    "allow" if allow else "block",
                    f"{band}+" if band else None,
                    path,
                    f"{src_dir.name}/{rel}",
                )
            )
    return chosen, left_out


def sources_digest(sources: list[FeedSource], table: tuple[Category, ...]) -> str:
    """A hash of everything the default feed is built from: the category table and each
    file's place, kind, age and bytes."""
    h = hashlib.sha256(_DIGEST_VERSION)
    h.update(
        json.dumps([c.to_dict() for c in table], ensure_ascii=False, sort_keys=True).encode("utf-8")
    )
    for s in sources:
        h.update(f"\n{s.label}\0{s.category}\0{s.kind}\0{s.min_age}\0".encode())
        with open(s.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """One builder at a time (`safenest run` and `safenest explain` may start together)."""
    with open(store / ".default-feed.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _key(keys_dir: Path) -> SecretKey:
    """The default feed's signing key, made on first use (or again if it cannot be read)."""
    path = keys_dir / KEY_FILE
    if path.exists():
        try:
            return load_secret_key(path)
        except FeedError as exc:
            log.warning("default feed: the key %s cannot be used (%s); making a new one", path, exc)
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key(PUBLISHER_ID, PUBLISHER_NAME)
    write_keypair(path, key, force=True)
    log.info("default feed: made its signing key %s (key id %s)", path, key.key_id)
    return key


def _read_state(pub_dir: Path) -> dict:
    try:
        data = json.loads((pub_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _why_rebuild(
    installed: InstalledFeed | None, state: dict, digest: str, key: SecretKey, now: datetime
) -> str | None:
    if installed is None:
        return "no default feed in force yet"
    if state.get("sources_sha256") != digest or state.get("version") != installed.version:
        return "the bundled lists changed"
    if installed.manifest.publisher.key_id != key.key_id:
        return "its key changed"
    if installed.manifest.expires_at - now < RENEW_BEFORE:
        return f"it expires at {format_time(installed.manifest.expires_at)}"
    return None


def ensure_default_feed(
    src_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    now: datetime | None = None,
) -> DefaultFeed:
    """Build and install a new version of the default feed if it is missing or out of date.

    Never raises: a failure is logged and returned, and the last good copy stays in force.
    """
    src = Path(src_dir)
    store = Path(data_dir) / "feeds"
    pub_dir = store / PUBLISHER_ID
    now = (now or datetime.now(UTC)).astimezone(UTC)
    installed: InstalledFeed | None = None
    left_out: list[Path] = []
    try:
        pub_dir.mkdir(parents=True, exist_ok=True)
        with _locked(store):
            installed = _installed(pub_dir)
            table = _load_categories(src, None)
            chosen, left_out = bundled_feed_sources(src, table)
            digest = sources_digest(chosen, table)
            key = _key(Path(data_dir) / "keys")
            why = _why_rebuild(installed, _read_state(pub_dir), digest, key, now)
            if why is None:
                return DefaultFeed(installed, False, None, tuple(left_out))
            version = (installed.version if installed else 0) + 1
            _remove_stale_builds(store)  # of a child killed at its time limit
            build_dir = Path(tempfile.mkdtemp(dir=store, prefix=_BUILD_PREFIX))
            try:
                build_feed(
                    src,
                    build_dir,
                    key,
                    now=now,
                    valid_days=VALID_DAYS,
                    version=version,
                    categories=table,
                    sources=chosen,
                )
                result = sync_feed(
                    build_dir, key.public, store, allow_insecure=True, now=now, default_feed=True
                )
            finally:
                shutil.rmtree(build_dir, ignore_errors=True)
            if result.result != ACCEPTED:
                raise FeedError(
                    f"the new version was not accepted: {result.reason}: {result.message}", "build"
                )
            state = {
                "version": result.version,
                "sources_sha256": digest,
                "source_dir": str(src),
                "built_at": format_time(now),
            }
            write_atomic(pub_dir / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode("utf-8"))
            status = read_status(store, PUBLISHER_ID)
            status["url"] = f"bundled lists in {src}"  # not the temporary build folder
            status.pop("http", None)
            _write_status(pub_dir, status)
            lists = sum(1 for _ in result.in_force.manifest.lists) if result.in_force else 0
            log.info(
                "default feed: built version %d from %s (%s): %d lists",
                result.version,
                src,
                why,
                lists,
            )
            return DefaultFeed(result.in_force, True, None, tuple(left_out))
    except Exception as exc:  # never block start: the last good copy stays in force
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FeedError) else str(exc)
        still = installed if installed is not None else _safe_installed(pub_dir)
        log.error(
            "default feed: cannot build it from %s: %s; %s",
            src,
            message,
            f"version {still.version} stays in force" if still else "no default feed is in force",
        )
        return DefaultFeed(still, False, message, tuple(left_out))


def _safe_installed(pub_dir: Path) -> InstalledFeed | None:
    try:
        return _installed(pub_dir)
    except Exception:
        return None


def _remove_stale_builds(store: Path) -> None:
    """Build folders left by a builder that was killed (called with the lock held)."""
    for stale in store.glob(f"{_BUILD_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _up_to_date(src: Path, data_dir: Path, now: datetime) -> DefaultFeed | None:
    """The copy in force if it needs no new version, else None: the checks of
    :func:`ensure_default_feed`, without the lock, without writing anything, in little memory.
    None as well when anything cannot be read (the builder will say why)."""
    pub_dir = data_dir / "feeds" / PUBLISHER_ID
    key_path = data_dir / "keys" / KEY_FILE
    try:
        installed = _installed(pub_dir)
        if installed is None or not key_path.exists():
            return None
        table = _load_categories(src, None)
        chosen, left_out = bundled_feed_sources(src, table)
        digest = sources_digest(chosen, table)
        key = load_secret_key(key_path)
        if _why_rebuild(installed, _read_state(pub_dir), digest, key, now) is not None:
            return None
    except Exception:
        return None
    return DefaultFeed(installed, False, None, tuple(left_out))


def _left_out(src: Path) -> tuple[Path, ...]:
    try:
        return tuple(bundled_feed_sources(src, _load_categories(src, None))[1])
    except Exception:
        return ()


def ensure_default_feed_in_child(
    src_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    timeout: float = CHILD_TIMEOUT,
    nice: int = CHILD_NICE,
) -> DefaultFeed:
    """:func:`ensure_default_feed` for the serving process: the build, if one is needed, runs
    in a child process so that its memory is given back when it exits.

    Never raises either: a child that fails, is killed or times out is logged as a failed
    build, and the last good copy stays in force.
    """
    src, data = Path(src_dir), Path(data_dir)
    current = _up_to_date(src, data, datetime.now(UTC))
    if current is not None:
        return current
    args = ["--src", str(src), "--data", str(data), "--nice", str(int(nice))]
    try:
        out = run_python_module("agent.feed.default", args, "", timeout, "the default feed's build")
        lines = [line for line in out.splitlines() if line.strip()]
        report = json.loads(lines[-1]) if lines else None
        if not isinstance(report, dict):
            raise ValueError(f"it printed no report: {out.strip()[-500:]!r}")
        for name, level, message in report.get("log", ()):
            logging.getLogger(str(name)).log(int(level), "%s", message)
        error = report.get("error")
        built = bool(report.get("built"))
        left_out = tuple(Path(p) for p in report.get("left_out", ()))
    except (ChildFailed, OSError, ValueError, TypeError) as exc:
        message = str(exc)
        still = _safe_installed(data / "feeds" / PUBLISHER_ID)
        log.error(
            "default feed: cannot build it from %s: %s; %s",
            src,
            message,
            f"version {still.version} stays in force" if still else "no default feed is in force",
        )
        return DefaultFeed(still, False, message, _left_out(src))
    return DefaultFeed(_safe_installed(data / "feeds" / PUBLISHER_ID), built, error, left_out)


class _Collect(logging.Handler):
    """The child's log records, sent back to the caller in the report."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.feed.default --src DIR --data DIR [--nice N]``: ensure_default_feed,
    then one JSON line on stdout: built, error, left_out and the log records."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m agent.feed.default",
        description="Build the default feed from a lists folder if it is out of date.",
    )
    ap.add_argument("--src", required=True, help="the lists folder")
    ap.add_argument("--data", required=True, help="the data folder (feeds/ and keys/ in it)")
    ap.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    args = ap.parse_args(argv)
    if args.nice > 0:
        with contextlib.suppress(OSError):
            os.nice(args.nice)
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    result = ensure_default_feed(args.src, args.data)
    report = {
        "built": result.built,
        "error": result.error,
        "version": result.in_force.version if result.in_force else None,
        "left_out": [str(p) for p in result.left_out],
        "log": collect.records,
    }
    print(json.dumps(report, ensure_ascii=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
