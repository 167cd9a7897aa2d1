"""Which upstream resolvers to use: the configured ones, or the system's, never SafeNest itself."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from .dns.upstream import Upstream, parse_upstream


def system_resolvers(resolv_conf: str) -> list[str]:
    try:
        text = Path(resolv_conf).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            found.append(parts[1].partition("%")[0])
    return found


def _is_self(upstream: Upstream, listen: list[tuple[str, int]]) -> bool:
    address = ipaddress.ip_address(upstream.host)
    for host, port in listen:
        if port != upstream.port:
            continue
        bound = ipaddress.ip_address(host)
        if bound == address:
            return True
        # A wildcard listener answers on every local address, loopback included.
        if bound.is_unspecified and bound.version == address.version and address.is_loopback:
            return True
    return False


def choose_upstreams(configured: list[str], resolv_conf: str, listen: list[tuple[str, int]]) -> list[Upstream]:
    """Parse the configured upstreams, or take the system's; drop any that would be ourselves."""
    texts = configured or system_resolvers(resolv_conf)
    upstreams = []
    for text in texts:
        try:
            upstream = parse_upstream(text)
        except ValueError as exc:
            raise ValueError(f"bad upstream {text!r}: {exc}") from None
        if not _is_self(upstream, listen):
            upstreams.append(upstream)
    if not upstreams:
        where = "the configured upstreams" if configured else f"{resolv_conf}"
        raise ValueError(
            f"no upstream resolver to forward to: {where} lists none besides SafeNest itself. "
            "Give one with --upstream ADDR[:PORT] (your router's address, or a public resolver)"
        )
    return upstreams
