"""The clients seen asking DNS: counted on the hot path, drained in batches for storage.

`SeenClients.note(ip)` is one dict get and set per query. `drain()` swaps the window's
counters out and returns one `SeenClient` per address (with its MAC from the neighbour table),
for the storage layer to upsert; it also folds them into a bounded in-memory registry that
`unassigned(devices)` reads for the admin page ("devices seen on the network but not yet
assigned").

Bounds: a window tracks at most `max_clients` addresses (a LAN attacker spoofing many source
addresses cannot grow it; the surplus is only counted in `overflow`), and the registry keeps
the `max_known` most recently seen. Times are wall-clock seconds; `last_seen` is exact to one
drain interval, since the hot path does not read the clock for addresses already counted.

Threads: `note` and `drain` must run on the same thread (the event loop's; drain is O(clients)
and quick); hand the returned list to a worker for the database.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from agent.devices.mac import is_randomized_mac
from agent.devices.neighbours import NeighbourTable, canonical_ip
from agent.policy.model import Device

__all__ = ["SeenClient", "SeenClients"]


@dataclass(frozen=True, slots=True)
class SeenClient:
    ip: str
    mac: str | None  # from the neighbour table; None for clients off the LAN segment
    queries: int
    first_seen: float  # epoch seconds
    last_seen: float  # epoch seconds

    @property
    def randomized_mac(self) -> bool:
        return self.mac is not None and is_randomized_mac(self.mac)


class SeenClients:
    def __init__(
        self,
        neighbours: NeighbourTable | None = None,
        max_clients: int = 4096,
        max_known: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._neighbours = neighbours
        self._max_clients = max_clients
        self._max_known = max_known
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._first: dict[str, float] = {}  # first query of this window, per address
        self._known: dict[str, SeenClient] = {}  # registry, oldest last_seen first
        self.overflow = 0  # queries from addresses beyond max_clients in this window
        self.last_overflow = 0  # `overflow` of the window the last drain() closed

    def note(self, ip: str) -> None:
        """Count one query from `ip` (the socket's text form). Hot path: O(1), no I/O."""
        counts = self._counts
        n = counts.get(ip)
        if n is not None:
            counts[ip] = n + 1
        elif len(counts) < self._max_clients:
            counts[ip] = 1
            self._first[ip] = self._clock()
        else:
            self.overflow += 1

    def drain(self) -> list[SeenClient]:
        """The window's clients since the last drain, and a fresh window."""
        counts, first = self._counts, self._first
        self._counts, self._first = {}, {}
        self.last_overflow, self.overflow = self.overflow, 0
        now = self._clock()
        lookup = self._neighbours.lookup if self._neighbours is not None else (lambda ip: None)
        batch = [SeenClient(ip, lookup(ip), n, first[ip], now) for ip, n in counts.items()]
        self._remember(batch)
        return batch

    def _remember(self, batch: list[SeenClient]) -> None:
        known = self._known
        for c in batch:
            old = known.pop(c.ip, None)  # re-inserted last, so dict order is recency
            if old is not None:
                c = replace(
                    c,
                    queries=old.queries + c.queries,
                    first_seen=old.first_seen,
                    mac=c.mac or old.mac,
                )
            known[c.ip] = c
        while len(known) > self._max_known:
            del known[next(iter(known))]

    def known(self) -> list[SeenClient]:
        """Every client in the registry, most recently seen first (totals since start)."""
        return list(reversed(self._known.values()))

    def query_counts(self) -> Mapping[str, int]:
        """{ip: queries} since start, for the router check."""
        return {ip: c.queries for ip, c in self._known.items()}

    def unassigned(self, devices: Iterable[Device]) -> list[SeenClient]:
        """Clients in the registry that no device (by IP, CIDR or MAC) covers, newest first."""
        ips, macs, nets = set(), set(), []
        for d in devices:
            if d.match == "ip":
                ips.add(canonical_ip(d.value) or d.value)
            elif d.match == "mac":
                macs.add(d.value.lower())
            elif d.match == "cidr":
                nets.append(ipaddress.ip_network(d.value, strict=False))
        out = []
        for c in self.known():
            ip = canonical_ip(c.ip)
            if ip in ips or (c.mac is not None and c.mac in macs):
                continue
            if ip is not None:
                addr = ipaddress.ip_address(ip)
                if any(addr.version == n.version and addr in n for n in nets):
                    continue
            out.append(c)
        return out
