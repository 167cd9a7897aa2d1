"""The default gateway, and the warning when the router forwards every query to SafeNest.

A router whose own DNS forwarder points at the Pi (instead of handing the Pi's address to
devices over DHCP) makes every query arrive from the router's address: SafeNest can then
tell no child's phone from another, and every device gets the default profile.
`check_router_forwarding` spots this from the per-client query counts.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.devices.neighbours import canonical_ip
from agent.feed.format import Names

__all__ = [
    "ROUTER_FORWARDING_TEXT",
    "RouterForwarding",
    "check_router_forwarding",
    "default_gateways",
    "parse_proc_ipv6_route",
    "parse_proc_route",
]

log = logging.getLogger(__name__)

PROC_ROUTE = Path("/proc/net/route")
PROC_IPV6_ROUTE = Path("/proc/net/ipv6_route")
_RTF_UP, _RTF_GATEWAY = 0x0001, 0x0002
MIN_QUERIES = 100  # below this, a quiet evening with one device proves nothing
MIN_SHARE = 0.9

ROUTER_FORWARDING_TEXT = Names(
    vi=(
        "Router của bạn đang chuyển tiếp DNS sang SafeNest, nên mọi thiết bị đều hiện ra như "
        "là router và không thể áp dụng hồ sơ riêng cho từng con. Hãy đặt địa chỉ của "
        "SafeNest làm máy chủ DNS trong phần cài đặt DHCP của router."
    ),
    en=(
        "Your router forwards DNS to SafeNest, so every device looks like the router and no "
        "child's own profile can apply. Set SafeNest as the DNS server in the router's DHCP "
        "settings."
    ),
)


def parse_proc_route(text: str) -> list[tuple[int, str]]:
    """[(metric, gateway)] of the IPv4 default routes in /proc/net/route text.

    Columns: Iface, Destination, Gateway, Flags, RefCnt, Use, Metric, Mask, ...; addresses
    are 8 hex digits in host (little-endian) byte order: 0101A8C0 is 192.168.1.1.
    """
    routes = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest, gateway, flags = int(cols[1], 16), int(cols[2], 16), int(cols[3], 16)
            metric, mask = int(cols[6]), int(cols[7], 16)
        except ValueError:
            continue
        if dest == 0 and mask == 0 and gateway and flags & _RTF_UP and flags & _RTF_GATEWAY:
            addr = ipaddress.IPv4Address(gateway.to_bytes(4, "little"))
            routes.append((metric, str(addr)))
    return routes


def parse_proc_ipv6_route(text: str) -> list[tuple[int, str]]:
    """[(metric, gateway)] of the IPv6 default routes in /proc/net/ipv6_route text.

    Columns: destination, its prefix length, source, its prefix length, next hop, metric,
    refcnt, use, flags, device; addresses are 32 hex digits, numbers hex.
    """
    routes = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10:
            continue
        try:
            dest, plen, nexthop = int(cols[0], 16), int(cols[1], 16), int(cols[4], 16)
            metric, flags = int(cols[5], 16), int(cols[8], 16)
        except ValueError:
            continue
        if dest == 0 and plen == 0 and nexthop and flags & _RTF_UP and flags & _RTF_GATEWAY:
            routes.append((metric, str(ipaddress.IPv6Address(nexthop))))
    return routes


def default_gateways(
    route: Path = PROC_ROUTE, ipv6_route: Path = PROC_IPV6_ROUTE
) -> tuple[str, ...]:
    """The default gateways' addresses, IPv4 first, lowest metric first; () if none or unreadable."""
    found: list[str] = []
    for path, parse in ((route, parse_proc_route), (ipv6_route, parse_proc_ipv6_route)):
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError as e:
            log.debug("%s: %s", path, e)
            continue
        for _, gw in sorted(parse(text)):
            if gw not in found:
                found.append(gw)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class RouterForwarding:
    """The warning for the admin page: which gateway, and what share of how many queries."""

    gateway: str
    share: float  # 0..1
    queries: int  # all queries counted
    text: Names = ROUTER_FORWARDING_TEXT


def check_router_forwarding(
    queries_by_client: Mapping[str, int],
    gateways: Iterable[str],
    *,
    min_queries: int = MIN_QUERIES,
    min_share: float = MIN_SHARE,
) -> RouterForwarding | None:
    """A warning when at least `min_share` of at least `min_queries` queries came from a
    gateway address, else None. Client keys may be in the socket's text form."""
    total = sum(queries_by_client.values())
    if total < min_queries or total <= 0:
        return None
    per_ip: dict[str, int] = {}
    for ip, n in queries_by_client.items():
        key = canonical_ip(ip) or ip
        per_ip[key] = per_ip.get(key, 0) + n
    for gw in gateways:
        from_gw = per_ip.get(canonical_ip(gw) or gw, 0)
        if from_gw / total >= min_share:
            return RouterForwarding(gateway=gw, share=from_gw / total, queries=total)
    return None
