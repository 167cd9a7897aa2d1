"""Check a criteria feed end to end: signature, publisher, manifest, expiry, every list.

``verify_feed(dir_or_url, pubkey)`` returns the :class:`~agent.feed.format.Manifest` of a valid
feed and raises :class:`~agent.feed.format.FeedError` with a one-line reason otherwise. The
order of the checks (docs/criteria-feed.md, "Verifying a feed") is part of the format: the
signature is checked over the exact manifest bytes before the manifest is trusted, and the lists
are hashed as they stream in, so memory stays small whatever their size.

Remote feeds are fetched with requests: https only unless ``allow_insecure`` (tests, a mirror on
the local network), a size cap on every file and a time limit on every request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from agent.feed.format import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    FeedError,
    FeedList,
    Manifest,
    ManifestError,
    format_time,
    parse_manifest,
)
from agent.feed.sign import MAX_SIGNATURE_BYTES, PublicKey, load_public_key, verify_signature
from agent.index.domains import normalize_domain

__all__ = [
    "verify_feed",
    "open_feed_source",
    "NotModified",
    "check_fetched_feed",
    "DEFAULT_MAX_LIST_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_TIMEOUT",
    "DEFAULT_DEADLINE",
]

DEFAULT_MAX_LIST_BYTES = 64 * 1024 * 1024  # about 2.5 million domains
DEFAULT_MAX_TOTAL_BYTES = 512 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and between two reads
DEFAULT_DEADLINE = 300.0  # seconds for one whole file
_CHUNK = 64 * 1024
_USER_AGENT = "SafeNest-feed/1"


# ---------------------------------------------------------------- where the files come from


class NotModified(Exception):
    """The server answered 304 Not Modified to a conditional request (see ``_Source.chunks``)."""


class _Source:
    label: str

    def chunks(
        self, rel: str, limit: int, headers: dict[str, str] | None = None, info: dict | None = None
    ) -> Iterator[bytes]:
        """The file ``rel`` in pieces, at most ``limit`` bytes. Over http, ``headers`` are sent
        with the request (``If-None-Match``, ``If-Modified-Since``: a 304 raises
        :class:`NotModified`), and ``info`` receives the answer's ``etag`` and ``last_modified``."""
        raise NotImplementedError

    def read(
        self, rel: str, limit: int, headers: dict[str, str] | None = None, info: dict | None = None
    ) -> bytes:
        return b"".join(self.chunks(rel, limit, headers, info))

    def close(self) -> None:
        pass


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def chunks(
        self, rel: str, limit: int, headers: dict[str, str] | None = None, info: dict | None = None
    ) -> Iterator[bytes]:
        path = self.root.joinpath(*rel.split("/"))
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise FeedError(f"{rel} is missing: no file {path}", "not_found") from None
        except OSError as exc:
            raise FeedError(f"cannot read {path}: {exc.strerror or exc}", "fetch") from None
        with f:
            total = 0
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return
                total += len(chunk)
                if total > limit:
                    raise FeedError(f"{rel} is larger than the limit of {limit} bytes", "too_large")
                yield chunk


def _short_error(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "the server's TLS certificate could not be verified"
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if m:
        return m.group(0).strip()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return type(exc).__name__


MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


def allowed_scheme(url: str, allow_insecure: bool) -> bool:
    """https always; plain http only when insecure is allowed; nothing else."""
    scheme = urlsplit(url).scheme.lower()
    return scheme == "https" or (scheme == "http" and allow_insecure)


def get_following_redirects(
    session, url: str, *, allow_insecure: bool, timeout: float, headers, what: str
):
    """GET ``url`` (streamed), following at most MAX_REDIRECTS redirects by hand, so that every
    hop's URL is checked *before* it is requested: an https server that redirects to plain http
    is refused without the plain request ever being sent (requests would send it, then let us
    look). ``what`` names the kind of download for the message. Returns the final response
    (the caller closes it); raises FeedError for a refused hop or too many of them."""
    hops = 0
    while True:
        response = session.get(
            url, stream=True, timeout=timeout, headers=headers, allow_redirects=False
        )
        if response.status_code not in _REDIRECTS or "Location" not in response.headers:
            return response
        location = urljoin(url, response.headers["Location"])
        response.close()
        hops += 1
        if not allowed_scheme(location, allow_insecure):
            scheme = urlsplit(location).scheme.lower() or "?"
            raise FeedError(
                f"{url} redirected to {location} ({scheme}:), which is not allowed: {what} are "
                "fetched over https only; the redirect was not followed",
                "insecure",
            )
        if hops > MAX_REDIRECTS:
            raise FeedError(f"cannot fetch {url}: more than {MAX_REDIRECTS} redirects", "fetch")
        url = location


class _HttpSource(_Source):
    def __init__(self, url: str, allow_insecure: bool, timeout: float, deadline: float) -> None:
        import requests
        import urllib3.exceptions

        self._requests = requests
        self._transport_errors = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
        path = urlsplit(url).path
        if path.endswith("/" + MANIFEST_NAME):
            url = url[: url.rindex(MANIFEST_NAME)]
        elif not url.endswith("/"):
            url += "/"
        self.base = url
        self.label = url
        self.allow_insecure = allow_insecure
        self.timeout = timeout
        self.deadline = deadline
        self.session = requests.Session()
        self.session.headers["User-Agent"] = _USER_AGENT

    def close(self) -> None:
        self.session.close()

    def chunks(
        self, rel: str, limit: int, headers: dict[str, str] | None = None, info: dict | None = None
    ) -> Iterator[bytes]:
        requests = self._requests
        url = urljoin(self.base, rel)
        started = time.monotonic()
        try:
            response = get_following_redirects(
                self.session, url, allow_insecure=self.allow_insecure, timeout=self.timeout,
                headers=headers, what="feeds",
            )  # fmt: skip
        except requests.RequestException as exc:
            raise FeedError(f"cannot fetch {url}: {_short_error(exc)}", "fetch") from None
        with response:
            if response.status_code == 304 and headers:
                raise NotModified(url)
            if response.status_code == 404:
                raise FeedError(f"{rel} is missing: {url} answered HTTP 404", "not_found")
            if response.status_code != 200:
                raise FeedError(
                    f"cannot fetch {url}: HTTP {response.status_code} {response.reason or ''}".rstrip(),
                    "fetch",
                )
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise FeedError(
                    f"{rel} is larger than the limit of {limit} bytes ({length} bytes at {url})",
                    "too_large",
                )
            if info is not None:
                info["etag"] = response.headers.get("ETag")
                info["last_modified"] = response.headers.get("Last-Modified")
                info["date"] = response.headers.get("Date")
            total = 0
            try:
                for chunk in _pieces(response):
                    total += len(chunk)
                    if total > limit:
                        raise FeedError(
                            f"{rel} is larger than the limit of {limit} bytes", "too_large"
                        )
                    if time.monotonic() - started > self.deadline:
                        raise FeedError(
                            f"cannot fetch {url}: slower than the limit of {self.deadline:g} s",
                            "fetch",
                        )
                    yield chunk
            except self._transport_errors as exc:
                raise FeedError(f"cannot fetch {url}: {_short_error(exc)}", "fetch") from None


def _pieces(response) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns what is there instead of waiting for a full
    chunk, so the deadline is checked even against a server that sends a byte at a time."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2
    if read1 is None:
        yield from response.iter_content(_CHUNK)
        return
    while True:
        data = read1(_CHUNK, decode_content=True)
        if not data:
            return
        yield data


def open_feed_source(
    dir_or_url: str | os.PathLike,
    allow_insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> _Source:
    """A reader for a feed folder, or for a feed URL (its folder, or its manifest.json)."""
    text = os.fspath(dir_or_url)
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in ("https", "http"):
        if scheme == "http" and not allow_insecure:
            raise FeedError(
                f"{text}: plain http is not allowed; use https "
                "(plain http only for tests and local mirrors, when explicitly allowed)",
                "insecure",
            )
        return _HttpSource(text, allow_insecure, timeout, deadline)
    if scheme:
        raise FeedError(
            f"{text}: unsupported URL scheme {scheme!r}; give an https URL or a folder", "fetch"
        )
    path = Path(text)
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    if not path.is_dir():
        raise FeedError(f"no feed at {path}: not a folder", "not_found")
    return _DirSource(path)


# ---------------------------------------------------------------- the checks


def _peek_key(manifest_bytes: bytes) -> tuple[str | None, str | None]:
    """publisher.key_id and publisher.id as the (unverified) manifest claims them."""
    try:
        pub = json.loads(manifest_bytes.decode("utf-8"))["publisher"]
        key_id, pid = pub.get("key_id"), pub.get("id")
    except Exception:
        return None, None
    return (key_id if isinstance(key_id, str) else None, pid if isinstance(pid, str) else None)


def _check_signature(key: PublicKey, manifest_bytes: bytes, sig: bytes) -> None:
    try:
        verify_signature(key, manifest_bytes, sig)
    except FeedError as exc:
        claimed_key, claimed_publisher = _peek_key(manifest_bytes)
        if exc.reason == "bad_signature" and claimed_key and claimed_key != key.key_id:
            raise FeedError(
                f"wrong key: the feed is signed with key {claimed_key} of publisher "
                f"{claimed_publisher or '?'}, but the pinned key is {key.key_id} of publisher "
                f"{key.publisher_id}",
                "wrong_key",
            ) from None
        raise


class _ListChecker:
    """Hashes and counts a list as it streams; remembers the first line that is not a domain."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.count = 0
        self.size = 0
        self.lineno = 0
        self.bad: tuple[int, str] | None = None
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.size += len(chunk)
        data = self._rest + chunk
        lines = data.split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        if self._rest:
            self._line(self._rest)
            self._rest = b""

    def _line(self, line: bytes) -> None:
        self.lineno += 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.startswith(b"#"):
            return
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            text = None
        if text is None or normalize_domain(text) != text:
            if self.bad is None:
                shown = line[:80].decode("utf-8", "replace")
                self.bad = (self.lineno, shown)
            return
        self.count += 1


def _check_list(
    source: _Source, lst: FeedList, index: int, limit: int, save_to: Path | None
) -> int:
    checker = _ListChecker()
    tmp = None
    try:
        if save_to is not None:
            target = save_to.joinpath(*lst.path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False)
        for chunk in source.chunks(lst.path, limit):
            checker.feed(chunk)
            if tmp is not None:
                tmp.write(chunk)
        checker.finish()
        digest = checker.sha.hexdigest()
        if digest != lst.sha256:
            raise FeedError(
                f"sha256 mismatch for list {lst.path} (lists[{index}], category {lst.category}): "
                f"the manifest says {lst.sha256}, the file is {digest}",
                "sha256_mismatch",
            )
        if checker.bad is not None:
            lineno, text = checker.bad
            raise FeedError(
                f"list {lst.path} line {lineno}: {text!r} is not a domain name in canonical form "
                "(lower case, punycode, no trailing dot)",
                "bad_list",
            )
        if checker.count != lst.count:
            raise FeedError(
                f"count mismatch for list {lst.path} (lists[{index}]): the manifest says "
                f"{lst.count} entries, the file has {checker.count}",
                "count_mismatch",
            )
        if tmp is not None:
            tmp.flush()
            os.fsync(tmp.fileno())
            tmp.close()
            os.replace(tmp.name, target)
            tmp = None
        return checker.size
    finally:
        if tmp is not None:
            tmp.close()
            os.unlink(tmp.name)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verify_feed(
    dir_or_url: str | os.PathLike,
    pubkey: PublicKey | str | os.PathLike,
    *,
    now: datetime | None = None,
    allow_insecure: bool = False,
    save_to: str | os.PathLike | None = None,
    max_list_bytes: int = DEFAULT_MAX_LIST_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> Manifest:
    """Verify the feed in a folder or at an https URL against a pinned public key.

    Returns the manifest of a valid feed; raises :class:`FeedError` naming the first problem.
    With ``save_to`` (an empty staging folder), a copy of the verified files is written there;
    it is complete only if this function returns.
    """
    key = pubkey if isinstance(pubkey, PublicKey) else load_public_key(pubkey)
    source = open_feed_source(dir_or_url, allow_insecure, timeout, deadline)
    try:
        manifest_bytes = source.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        return check_fetched_feed(
            source,
            key,
            manifest_bytes,
            now=now,
            save_to=save_to,
            max_list_bytes=max_list_bytes,
            max_total_bytes=max_total_bytes,
        )
    finally:
        source.close()


def check_fetched_feed(
    source: _Source,
    key: PublicKey,
    manifest_bytes: bytes,
    *,
    now: datetime | None = None,
    save_to: str | os.PathLike | None = None,
    max_list_bytes: int = DEFAULT_MAX_LIST_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    before_lists: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Steps 2 to 7 of "Verifying a feed" for a manifest already fetched from ``source``: the
    signature (fetched here), the manifest, the publisher, the expiry, then ``before_lists``
    (the sync's rollback check, step 6, which raises :class:`FeedError` to refuse the feed
    before any list is downloaded), then every list."""
    now = now or datetime.now(UTC)
    try:
        sig = source.read(SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
    except FeedError as exc:
        if exc.reason != "not_found":
            raise
        raise FeedError(
            f"bad signature: the feed is not signed (no {SIGNATURE_NAME} in {source.label})",
            "bad_signature",
        ) from None

    _check_signature(key, manifest_bytes, sig)
    try:
        manifest = parse_manifest(manifest_bytes)
    except ManifestError as exc:
        prefix = "malformed manifest.json" if exc.reason == "malformed" else "manifest.json"
        raise FeedError(f"{prefix}: {exc}", exc.reason) from None

    if manifest.publisher.key_id != key.key_id:
        raise FeedError(
            f"malformed manifest.json: publisher.key_id is {manifest.publisher.key_id}, but the "
            f"feed is signed with key {key.key_id}",
            "malformed",
        )
    if manifest.publisher.id != key.publisher_id:
        raise FeedError(
            f"wrong key: the feed is from publisher {manifest.publisher.id}, but the pinned key "
            f"belongs to publisher {key.publisher_id}",
            "wrong_key",
        )
    if manifest.expired(now):
        raise FeedError(
            f"expired: version {manifest.version} of feed {manifest.publisher.id} expired at "
            f"{format_time(manifest.expires_at)} (now {format_time(now)})",
            "expired",
        )
    if before_lists is not None:
        before_lists(manifest)

    out = Path(save_to) if save_to is not None else None
    remaining = max_total_bytes
    for i, lst in enumerate(manifest.lists):
        remaining -= _check_list(source, lst, i, min(max_list_bytes, remaining), out)
    if out is not None:
        write_atomic(out / SIGNATURE_NAME, sig)
        write_atomic(out / MANIFEST_NAME, manifest_bytes)
    return manifest
