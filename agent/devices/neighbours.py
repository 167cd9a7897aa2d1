"""The Pi's neighbour table: which MAC address each client IP on the LAN has.

Sources, merged: ``/proc/net/arp`` (IPv4, always there on Linux) and ``ip -j neigh show``
(IPv4 and IPv6; iproute2 may be missing or too old for ``-j``, which is fine). `refresh()`
reads both and swaps in a new dict in one assignment; it costs a process start (a few
milliseconds), so run it off the hot path, in a worker thread, about every
`REFRESH_SECONDS`. `lookup(ip)` is one dict lookup and safe to call from any thread.

The table is the kernel's view: a device appears once it has talked to the Pi, and its
entry can go stale. A device on another subnet (behind a router) never appears.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.devices.mac import normalize_mac

__all__ = [
    "NeighbourTable",
    "canonical_ip",
    "REFRESH_SECONDS",
    "parse_ip_neigh_json",
    "parse_proc_arp",
]

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30
PROC_ARP = Path("/proc/net/arp")
IP_NEIGH_ARGS = ("-j", "neigh", "show")  # fixed: nothing from a client ever reaches argv
IP_TIMEOUT_SECONDS = 3.0
_IP_DIRS = "/usr/sbin:/sbin:/usr/bin:/bin"  # where iproute2 lives, whatever our PATH says
_ATF_COM = 0x02  # /proc/net/arp flag: the entry is complete (has a hardware address)
_NO_MAC_STATES = {"INCOMPLETE", "FAILED", "NOARP", "NONE"}


def canonical_ip(text: str) -> str | None:
    """RFC 5952 text of an address; IPv4-mapped IPv6 becomes IPv4; a zone (%eth0) is dropped."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def _usable_mac(text: str) -> str | None:
    mac = normalize_mac(text)
    if mac is None or mac == "00:00:00:00:00:00" or int(mac[:2], 16) & 0x01:
        return None  # incomplete entries show zeros; a multicast address is no device
    return mac


def parse_proc_arp(text: str) -> dict[str, str]:
    """{ip: mac} from the text of /proc/net/arp; incomplete and malformed rows are skipped.

    The columns: IP address, HW type, Flags, HW address, Mask, Device (one header line).
    """
    table: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4:
            continue
        try:
            flags = int(cols[2], 16)
        except ValueError:
            continue
        ip, mac = canonical_ip(cols[0]), _usable_mac(cols[3])
        if ip is not None and mac is not None and flags & _ATF_COM:
            table[ip] = mac
    return table


def parse_ip_neigh_json(text: str) -> dict[str, str]:
    """{ip: mac} from the output of ``ip -j neigh show``; entries without a MAC are skipped.

    Each entry looks like ``{"dst": "192.168.1.7", "dev": "wlan0", "lladdr":
    "aa:bb:cc:dd:ee:ff", "state": ["REACHABLE"]}``. STALE entries count: the MAC is still the
    device's, the kernel just has not confirmed it lately. Raises ValueError for text that
    is not such a JSON list.
    """
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("expected a JSON list of neighbour entries")
    table: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        dst, lladdr, state = entry.get("dst"), entry.get("lladdr"), entry.get("state", [])
        if not isinstance(dst, str) or not isinstance(lladdr, str):
            continue
        if isinstance(state, list) and _NO_MAC_STATES.intersection(state):
            continue
        ip, mac = canonical_ip(dst), _usable_mac(lladdr)
        if ip is not None and mac is not None:
            table[ip] = mac
    return table


def _run_ip_neigh(ip_binary: str) -> str | None:
    """stdout of `ip -j neigh show`, or None when it cannot be had (logged at debug)."""
    try:
        done = subprocess.run(
            [ip_binary, *IP_NEIGH_ARGS],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("ip neigh: %s", e)
        return None
    if done.returncode != 0:
        log.debug("ip neigh exited %d: %s", done.returncode, done.stderr.strip()[:200])
        return None
    return done.stdout


class NeighbourTable:
    """{client ip: mac}, refreshed from the kernel off the hot path, read with one dict lookup.

    `proc_arp` and `ip_neigh` are seams for tests: a path, and a callable that returns the
    ``ip -j neigh show`` text or None. By default `ip` is looked up once, in the system
    directories; without it the table comes from /proc/net/arp alone (IPv4 only).
    """

    def __init__(
        self,
        proc_arp: Path = PROC_ARP,
        ip_neigh: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._proc_arp = proc_arp
        if ip_neigh is None:
            binary = shutil.which("ip", path=_IP_DIRS)
            ip_neigh = (lambda: _run_ip_neigh(binary)) if binary else (lambda: None)
        self._ip_neigh = ip_neigh
        self._clock = clock
        self._table: dict[str, str] = {}
        self.refreshed_at: float | None = None  # wall-clock time of the last refresh
        self.sources: tuple[str, ...] = ()  # which sources the last refresh could read

    def refresh(self) -> int:
        """Re-read the kernel's tables and swap the result in; returns the number of entries.

        Never raises for a missing or unreadable source: the table is then what the others
        gave (possibly empty), and `sources` says what was read.
        """
        table: dict[str, str] = {}
        sources: list[str] = []
        try:
            table.update(
                parse_proc_arp(self._proc_arp.read_text(encoding="ascii", errors="replace"))
            )
            sources.append(str(self._proc_arp))
        except OSError as e:
            log.debug("%s: %s", self._proc_arp, e)
        text = self._ip_neigh()
        if text is not None:
            try:
                table.update(parse_ip_neigh_json(text))  # the same IPv4 entries, plus IPv6
                sources.append("ip neigh")
            except ValueError as e:  # JSONDecodeError is a ValueError
                log.warning("ip -j neigh show gave unreadable output: %s", e)
        self._table = table  # one assignment: readers see the old or the new table
        self.sources = tuple(sources)
        self.refreshed_at = self._clock()
        return len(table)

    def lookup(self, ip: str) -> str | None:
        """The MAC of client `ip`, or None. The socket's text form hits the dict directly;
        zone-scoped (fe80::1%eth0) and IPv4-mapped (::ffff:192.168.1.7) forms are
        canonicalized first."""
        mac = self._table.get(ip)
        if mac is None and ("%" in ip or ip.startswith("::ffff:")):
            canonical = canonical_ip(ip)
            if canonical is not None:
                mac = self._table.get(canonical)
        return mac

    def ips_of(self, mac: str) -> Sequence[str]:
        """Every address the device with `mac` has now (IPv4 and IPv6); for the admin page."""
        norm = normalize_mac(mac)
        return [ip for ip, m in self._table.items() if m == norm]

    def snapshot(self) -> dict[str, str]:
        """A copy of the current table."""
        return dict(self._table)

    def __len__(self) -> int:
        return len(self._table)
