"""The decision for one query: allow, block or rewrite, and the reason that decided it.

`decide(qname_key, qtype, profile, now, snapshot)` is pure: it reads only its arguments (the
snapshot is immutable; its only inner state is a memo of what holds between two instants at which
anything can change, see `PolicySnapshot.state_at`). The resolver, `safenest explain` and the
admin page all call it, so they all give the same reason.

Precedence, first match wins:

1. **always** categories (malware, phishing, csam...): blocked for everyone; nothing lifts them.
   Reason ``always=<category>``.
2. **bypass defaults**, for a profile in a child band (00+, 12+, 16+) with `bypass_defaults` on:
   NXDOMAIN for use-application-dns.net (``bypass=doh-canary``), mask.icloud.com and
   mask-h2.icloud.com (``bypass=private-relay``); NODATA for resolver.arpa and its subdomains
   (``bypass=resolver-discovery``); the filter_bypass category blocked (``bypass=filter_bypass``).
3. **overrides** active at `now`: a pause blocks everything (``override=pause:<id>``); a reward
   allows its domains and services, and names listed in its categories unless another category
   blocks them for the profile's band (``override=reward:<id>``).
4. **rules** of the profile, then rules for everyone: the most specific domain wins, block wins
   at equal specificity; a profile rule beats any rule for everyone (``rule=block:<domain>``,
   ``rule=allow:<domain>``).
5. **schedules** active at `now` (``schedule=<id>``): `internet_off` blocks everything except
   names listed in a category the profile marks "allow" (names the rules allow were decided at
   4); `block` blocks its categories and services.
6. **blocked services** of the profile (``service=<id>``).
7. **categories** by the profile's band at `now`: an allow list applies when its category is
   not blocked for the profile (from its age on, or marked "allow"), and then allows the name
   (``allowlist=<category>``); otherwise the most specific listed suffix in a category blocked
   for the band (``category=<id> min_age=<band>``) or marked "block" by the parent
   (``category=<id> choice=block``).
8. **allow-list mode**: everything not allowed above is blocked (``allowlist-mode``), except
   names listed in a category the profile marks "allow" (``category=<id> choice=allow``).
9. **allow** (``default``).

Finally an allowed name that is one of the profile's SafeSearch hosts becomes a rewrite to the
engine's safe host (``safesearch=<engine>``) for A, AAAA and HTTPS queries; other types stay
allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ..index import Match

if TYPE_CHECKING:
    from .model import Profile
    from .snapshot import BandTables, PolicySnapshot, ProfileState

__all__ = ["Decision", "decide", "decide_for_client", "REWRITE_QTYPES"]

REWRITE_QTYPES = frozenset({1, 28, 65})  # A, AAAA, HTTPS: SafeSearch answers with a CNAME


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer. `reason` is short, stable and machine-readable (EDNS Extended Error
    text, query log, admin page); `explain()` is the sentence for people."""

    action: str  # "allow" | "block" | "rewrite"
    reason: str
    answer: str = ""  # block: "" = the configured block mode, "nxdomain" or "nodata"
    target: str = ""  # rewrite: the CNAME target, dotted
    profile: str = ""  # profile id
    category: str | None = None  # the category that decided, if any
    match: Match | None = None  # the index entry that decided (its lists are match.sources)
    min_age: str = ""  # the deciding category's minimum age (its list's own when it has one)
    band: str = ""  # the profile's band at the instant of the decision
    detail: str = ""  # the human name of what decided: schedule, service, override note

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    def explain(self) -> str:
        """A sentence for people: what decided, naming the profile, category and its minimum
        age, the rule, the schedule window, the service, the override and the lists."""
        who = f"profile {self.profile}" + (f" ({self.band})" if self.band else "")
        kind, _, value = self.reason.partition("=")
        verb = {"allow": "allowed", "block": "blocked", "rewrite": "rewritten"}[self.action]
        if kind == "always":
            why = f"category {value} is blocked for everyone"
        elif kind == "bypass":
            why = {
                "doh-canary": "Firefox's encrypted-DNS canary is answered 'no such name' so "
                "Firefox keeps using this filter",
                "private-relay": "iCloud Private Relay is answered 'no such name' so Apple "
                "devices keep using this filter",
                "resolver-discovery": "encrypted-resolver discovery (resolver.arpa) is "
                "answered with no records",
            }.get(value, f"category {value} (ways around the filter) is blocked for children")
        elif kind == "override":
            what, _, oid = value.partition(":")
            why = f"{'the internet is paused' if what == 'pause' else 'a reward allows it'} (override {oid}"
            why += f": {self.detail})" if self.detail else ")"
        elif kind == "rule":
            action, _, domain = value.partition(":")
            why = f"a rule {action}s {domain} and its subdomains"
        elif kind == "schedule":
            why = f"schedule window {self.detail or value} is active"
        elif kind == "service":
            why = f"the service {self.detail or value} is blocked"
        elif kind == "category":
            if "choice=block" in value:
                why = f"the parent blocks category {self.category} for this profile"
            elif "choice=allow" in value:
                why = f"the parent allows category {self.category} for this profile"
            else:
                why = f"category {self.category} is for {self.min_age}"
        elif kind == "allowlist":
            why = f"it is on the allow list of category {value}"
        elif kind == "allowlist-mode":
            why = "allow-list mode blocks everything not allowed"
        elif kind == "safesearch":
            why = f"SafeSearch of {value} sends it to {self.target}"
        elif self.match is not None:
            why = "no category that lists it is blocked for this profile"
        else:
            why = "nothing blocks it"
        sentence = f"{verb} for {who}: {why}"
        if self.match is not None:
            m = self.match
            cats = ", ".join(m.categories)
            sentence += f"; listed as {m.listed} ({m.kind} {cats}) in {', '.join(m.sources)}"
        return sentence


def decide(
    qname_key: bytes, qtype: int, profile: Profile, now: datetime, snapshot: PolicySnapshot
) -> Decision:
    """Decide for a lower-cased wire-format name (root byte included, as
    agent.index.to_wire gives) asked by `profile` at the aware instant `now`.

    A profile the snapshot does not know (by id) is decided as the default profile.
    """
    states = snapshot.state_at(now)
    state = states.get(profile.id)
    if state is None:
        state = states[snapshot.default_profile]
    return _decide(state, qname_key, qtype)


def decide_for_client(
    qname_key: bytes, qtype: int, ip: str, mac: str | None, now: datetime, snapshot: PolicySnapshot
) -> Decision:
    """`profile_for` and `decide` in one call."""
    return decide(qname_key, qtype, snapshot.profile_for(ip, mac), now, snapshot)


def _decide(st: ProfileState, q: bytes, qtype: int) -> Decision:
    """The precedence of the module docstring, over one profile's state."""
    sh = st.shared
    t = st.tables
    # Every listed suffix, most specific first: a profile may not block the most specific one's
    # category while a parent domain is listed in one it does. (As cheap as lookup() on a miss.)
    matches = sh.matches(q)

    # 1. always
    if matches and sh.always:
        always = sh.always
        for m in matches:
            if m.kind == "block":
                for lab in m.categories:
                    cat = always.get(lab)
                    if cat is not None:
                        return Decision(
                            "block",
                            "always=" + cat,
                            profile=t.profile,
                            category=cat,
                            match=m,
                            min_age="always",
                            band=t.band,
                        )

    # The rules, services, reward domains and resolver.arpa attached to the name's suffixes,
    # most specific first (most names have none: one slice and one dict probe per label).
    hits = None
    suffixes = sh.suffixes
    pos = 0
    end = len(q) - 1
    while pos < end:
        e = suffixes.get(q[pos:])
        if e is not None:
            if hits is None:
                hits = [e]
            else:
                hits.append(e)
        pos += q[pos] + 1

    # 2. bypass defaults
    if st.bypass:
        reason = sh.canaries.get(q)
        if reason is not None:
            return t.cached("block", reason, answer="nxdomain")
        if hits is not None:
            for e in hits:
                if e.resolver_arpa:
                    return t.cached("block", "bypass=resolver-discovery", answer="nodata")
        if matches and sh.filter_bypass:
            for m in matches:
                if m.kind == "block" and not sh.filter_bypass.isdisjoint(m.categories):
                    return Decision(
                        "block",
                        "bypass=filter_bypass",
                        profile=t.profile,
                        category="filter_bypass",
                        match=m,
                        band=t.band,
                    )

    # 3. overrides
    if st.pause is not None:
        o = st.pause
        return t.cached("block", "override=pause:" + o.id, detail=o.note)
    if st.rewards:
        for o in st.rewards:
            if _reward_covers(o, hits, matches, t, sh.category_of):
                return _finish(
                    t.cached("allow", "override=reward:" + o.id, detail=o.note), t, q, qtype
                )

    # 4. rules: the profile's, then everyone's
    if hits is not None:
        pid = t.profile
        for owner in (pid, None):
            for e in hits:
                rule = e.rules.get(owner)
                if rule is not None:
                    action, domain = rule
                    d = t.cached(action, f"rule={action}:{domain}")
                    return _finish(d, t, q, qtype) if action == "allow" else d

    # 5. schedules
    compiled = st.compiled
    for w in st.windows:
        s = w.schedule
        if s.mode == "internet_off":
            if not _listed_in(matches, compiled.allow_categories, sh.category_of):
                return t.cached("block", "schedule=" + s.id, detail=s.name)
        elif (s.categories and _listed_in(matches, s.categories, sh.category_of, "block")) or (
            s.services and _service_of(hits, s.services)
        ):
            return t.cached("block", "schedule=" + s.id, detail=s.name)

    # 6. blocked services
    if hits is not None and compiled.services:
        sid = _service_of(hits, compiled.services)
        if sid is not None:
            return t.cached("block", "service=" + sid, detail=sh.service_names.get(sid, sid))

    # 7. categories by band, the parent's choices and the allow lists that apply
    if matches:
        allows = t.allows
        for m in matches:
            if m.kind == "allow":
                for lab in m.categories:
                    cat = allows.get(lab)
                    if cat is not None:
                        d = Decision(
                            "allow",
                            "allowlist=" + cat,
                            profile=t.profile,
                            category=cat,
                            match=m,
                            band=t.band,
                        )
                        return _finish(d, t, q, qtype)
        blocked = t.blocked
        for m in matches:
            if m.kind == "block":
                for lab in m.categories:
                    b = blocked.get(lab)
                    if b is not None:
                        reason, cat, age = b
                        return Decision(
                            "block",
                            reason,
                            profile=t.profile,
                            category=cat,
                            match=m,
                            min_age=age,
                            band=t.band,
                        )

    # 8. allow-list mode
    if compiled.profile.allowlist_mode:
        cat = _listed_in(matches, compiled.allow_categories, sh.category_of)
        if cat is None:
            return t.cached("block", "allowlist-mode")
        return _finish(t.cached("allow", f"category={cat} choice=allow", category=cat), t, q, qtype)

    # 9. allow
    if matches:
        m = matches[0]
        return _finish(
            Decision("allow", "default", profile=t.profile, match=m, band=t.band), t, q, qtype
        )
    return _finish(t.default, t, q, qtype)


def _finish(allowed: Decision, t: BandTables, q: bytes, qtype: int) -> Decision:
    """An allowed name that is a SafeSearch host of the profile is rewritten (A, AAAA, HTTPS)."""
    if t.safesearch and qtype in REWRITE_QTYPES:
        rewrite = t.safesearch.get(q)
        if rewrite is not None:
            return rewrite
    return allowed


def _listed_in(matches, categories, category_of, kind: str | None = None) -> str | None:
    """The first category of `categories` that lists the name (of `kind`, if given), or None."""
    if not categories:
        return None
    for m in matches:
        if kind is None or m.kind == kind:
            for lab in m.categories:
                cat = category_of.get(lab, lab)
                if cat in categories:
                    return cat
    return None


def _service_of(hits, services) -> str | None:
    """The first service of `services` whose domains cover the name, or None."""
    if hits is None:
        return None
    for e in hits:
        for sid in e.services:
            if sid in services:
                return sid
    return None


def _reward_covers(o, hits, matches, t: BandTables, category_of) -> bool:
    """A reward covers its domains and services, and names listed in its categories unless
    another category blocks them for this profile (a games reward never opens an adult site)."""
    if hits is not None:
        for e in hits:
            if o.id in e.rewards:
                return True
        if o.services and _service_of(hits, o.services) is not None:
            return True
    if not o.categories or not matches:
        return False
    covered = False
    for m in matches:
        if m.kind != "block":
            continue
        for lab in m.categories:
            cat = category_of.get(lab, lab)
            if cat in o.categories:
                covered = True
            elif lab in t.blocked:
                return False
    return covered
