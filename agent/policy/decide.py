"""The decision for one name: allow, or block with a reason.

`decide` is pure: it reads only its arguments. The resolver, `safenest explain`
and (later) the admin page all call it, so they all give the same reason.
The snapshot is immutable; a new one is built off the hot path and swapped in
with one assignment.

Precedence, for now (profiles, schedules and overrides come with the policy
issue): an allow entry for the name or a parent wins; otherwise the most
specific block entry whose category is blocked; otherwise allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..index import DomainIndex, Match


@dataclass(frozen=True, slots=True)
class Decision:
    blocked: bool
    reason: str  # stable, machine-readable first part: "category=ID" or "allowlist=ID"
    category: str | None = None
    match: Match | None = None

    def explain(self) -> str:
        """A sentence for people: what decided, naming the rule and the list."""
        if self.match is None:
            return "allowed: no list matches this name"
        m = self.match
        where = f"listed as {m.listed} in {', '.join(m.sources)}"
        if self.blocked:
            return f"blocked: category {self.category} ({where})"
        if m.kind == "allow":
            return f"allowed: on the allow list for {', '.join(m.categories)} ({where})"
        return f"allowed: category {', '.join(m.categories)} is not blocked ({where})"


ALLOWED = Decision(False, "allowed")


@dataclass(frozen=True)
class Snapshot:
    """Everything a decision reads. `blocked_categories` None means every listed category."""

    index: DomainIndex
    blocked_categories: frozenset[str] | None = None
    label: str = ""


def decide(qname_key: bytes, snapshot: Snapshot) -> Decision:
    """Decide for a lower-cased wire-format name (as read from the packet)."""
    match = snapshot.index.lookup(qname_key)
    if match is None:
        return ALLOWED
    if match.kind == "allow":
        return Decision(False, "allowlist=" + ",".join(match.categories), None, match)
    blocked = snapshot.blocked_categories
    if blocked is None:
        return Decision(True, "category=" + match.categories[0], match.categories[0], match)
    # Only some categories are blocked: the nearest listed suffix in one of them decides,
    # even when a more specific suffix is listed in a category that is not blocked.
    for candidate in snapshot.index.matches(qname_key):
        if candidate.kind != "block":
            continue
        for category in candidate.categories:
            if category in blocked:
                return Decision(True, "category=" + category, category, candidate)
    return Decision(False, "category-not-blocked", None, match)
