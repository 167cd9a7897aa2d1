"""SafeNest's own names (safenest.home.arpa, safenest.lan) answer with the Pi's LAN addresses."""

from __future__ import annotations

import ipaddress
import socket

from dnslib import AAAA, EDNS0, QTYPE, RR, A, DNSRecord

from ...model import Answer, AnswerKind
from ..wire import T_A, T_AAAA, Query, name_to_wire
from .base import Result, Step

LOCAL_TTL = 60


def route_source(client: str) -> str | None:
    """The address of ours that the kernel would use to reach `client`.

    A connected UDP socket sends nothing; it only asks the routing table. The
    answer is the address on the client's own network, which is what it can reach.
    """
    host = client.partition("%")[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return probe.getsockname()[0]
    except OSError:
        return None


def interface_addresses() -> list[str]:
    """Global and unique-local IPv6 addresses of this machine (from /proc), for AAAA answers."""
    found = []
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                raw = line.split()[0]
                address = ipaddress.IPv6Address(int(raw, 16))
                if not (address.is_loopback or address.is_link_local):
                    found.append(str(address))
    except OSError:
        pass
    return found


class LocalNames(Step):
    """A and AAAA for our own names, built with dnslib (rare, so the 30 µs do not matter)."""

    def __init__(self, names: list[str], addresses: list[str]):
        self.names = {name_to_wire(n).lower() for n in names}
        self.labels = names
        self.fixed = [ipaddress.ip_address(a) for a in addresses]

    def describe(self) -> str:
        where = ", ".join(map(str, self.fixed)) or "the address that reaches each client"
        return f"LocalNames: {', '.join(self.labels)} -> {where}"

    def addresses_for(self, client: str) -> list[ipaddress._BaseAddress]:
        if self.fixed:
            return self.fixed
        found = [route_source(client)] + interface_addresses()
        return [ipaddress.ip_address(a) for a in dict.fromkeys(a for a in found if a)]

    def __call__(self, query: Query) -> Result:
        if query.qname_key not in self.names:
            return self.next(query)
        request = DNSRecord.parse(query.data)
        response = request.reply()
        for address in self.addresses_for(query.client):
            if query.qtype == T_A and address.version == 4:
                response.add_answer(RR(request.q.qname, QTYPE.A, ttl=LOCAL_TTL, rdata=A(str(address))))
            elif query.qtype == T_AAAA and address.version == 6:
                response.add_answer(RR(request.q.qname, QTYPE.AAAA, ttl=LOCAL_TTL, rdata=AAAA(str(address))))
        if query.edns_version >= 0:
            response.add_ar(EDNS0(udp_len=1232))
        return Answer(bytes(response.pack()), AnswerKind.LOCAL, "local name")
