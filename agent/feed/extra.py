"""Extra sources: public categorized lists fetched by URL, each mapped to a category.

The ``sources`` setting lists them as ``"CATEGORY=URL"`` (``"gambling=https://.../hosts"``;
the category may carry an age, ``online_games@18+``). :func:`sync_sources` fetches each one
(https only unless ``allow_insecure``; a time limit between reads and for the whole file; a
size cap; a conditional GET with the ``ETag`` / ``Last-Modified`` of the copy in force;
streamed to a temporary file) and reads it with :func:`agent.index.sources.read_entries`:
hosts files, plain domains, adblock ``||domain^`` and ``@@||domain^`` (allow), ``*.`` wildcards.
A line that is none of these is counted and skipped; a source with more than 10% bad entries,
or none at all, is rejected and its last good copy stays in force.

The store, under the data folder (``<id>`` is the first 16 hex digits of the URL's SHA-256)::

    DATA/sources/<id>/block.txt   the names to block, one a line (what the index reads)
    DATA/sources/<id>/allow.txt   the @@ exceptions, one a line
    DATA/sources/<id>/meta.json   url, category, counts, validators for the next conditional GET
    DATA/sources/status.json      per source: entries, bad lines, last success, last error
    DATA/sources/.lock            one sync at a time

:func:`sources_in_force` lists the stored copies for the index, labelled ``source <URL>``.
A source removed from the setting is dropped at the next sync.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from agent.feed.format import FeedError, format_time
from agent.feed.sync import (
    ACCEPTED,
    BUSY,
    NOT_MODIFIED,
    REJECTED,
    Busy,
    _strong_last_modified,
    try_locked,
)
from agent.feed.verify import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    _pieces,
    _short_error,
    get_following_redirects,
    write_atomic,
)
from agent.index.sources import LABEL_RE, ParseStats, Source, read_entries

__all__ = [
    "SOURCES_DIR",
    "SourceResult",
    "SourceSpec",
    "REMOVED",
    "parse_spec",
    "read_source_status",
    "sources_in_force",
    "sync_sources",
]

log = logging.getLogger("safenest.feed.extra")

SOURCES_DIR = "sources"
STATUS_NAME = "status.json"
META_NAME = "meta.json"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # about 2.5 million names, as for a feed's list
MAX_BAD_SHARE = 0.10  # more bad entries than this rejects the source
_USER_AGENT = "SafeNest-sources/1"
_ID_RE = re.compile(r"[0-9a-f]{16}")
REMOVED = "removed"


@dataclass(frozen=True)
class SourceSpec:
    category: str  # a category label: "gambling", or "online_games@18+"
    url: str

    @property
    def id(self) -> str:
        return hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"source {self.url}"


def parse_spec(text: str) -> SourceSpec:
    """``"CATEGORY=URL"`` -> SourceSpec; ValueError with a one-line reason otherwise."""
    category, sep, url = text.partition("=")
    category, url = category.strip(), url.strip()
    if not sep or not url:
        raise ValueError(
            f"bad source {text!r}: expected CATEGORY=URL, e.g. gambling=https://example.org/hosts"
        )
    if not LABEL_RE.fullmatch(category):
        raise ValueError(
            f"bad source {text!r}: {category!r} is not a category id (optionally with @18+ etc.)"
        )
    if "://" not in url or any(c.isspace() for c in url):
        raise ValueError(f"bad source {text!r}: {url!r} is not a URL")
    return SourceSpec(category, url)


@dataclass(frozen=True)
class SourceResult:
    """One source's sync, shaped like :class:`agent.feed.sync.SyncResult` for the callers."""

    result: str  # ACCEPTED, NOT_MODIFIED, REJECTED, BUSY or REMOVED (no longer configured)
    url: str
    category: str
    entries: int | None = None  # names in force for this source after the sync
    bad: int | None = None  # bad entries in what was fetched
    reason: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """Anything but a rejected or busy sync (those are retried)."""
        return self.result not in (REJECTED, BUSY)

    @property
    def publisher_id(self) -> str:
        return f"source {self.category}"

    def line(self) -> str:
        who = f"source {self.category}={self.url}"
        if self.result == ACCEPTED:
            skipped = (
                f" ({self.bad} bad {'line' if self.bad == 1 else 'lines'} skipped)"
                if self.bad
                else ""
            )
            return f"{who}: accepted, {self.entries} names{skipped}"
        kept = f"{self.entries} names in force" if self.entries is not None else "nothing in force"
        if self.result == NOT_MODIFIED:
            return f"{who}: not modified, {kept}"
        if self.result == REMOVED:
            return f"source {self.url}: removed (no longer in the sources setting)"
        if self.result == BUSY:
            return f"{who}: {self.message}; {kept}"
        return f"{who}: rejected: {self.reason}: {self.message}; {kept}"


class _NotModified(Exception):
    pass


# ---------------------------------------------------------------- the store


def _store(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / SOURCES_DIR


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    write_atomic(
        path,
        (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )


def read_source_status(data_dir: str | os.PathLike) -> dict:
    """DATA/sources/status.json: ``{"sources": {url: {...}}}`` ({} if none), for the admin page."""
    return _read_json(_store(data_dir) / STATUS_NAME)


def sources_in_force(data_dir: str | os.PathLike) -> list[Source]:
    """The stored copy of every source, for the index: its block and allow files, labelled
    ``source <URL>``. A copy that cannot be read is left out (and logged)."""
    root = _store(data_dir)
    if not root.is_dir():
        return []
    out: list[Source] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _ID_RE.fullmatch(p.name)):
        meta = _read_json(folder / META_NAME)
        try:
            spec = SourceSpec(str(meta["category"]), str(meta["url"]))
            for kind in ("block", "allow"):
                path = folder / f"{kind}.txt"
                if meta.get(f"{kind}_entries") and path.is_file():
                    out.append(Source(_label(spec.category, kind), kind, path, spec.label))
        except (KeyError, ValueError) as exc:
            log.warning("source copy %s cannot be used: %s", folder, exc)
    return out


def _label(category: str, kind: str) -> str:
    """A list's category label. A source's @@ exceptions say "this name is not what the list
    thinks", whatever the child's age, so they apply from 00+ (as in every ad blocker); an
    allow list of a feed category (sex_education) applies from that category's own age."""
    return category.partition("@")[0] + "@00+" if kind == "allow" else category


# ---------------------------------------------------------------- fetching


def _fetch(
    url: str,
    dest,
    headers: dict,
    *,
    allow_insecure: bool,
    timeout: float,
    deadline: float,
    max_bytes: int,
) -> dict:
    """Stream ``url`` into the open binary file ``dest``; the answer's validators.
    Raises _NotModified on a 304, FeedError on anything else that is not a whole 200."""
    import requests
    import urllib3.exceptions

    transport_errors = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
    started = time.monotonic()
    with requests.Session() as session:
        session.headers["User-Agent"] = _USER_AGENT
        try:
            response = get_following_redirects(
                session,
                url,
                allow_insecure=allow_insecure,
                timeout=timeout,
                headers=headers or None,
                what="sources",
            )
        except requests.RequestException as exc:
            raise FeedError(f"cannot fetch {url}: {_short_error(exc)}", "fetch") from None
        with response:
            if response.status_code == 304 and headers:
                raise _NotModified()
            if response.status_code != 200:
                reason = "not_found" if response.status_code == 404 else "fetch"
                raise FeedError(
                    f"cannot fetch {url}: HTTP {response.status_code} {response.reason or ''}".rstrip(),
                    reason,
                )
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise FeedError(
                    f"{url} is {length} bytes, over the limit of {max_bytes} bytes", "too_large"
                )
            total = 0
            try:
                for chunk in _pieces(response):
                    total += len(chunk)
                    if total > max_bytes:
                        raise FeedError(
                            f"{url} is larger than the limit of {max_bytes} bytes", "too_large"
                        )
                    if time.monotonic() - started > deadline:
                        raise FeedError(
                            f"cannot fetch {url}: slower than the limit of {deadline:g} s", "fetch"
                        )
                    dest.write(chunk)
            except transport_errors as exc:
                raise FeedError(f"cannot fetch {url}: {_short_error(exc)}", "fetch") from None
            return {
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
                "date": response.headers.get("Date"),
            }


def _check_url(url: str, allow_insecure: bool) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and allow_insecure):
        return
    what = "plain http" if scheme == "http" else f"the scheme {scheme!r}"
    raise FeedError(
        f"{url}: {what} is not allowed; sources are fetched over https only "
        "(plain http only for tests and local mirrors, with feed_allow_insecure)",
        "insecure",
    )


# ---------------------------------------------------------------- one source


def _convert(raw_path: Path, folder: Path) -> tuple[ParseStats, int, int, tuple[Path, Path]]:
    """Read the fetched file into plain block and allow files (temporary names in ``folder``)."""
    stats = ParseStats()
    counts = {"block": 0, "allow": 0}
    outs = {}
    for kind in counts:
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{kind}-", suffix=".tmp")
        outs[kind] = (os.fdopen(fd, "w", encoding="ascii"), Path(name))
    try:
        for kind, domain in read_entries(raw_path, stats):
            outs[kind][0].write(domain + "\n")
            counts[kind] += 1
        for f, _ in outs.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f, _ in outs.values():
            f.close()
    return stats, counts["block"], counts["allow"], (outs["block"][1], outs["allow"][1])


def _sync_one(
    spec: SourceSpec, root: Path, status: dict, known: set[str] | None, now: datetime, **opts
) -> SourceResult:
    folder = root / spec.id
    meta = _read_json(folder / META_NAME)
    if meta.get("url") != spec.url:
        meta = {}
    entry = status.setdefault(spec.url, {})
    entry["category"] = spec.category
    at = format_time(now)
    raw: Path | None = None
    converted: tuple[Path, Path] | None = None

    def finish(result: str, **kw) -> SourceResult:
        record = {"at": at, "result": result, **{k: v for k, v in kw.items() if v is not None}}
        entry["last_sync"] = record
        entry["last_error" if result == REJECTED else "last_success"] = record
        current = _read_json(folder / META_NAME) if folder.is_dir() else {}
        entries = (
            (current.get("block_entries", 0) + current.get("allow_entries", 0)) if current else None
        )
        entry["entries"] = entries
        entry["bad_lines"] = current.get("bad_lines") if current else None
        entry["fetched_at"] = current.get("fetched_at") if current else None
        return SourceResult(
            result,
            spec.url,
            spec.category,
            entries,
            kw.get("bad_lines"),
            kw.get("reason"),
            kw.get("message"),
        )

    try:
        _check_url(spec.url, opts["allow_insecure"])
        if known is not None and spec.category.partition("@")[0] not in known:
            raise FeedError(
                f"unknown category {spec.category.partition('@')[0]!r} for {spec.url} "
                "(use a category id of the criteria in force, e.g. gambling, adult, malware)",
                "unknown_category",
            )
        folder.mkdir(parents=True, exist_ok=True)
        headers = {}
        if meta:
            if meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]
            if _strong_last_modified(meta):
                headers["If-Modified-Since"] = meta["last_modified"]
        fd, name = tempfile.mkstemp(dir=folder, prefix=".fetch-", suffix=".tmp")
        raw = Path(name)
        with os.fdopen(fd, "wb") as dest:
            try:
                validators = _fetch(
                    spec.url,
                    dest,
                    headers,
                    **{k: opts[k] for k in ("allow_insecure", "timeout", "deadline", "max_bytes")},
                )
            except _NotModified:
                return _unchanged(folder, meta, spec, finish, "304")
        digest = _sha256_file(raw)
        if meta and meta.get("sha256") == digest:
            meta.update({k: v for k, v in validators.items()})
            return _unchanged(folder, meta, spec, finish, "same content")
        stats, blocks, allows, converted = _convert(raw, folder)
        seen = stats.domains + stats.bad
        if stats.bad > MAX_BAD_SHARE * seen:
            first = "; ".join(f"line {n}: {t.strip()!r}" for n, t in stats.examples[:2])
            raise FeedError(
                f"{spec.url}: {stats.bad} of {seen} entries are not domain names, over the budget of "
                f"{MAX_BAD_SHARE:.0%} ({first})",
                "bad_lines",
            )
        if stats.domains == 0:
            raise FeedError(
                f"{spec.url} holds no domain names ({stats.bad} bad lines); the list may have moved",
                "empty",
            )
        os.replace(converted[0], folder / "block.txt")
        os.replace(converted[1], folder / "allow.txt")
        converted = None
        meta = {
            "url": spec.url,
            "category": spec.category,
            "sha256": digest,
            "fetched_at": at,
            "block_entries": blocks,
            "allow_entries": allows,
            "bad_lines": stats.bad,
            **validators,
        }
        _write_json(folder / META_NAME, meta)
        if stats.bad:
            log.warning(
                "source %s: skipped %d bad lines (%s)",
                spec.url,
                stats.bad,
                "; ".join(f"line {n}: {t.strip()!r}" for n, t in stats.examples[:3]),
            )
        return finish(ACCEPTED, block_entries=blocks, allow_entries=allows, bad_lines=stats.bad)
    except FeedError as exc:
        log.warning("source %s rejected: %s", spec.url, exc)
        return finish(REJECTED, reason=exc.reason, message=str(exc))
    except OSError as exc:
        log.warning("source %s could not be stored: %s", spec.url, exc)
        return finish(REJECTED, reason="store", message=f"cannot store the source: {exc}")
    finally:
        for leftover in (raw, *(converted or ())):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def _unchanged(folder: Path, meta: dict, spec: SourceSpec, finish, how: str) -> SourceResult:
    """The server's list did not change. If the admin mapped the source to another category
    since, the stored names are still right (they do not depend on the category) but the
    index must file them under the new one: store it and report the source accepted, so that
    the lists are recompiled."""
    previous = meta.get("category")
    if previous == spec.category:
        _write_json(folder / META_NAME, meta)
        return finish(NOT_MODIFIED, how=how)
    meta["category"] = spec.category
    _write_json(folder / META_NAME, meta)
    log.info("source %s: now in category %s (was %s)", spec.url, spec.category, previous)
    return finish(
        ACCEPTED,
        how=how,
        category_was=previous,
        block_entries=meta.get("block_entries"),
        allow_entries=meta.get("allow_entries"),
        bad_lines=meta.get("bad_lines"),
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sync_sources(
    specs: list[str],
    data_dir: str | os.PathLike,
    *,
    allow_insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    known_categories: set[str] | None = None,
    now: datetime | None = None,
) -> list[SourceResult]:
    """Sync every source of the ``sources`` setting, one after the other; one result each.

    ``known_categories`` are the category ids a source may name (None: any). Sources no longer
    in ``specs`` are removed from the store (result ``removed``). Never raises for a bad source
    or server."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    root = _store(data_dir)
    if not specs and not root.is_dir():
        return []
    root.mkdir(parents=True, exist_ok=True)
    try:
        with try_locked(root / ".lock"):
            return _sync_sources_locked(
                specs,
                root,
                known_categories,
                now,
                allow_insecure=allow_insecure,
                timeout=timeout,
                deadline=deadline,
                max_bytes=max_bytes,
            )
    except Busy:
        return _busy_results(specs, root)


def _busy_results(specs: list[str], root: Path) -> list[SourceResult]:
    """Another sync of the sources holds the lock: one ``busy`` result per source, with what
    is in force for it (read without the lock: meta.json is replaced in one step)."""
    message = "busy: another sync of the sources is running; try again later"
    log.warning("sources: %s", message)
    out = []
    for text in specs:
        try:
            spec = parse_spec(text)
        except ValueError as exc:
            out.append(SourceResult(REJECTED, text, "?", reason="malformed", message=str(exc)))
            continue
        meta = _read_json(root / spec.id / META_NAME)
        entries = meta.get("block_entries", 0) + meta.get("allow_entries", 0) if meta else None
        out.append(
            SourceResult(BUSY, spec.url, spec.category, entries, reason="busy", message=message)
        )
    return out


def _sync_sources_locked(
    specs: list[str], root: Path, known_categories: set[str] | None, now: datetime, **opts
) -> list[SourceResult]:
    results: list[SourceResult] = []
    doc = _read_json(root / STATUS_NAME)
    old = doc.get("sources") if isinstance(doc.get("sources"), dict) else {}
    status: dict = {}
    keep: set[str] = set()
    for text in specs:
        try:
            spec = parse_spec(text)
        except ValueError as exc:
            results.append(SourceResult(REJECTED, text, "?", reason="malformed", message=str(exc)))
            continue
        keep.add(spec.id)
        status[spec.url] = old.get(spec.url, {}) if isinstance(old.get(spec.url), dict) else {}
        results.append(
            _sync_one(
                spec,
                root,
                status,
                known_categories,
                now,
                **opts,
            )
        )
    for folder in root.iterdir():
        if folder.is_dir() and _ID_RE.fullmatch(folder.name) and folder.name not in keep:
            meta = _read_json(folder / META_NAME)
            shutil.rmtree(folder, ignore_errors=True)
            url = str(meta.get("url", folder.name))
            log.info("source %s removed: no longer in the sources setting", url)
            results.append(SourceResult(REMOVED, url, str(meta.get("category", "?"))))
    try:
        _write_json(root / STATUS_NAME, {"updated_at": format_time(now), "sources": status})
    except OSError as exc:
        log.warning("cannot write %s: %s", root / STATUS_NAME, exc)
    return results
