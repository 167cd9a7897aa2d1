"""Sync a criteria feed: fetch it, accept or reject it, and keep the last good copy on disk.

``sync_feed(url, pubkey_path, store_dir)`` fetches one feed (docs/criteria-feed.md, "Syncing"):

1. Refuse a URL that is not https (plain http and local folders only with ``allow_insecure``)
   before any request.
2. Ask for ``manifest.json`` conditionally, with the ``ETag`` / ``Last-Modified`` remembered
   from the manifest in force: a 304 is "not modified" and nothing else is fetched. A manifest
   whose bytes are those of the feed in force is "not modified" too.
3. Verify the feed as ``safenest feed verify`` does (signature with the pinned key, publisher,
   expiry, every list's size, sha256 and count), plus rollback protection before any list is
   downloaded: a lower version than the one in force is refused (``rollback``), and the same
   version with different manifest bytes as well (``version_reused``).
4. The verified copy is written to a staging folder inside the store, fsynced, renamed to
   ``v<version>/`` and made current by replacing the ``current`` symlink in one step
   (``os.replace``). The version before it is kept for one step; older ones are removed.

Whatever fails leaves the feed in force untouched. Every outcome (time, result, reason code,
message, and for the feed in force its version, dates and list counts) is written to
``status.json`` for the admin page and the LED. The store, for a publisher ``P``::

    store_dir/P/current -> v7     the feed in force (a relative symlink)
    store_dir/P/v7/               manifest.json, manifest.json.sig, lists/... as verified
    store_dir/P/v6/               the one before, kept one step
    store_dir/P/status.json       the last outcomes, and the validators for conditional GETs
    store_dir/P/.lock             one sync of P at a time

``P`` is the publisher id of the pinned key, which is the only publisher it accepts.
``feeds_in_force(store_dir)`` lists the current folder of every publisher, for the index builder.

``sync_pinned(url, keys, store_dir)`` syncs a feed against a set of pinned keys (the
``feed_keys_dir`` setting, read with ``load_pinned_keys``): the key is the one whose key id the
feed's manifest names in ``publisher.key_id``. The key a URL was last synced with (status.json)
is tried first, so that the conditional GET still works; otherwise, or when the publisher signs
with another pinned key now, the manifest is fetched once more to read the key id it names. A
feed whose key id is not pinned is rejected (``unknown_key``) and nothing is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

from agent.feed.format import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    PUBLISHER_ID_RE,
    FeedError,
    FeedList,
    Manifest,
    format_time,
    parse_manifest,
)
from agent.feed.sign import PublicKey, load_public_key
from agent.feed.verify import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_LIST_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    DEFAULT_TIMEOUT,
    NotModified,
    _peek_key,
    check_fetched_feed,
    open_feed_source,
    write_atomic,
)

__all__ = [
    "ACCEPTED",
    "BUSY",
    "NOT_MODIFIED",
    "REJECTED",
    "InstalledFeed",
    "SyncResult",
    "feeds_in_force",
    "load_pinned_keys",
    "read_status",
    "sync_all",
    "sync_feed",
    "sync_pinned",
]

log = logging.getLogger("safenest.feed.sync")

ACCEPTED = "accepted"
NOT_MODIFIED = "not_modified"
REJECTED = "rejected"
BUSY = "busy"  # another sync of the same feed (or of the sources) was running: nothing done

CURRENT = "current"
STATUS_NAME = "status.json"
RESERVED_PUBLISHER = "safenest-default"  # agent.feed.default.PUBLISHER_ID: built on the Pi only
_VERSION_DIR_RE = re.compile(r"v([1-9][0-9]*)")


# ---------------------------------------------------------------- what is in force


@dataclass(frozen=True)
class InstalledFeed:
    """A verified feed in force: its folder (the resolved ``v<version>/``, stable while it is
    read even if a sync swaps ``current``), its manifest and its lists' files."""

    publisher_id: str
    folder: Path
    manifest: Manifest

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def lists(self) -> tuple[tuple[FeedList, Path], ...]:
        """Each list of the manifest with the path of its verified file."""
        return tuple(
            (lst, self.folder.joinpath(*lst.path.split("/"))) for lst in self.manifest.lists
        )

    def expired(self, now: datetime | None = None) -> bool:
        """A feed in force that has expired stays in force; the admin page says since when."""
        return self.manifest.expired(now)


def _installed(pub_dir: Path) -> InstalledFeed | None:
    link = pub_dir / CURRENT
    if not link.is_symlink() and not link.is_dir():
        return None
    folder = Path(os.path.realpath(link))
    try:
        manifest = parse_manifest((folder / MANIFEST_NAME).read_bytes())
    except (OSError, FeedError) as exc:
        log.warning("the feed in force in %s cannot be read: %s", folder, exc)
        return None
    if manifest.publisher.id != pub_dir.name:
        log.warning(
            "the feed in %s is from publisher %s, not %s",
            folder,
            manifest.publisher.id,
            pub_dir.name,
        )
        return None
    return InstalledFeed(pub_dir.name, folder, manifest)


def feeds_in_force(store_dir: str | os.PathLike) -> list[InstalledFeed]:
    """The feed in force of every publisher in the store, sorted by publisher id.

    A publisher whose sync never succeeded (or whose copy cannot be read) is left out."""
    root = Path(store_dir)
    if not root.is_dir():
        return []
    out = []
    for pub_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        feed = _installed(pub_dir)
        if feed is not None:
            out.append(feed)
    return out


def read_status(store_dir: str | os.PathLike, publisher_id: str) -> dict:
    """The publisher's status.json as a dict ({} if there is none or it cannot be read)."""
    try:
        data = json.loads(
            (Path(store_dir) / publisher_id / STATUS_NAME).read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------- the result


@dataclass(frozen=True)
class SyncResult:
    result: str  # ACCEPTED, NOT_MODIFIED, REJECTED or BUSY
    publisher_id: str
    url: str
    in_force: InstalledFeed | None  # the feed in force after this sync
    version: int | None = None  # the version fetched (accepted or refused), when known
    previous_version: int | None = None  # the version in force before
    reason: str | None = None  # FeedError.reason when rejected
    message: str | None = None

    @property
    def ok(self) -> bool:
        """Accepted or not modified; a rejected or busy sync is retried."""
        return self.result in (ACCEPTED, NOT_MODIFIED)

    def line(self) -> str:
        """One line for `safenest sync`."""
        who = f"{self.publisher_id} ({self.url})"
        if self.result == ACCEPTED:
            was = f" (was v{self.previous_version})" if self.previous_version else ""
            return f"{who}: accepted v{self.version}{was}"
        in_force = f"v{self.in_force.version} in force" if self.in_force else "no version in force"
        if self.result == NOT_MODIFIED:
            return f"{who}: not modified, {in_force}"
        if self.result == BUSY:
            return f"{who}: {self.message}; {in_force}"
        return f"{who}: rejected: {self.reason}: {self.message}; {in_force}"


# ---------------------------------------------------------------- the sync


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """The files were fsynced as they were written; make their directory entries durable."""
    for dirpath, _dirs, _files in os.walk(root):
        _fsync_dir(Path(dirpath))


class Busy(Exception):
    """Another sync holds the lock: this one does nothing and leaves everything in force."""


@contextlib.contextmanager
def try_locked(lock_path: Path) -> Iterator[None]:
    """Hold the flock on ``lock_path`` for the block, or raise :class:`Busy` at once.

    Never waits: a sync stuck on a slow server (or a hung `safenest sync`) must not make the
    scheduled sync wait behind it forever; the scheduled one retries later instead."""
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(lock_path) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_status(pub_dir: Path, status: dict) -> None:
    write_atomic(
        pub_dir / STATUS_NAME,
        (json.dumps(status, ensure_ascii=False, indent=2) + "\n").encode("utf-8"),
    )


def _feed_summary(feed: InstalledFeed, now: datetime) -> dict:
    m = feed.manifest
    return {
        "version": m.version,
        "publisher_name": m.publisher.name,
        "key_id": m.publisher.key_id,
        "issued_at": format_time(m.issued_at),
        "expires_at": format_time(m.expires_at),
        "expired": m.expired(now),
        "folder": feed.folder.name,
        "lists": {lst.path: lst.count for lst in m.lists},
        "entries": m.entries,
    }


def _check_url(url: str, allow_insecure: bool) -> None:
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme != "https" and not allow_insecure:
        what = "plain http" if scheme == "http" else f"{scheme}:" if scheme else "a local folder"
        raise FeedError(
            f"{url}: {what} is not allowed; feeds are synced over https only "
            "(plain http and folders only for tests and local mirrors, when explicitly allowed)",
            "insecure",
        )


def _install(pub_dir: Path, staging: Path, version: int, previous: InstalledFeed | None) -> Path:
    """Rename the verified staging folder to v<version> and point `current` at it in one step."""
    target = pub_dir / f"v{version}"
    if target.exists():  # left by a sync that stopped before switching `current`
        shutil.rmtree(target)
    _fsync_tree(staging)
    os.rename(staging, target)
    tmp_link = pub_dir / f".current-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_link)
    os.symlink(target.name, tmp_link)
    os.replace(tmp_link, pub_dir / CURRENT)
    _fsync_dir(pub_dir)
    keep = {target.name} | ({previous.folder.name} if previous else set())
    for child in pub_dir.iterdir():
        if (
            child.is_dir()
            and not child.is_symlink()
            and _VERSION_DIR_RE.fullmatch(child.name)
            and child.name not in keep
        ):
            shutil.rmtree(child, ignore_errors=True)
    return target


def _remove_stale_staging(pub_dir: Path) -> None:
    for child in pub_dir.glob(".staging-*"):
        shutil.rmtree(child, ignore_errors=True)


def sync_feed(
    url: str,
    pubkey_path: PublicKey | str | os.PathLike,
    store_dir: str | os.PathLike,
    *,
    allow_insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    max_bytes: int = DEFAULT_MAX_LIST_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    now: datetime | None = None,
    default_feed: bool = False,
) -> SyncResult:
    """Sync the feed at ``url`` (its folder or its manifest.json), signed with the pinned key.

    ``timeout`` bounds connecting and every wait for data, ``deadline`` one whole file,
    ``max_bytes`` one list file (``max_total_bytes`` all of them). Returns what happened; only a
    pinned key that cannot be read raises :class:`FeedError` (there is then no publisher to
    record the error for).

    The publisher id ``safenest-default`` is reserved for the default feed built on the Pi
    (only :mod:`agent.feed.default` passes ``default_feed=True``): any other feed claiming it
    is refused (``reserved_publisher``) before any request, and nothing is written, since it
    would otherwise replace the bundled lists. While another sync of the same publisher holds
    its lock, the result is ``busy`` at once and nothing is touched."""
    url = os.fspath(url)
    key = pubkey_path if isinstance(pubkey_path, PublicKey) else load_public_key(pubkey_path)
    now = _now(now)
    if key.publisher_id == RESERVED_PUBLISHER and not default_feed:
        message = (
            f"reserved publisher: the pinned key {key.key_id} is for publisher "
            f"{RESERVED_PUBLISHER}, which is reserved for the default feed built on this device "
            "from the bundled lists; a feed from elsewhere must use its own publisher id"
        )
        log.warning("feed %s rejected: %s", url, message)
        return SyncResult(
            REJECTED, key.publisher_id, url, None, reason="reserved_publisher", message=message
        )
    pub_dir = Path(store_dir) / key.publisher_id
    pub_dir.mkdir(parents=True, exist_ok=True)
    try:
        with try_locked(pub_dir / ".lock"):
            return _sync_locked(
                url, key, pub_dir, now,
                allow_insecure=allow_insecure, timeout=timeout, deadline=deadline,
                max_bytes=max_bytes, max_total_bytes=max_total_bytes,
            )  # fmt: skip
    except Busy:
        message = f"busy: another sync of feed {key.publisher_id} is running; try again later"
        log.warning("feed %s: %s", url, message)
        in_force = _installed(pub_dir)
        return SyncResult(
            BUSY, key.publisher_id, url, in_force,
            previous_version=in_force.version if in_force else None,
            reason="busy", message=message,
        )  # fmt: skip


def _sync_locked(
    url: str,
    key: PublicKey,
    pub_dir: Path,
    now: datetime,
    *,
    allow_insecure: bool,
    timeout: float,
    deadline: float,
    max_bytes: int,
    max_total_bytes: int,
) -> SyncResult:
    _remove_stale_staging(pub_dir)
    previous = _installed(pub_dir)
    prev_version = previous.version if previous else 0
    prev_bytes = previous.manifest_path.read_bytes() if previous else None
    status = read_status(pub_dir.parent, pub_dir.name)
    status["publisher"] = key.publisher_id
    status["url"] = url
    status["key_id"] = key.key_id
    validators = status.get("http") if isinstance(status.get("http"), dict) else {}
    at = format_time(now)
    fetched: dict = {}  # the manifest's validators, once fetched
    version: int | None = None

    def finish(result: str, **kw) -> SyncResult:
        in_force = _installed(pub_dir)
        entry = {"at": at, "result": result}
        entry.update({k: v for k, v in kw.items() if v is not None})
        status["last_sync"] = entry
        if result == REJECTED:
            status["last_error"] = entry
        else:
            status["last_success"] = entry
        status["in_force"] = _feed_summary(in_force, now) if in_force else None
        try:
            _write_status(pub_dir, status)
        except OSError as exc:
            log.warning("cannot write %s: %s", pub_dir / STATUS_NAME, exc)
        return SyncResult(
            result, key.publisher_id, url, in_force,
            version=kw.get("version"), previous_version=prev_version or None,
            reason=kw.get("reason"), message=kw.get("message"),
        )  # fmt: skip

    def refuse_rollback(manifest: Manifest) -> None:
        nonlocal version
        version = manifest.version
        if manifest.version < prev_version:
            raise FeedError(
                f"rollback: the server offers version {manifest.version} of feed "
                f"{manifest.publisher.id}, lower than version {prev_version} in force",
                "rollback",
            )
        if manifest.version == prev_version:
            raise FeedError(
                f"version reused: the server offers version {manifest.version} of feed "
                f"{manifest.publisher.id} with a manifest different from the one in force; "
                "a publisher must bump the version for every change",
                "version_reused",
            )

    staging: Path | None = None
    try:
        _check_url(url, allow_insecure)
        source = open_feed_source(url, allow_insecure, timeout, deadline)
        try:
            headers = {}
            if previous and validators.get("url") == url:
                if validators.get("etag"):
                    headers["If-None-Match"] = validators["etag"]
                if _strong_last_modified(validators):
                    headers["If-Modified-Since"] = validators["last_modified"]
            try:
                manifest_bytes = source.read(
                    MANIFEST_NAME, MAX_MANIFEST_BYTES, headers or None, fetched
                )
            except NotModified:
                return finish(NOT_MODIFIED, version=prev_version, how="304")
            if manifest_bytes == prev_bytes:
                status["http"] = {"url": url, **fetched}
                return finish(NOT_MODIFIED, version=prev_version, how="same manifest")
            staging = Path(tempfile.mkdtemp(dir=pub_dir, prefix=".staging-"))
            manifest = check_fetched_feed(
                source, key, manifest_bytes, now=now, save_to=staging,
                max_list_bytes=max_bytes, max_total_bytes=max_total_bytes,
                before_lists=refuse_rollback,
            )  # fmt: skip
        finally:
            source.close()
        _install(pub_dir, staging, manifest.version, previous)
        staging = None
        status["http"] = {"url": url, **fetched}
        return finish(
            ACCEPTED,
            version=manifest.version,
            fetched_at=at,
            issued_at=format_time(manifest.issued_at),
            expires_at=format_time(manifest.expires_at),
            lists={lst.path: lst.count for lst in manifest.lists},
        )
    except FeedError as exc:
        log.warning("feed %s rejected: %s", url, exc)
        return finish(REJECTED, version=version, reason=exc.reason, message=str(exc))
    except OSError as exc:  # the store itself: disk full, permissions
        log.warning("feed %s could not be installed: %s", url, exc)
        return finish(
            REJECTED, version=version, reason="store", message=f"cannot install the feed: {exc}"
        )
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- several pinned keys


def load_pinned_keys(keys_dir: str | os.PathLike) -> tuple[list[PublicKey], list[str]]:
    """Every ``*.pub`` key in ``keys_dir`` (sorted by file name), and one message per file that
    cannot be read as a key (those are skipped). A folder that does not exist holds no key."""
    folder = Path(keys_dir)
    keys: list[PublicKey] = []
    problems: list[str] = []
    if not folder.is_dir():
        return keys, problems
    for path in sorted(folder.glob("*.pub")):
        try:
            keys.append(load_public_key(path))
        except FeedError as exc:
            problems.append(str(exc))
    return keys, problems


def _remembered_key(url: str, keys: list[PublicKey], store_dir: Path) -> PublicKey | None:
    """The pinned key this URL was synced with last time, from the publishers' status.json."""
    if not store_dir.is_dir():
        return None
    by_id = {k.key_id: k for k in keys}
    for pub_dir in sorted(
        p for p in store_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        status = read_status(store_dir, pub_dir.name)
        key = by_id.get(status.get("key_id"))
        if status.get("url") == url and key is not None and key.publisher_id == pub_dir.name:
            return key
    return None


def sync_pinned(
    url: str,
    keys: list[PublicKey],
    store_dir: str | os.PathLike,
    *,
    keys_label: str = "the pinned keys",
    allow_insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    now: datetime | None = None,
    **kw,
) -> SyncResult:
    """Sync the feed at ``url`` with the pinned key whose key id its manifest names.

    Like :func:`sync_feed`, never raises for a bad feed: a feed signed with a key that is not
    among ``keys`` is ``rejected`` with reason ``unknown_key`` (``keys_label`` says where keys
    are pinned, for the message)."""
    url = os.fspath(url)
    store = Path(store_dir)
    opts = dict(allow_insecure=allow_insecure, timeout=timeout, deadline=deadline, now=now, **kw)
    key = _remembered_key(url, keys, store)
    remembered: SyncResult | None = None
    if key is not None:
        remembered = sync_feed(url, key, store, **opts)
        if remembered.reason != "wrong_key":
            return remembered

    def rejected(reason: str, message: str, publisher: str = "?") -> SyncResult:
        if remembered is not None:  # its error is the one status.json records: report the same
            return remembered
        log.warning("feed %s rejected: %s", url, message)
        return SyncResult(REJECTED, publisher, url, None, reason=reason, message=message)

    try:
        _check_url(url, allow_insecure)
        source = open_feed_source(url, allow_insecure, timeout, deadline)
        try:
            manifest_bytes = source.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        finally:
            source.close()
    except FeedError as exc:
        return rejected(exc.reason, str(exc))
    key_id, publisher = _peek_key(manifest_bytes)
    chosen = next((k for k in keys if k.key_id == key_id), None)
    if chosen is None:
        names = f"key id {key_id}" if key_id else "no key id"
        return rejected(
            "unknown_key",
            f"unknown key: the feed names {names} (publisher {publisher or '?'}), and no key in "
            f"{keys_label} has it; pin the publisher's .pub file there to trust this feed",
            publisher if publisher and PUBLISHER_ID_RE.fullmatch(publisher) else "?",
        )
    return sync_feed(url, chosen, store, **opts)


def sync_all(
    urls: list[str],
    keys_dir: str | os.PathLike,
    store_dir: str | os.PathLike,
    **kw,
) -> list[SyncResult]:
    """Sync every feed in ``urls`` with the keys pinned in ``keys_dir``, one after the other;
    one result per URL, in order (``kw`` as for :func:`sync_pinned`)."""
    keys, problems = load_pinned_keys(keys_dir)
    for problem in problems:
        log.warning("pinned key skipped: %s", problem)
    label = f"{os.fspath(keys_dir)} (feed_keys_dir)"
    return [sync_pinned(url, keys, store_dir, keys_label=label, **kw) for url in urls]


def _strong_last_modified(validators: dict) -> bool:
    """Whether If-Modified-Since can be trusted (RFC 9110 8.8.2.2): Last-Modified has whole
    seconds, so a version published in the same second as the one we fetched would look
    unmodified, unless the server's Date was at least a second later than Last-Modified."""
    try:
        modified = parsedate_to_datetime(validators["last_modified"])
        served = parsedate_to_datetime(validators["date"])
    except (KeyError, TypeError, ValueError):
        return False
    return (served - modified).total_seconds() >= 1
