"""The policy as a document: `safenest policy export/import`, backups, a school's policy file.

docs/policy.md is the schema; this module is its executable form. :func:`to_document` turns a
:class:`~agent.policy.model.Policy` into plain dicts and lists (the same for TOML and JSON);
:func:`from_document` checks *everything* and raises one :class:`PolicyDocumentError` that lists
every bad field with its path, e.g. ``profiles[1].birth.month: 13 is not a month (1-12)``, so a
school fixing its file sees all mistakes at once instead of one per try.

A document is strict: unknown fields are errors (a typo such as ``catagories`` must not silently
drop a parent's choice). :func:`check_policy` validates a Policy value by the same rules, which
is what the storage uses before every write.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tomli_w

from agent.index import normalize_domain

from .model import (
    BANDS,
    CATEGORY_CHOICES,
    DEFAULT_PROFILE_ID,
    DEFAULT_TIMEZONE,
    DEVICE_MATCHES,
    ID_PATTERN,
    OVERRIDE_KINDS,
    PROFILE_KINDS,
    RULE_ACTIONS,
    SAFESEARCH_CHOICES,
    SCHEDULE_MODES,
    TIME_PATTERN,
    WEEKDAYS,
    YOUTUBE_CHOICES,
    Device,
    Override,
    Policy,
    Profile,
    Rule,
    Schedule,
)

__all__ = [
    "FORMAT",
    "FORMATS",
    "PolicyDocumentError",
    "always_categories",
    "check_policy",
    "default_known_categories",
    "dumps",
    "from_document",
    "loads",
    "to_document",
]

FORMAT = 1
FORMATS = ("toml", "json")
MAX_TEXT = 200  # names and notes: one line a person reads
MAX_ITEMS = 100_000  # per list; a school's rules are thousands at most
TTL_CAP_RANGE = (5, 86_400)
BIRTH_YEARS = (1900, 2200)

_ZONE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]{0,29}(/[A-Za-z0-9_+-]{1,30}){0,2}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")

TOP_FIELDS = ("format", "default_profile", "timezone", "schedule_ttl_cap") + (
    "profiles",
    "devices",
    "rules",
    "schedules",
    "overrides",
)
PROFILE_FIELDS = (
    "id",
    "name",
    "kind",
    "birth",
    "band",
    "categories",
    "services",
    "allowlist_mode",
    "safesearch",
    "youtube",
    "bypass_defaults",
)
DEVICE_FIELDS = ("id", "name", "match", "value", "profile")
RULE_FIELDS = ("domain", "action", "profile", "note")
SCHEDULE_FIELDS = (
    "id",
    "profile",
    "name",
    "days",
    "start",
    "end",
    "mode",
    "categories",
    "services",
)
OVERRIDE_FIELDS = (
    "id",
    "profile",
    "kind",
    "starts",
    "until",
    "categories",
    "services",
    "domains",
    "note",
)


class PolicyDocumentError(ValueError):
    """Every problem of a document, one ``path: message`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def default_known_categories() -> dict[str, str]:
    """Category id -> default min_age ("always", "00+", ...) of the bundled category table."""
    from agent.feed.categories import DEFAULT_CATEGORIES

    return {c.id: c.min_age for c in DEFAULT_CATEGORIES}


def always_categories(known_categories: Mapping[str, str] | None) -> frozenset[str]:
    """The categories blocked for everyone: a parent may not loosen them, a reward never grants them.

    The bundled table's ``always`` categories are always among them, whatever `known_categories`
    says: a criteria table loosened by a feed must not open them to a profile."""
    bundled = default_known_categories()
    table = {} if known_categories is None else known_categories
    return frozenset(
        cid for t in (bundled, table) for cid, min_age in t.items() if min_age == "always"
    )


# ---------------------------------------------------------------- policy -> document


def format_time(t: datetime) -> str:
    """UTC, ``Z``-suffixed, whole seconds when whole: ``2026-11-28T09:00:00Z``."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_document(policy: Policy) -> dict[str, Any]:
    """Plain values in schema order; a None field is left out (TOML has no null)."""
    return {
        "format": FORMAT,
        "default_profile": policy.default_profile,
        "timezone": policy.timezone,
        "schedule_ttl_cap": policy.schedule_ttl_cap,
        "profiles": [_profile_doc(p) for p in policy.profiles],
        "devices": [
            {"id": d.id, "name": d.name, "match": d.match, "value": d.value, "profile": d.profile}
            for d in policy.devices
        ],
        "rules": [_rule_doc(r) for r in policy.rules],
        "schedules": [_schedule_doc(s) for s in policy.schedules],
        "overrides": [_override_doc(o) for o in policy.overrides],
    }


def _profile_doc(p: Profile) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": p.id, "name": p.name, "kind": p.kind}
    if p.birth is not None:
        doc["birth"] = {"year": p.birth[0], "month": p.birth[1]}
    if p.band is not None:
        doc["band"] = p.band
    if p.categories:  # an empty table reads badly in TOML; absent means {}
        doc["categories"] = dict(sorted(p.categories.items()))
    doc["services"] = sorted(p.services)
    doc["allowlist_mode"] = p.allowlist_mode
    doc["safesearch"] = p.safesearch
    doc["youtube"] = p.youtube
    doc["bypass_defaults"] = p.bypass_defaults
    return doc


def _rule_doc(r: Rule) -> dict[str, Any]:
    doc: dict[str, Any] = {"domain": r.domain, "action": r.action}
    if r.profile is not None:
        doc["profile"] = r.profile
    doc["note"] = r.note
    return doc


def _schedule_doc(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "profile": s.profile,
        "name": s.name,
        # A day out of range is passed on as is, for the reader to report rather than drop.
        "days": [WEEKDAYS[d] if d in range(7) else d for d in sorted(s.days)],
        "start": s.start,
        "end": s.end,
        "mode": s.mode,
        "categories": sorted(s.categories),
        "services": sorted(s.services),
    }


def _override_doc(o: Override) -> dict[str, Any]:
    return {
        "id": o.id,
        "profile": o.profile,
        "kind": o.kind,
        "starts": format_time(o.starts),
        "until": format_time(o.until),
        "categories": sorted(o.categories),
        "services": sorted(o.services),
        "domains": sorted(o.domains),
        "note": o.note,
    }


def dumps(policy: Policy, fmt: str = "toml") -> str:
    doc = to_document(policy)
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if fmt == "toml":
        return tomli_w.dumps(doc)
    raise ValueError(f"unknown format {fmt!r}: give one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------- document -> policy


def loads(
    text: str,
    fmt: str,
    known_categories: Mapping[str, str] | None,
    known_services: Collection[str] | None = None,
) -> Policy:
    """Parse TOML or JSON text and validate it; PolicyDocumentError for bad syntax or fields."""
    try:
        if fmt == "json":
            data = json.loads(text)
        elif fmt == "toml":
            data = tomllib.loads(text)
        else:
            raise ValueError(f"unknown format {fmt!r}: give one of {', '.join(FORMATS)}")
    except json.JSONDecodeError as exc:
        raise PolicyDocumentError(
            [f"(json) line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyDocumentError([f"(toml) {exc}"]) from None
    except RecursionError:
        raise PolicyDocumentError([f"({fmt}) nested too deeply to be a policy"]) from None
    return from_document(data, known_categories, known_services)


def check_policy(
    policy: Policy,
    known_categories: Mapping[str, str] | None = None,
    known_services: Collection[str] | None = None,
) -> Policy:
    """Validate a Policy value by the document's rules; returns it normalized (MACs lower case, ...)."""
    return from_document(to_document(policy), known_categories, known_services)


def from_document(
    data: Any,
    known_categories: Mapping[str, str] | None,
    known_services: Collection[str] | None = None,
) -> Policy:
    """Validate a whole document and build the Policy, or raise PolicyDocumentError with every problem.

    `known_categories` maps category ids to their default min_age (None: any id that looks like
    an id, with the bundled table's ``always`` categories still protected); `known_services`
    are the catalogue's service ids (None: any id that looks like an id).
    """
    return _Reader(known_categories, known_services).policy(data)


class _Bad(Exception):
    """One field is wrong; already recorded. Stops reading that field only."""


class _Reader:
    def __init__(
        self, known_categories: Mapping[str, str] | None, known_services: Collection[str] | None
    ):
        self.known_categories = known_categories
        self.known_services = None if known_services is None else frozenset(known_services)
        self.always = always_categories(known_categories)
        self.problems: list[str] = []
        self.profile_ids: set[str] = set()

    # ------------------------------------------------------------ plumbing

    def bad(self, path: str, message: str) -> _Bad:
        self.problems.append(f"{path}: {message}")
        return _Bad()

    def field(
        self, obj: dict, path: str, key: str, read: Callable[[Any, str], Any], default: Any = ...
    ) -> Any:
        """`read` the field, or `default` when absent; None (and a recorded problem) when bad."""
        sub = f"{path}.{key}" if path else key
        if key not in obj or (obj[key] is None and default is not ...):  # JSON null = left out
            if default is ...:
                self.bad(sub, "missing")
                return None
            return default
        try:
            return read(obj[key], sub)
        except _Bad:
            return None

    def table(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.bad(
                path or "(document)", f"expected a table/object (got {_describe(value)})"
            )
        for key in value:
            if key not in allowed:
                raise_path = f"{path}.{key}" if path else str(key)
                self.bad(raise_path, "unknown field (see docs/policy.md)")
        return value

    def items(self, value: Any, path: str, read: Callable[[Any, str], Any]) -> list:
        """Each element read on its own, None where bad, so later checks keep their indexes."""
        if not isinstance(value, list):
            raise self.bad(path, f"expected an array (got {_describe(value)})")
        if len(value) > MAX_ITEMS:
            raise self.bad(path, f"more than {MAX_ITEMS} entries")
        out = []
        for i, element in enumerate(value):
            try:
                out.append(read(element, f"{path}[{i}]"))
            except _Bad:
                out.append(None)
        return out

    # ------------------------------------------------------------ scalars

    def text(self, value: Any, path: str, empty_ok: bool = True) -> str:
        if not isinstance(value, str):
            raise self.bad(path, f"expected text (got {_describe(value)})")
        if not empty_ok and not value.strip():
            raise self.bad(path, "must not be empty")
        if len(value) > MAX_TEXT:
            raise self.bad(path, f"longer than {MAX_TEXT} characters")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise self.bad(path, "contains a control character (line breaks included)")
        return value

    def name(self, value: Any, path: str) -> str:
        return self.text(value, path, empty_ok=False)

    def ident(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise self.bad(
                path,
                f"{_q(value)} is not an id (1-40 of a-z, 0-9, '_', '-', starting with a letter or digit)",
            )
        return value

    def choice(self, choices: tuple[str, ...]) -> Callable[[Any, str], str]:
        def read(value: Any, path: str) -> str:
            if not isinstance(value, str) or value not in choices:
                raise self.bad(path, f"{_q(value)} is not one of {', '.join(choices)}")
            return value

        return read

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.bad(path, f"expected true or false (got {_describe(value)})")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(path, f"expected a whole number (got {_describe(value)})")
        if not low <= value <= high:
            raise self.bad(path, f"{value} is not between {low} and {high}")
        return value

    def clock(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not TIME_PATTERN.fullmatch(value):
            raise self.bad(path, f"{_q(value)} is not HH:MM (24-hour local time, 00:00-23:59)")
        return value

    def instant(self, value: Any, path: str) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise self.bad(
                    path, f'{_q(value)} is not a time like "2026-11-28T09:00:00Z"'
                ) from None
        if not isinstance(value, datetime):
            raise self.bad(
                path, f'expected a time like "2026-11-28T09:00:00Z" (got {_describe(value)})'
            )
        if value.tzinfo is None or value.utcoffset() is None:
            raise self.bad(path, f'{_q(str(value))} has no UTC offset: add "Z" or "+07:00"')
        return value.astimezone(UTC)

    def timezone(self, value: Any, path: str) -> str:
        # ZoneInfo opens a file named by the key: only plain "Area/City" names get that far.
        try:
            if not isinstance(value, str) or not _ZONE_RE.fullmatch(value):
                raise ValueError
            ZoneInfo(value)
        except (ValueError, OSError, ZoneInfoNotFoundError):
            raise self.bad(
                path, f"{_q(value)} is not a known time zone (like Asia/Ho_Chi_Minh)"
            ) from None
        return value

    def domain(self, value: Any, path: str) -> str:
        name = normalize_domain(value) if isinstance(value, str) else None
        if name is None:
            raise self.bad(path, f"{_q(value)} is not a domain name (like example.com)")
        return name

    def profile_ref(self, value: Any, path: str) -> str:
        self.ident(value, path)
        if value not in self.profile_ids:
            raise self.bad(path, f'no profile "{value}"')
        return value

    def category(self, value: Any, path: str) -> str:
        self.ident(value, path)
        if self.known_categories is not None and value not in self.known_categories:
            raise self.bad(path, f"unknown category {_q(value)}")
        return value

    def service(self, value: Any, path: str) -> str:
        self.ident(value, path)
        if self.known_services is not None and value not in self.known_services:
            raise self.bad(path, f"unknown service {_q(value)}")
        return value

    def id_set(self, read: Callable[[Any, str], str]) -> Callable[[Any, str], frozenset[str]]:
        def read_set(value: Any, path: str) -> frozenset[str]:
            entries = self.items(value, path, read)
            if any(e is None for e in entries):
                raise _Bad()
            seen: set[str] = set()
            for i, e in enumerate(entries):
                if e in seen:
                    self.bad(f"{path}[{i}]", f"{_q(e)} is listed twice")
                seen.add(e)
            return frozenset(entries)

        return read_set

    # ------------------------------------------------------------ the document

    def policy(self, data: Any) -> Policy:
        try:
            doc = self.table(data, "", TOP_FIELDS)
        except _Bad:
            raise PolicyDocumentError(self.problems) from None
        self.field(doc, "", "format", self.format_version)
        default_profile = self.field(doc, "", "default_profile", self.ident, DEFAULT_PROFILE_ID)
        timezone = self.field(doc, "", "timezone", self.timezone, DEFAULT_TIMEZONE)
        ttl_cap = self.field(
            doc, "", "schedule_ttl_cap", lambda v, p: self.integer(v, p, *TTL_CAP_RANGE), 300
        )
        profiles = (
            self.field(doc, "", "profiles", lambda v, p: self.items(v, p, self.profile)) or []
        )
        if isinstance(doc.get("profiles"), list) and not doc["profiles"]:
            self.bad("profiles", "at least one profile is needed (the default one)")
        self.unique_ids(profiles, "profiles")
        # A profile that failed its own checks still exists: references to it are not errors too.
        raw_profiles = doc.get("profiles") if isinstance(doc.get("profiles"), list) else []
        self.profile_ids = {
            e["id"] for e in raw_profiles if isinstance(e, dict) and isinstance(e.get("id"), str)
        }
        if (
            default_profile is not None
            and "profiles" in doc
            and default_profile not in self.profile_ids
        ):
            self.bad("default_profile", f'no profile "{default_profile}"')
        devices = (
            self.field(doc, "", "devices", lambda v, p: self.items(v, p, self.device), []) or []
        )
        rules = self.field(doc, "", "rules", lambda v, p: self.items(v, p, self.rule), []) or []
        schedules = (
            self.field(doc, "", "schedules", lambda v, p: self.items(v, p, self.schedule), []) or []
        )
        overrides = (
            self.field(doc, "", "overrides", lambda v, p: self.items(v, p, self.override), []) or []
        )
        self.unique_ids(devices, "devices")
        self.unique_ids(schedules, "schedules")
        self.unique_ids(overrides, "overrides")
        self.unique_keys(
            devices, "devices", lambda d: (d.match, d.value), "value", "another device has"
        )
        self.unique_keys(
            rules,
            "rules",
            lambda r: (r.profile, r.domain),
            "domain",
            "another rule of this profile names",
        )

        if self.problems:
            raise PolicyDocumentError(self.problems)
        return Policy(
            profiles=tuple(profiles),
            devices=tuple(devices),
            rules=tuple(rules),
            schedules=tuple(schedules),
            overrides=tuple(overrides),
            default_profile=default_profile,
            timezone=timezone,
            schedule_ttl_cap=ttl_cap,
        )

    def format_version(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or value != FORMAT:
            raise self.bad(
                path, f"{_q(value)} is not a format this SafeNest reads (it reads {FORMAT})"
            )
        return FORMAT

    def unique_ids(self, entries: list, section: str) -> set[str]:
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            if entry.id in seen:
                self.bad(f"{section}[{i}].id", f'"{entry.id}" is used by an earlier entry')
            seen.add(entry.id)
        return seen

    def unique_keys(
        self, entries: list, section: str, key: Callable, field: str, what: str
    ) -> None:
        seen: set = set()
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            k = key(entry)
            if k in seen:
                self.bad(f"{section}[{i}].{field}", f"{what} {_q(k[1])}")
            seen.add(k)

    def profile(self, value: Any, path: str) -> Profile:
        obj = self.table(value, path, PROFILE_FIELDS)
        n = len(self.problems)
        pid = self.field(obj, path, "id", self.ident)
        name = self.field(obj, path, "name", self.name)
        kind = self.field(obj, path, "kind", self.choice(PROFILE_KINDS), "child")
        birth = self.field(obj, path, "birth", self.birth, None)
        band = self.field(obj, path, "band", self.choice(BANDS), None)
        if "birth" in obj and "band" in obj:
            self.bad(
                f"{path}.band", "give birth or band, not both (the band follows the birth date)"
            )
        categories = self.field(obj, path, "categories", self.category_choices, {})
        services = self.field(obj, path, "services", self.id_set(self.service), frozenset())
        allowlist_mode = self.field(obj, path, "allowlist_mode", self.boolean, False)
        safesearch = self.field(obj, path, "safesearch", self.choice(SAFESEARCH_CHOICES), "auto")
        youtube = self.field(obj, path, "youtube", self.choice(YOUTUBE_CHOICES), "auto")
        bypass = self.field(obj, path, "bypass_defaults", self.boolean, True)
        if len(self.problems) > n:
            raise _Bad()
        return Profile(
            pid,
            name,
            kind,
            birth,
            band,
            categories,
            services,
            allowlist_mode,
            safesearch,
            youtube,
            bypass,
        )

    def birth(self, value: Any, path: str) -> tuple[int, int]:
        obj = self.table(value, path, ("year", "month"))
        n = len(self.problems)
        year = self.field(obj, path, "year", lambda v, p: self.integer(v, p, *BIRTH_YEARS))
        month = self.field(obj, path, "month", self.month)
        if len(self.problems) > n:
            raise _Bad()
        return (year, month)

    def month(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(path, f"expected a month number 1-12 (got {_describe(value)})")
        if not 1 <= value <= 12:
            raise self.bad(path, f"{value} is not a month (1-12)")
        return value

    def category_choices(self, value: Any, path: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.bad(
                path, f'expected a table of category = "block" | "allow" (got {_describe(value)})'
            )
        obj = value
        n = len(self.problems)
        out: dict[str, str] = {}
        for cid, choice in obj.items():
            sub = f"{path}.{cid}"
            try:
                self.category(cid, sub)
                self.choice(CATEGORY_CHOICES)(choice, sub)
            except _Bad:
                continue
            if choice == "allow" and cid in self.always:
                self.bad(sub, f'"{cid}" is blocked for everyone (always) and cannot be loosened')
                continue
            out[cid] = choice
        if len(self.problems) > n:
            raise _Bad()
        return out

    def device(self, value: Any, path: str) -> Device:
        obj = self.table(value, path, DEVICE_FIELDS)
        n = len(self.problems)
        did = self.field(obj, path, "id", self.ident)
        name = self.field(obj, path, "name", self.text, "")
        match = self.field(obj, path, "match", self.choice(DEVICE_MATCHES))
        profile = self.field(obj, path, "profile", self.profile_ref)
        device_value = None
        if match is not None:
            device_value = self.field(obj, path, "value", getattr(self, f"{match}_value"))
        if len(self.problems) > n:
            raise _Bad()
        return Device(did, name, match, device_value, profile)

    def ip_value(self, value: Any, path: str) -> str:
        try:
            return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
        except ValueError:
            raise self.bad(path, f"{_q(value)} is not an IP address (like 192.168.1.23)") from None

    def cidr_value(self, value: Any, path: str) -> str:
        text = value if isinstance(value, str) else ""
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError:
            pass
        try:
            fixed = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.bad(path, f"{_q(value)} is not a subnet (like 10.0.7.0/24)") from None
        raise self.bad(path, f"{_q(value)} has host bits set: did you mean {fixed}?")

    def mac_value(self, value: Any, path: str) -> str:
        text = value.strip().lower() if isinstance(value, str) else ""
        if not _MAC_RE.fullmatch(text):
            raise self.bad(path, f"{_q(value)} is not a MAC address (like aa:bb:cc:dd:ee:ff)")
        return text.replace("-", ":")

    def rule(self, value: Any, path: str) -> Rule:
        obj = self.table(value, path, RULE_FIELDS)
        n = len(self.problems)
        domain = self.field(obj, path, "domain", self.domain)
        action = self.field(obj, path, "action", self.choice(RULE_ACTIONS))
        profile = self.field(obj, path, "profile", self.profile_ref, None)
        note = self.field(obj, path, "note", self.text, "")
        if len(self.problems) > n:
            raise _Bad()
        return Rule(domain, action, profile, note)

    def schedule(self, value: Any, path: str) -> Schedule:
        obj = self.table(value, path, SCHEDULE_FIELDS)
        n = len(self.problems)
        sid = self.field(obj, path, "id", self.ident)
        profile = self.field(obj, path, "profile", self.profile_ref)
        name = self.field(obj, path, "name", self.text, "")
        days = self.field(obj, path, "days", self.days)
        start = self.field(obj, path, "start", self.clock)
        end = self.field(obj, path, "end", self.clock)
        mode = self.field(obj, path, "mode", self.choice(SCHEDULE_MODES))
        categories = self.field(obj, path, "categories", self.id_set(self.category), frozenset())
        services = self.field(obj, path, "services", self.id_set(self.service), frozenset())
        if start is not None and start == end:
            self.bad(
                f"{path}.end", f'the window starts and ends at "{start}": it would last no time'
            )
        if mode == "internet_off" and (categories or services):
            field = "categories" if categories else "services"
            self.bad(
                f"{path}.{field}",
                "mode internet_off turns everything off; list categories or services only with mode block",
            )
        if (
            mode == "block"
            and categories is not None
            and services is not None
            and not (categories or services)
        ):
            self.bad(
                f"{path}.categories", "mode block needs at least one category or service to block"
            )
        if len(self.problems) > n:
            raise _Bad()
        return Schedule(sid, profile, name, days, start, end, mode, categories, services)

    def days(self, value: Any, path: str) -> frozenset[int]:
        def day(v: Any, p: str) -> int:
            if not isinstance(v, str) or v not in WEEKDAYS:
                raise self.bad(p, f"{_q(v)} is not a day ({', '.join(WEEKDAYS)})")
            return WEEKDAYS.index(v)

        entries = self.items(value, path, day)
        if any(e is None for e in entries):
            raise _Bad()
        if not entries:
            raise self.bad(path, "give at least one day")
        if len(set(entries)) != len(entries):
            raise self.bad(path, "a day is listed twice")
        return frozenset(entries)

    def override(self, value: Any, path: str) -> Override:
        obj = self.table(value, path, OVERRIDE_FIELDS)
        n = len(self.problems)
        oid = self.field(obj, path, "id", self.ident)
        profile = self.field(obj, path, "profile", self.profile_ref)
        kind = self.field(obj, path, "kind", self.choice(OVERRIDE_KINDS))
        starts = self.field(obj, path, "starts", self.instant)
        until = self.field(obj, path, "until", self.instant)
        categories = self.field(obj, path, "categories", self.id_set(self.category), frozenset())
        services = self.field(obj, path, "services", self.id_set(self.service), frozenset())
        domains = self.field(obj, path, "domains", self.id_set(self.domain), frozenset())
        note = self.field(obj, path, "note", self.text, "")
        if starts is not None and until is not None and until <= starts:
            self.bad(
                f"{path}.until", f"{format_time(until)} is not after starts ({format_time(starts)})"
            )
        for cid in sorted(categories or ()):
            if cid in self.always:
                self.bad(
                    f"{path}.categories",
                    f'"{cid}" is blocked for everyone (always): no reward grants it',
                )
        granted = bool(categories or services or domains)
        if kind == "pause" and granted:
            self.bad(
                path, "a pause blocks everything: categories, services and domains are for rewards"
            )
        if (
            kind == "reward"
            and categories is not None
            and services is not None
            and domains is not None
            and not granted
        ):
            self.bad(path, "a reward needs at least one category, service or domain to allow")
        if len(self.problems) > n:
            raise _Bad()
        return Override(oid, profile, kind, starts, until, categories, services, domains, note)


def _describe(value: Any) -> str:
    kind = {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        list: "an array",
        dict: "a table",
    }
    return f"{kind.get(type(value), type(value).__name__)} {_q(value)}"


def _q(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    text = (
        json.dumps(value, ensure_ascii=False, default=str)
        if not isinstance(value, dict | list)
        else "…"
    )
    return text if len(text) <= 60 else text[:57] + "..."
