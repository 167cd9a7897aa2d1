"""The policy link: who is asking (their profile), and what that profile may see right now.

For each query: the client's profile (remembered per client address, from the device's IP
or MAC), then `decide` for (profile, name, type, time), remembered per (profile id, name,
type) until the policy snapshot is swapped or the clock reaches the snapshot's
`next_change` (a schedule window, an override or a birthday). Then:

- block: answered here, with the configured null/NXDOMAIN answer or the decision's own
  (NXDOMAIN for the DoH and Private Relay canaries, NODATA for resolver.arpa), a short TTL
  and an Extended DNS Error 15 whose text is the reason (``category=adult min_age=18+``);
- rewrite (SafeSearch): a CNAME to the engine's safe host plus its records (safesearch.py);
- allow: the rest of the chain, with TTLs capped for child profiles and profiles with
  schedules or overrides, so a device cannot keep cached answers long into bedtime. The cap
  travels down on the query (`Query.ttl_cap`): the cache and the forwarder write it into
  the one copy they serve.

Time: decisions are pure functions of the wall-clock time; what is remembered is valid
until a monotonic deadline computed from `next_change`. `refresh_time` (called at that
deadline by the Agent's timer, by any query that finds it passed, and when the wall clock
jumps) forgets every decision and tells `on_change`, which empties the replay memo.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ...model import Answer, AnswerKind
from ...policy.decision import decide
from ..release import release_gradually
from ..wire import (
    EDE_BLOCKED,
    NOERROR,
    NXDOMAIN,
    T_A,
    T_AAAA,
    Query,
    ede_option,
    record,
    reply,
    soa_record,
)
from .base import Result, Step
from .safesearch import combine, internal_query

log = logging.getLogger(__name__)

MEMO_LIMIT = 100_000  # decisions; cleared when full, replaced when the snapshot or the time changes
MAX_CLIENTS = 65_536  # client addresses remembered; spoofed floods must not grow memory
MIN_VALIDITY = 0.001  # seconds: a next_change at "now" must not make every query recompute
INF = float("inf")


def client_address(client: str) -> str:
    """The address a device is known by: no IPv6 scope, IPv4-mapped IPv6 as IPv4."""
    host = client.partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _device_index(snapshot) -> tuple[dict, dict, list]:
    """(MAC -> (device id, profile id), IP -> ..., [(network, ...)] longest prefix first)."""
    by_mac: dict[str, tuple[str, str]] = {}
    by_ip: dict[str, tuple[str, str]] = {}
    nets: list = []
    for d in getattr(getattr(snapshot, "policy", None), "devices", ()):
        try:
            if d.match == "mac":
                by_mac.setdefault(d.value.strip().lower().replace("-", ":"), (d.id, d.profile))
            elif d.match == "ip":
                by_ip.setdefault(client_address(d.value.strip()), (d.id, d.profile))
            elif d.match == "cidr":
                nets.append((ipaddress.ip_network(d.value, strict=False), (d.id, d.profile)))
        except ValueError:
            continue  # the snapshot warned about it and skipped it too
    nets.sort(key=lambda item: -item[0].prefixlen)
    return by_mac, by_ip, nets


def utc_now() -> datetime:
    return datetime.now(UTC)


class Policy(Step):
    """Decides per client profile; answers blocks and SafeSearch rewrites itself."""

    def __init__(
        self,
        snapshot,
        mode: str,
        ttl: int,
        neighbours=None,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.mode = mode  # "null" or "nxdomain": the answer to a plain block
        self.ttl = ttl
        self.neighbours = neighbours  # .lookup(ip) -> MAC or None; refreshed off the loop
        self.clock = clock
        self.blocked = 0
        self.rewritten = 0
        # client address -> (profile id, TTL cap): the replay memo's key prefix. Cleared in
        # place (the server holds a reference) whenever profiles may have changed.
        self.tags: dict[str, tuple] = {}
        # client address -> the id of the policy's device that placed it ("" for none): the
        # query log's device column. Cleared in place like `tags`.
        self.devices: dict[str, str] = {}
        self._device_index: tuple | None = None  # the snapshot's devices, built when first needed
        self._profiles: dict[str, Any] = {}  # client address -> Profile
        self._macs: dict[str, str | None] = {}  # client address -> MAC seen when it was placed
        self._tag_of: dict[str, tuple] = {}  # profile id -> its tag
        self._memo: dict[tuple, object] = {}
        self.on_change: Callable[[float], None] | None = None  # gets the new valid_until
        # .note(ip) per query that reaches this link (a repeat served by the replay memo
        # is not counted: the counts are shares, for the router check and the admin page).
        self.seen: Any = None
        self.valid_until = INF  # monotonic
        self.wall_offset = 0.0  # time.time() - time.monotonic() when valid_until was computed
        self._soa = soa_record(ttl, "blocked.safenest.home.arpa")
        # Not `_null`: mypyc would name its C field `__null`, a GCC keyword.
        self._null_records = {T_A: record(T_A, ttl, bytes(4)), T_AAAA: record(T_AAAA, ttl, bytes(16))}
        self.snapshot = snapshot
        self._arm()

    def describe(self) -> str:
        s = self.snapshot
        profiles = getattr(getattr(s, "policy", None), "profiles", ())
        return (
            f"Policy: {len(profiles) or 'the default'} profile(s), {len(s.index)} listed names ({s.label}); "
            f"blocked answer {self.mode}, TTL {self.ttl} s"
        )

    # -- changes --------------------------------------------------------------

    def swap(self, snapshot) -> None:
        """Put a new snapshot in force: one assignment, so a query sees the old or the new one."""
        self.snapshot = snapshot
        self._device_index = None
        self._forget()

    def refresh_time(self) -> None:
        """The clock reached the next change (or jumped): decisions made before may be wrong now."""
        self._forget()

    def _forget(self) -> None:
        old, self._memo = self._memo, {}
        release_gradually(old)
        # Profiles may depend on the time too (a birthday moves a child up a band).
        self._profiles.clear()
        self._macs.clear()
        self._tag_of.clear()
        self.tags.clear()
        self.devices.clear()
        self._arm()
        if self.on_change is not None:
            self.on_change(self.valid_until)

    def _arm(self) -> None:
        mono = time.monotonic()
        wall = self.clock()
        nxt = self.snapshot.next_change(wall)
        if nxt is None:
            self.valid_until = INF
        else:
            self.valid_until = mono + max((nxt - wall).total_seconds(), MIN_VALIDITY)
        self.wall_offset = time.time() - mono

    def neighbours_changed(self) -> bool:
        """After a neighbour-table refresh: forget the clients whose MAC changed (a DHCP address
        given to another device). True if any did (the caller empties the replay memo)."""
        if self.neighbours is None:
            return False
        moved = [ip for ip, mac in self._macs.items() if self.neighbours.lookup(ip) != mac]
        for ip in moved:
            self._forget_client(ip)
        return bool(moved)

    def _forget_client(self, client: str) -> None:
        for table in (self._profiles, self._macs, self.tags, self.devices):
            for key in [k for k in table if client_address(k) == client]:
                del table[key]

    # -- per query ---------------------------------------------------------------

    def profile_of(self, client: str):
        profile = self._profiles.get(client)
        if profile is None:
            profile = self._place(client)
        return profile

    def _place(self, client: str):
        address = client_address(client)
        mac = self.neighbours.lookup(address) if self.neighbours is not None else None
        profile = self.snapshot.profile_for(address, mac)
        if len(self._profiles) >= MAX_CLIENTS:
            self._profiles.clear()
            self._macs.clear()
            self.tags.clear()
            self.devices.clear()
        tag = self._tag_of.get(profile.id)
        if tag is None:
            # Overrides that have ended do not cap (the tags are made again at each change).
            tag = self._tag_of[profile.id] = (
                profile.id,
                self.snapshot.ttl_cap(profile.id, self.clock()),
            )
        self._profiles[client] = profile
        self._macs[address] = mac
        self.tags[client] = tag
        self.devices[client] = self._device_of(address, mac, profile.id)
        return profile

    def _device_of(self, address: str, mac: str | None, profile_id: str) -> str:
        """The id of the device entry that gave this client its profile ("" when none did),
        by the snapshot's order: MAC, exact IP, longest subnet. Only when a client is placed."""
        index = self._device_index
        if index is None:
            index = self._device_index = _device_index(self.snapshot)
        by_mac, by_ip, nets = index
        device = by_mac.get(mac.strip().lower().replace("-", ":")) if mac else None
        if device is None:
            device = by_ip.get(address)
        if device is None and nets:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                ip = None
            for net, net_device in nets:
                if ip is not None and ip.version == net.version and ip in net:
                    device = net_device
                    break
        # The snapshot skips devices it cannot use (an unknown profile): name one only when
        # it agrees with the profile the snapshot gave.
        if device is None or device[1] != profile_id:
            return ""
        return device[0]

    def decision(self, query: Query):
        if time.monotonic() >= self.valid_until:
            self.refresh_time()
        profile = self._profiles.get(query.client) or self._place(query.client)
        key = (profile.id, query.qname_key, query.qtype)
        memo = self._memo
        found = memo.get(key)
        if found is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            found = memo[key] = decide(
                query.qname_key, query.qtype, profile, self.clock(), self.snapshot
            )
        return found

    def __call__(self, query: Query) -> Result:
        client = query.client
        if self.seen is not None:
            self.seen.note(client)
        found = self.decision(query)
        action = found.action
        cap = self.tags[client][1]
        if action == "allow":
            # The links below cap the TTLs in the copy they serve (no second copy here).
            query.ttl_cap = cap
            return self.next(query)
        if action == "block":
            self.blocked += 1
            # Reusable until the next change of the policy (the replay memo is emptied then).
            return Answer(
                self.blocked_reply(query, found), AnswerKind.BLOCKED, found.reason, self.valid_until
            )
        if action == "rewrite":
            self.rewritten += 1
            result = self.next(internal_query(query, found.target))
            if isinstance(result, Answer):
                return combine(query, found.target, found.reason, result, cap)  # type: ignore[return-value]
            return result.then(lambda inner: combine(query, found.target, found.reason, inner, cap))
        raise ValueError(f"unknown policy action {action!r}")

    def blocked_reply(self, query: Query, found) -> bytes:
        ede = ede_option(EDE_BLOCKED, found.reason)
        how = found.answer or self.mode
        if how == "nxdomain":
            return reply(query, NXDOMAIN, authority=self._soa, nscount=1, ede=ede)
        if how == "null":
            null = self._null_records.get(query.qtype)
            if null is not None:
                return reply(query, NOERROR, null, 1, ede=ede)
        # "nodata", or a null answer for a type that has no null address.
        return reply(query, NOERROR, authority=self._soa, nscount=1, ede=ede)
