"""`PolicySnapshot`: everything a decision reads, precomputed off the hot path.

`build_snapshot(policy, criteria, index, catalogue)` turns the policy values into lookup tables:

- per profile and per band it may reach, the index labels blocked by age or by the parent's
  choice, the allow lists that apply, and the SafeSearch hosts to rewrite (wire name -> the
  rewrite decision);
- one table of wire-format name suffixes -> what is attached to them: rules (per profile and
  for everyone), catalogue services, reward domains, resolver.arpa;
- the device lookup: MAC, then exact IP, then CIDRs longest prefix first.

Index labels are category ids, or ``id@band`` for a list with its own minimum age (e.g.
``online_games@18+``). A label whose category the criteria do not know is treated as 18+
(blocked for children), so that a list is never silently ignored. A list's own age never
switches protection off: a list of an ``always`` category is ``always``, and a list ``off`` in
a category the default table blocks is blocked from the category's age.

Time: `state_at(now)` gives each profile's state (band, active schedule windows, pause and
rewards) and memoises it until `next_change(now)`, the earliest instant at which any of it can
change; the snapshot is otherwise immutable and never touches the clock, the database or the
network. Problems found while building (a device of an unknown profile, a bad rule domain...)
are skipped and listed in `warnings`: a policy mistake must never stop DNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..feed.categories import DEFAULT_CATEGORIES
from ..index import DomainIndex, Match, normalize_domain, to_wire
from .bands import ADULT_BAND, band_at, band_changes, is_child_band
from .decision import Decision
from .model import BANDS, DEFAULT_TIMEZONE, Override, Policy, Profile, default_policy
from .schedules import Window, active_windows, next_boundary, window_of

__all__ = [
    "PolicySnapshot",
    "ProfileState",
    "build_snapshot",
    "CANARY_NXDOMAIN",
    "RESOLVER_ARPA",
    "FILTER_BYPASS",
]

# Names a child profile with the bypass defaults gets NXDOMAIN for, and the reason.
CANARY_NXDOMAIN: dict[str, str] = {
    "use-application-dns.net": "bypass=doh-canary",  # Firefox turns its own DoH off
    "mask.icloud.com": "bypass=private-relay",  # iCloud Private Relay stays off
    "mask-h2.icloud.com": "bypass=private-relay",
}
RESOLVER_ARPA = "resolver.arpa"  # RFC 9462 discovery of encrypted resolvers: NODATA
FILTER_BYPASS = "filter_bypass"
YOUTUBE = "youtube"  # the engine whose level comes from Profile.youtube, not Profile.safesearch
UNKNOWN_MIN_AGE = "18+"
_NEVER = datetime.max.replace(tzinfo=UTC)
_DEFAULT_AGES = {c.id: c.min_age for c in DEFAULT_CATEGORIES}
_BAND_RANK = {b: i for i, b in enumerate(BANDS)}


class _Service(Protocol):
    id: str
    domains: tuple[str, ...]


class _Engine(Protocol):
    id: str
    hosts: tuple[str, ...]

    def target(self, level: str) -> str: ...


class _Catalogue(Protocol):
    services: Mapping[str, _Service]
    safesearch: Mapping[str, _Engine]


@dataclass(slots=True)
class SuffixEntry:
    """What is attached to one wire-format name suffix (it covers the name and subdomains)."""

    rules: dict[str | None, tuple[str, str]] = field(
        default_factory=dict
    )  # profile|None -> (action, domain)
    services: tuple[str, ...] = ()  # catalogue services listing this domain
    rewards: tuple[str, ...] = ()  # reward override ids granting this domain
    resolver_arpa: bool = False


@dataclass(slots=True, eq=False)
class BandTables:
    """One profile at one band: what the categories, allow lists and SafeSearch mean."""

    profile: str
    band: str
    child: bool
    blocked: dict[str, tuple[str, str, str]]  # index label -> (reason, category id, min_age)
    allows: dict[str, str]  # allow-list label that applies -> category id
    safesearch: dict[bytes, Decision]  # exact host (wire) -> its rewrite decision
    default: Decision
    memo: dict[str, Decision] = field(default_factory=dict)  # reason -> decision without a match

    def cached(self, action: str, reason: str, **fields: Any) -> Decision:
        """The one Decision for (this profile, band, reason) when it carries no index match."""
        d = self.memo.get(reason)
        if d is None:
            d = Decision(action, reason, profile=self.profile, band=self.band, **fields)
            self.memo[reason] = d
        return d


@dataclass(slots=True, eq=False)
class CompiledProfile:
    profile: Profile
    tables: dict[str, BandTables]  # band -> tables, for every band the profile can have
    band_changes: tuple[tuple[datetime, str], ...]
    windows: tuple[Window, ...]  # internet_off windows first
    overrides: tuple[Override, ...]
    services: frozenset[str]  # blocked services (known to the catalogue)
    allow_categories: frozenset[str]  # categories the parent marks "allow"


@dataclass(slots=True, eq=False)
class ProfileState:
    """A profile between two instants at which anything can change: everything `decide` needs."""

    compiled: CompiledProfile
    tables: BandTables
    bypass: bool  # a child band with the bypass defaults on
    pause: Override | None
    rewards: tuple[Override, ...]
    windows: tuple[Window, ...]
    shared: _Shared


@dataclass(slots=True, eq=False)
class _Shared:
    """Snapshot-wide tables, referenced from every ProfileState so decide has one hop to them."""

    matches: Callable[[bytes], list[Match]]
    suffixes: dict[bytes, SuffixEntry]
    always: dict[str, str]  # index label -> category id, for labels whose min_age is `always`
    category_of: dict[str, str]  # index label -> category id
    canaries: dict[bytes, str]  # exact wire name -> reason (NXDOMAIN)
    filter_bypass: frozenset[str]  # index labels of the filter_bypass category
    service_names: dict[str, str]  # service id -> its name for people (English)


class PolicySnapshot:
    """Immutable (apart from its time memo); build with `build_snapshot`."""

    def __init__(
        self,
        *,
        policy: Policy,
        zone: tzinfo,
        index: DomainIndex,
        label: str,
        profiles: dict[str, CompiledProfile],
        default_profile: str,
        shared: _Shared,
        devices_ip: dict[str, str],
        devices_mac: dict[str, str],
        devices_cidr: tuple[tuple[Any, str], ...],
        warnings: tuple[str, ...],
    ) -> None:
        self.policy = policy
        self.zone = zone
        self.index = index
        self.label = label
        self.profiles = profiles
        self.default_profile = default_profile
        self.shared = shared
        self.warnings = warnings
        self._by_ip = devices_ip
        self._by_mac = devices_mac
        self._by_cidr = devices_cidr
        # (valid from, valid until, states): replaced in one assignment, so threads may race
        # on it harmlessly (each computes the same states).
        self._state: tuple[datetime, datetime, dict[str, ProfileState]] = (_NEVER, _NEVER, {})

    def __repr__(self) -> str:
        return f"<PolicySnapshot {self.label or '-'}: {len(self.profiles)} profiles>"

    # -- who is asking ---------------------------------------------------------------------

    def profile_for(self, ip: str, mac: str | None = None) -> Profile:
        """The device's profile: by MAC, then exact IP, then the longest matching CIDR, then
        the default profile.

        A known MAC comes first: a child's phone assigned by MAC that takes a parent's static IP
        must keep the child's profile (docs/policy.md, "How devices are recognised")."""
        pid = self._by_mac.get(_normal_mac(mac)) if mac else None
        addr = None
        if pid is None:
            pid = self._by_ip.get(ip)
        if pid is None:
            addr = _parse_ip(ip)
            if addr is not None:
                pid = self._by_ip.get(str(addr))
        if pid is None and addr is not None:
            for net, net_pid in self._by_cidr:  # longest prefix first
                if addr.version == net.version and addr in net:
                    pid = net_pid
                    break
        compiled = self.profiles.get(pid) if pid is not None else None
        if compiled is None:
            compiled = self.profiles[self.default_profile]
        return compiled.profile

    # -- time ------------------------------------------------------------------------------

    def state_at(self, now: datetime) -> dict[str, ProfileState]:
        """Every profile's state at the aware instant `now` (memoised until next_change).

        `now` in UTC is fastest: comparing datetimes of a ZoneInfo zone costs about 1 µs."""
        if now.tzinfo is not UTC:
            now = now.astimezone(UTC)
        lo, hi, states = self._state
        if lo <= now < hi:
            return states
        states = {pid: self._profile_state(cp, now) for pid, cp in self.profiles.items()}
        nxt = self.next_change(now)
        self._state = (now, nxt if nxt is not None else _NEVER, states)
        return states

    def default_state(self, now: datetime) -> ProfileState:
        return self.state_at(now)[self.default_profile]

    def _profile_state(self, cp: CompiledProfile, now: datetime) -> ProfileState:
        band = band_at(cp.profile, now, self.zone)
        tables = cp.tables[band]
        pause = None
        rewards = []
        for o in cp.overrides:
            if o.starts <= now < o.until:
                if o.kind == "pause":
                    pause = pause or o
                else:
                    rewards.append(o)
        return ProfileState(
            compiled=cp,
            tables=tables,
            bypass=cp.profile.bypass_defaults and tables.child,
            pause=pause,
            rewards=tuple(rewards),
            windows=active_windows(cp.windows, now, self.zone),
            shared=self.shared,
        )

    def next_change(self, now: datetime) -> datetime | None:
        """The earliest instant after `now` at which any decision may change (a schedule
        window starts or ends, an override starts or ends, a child's band changes), or None."""
        best: datetime | None = None

        def consider(t: datetime | None) -> None:
            nonlocal best
            if t is not None and t > now and (best is None or t < best):
                best = t

        for cp in self.profiles.values():
            for instant, _band in cp.band_changes:
                if instant > now:
                    consider(instant)
                    break
            for o in cp.overrides:
                consider(o.starts)
                consider(o.until)
            if cp.windows:
                consider(next_boundary(cp.windows, now, self.zone))
        return best.astimezone(UTC) if best is not None else None

    def ttl_cap(self, profile_id: str, now: datetime | None = None) -> int | None:
        """`policy.schedule_ttl_cap` for a profile in a child band (00+ to 16+; without `now`, one
        that can be in a child band), or with schedules or overrides (with `now`, only overrides
        that have not ended count), else None.

        Every child is capped, not only those with schedules: a parent's "pause now" or a new
        bedtime must reach a device within the cap, not after its hours-long cached answers."""
        cp = self.profiles.get(profile_id)
        if cp is None:
            return None
        if now is None:
            child = any(t.child for t in cp.tables.values())
        else:
            child = is_child_band(band_at(cp.profile, now, self.zone))
        if child or cp.windows or any(now is None or o.until > now for o in cp.overrides):
            return self.policy.schedule_ttl_cap
        return None


# -- building --------------------------------------------------------------------------------


def build_snapshot(
    policy: Policy,
    criteria: Mapping[str, Any],
    index: DomainIndex,
    catalogue: _Catalogue | None,
    label: str = "",
) -> PolicySnapshot:
    """Precompute everything a decision needs. `criteria` maps category ids to their feed
    `Category` (only `.min_age` is read); `catalogue` has `services` and `safesearch`."""
    warnings: list[str] = []
    zone = _zone(policy.timezone, warnings)
    services = dict(catalogue.services) if catalogue is not None else {}
    engines = dict(catalogue.safesearch) if catalogue is not None else {}

    labels = sorted(set(index.categories))
    label_info = {lab: _label_info(lab, criteria, warnings) for lab in labels}
    always = {lab: cat for lab, (cat, age) in label_info.items() if age == "always"}

    profiles_list = list(policy.profiles)
    known = {p.id for p in profiles_list}
    default_id = policy.default_profile
    if default_id not in known:
        warnings.append(f"default profile {default_id!r} does not exist: using a 12+ child profile")
        fallback = default_policy().profiles[0]
        profiles_list.append(
            Profile(default_id, fallback.name, kind=fallback.kind, band=fallback.band)
        )
        known.add(default_id)

    suffixes: dict[bytes, SuffixEntry] = {}

    def entry(domain: str, what: str) -> SuffixEntry | None:
        d = normalize_domain(domain)
        if d is None:
            warnings.append(f"{what}: {domain!r} is not a domain name; skipped")
            return None
        key = to_wire(d)
        e = suffixes.get(key)
        if e is None:
            e = suffixes[key] = SuffixEntry()
        return e

    for rule in policy.rules:
        if rule.profile is not None and rule.profile not in known:
            warnings.append(f"rule for {rule.domain}: unknown profile {rule.profile!r}; skipped")
            continue
        if rule.action not in ("allow", "block"):
            warnings.append(f"rule for {rule.domain}: bad action {rule.action!r}; skipped")
            continue
        e = entry(rule.domain, f"rule {rule.action} {rule.domain}")
        if e is None:
            continue
        domain = normalize_domain(rule.domain) or rule.domain
        if e.rules.get(rule.profile, ("", ""))[0] != "block":  # block wins at equal specificity
            e.rules[rule.profile] = (rule.action, domain)

    for sid, service in sorted(services.items()):
        for domain in service.domains:
            e = entry(domain, f"service {sid}")
            if e is not None and sid not in e.services:
                e.services += (sid,)

    overrides = _checked_overrides(policy, known, warnings)
    for s in policy.schedules:
        if s.profile not in known:
            warnings.append(f"schedule {s.id}: unknown profile {s.profile!r}; skipped")
    for o in overrides:
        if o.kind == "reward":
            for domain in sorted(o.domains):
                e = entry(domain, f"override {o.id}")
                if e is not None:
                    e.rewards += (o.id,)

    arpa = entry(RESOLVER_ARPA, "resolver.arpa")
    assert arpa is not None
    arpa.resolver_arpa = True

    compiled: dict[str, CompiledProfile] = {}
    for p in profiles_list:
        if p.id in compiled:
            warnings.append(f"profile {p.id!r} appears twice; the first is used")
            continue
        compiled[p.id] = _compile_profile(
            p, policy, overrides, zone, label_info, services, engines, warnings
        )

    ip, mac, cidr = _devices(policy, known, warnings)
    shared = _Shared(
        matches=index.matches,
        suffixes=suffixes,
        always=always,
        category_of={lab: cat for lab, (cat, _age) in label_info.items()},
        service_names={sid: _display_name(svc) for sid, svc in services.items()},
        canaries={to_wire(n): r for n, r in CANARY_NXDOMAIN.items()},
        filter_bypass=frozenset(
            lab for lab, (cat, _a) in label_info.items() if cat == FILTER_BYPASS
        ),
    )
    return PolicySnapshot(
        policy=policy,
        zone=zone,
        index=index,
        label=label,
        profiles=compiled,
        default_profile=default_id,
        shared=shared,
        devices_ip=ip,
        devices_mac=mac,
        devices_cidr=cidr,
        warnings=tuple(warnings),
    )


def _display_name(service: Any) -> str:
    names = getattr(service, "names", None)
    return getattr(names, "en", None) or service.id


def _zone(name: str, warnings: list[str]) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        warnings.append(f"unknown time zone {name!r}: using {DEFAULT_TIMEZONE}")
        return ZoneInfo(DEFAULT_TIMEZONE)


def _label_info(label: str, criteria: Mapping[str, Any], warnings: list[str]) -> tuple[str, str]:
    """(category id, effective min_age) of an index label ``id`` or ``id@band``.

    A list's own age cannot switch protection off (a feed's list is a feed's word, like its
    categories, agent.lists.criteria_in_force): a list of an ``always`` category is ``always``,
    and a list ``off`` in a category the default table blocks is blocked from the category's age.
    """
    category, at, band = label.partition("@")
    known = criteria.get(category)
    age = getattr(known, "min_age", None) or UNKNOWN_MIN_AGE
    if not at or age == "always":
        return category, age
    if band == "off" and _DEFAULT_AGES.get(category, "off") != "off":
        warnings.append(
            f"lists labelled {label}: a feed may not switch {category} off; its block lists "
            f"are blocked as {category} ({age}), its allow lists stay off"
        )
        return category, age
    return category, band


def _blocked_by_age(min_age: str, band: str) -> bool:
    rank = _BAND_RANK.get(min_age)
    return min_age == "always" or (rank is not None and _BAND_RANK[band] < rank)


def _allow_applies(min_age: str, band: str) -> bool:
    """An allow list applies from its age on; `always` everywhere, `off` nowhere."""
    rank = _BAND_RANK.get(min_age)
    return min_age == "always" or (rank is not None and _BAND_RANK[band] >= rank)


def _possible_bands(p: Profile, changes: tuple[tuple[datetime, str], ...]) -> tuple[str, ...]:
    if p.birth is None:
        return (p.band if p.band in BANDS else ADULT_BAND,)
    return BANDS  # a child moves through them all; the table is small


def _compile_profile(
    p: Profile,
    policy: Policy,
    all_overrides: tuple[Override, ...],
    zone: tzinfo,
    label_info: dict[str, tuple[str, str]],
    services: Mapping[str, _Service],
    engines: Mapping[str, _Engine],
    warnings: list[str],
) -> CompiledProfile:
    p = _checked_profile(p, warnings)
    choices = {c: v for c, v in p.categories.items() if v in ("block", "allow")}
    changes = band_changes(p, zone)
    tables: dict[str, BandTables] = {}
    for band in _possible_bands(p, changes):
        blocked: dict[str, tuple[str, str, str]] = {}
        allows: dict[str, str] = {}
        for lab, (cat, age) in label_info.items():
            if age == "always":
                continue  # decided before anything else, for everyone
            choice = choices.get(cat)
            if choice == "block":
                blocked[lab] = (f"category={cat} choice=block", cat, age)
            elif choice is None and _blocked_by_age(age, band):
                blocked[lab] = (f"category={cat} min_age={age}", cat, age)
            # An allow list "off" stays off (its block side may have been kept on, above).
            by_age = not lab.endswith("@off") and _allow_applies(age, band)
            if choice == "allow" or (choice is None and by_age):
                allows[lab] = cat
        child = is_child_band(band)
        t = BandTables(p.id, band, child, blocked, allows, {}, Decision("allow", "default"))
        t.default = t.cached("allow", "default")
        t.safesearch = _safesearch(p, t, engines, warnings)
        tables[band] = t

    windows = []
    for s in policy.schedules:
        if s.profile != p.id:
            continue
        try:
            windows.append(window_of(s))
        except ValueError as exc:
            warnings.append(f"schedule {s.id}: {exc}; skipped")
    windows.sort(key=lambda w: w.schedule.mode != "internet_off")  # bedtime decides first
    overrides = tuple(
        sorted((o for o in all_overrides if o.profile == p.id), key=lambda o: (o.starts, o.id))
    )
    unknown = sorted(s for s in p.services if s not in services)
    if unknown:
        warnings.append(f"profile {p.id}: unknown services {', '.join(unknown)}; ignored")
    return CompiledProfile(
        profile=p,
        tables=tables,
        band_changes=changes,
        windows=tuple(windows),
        overrides=overrides,
        services=frozenset(s for s in p.services if s in services),
        allow_categories=frozenset(c for c, v in choices.items() if v == "allow"),
    )


def _checked_profile(p: Profile, warnings: list[str]) -> Profile:
    """The profile, or a safe stand-in for values the policy checks should have refused."""
    if p.birth is not None:
        try:
            year, month = p.birth
            datetime(int(year), int(month), 1)
        except (TypeError, ValueError):
            band = p.band if p.band in BANDS else BANDS[0]
            warnings.append(f"profile {p.id}: bad birth {p.birth!r}; using band {band}")
            return replace(p, birth=None, band=band)
    elif p.band is not None and p.band not in BANDS:
        warnings.append(f"profile {p.id}: bad band {p.band!r}; using {BANDS[0]}")
        return replace(p, band=BANDS[0])
    return p


def _checked_overrides(
    policy: Policy, known: set[str], warnings: list[str]
) -> tuple[Override, ...]:
    out = []
    for o in policy.overrides:
        if o.profile not in known:
            warnings.append(f"override {o.id}: unknown profile {o.profile!r}; skipped")
        elif o.kind not in ("pause", "reward"):
            warnings.append(f"override {o.id}: unknown kind {o.kind!r}; skipped")
        elif o.starts.tzinfo is None or o.until.tzinfo is None:
            warnings.append(f"override {o.id}: times without a time zone; skipped")
        elif o.until <= o.starts:
            warnings.append(f"override {o.id}: ends before it starts; skipped")
        else:
            out.append(o)
    return tuple(out)


def safesearch_level(p: Profile, engine_id: str, band: str) -> str:
    """ "off", or the level to ask the engine for: "on" (search), "strict"/"moderate" (YouTube)."""
    if engine_id == YOUTUBE:
        if p.youtube != "auto":
            return p.youtube
        return {"00+": "strict", "12+": "moderate", "16+": "moderate"}.get(band, "off")
    if p.safesearch != "auto":
        return p.safesearch
    return "on" if is_child_band(band) else "off"


def _safesearch(
    p: Profile, t: BandTables, engines: Mapping[str, _Engine], warnings: list[str]
) -> dict[bytes, Decision]:
    out: dict[bytes, Decision] = {}
    for eid, engine in sorted(engines.items()):
        level = safesearch_level(p, eid, t.band)
        if level == "off":
            continue
        try:
            target = normalize_domain(engine.target(level))
        except (KeyError, ValueError) as exc:
            warnings.append(f"SafeSearch {eid}: no target for level {level!r} ({exc})")
            continue
        if target is None:
            warnings.append(f"SafeSearch {eid}: bad target for level {level!r}")
            continue
        decision = t.cached("rewrite", f"safesearch={eid}", target=target)
        for host in engine.hosts:
            h = normalize_domain(host)
            if h is not None:
                out.setdefault(to_wire(h), decision)
    return out


def _normal_mac(mac: str) -> str:
    return mac.strip().lower().replace("-", ":")


def _parse_ip(text: str):
    """An ip_address (an IPv4-mapped IPv6 address as its IPv4), or None."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _devices(policy: Policy, known: set[str], warnings: list[str]):
    by_ip: dict[str, str] = {}
    by_mac: dict[str, str] = {}
    nets: list[tuple[Any, str]] = []
    for d in policy.devices:
        if d.profile not in known:
            warnings.append(f"device {d.id}: unknown profile {d.profile!r}; skipped")
            continue
        try:
            if d.match == "ip":
                addr = _parse_ip(d.value)
                if addr is None:
                    raise ValueError(f"{d.value!r} is not an IP address")
                by_ip.setdefault(str(addr), d.profile)
            elif d.match == "mac":
                by_mac.setdefault(_normal_mac(d.value), d.profile)
            elif d.match == "cidr":
                nets.append((ipaddress.ip_network(d.value, strict=False), d.profile))
            else:
                raise ValueError(f"unknown match {d.match!r}")
        except ValueError as exc:
            warnings.append(f"device {d.id}: {exc}; skipped")
    nets.sort(key=lambda item: -item[0].prefixlen)  # stable: equal prefixes keep policy order
    return by_ip, by_mac, tuple(nets)
