"""Names that must not leave the LAN: answered here, or asked of the LAN's own resolver.

A public resolver has no answer for 192.168.1.20's reverse name or for a printer's dotless
name, and asking it tells the internet provider which devices the family has. So, as
dnsmasq's bogus-priv and Pi-hole's defaults do, these names never go to the upstreams:

- reverse lookups of private, loopback, link-local and CGNAT ranges (RFC 6303, RFC 7793);
- the local-use domains home.arpa (RFC 8375), lan, internal and local (the names routers
  give their DHCP clients), and dotless A/AAAA names (``printer``);

They go to the *private upstream* instead: by default the upstreams that are themselves on
the LAN (the router, which knows its clients' names), else NXDOMAIN is answered here.
``localhost`` answers itself and ``invalid`` does not exist (RFC 6761), whatever is set.

What every other query pays is one `bytes.endswith` against the zones' six top-level labels
(arpa, lan, internal, local, localhost, invalid) and one length test.
"""

from __future__ import annotations

import ipaddress

from ...model import Answer, AnswerKind
from ..upstream import Upstream, parse_upstream
from ..wire import NOERROR, NXDOMAIN, T_A, T_AAAA, Query, name_to_wire, record, reply, soa_record
from .base import Result, Step
from .forwarding import Forwarding

NEGATIVE_TTL = 600  # how long clients may cache our NXDOMAIN (RFC 2308, through the SOA)
LOCALHOST_TTL = 3600
INF = float("inf")

LOCAL_DOMAINS = ("home.arpa", "lan", "internal", "local")


def _reverse_zones() -> list[str]:
    zones = ["0.in-addr.arpa", "10.in-addr.arpa", "127.in-addr.arpa", "254.169.in-addr.arpa"]
    zones += [f"{n}.172.in-addr.arpa" for n in range(16, 32)]
    zones += ["168.192.in-addr.arpa", "255.255.255.255.in-addr.arpa"]
    zones += [f"{n}.100.in-addr.arpa" for n in range(64, 128)]  # CGNAT, RFC 7793
    zones += ["c.f.ip6.arpa", "d.f.ip6.arpa"]  # unique local fc00::/7
    zones += [f"{n}.e.f.ip6.arpa" for n in "89ab"]  # link-local fe80::/10
    zones += [".".join("0" * 32) + ".ip6.arpa", "1." + ".".join("0" * 31) + ".ip6.arpa"]  # ::, ::1
    return zones


PRIVATE_ZONES = tuple(_reverse_zones()) + LOCAL_DOMAINS
_PRIVATE = tuple(name_to_wire(z) for z in PRIVATE_ZONES)


def _top(wire: bytes) -> bytes:
    """The last label of a wire name, with its length byte and the root: b"\\x04arpa\\x00"."""
    pos = 0
    while pos + wire[pos] + 2 < len(wire):
        pos += wire[pos] + 1
    return wire[pos:]


_LOCALHOST = name_to_wire("localhost")
_INVALID = name_to_wire("invalid")
# The top-level labels of every zone above: the test every query pays is against these six.
_TOP_LABELS = tuple(sorted({_top(z) for z in _PRIVATE + (_LOCALHOST, _INVALID)}))


def _ends_with_zone(name: bytes, zone: bytes) -> bool:
    """`name` (wire, lower-cased) is `zone` or under it, on a label boundary: the suffix test
    alone would also take a label whose last bytes look like the zone's first length byte."""
    if not name.endswith(zone):
        return False
    start = len(name) - len(zone)
    pos = 0
    while pos < start:
        pos += name[pos] + 1
    return pos == start


def is_private_upstream(upstream: Upstream) -> bool:
    """On the LAN (RFC 1918, unique local, link-local), so it may hear about the LAN's names.
    Not loopback: that is often a forwarder to a public service (stubby, cloudflared)."""
    address = ipaddress.ip_address(upstream.host)
    if address.is_loopback:
        return False
    return address.is_private and not address.is_global


def private_upstreams(setting: list[str], upstreams: list[Upstream]) -> list[Upstream]:
    """The `private_upstream` setting made concrete: "auto" takes the upstreams on the LAN,
    "none" none, anything else is a list of ADDR[:PORT]."""
    if setting == ["auto"]:
        return [u for u in upstreams if is_private_upstream(u)]
    if setting == ["none"]:
        return []
    return [parse_upstream(text) for text in setting]


# The reason each kind of local name is answered with (the query log, `safenest explain`).
REASONS = {
    "private": "local name: not sent upstream",
    "asked": "local name: asked of ",  # + the private upstream that answered
    "localhost": "localhost (RFC 6761)",
    "invalid": "invalid (RFC 6761)",
}


def local_zone(q: bytes, qtype: int) -> str | None:
    """What a lower-cased wire name is: "localhost", "invalid", "private" (a name of the LAN's)
    or None (an ordinary name, for the upstreams)."""
    if q.endswith(_TOP_LABELS):
        if _ends_with_zone(q, _LOCALHOST):
            return "localhost"
        if _ends_with_zone(q, _INVALID):
            return "invalid"
        # One C call first: most reverse lookups are of public addresses.
        if q.endswith(_PRIVATE) and any(_ends_with_zone(q, zone) for zone in _PRIVATE):
            return "private"
        return None  # a suffix match across labels: an ordinary name
    if len(q) == q[0] + 2 and q[0] and qtype in (T_A, T_AAAA):
        return "private"  # a dotless name: a device on the LAN, not a TLD
    return None


class LocalZones(Step):
    def __init__(self, private: Forwarding | None):
        """`private`: the link that asks the private upstream, or None to answer NXDOMAIN here."""
        self.private = private
        self._soa = soa_record(NEGATIVE_TTL, "hostmaster.safenest.home.arpa")
        self._localhost = {
            T_A: record(T_A, LOCALHOST_TTL, bytes([127, 0, 0, 1])),
            T_AAAA: record(T_AAAA, LOCALHOST_TTL, bytes(15) + b"\x01"),
        }

    def describe(self) -> str:
        where = (
            "asked of " + ", ".join(map(str, self.private.forwarder.upstreams))
            if self.private is not None
            else "answered NXDOMAIN here (no upstream on the LAN; see private_upstream)"
        )
        return (
            "LocalZones: private reverse lookups, dotless names and home.arpa/lan/internal/local "
            f"{where}; localhost and invalid answered here"
        )

    def __call__(self, query: Query) -> Result:
        q = query.qname_key
        if not q.endswith(_TOP_LABELS) and len(q) != q[0] + 2:
            return self.next(query)  # nearly every name: one C call and one length test
        zone = local_zone(q, query.qtype)
        if zone is None:
            return self.next(query)
        if zone == "private":
            return self._private(query)
        if zone == "invalid":
            return self._nxdomain(query, REASONS["invalid"])
        found = self._localhost.get(query.qtype)
        if found is not None:
            wire = reply(query, NOERROR, found, 1)
        else:
            wire = reply(query, NOERROR, authority=self._soa, nscount=1)
        return Answer(wire, AnswerKind.LOCAL, REASONS["localhost"], INF)

    def _private(self, query: Query) -> Result:
        if self.private is not None:
            return self.private(query)
        return self._nxdomain(query, REASONS["private"])

    def _nxdomain(self, query: Query, reason: str) -> Answer:
        wire = reply(query, NXDOMAIN, authority=self._soa, nscount=1)
        # The same bytes (but the ID) every time: the replay memo may keep it.
        return Answer(wire, AnswerKind.LOCAL, reason, INF)
