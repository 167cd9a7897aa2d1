"""The criteria feed, format 1: the manifest model and its strict parser.

A feed is a folder: ``manifest.json``, its detached Ed25519 signature ``manifest.json.sig`` and
list files. docs/criteria-feed.md is the specification; this module is its executable form.

:func:`parse_manifest` accepts exactly what the specification allows and names the offending
field on anything else, e.g. ``categories[3].min_age: expected one of "00+", "12+", "16+",
"18+", "always", "off" (got "13+")``. Keys starting with ``x_`` are publisher extensions: they
are allowed anywhere and ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "FORMAT",
    "AGE_BANDS",
    "MIN_AGES",
    "KINDS",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "MAX_MANIFEST_BYTES",
    "MAX_VALIDITY",
    "FeedError",
    "ManifestError",
    "Names",
    "Publisher",
    "Category",
    "FeedList",
    "Manifest",
    "parse_manifest",
    "parse_categories",
    "format_time",
    "parse_time",
]

FORMAT = 1
AGE_BANDS: tuple[str, ...] = ("00+", "12+", "16+", "18+")
MIN_AGES: tuple[str, ...] = (*AGE_BANDS, "always", "off")
KINDS: tuple[str, ...] = ("block", "allow")
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_VALIDITY = timedelta(days=366)
MAX_CATEGORIES = 256
MAX_LISTS = 1024
MAX_TEXT = 1000  # characters in a name, description or basis

PUBLISHER_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CATEGORY_ID_RE = re.compile(r"[a-z0-9_]{1,64}")
KEY_ID_RE = re.compile(r"ed25519:[0-9a-f]{16}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class FeedError(Exception):
    """A feed cannot be used. ``str(exc)`` is one line saying exactly why.

    ``reason`` is a stable code for programs (the admin page, the LED): ``malformed``,
    ``unknown_category``, ``bad_signature``, ``wrong_key``, ``bad_key``, ``sha256_mismatch``,
    ``count_mismatch``, ``bad_list``, ``expired``, ``insecure``, ``fetch``, ``too_large``,
    ``not_found``, ``build``; the sync adds ``rollback`` (a lower version than the one in force),
    ``version_reused`` (the same version with a different manifest) and ``store`` (the copy
    could not be written to disk).
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(" ".join(message.split()))  # always one line
        self.reason = reason


class ManifestError(FeedError):
    """A manifest that is not valid format 1; ``field`` is the path of the bad field."""

    def __init__(self, field: str, message: str, reason: str = "malformed") -> None:
        super().__init__(f"{field}: {message}" if field else message, reason)
        self.field = field


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Names:
    vi: str
    en: str


@dataclass(frozen=True)
class Publisher:
    id: str
    name: str
    key_id: str  # "ed25519:" + first 16 hex digits of sha256(public key)


@dataclass(frozen=True)
class Category:
    id: str
    names: Names
    min_age: str  # one of MIN_AGES
    description: str
    basis: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "names": {"vi": self.names.vi, "en": self.names.en},
            "min_age": self.min_age,
            "description": self.description,
            "basis": self.basis,
        }


@dataclass(frozen=True)
class FeedList:
    category: str
    path: str  # relative to the manifest, "/"-separated
    sha256: str
    count: int
    kind: str  # "block" | "allow"
    min_age: str | None = None  # overrides the category's (e.g. online games rated 18+)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "category": self.category,
            "path": self.path,
            "sha256": self.sha256,
            "count": self.count,
            "kind": self.kind,
        }
        if self.min_age is not None:
            d["min_age"] = self.min_age
        return d


@dataclass(frozen=True)
class Manifest:
    format: int
    publisher: Publisher
    version: int
    issued_at: datetime
    expires_at: datetime
    age_bands: tuple[str, ...]
    categories: tuple[Category, ...]
    lists: tuple[FeedList, ...]

    def category(self, category_id: str) -> Category:
        for c in self.categories:
            if c.id == category_id:
                return c
        raise KeyError(category_id)

    def min_age_of(self, lst: FeedList) -> str:
        """The age a list applies from: its own ``min_age``, else its category's."""
        return lst.min_age or self.category(lst.category).min_age

    @property
    def entries(self) -> int:
        return sum(lst.count for lst in self.lists)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "publisher": {
                "id": self.publisher.id,
                "name": self.publisher.name,
                "key_id": self.publisher.key_id,
            },
            "version": self.version,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "age_bands": list(self.age_bands),
            "categories": [c.to_dict() for c in self.categories],
            "lists": [lst.to_dict() for lst in self.lists],
        }

    def to_bytes(self) -> bytes:
        """The manifest as a publisher writes it: UTF-8 JSON, 2-space indent, final newline."""
        return (json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """``2026-11-28T09:00:00Z`` -> an aware UTC datetime; ValueError for anything else."""
    if not _TIME_RE.fullmatch(text):
        raise ValueError(text)
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# ---------------------------------------------------------------- parsing


class _DupDict(dict):
    """A JSON object that remembers the keys it saw twice (ambiguous in a signed document)."""

    dups: tuple[str, ...] = ()


def _pairs(pairs: list[tuple[str, Any]]) -> _DupDict:
    d = _DupDict()
    dups = []
    for k, v in pairs:
        if k in d:
            dups.append(k)
        d[k] = v
    d.dups = tuple(dups)
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a feed manifest")


def _q(value: Any) -> str:
    """A value as the error message shows it (JSON, shortened)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _object(value: Any, path: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    if not isinstance(value, dict):
        raise ManifestError(path, f"expected an object (got {_type_name(value)})")
    if getattr(value, "dups", ()):
        raise ManifestError(path, f"duplicate key {_q(value.dups[0])}")
    required = tuple(required)
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed and not key.startswith("x_"):
            raise ManifestError(_join(path, key), "unknown field (format 1 has no such field)")
    for key in required:
        if key not in value:
            raise ManifestError(_join(path, key), "missing")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _int(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(path, f"expected an integer (got {_type_name(value)} {_q(value)})")
    if value < minimum or value > 2**53:
        raise ManifestError(path, f"expected an integer from {minimum} to 2^53 (got {value})")
    return value


def _text(value: Any, path: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ManifestError(path, f"expected a string (got {_type_name(value)})")
    if not value.strip():
        raise ManifestError(path, "must not be empty")
    if len(value) > limit:
        raise ManifestError(path, f"longer than {limit} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ManifestError(path, "contains a control character (line breaks included)")
    return value


def _pattern(value: Any, path: str, pattern: re.Pattern, expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ManifestError(path, f"expected {expected} (got {_q(value)})")
    return value


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(f'"{c}"' for c in choices)
        raise ManifestError(path, f"expected one of {options} (got {_q(value)})")
    return value


def _time(value: Any, path: str) -> datetime:
    try:
        if not isinstance(value, str):
            raise ValueError
        return parse_time(value)
    except ValueError:
        raise ManifestError(
            path, f'expected a UTC time like "2026-11-28T09:00:00Z" (got {_q(value)})'
        ) from None


def _list_path(value: Any, path: str) -> str:
    expected = (
        'a relative path of [A-Za-z0-9._-] names joined by "/" and ending in ".txt", '
        'without "." or ".." parts'
    )
    if not isinstance(value, str) or len(value) > 200 or not value.endswith(".txt"):
        raise ManifestError(path, f"expected {expected} (got {_q(value)})")
    for segment in value.split("/"):
        if not _SEGMENT_RE.fullmatch(segment) or set(segment) == {"."}:
            raise ManifestError(path, f"expected {expected} (got {_q(value)})")
    if value == MANIFEST_NAME or value == SIGNATURE_NAME:
        raise ManifestError(path, f"expected {expected} (got {_q(value)})")
    return value


def _array(value: Any, path: str, limit: int) -> list:
    if not isinstance(value, list):
        raise ManifestError(path, f"expected an array (got {_type_name(value)})")
    if len(value) > limit:
        raise ManifestError(path, f"more than {limit} entries")
    return value


def _category(value: Any, path: str) -> Category:
    obj = _object(value, path, ("id", "names", "min_age", "description", "basis"))
    cid = _pattern(obj["id"], f"{path}.id", CATEGORY_ID_RE, "a category id of [a-z0-9_]")
    names = _object(obj["names"], f"{path}.names", ("vi", "en"))
    return Category(
        id=cid,
        names=Names(
            vi=_text(names["vi"], f"{path}.names.vi", 100),
            en=_text(names["en"], f"{path}.names.en", 100),
        ),
        min_age=_choice(obj["min_age"], f"{path}.min_age", MIN_AGES),
        description=_text(obj["description"], f"{path}.description"),
        basis=_text(obj["basis"], f"{path}.basis"),
    )


def parse_categories(value: Any, path: str = "categories") -> tuple[Category, ...]:
    """Validate a JSON array of categories (the manifest's ``categories``)."""
    items = _array(value, path, MAX_CATEGORIES)
    if not items:
        raise ManifestError(path, "must list at least one category")
    out: list[Category] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        c = _category(item, f"{path}[{i}]")
        if c.id in seen:
            raise ManifestError(f"{path}[{i}].id", f"duplicate category id {_q(c.id)}")
        seen.add(c.id)
        out.append(c)
    return tuple(out)


def _feed_list(value: Any, path: str, known: dict[str, Category]) -> FeedList:
    obj = _object(value, path, ("category", "path", "sha256", "count", "kind"), ("min_age",))
    category = _pattern(
        obj["category"], f"{path}.category", CATEGORY_ID_RE, "a category id of [a-z0-9_]"
    )
    if category not in known:
        ids = ", ".join(sorted(known))
        raise ManifestError(
            f"{path}.category",
            f"unknown category {_q(category)} (not in categories: {ids})",
            reason="unknown_category",
        )
    min_age = obj.get("min_age")
    return FeedList(
        category=category,
        path=_list_path(obj["path"], f"{path}.path"),
        sha256=_pattern(obj["sha256"], f"{path}.sha256", SHA256_RE, "64 lower-case hex digits"),
        count=_int(obj["count"], f"{path}.count", 0),
        kind=_choice(obj["kind"], f"{path}.kind", KINDS),
        min_age=None if min_age is None else _choice(min_age, f"{path}.min_age", MIN_AGES),
    )


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes as format 1; :class:`ManifestError` names the bad field.

    This checks the document only. The signature, the lists' hashes and counts and the expiry
    against the clock are checked by :func:`agent.feed.verify.verify_feed`.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("parse_manifest takes bytes")
    raw = bytes(raw)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"the manifest is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ManifestError("", "the manifest starts with a byte-order mark; write plain UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError("", f"not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except ValueError as exc:
        raise ManifestError("", f"not valid JSON: {exc}") from None

    top = _object(
        doc,
        "",
        ("format", "publisher", "version", "issued_at", "expires_at", "age_bands", "categories", "lists"),
    )

    fmt = top["format"]
    if isinstance(fmt, bool) or fmt != FORMAT or not isinstance(fmt, int):
        raise ManifestError("format", f"expected 1; this SafeNest reads format 1 only (got {_q(fmt)})")

    pub = _object(top["publisher"], "publisher", ("id", "name", "key_id"))
    publisher = Publisher(
        id=_pattern(pub["id"], "publisher.id", PUBLISHER_ID_RE, "an id of [a-z0-9._-], at most 64"),
        name=_text(pub["name"], "publisher.name", 200),
        key_id=_pattern(pub["key_id"], "publisher.key_id", KEY_ID_RE, '"ed25519:" and 16 hex digits'),
    )
    version = _int(top["version"], "version", 1)
    issued_at = _time(top["issued_at"], "issued_at")
    expires_at = _time(top["expires_at"], "expires_at")
    if expires_at <= issued_at:
        raise ManifestError("expires_at", "must be later than issued_at")
    if expires_at - issued_at > MAX_VALIDITY:
        days = (expires_at - issued_at).days
        raise ManifestError("expires_at", f"at most {MAX_VALIDITY.days} days after issued_at (got {days} days)")

    bands = top["age_bands"]
    if not isinstance(bands, list) or tuple(bands) != AGE_BANDS:
        raise ManifestError("age_bands", f'expected ["00+", "12+", "16+", "18+"] in format 1 (got {_q(bands)})')

    categories = parse_categories(top["categories"], "categories")
    known = {c.id: c for c in categories}
    items = _array(top["lists"], "lists", MAX_LISTS)
    lists: list[FeedList] = []
    paths: set[str] = set()
    for i, item in enumerate(items):
        lst = _feed_list(item, f"lists[{i}]", known)
        if lst.path in paths:
            raise ManifestError(f"lists[{i}].path", f"duplicate path {_q(lst.path)}")
        paths.add(lst.path)
        lists.append(lst)

    return Manifest(
        format=FORMAT,
        publisher=publisher,
        version=version,
        issued_at=issued_at,
        expires_at=expires_at,
        age_bands=AGE_BANDS,
        categories=categories,
        lists=tuple(lists),
    )
