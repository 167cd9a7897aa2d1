"""The policy a family or a school sets up, as plain immutable values.

This is the shared vocabulary of the storage package (which loads and saves it), the policy
document (`safenest policy export/import`), the snapshot builder and `decide`. Nothing here
touches the database, the network or the clock.

Ids are short slugs (``[a-z0-9][a-z0-9_-]{0,39}``) chosen once and kept: rules, devices,
schedules and the query log refer to profiles by id, so renaming a child changes only `name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

# Vietnam's age bands (Decree 147/2024's game ratings), youngest first, with the age each starts at.
BANDS: tuple[str, ...] = ("00+", "12+", "16+", "18+")
BAND_START: dict[str, int] = {"00+": 0, "12+": 12, "16+": 16, "18+": 18}

PROFILE_KINDS = ("child", "class", "guest", "adult")
CATEGORY_CHOICES = ("block", "allow")  # a parent's per-profile tightening or loosening
SAFESEARCH_CHOICES = ("auto", "on", "off")  # auto: on for every child band, off for 18+
YOUTUBE_CHOICES = ("auto", "strict", "moderate", "off")  # auto: strict 00+, moderate 12+/16+, off 18+
RULE_ACTIONS = ("allow", "block")
DEVICE_MATCHES = ("ip", "cidr", "mac")
SCHEDULE_MODES = ("internet_off", "block")  # bedtime: all off but allowed names; homework: listed things off
OVERRIDE_KINDS = ("pause", "reward")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
TIME_PATTERN = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")  # "HH:MM", 24 h, local time

DEFAULT_PROFILE_ID = "default"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True, slots=True)
class Profile:
    """Who is asking: a child, a class, a guest or an adult, and what applies to them.

    The band comes from `birth` (year, month) when given, and moves up on its own as the child
    grows; otherwise from `band`. `categories` maps a category id to "block" or "allow" where
    the parent differs from the criteria set's default for the band (never for `always`
    categories). `services` are the ids of blocked services from the catalogue.
    """

    id: str
    name: str
    kind: str = "child"  # one of PROFILE_KINDS
    birth: tuple[int, int] | None = None  # (year, month 1-12)
    band: str | None = None  # one of BANDS, used when birth is None; None with no birth means 18+
    categories: dict[str, str] = field(default_factory=dict)  # category id -> "block" | "allow"
    services: frozenset[str] = frozenset()  # blocked service ids
    allowlist_mode: bool = False  # everything blocked but allowed domains and "allow" categories
    safesearch: str = "auto"  # one of SAFESEARCH_CHOICES (Google, Bing, DuckDuckGo, ...)
    youtube: str = "auto"  # one of YOUTUBE_CHOICES
    bypass_defaults: bool = True  # DoH canary, Private Relay, resolver.arpa, filter_bypass

    def __hash__(self) -> int:  # `categories` is a dict; profiles are keyed by id anyway
        return hash(self.id)


@dataclass(frozen=True, slots=True)
class Device:
    """A device or a whole subnet, assigned to a profile."""

    id: str
    name: str
    match: str  # one of DEVICE_MATCHES
    value: str  # "192.168.1.23", "10.0.7.0/24" or "aa:bb:cc:dd:ee:ff" (normalized lower case)
    profile: str  # profile id


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow or block a domain and its subdomains, for one profile or (profile None) everyone."""

    domain: str  # normalized, dotted, lower case
    action: str  # one of RULE_ACTIONS
    profile: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A weekly window in the Pi's time zone. `end` <= `start` means it runs past midnight:
    "sun-thu 21:30-06:30" starts on those evenings and ends the next morning."""

    id: str
    profile: str
    name: str
    days: frozenset[int]  # weekdays the window *starts* on, 0 = Monday
    start: str  # "HH:MM"
    end: str  # "HH:MM"
    mode: str  # one of SCHEDULE_MODES
    categories: frozenset[str] = frozenset()  # mode "block": blocked during the window
    services: frozenset[str] = frozenset()  # mode "block": blocked during the window


@dataclass(frozen=True, slots=True)
class Override:
    """A timed exception that ends by itself: pause the internet, or grant a reward.

    A reward allows its categories, services and domains (never an `always` category) until
    `until`; a pause blocks everything for the profile until `until`.
    """

    id: str
    profile: str
    kind: str  # one of OVERRIDE_KINDS
    starts: datetime  # timezone-aware
    until: datetime  # timezone-aware, after `starts`
    categories: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    note: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a household or a school set up. `default_profile` applies to unknown devices."""

    profiles: tuple[Profile, ...]
    devices: tuple[Device, ...] = ()
    rules: tuple[Rule, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    overrides: tuple[Override, ...] = ()
    default_profile: str = DEFAULT_PROFILE_ID
    timezone: str = DEFAULT_TIMEZONE
    schedule_ttl_cap: int = 300  # seconds; answers to profiles with schedules carry no longer TTLs

    def profile(self, profile_id: str) -> Profile:
        for p in self.profiles:
            if p.id == profile_id:
                return p
        raise KeyError(profile_id)


def default_policy() -> Policy:
    """Out of the box: every device is a 12+ child with SafeSearch and the bypass defaults on,
    so a family that plugs the Pi in is protected at once."""
    return Policy(profiles=(Profile(DEFAULT_PROFILE_ID, "Mặc định / Default", kind="child", band="12+"),))
