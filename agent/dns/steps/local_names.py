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
    """This machine's own addresses, from /proc: IPv4 without loopback, IPv6 global and unique-local."""
    found = []
    try:
        # fib_trie lists each local IPv4 address as "|-- ADDR" followed by "/32 host LOCAL".
        with open("/proc/net/fib_trie") as trie:
            previous = ""
            for line in trie:
                if "/32 host LOCAL" in line and previous.strip().startswith("|--"):
                    address = ipaddress.IPv4Address(previous.split()[-1])
                    if not address.is_loopback:
                        found.append(str(address))
                previous = line
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                address = ipaddress.IPv6Address(int(line.split()[0], 16))  # type: ignore[assignment]
                if not (address.is_loopback or address.is_link_local):
                    found.append(str(address))
    except (OSError, ValueError):
        pass
    return list(dict.fromkeys(found))


class LocalNames(Step):
    """A and AAAA for our own names, built with dnslib (rare, so the 30 µs do not matter)."""

    def __init__(self, names: list[str], addresses: list[str]):
        self.names = {name_to_wire(n).lower() for n in names}
        self.labels = names
        self.fixed = [ipaddress.ip_address(a) for a in addresses]

    def describe(self) -> str:
        where = ", ".join(map(str, self.fixed)) or "the address that reaches each client"
        return f"LocalNames: {', '.join(self.labels)} -> {where}"

    def addresses_for(self, client: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if self.fixed:
            return self.fixed
        # The address that reaches this client, for its own family; for the other
        # family, every address this machine has of it.
        best = route_source(client)
        found = [ipaddress.ip_address(best)] if best else []
        covered = {a.version for a in found}
        found += [a for a in map(ipaddress.ip_address, interface_addresses()) if a.version not in covered]
        return found

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
