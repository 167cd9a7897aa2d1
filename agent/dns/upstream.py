"""Asking the upstream resolvers.

Each upstream query gets a fresh random ID and its own socket, so the kernel
picks a fresh random source port; the socket is connected, so only the
upstream's address can answer, and an answer counts only if its ID and question
match (anything else is ignored as noise or spoofing). A truncated answer is
asked again over TCP. An upstream that times out or refuses is skipped for a
while and then tried again with real traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import time
from dataclasses import dataclass

from .pending import Pending
from .udp_exchange import Flight, UdpExchanges
from .wire import CD, REFUSED, SERVFAIL, U16, Query, ResponseInfo, check_response, make_query

log = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """No upstream gave a usable answer in time."""


@dataclass(eq=False)
class Upstream:
    host: str
    port: int = 53
    failures: int = 0
    down_until: float = 0.0
    answered: int = 0
    errors: int = 0
    rtt: float = 0.0  # smoothed round-trip time in seconds

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def succeeded(self, rtt: float) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.answered += 1
        self.rtt = rtt if not self.rtt else 0.8 * self.rtt + 0.2 * rtt

    def failed(self, now: float, recheck: float) -> None:
        self.failures += 1
        self.errors += 1
        if self.failures >= 2 or self.answered == 0:
            if self.down_until <= now:
                log.warning("upstream %s is not answering; skipping it for %.0f s", self, recheck)
            self.down_until = now + recheck


def parse_upstream(text: str) -> Upstream:
    """'1.1.1.1', '1.1.1.1:5353', '::1', '[::1]:5353' -> Upstream; ValueError otherwise."""
    text = text.strip()
    port_text = "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":") or "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the port must be a number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # Upstreams are addresses: resolving a name would itself need DNS.
        raise ValueError("give an IP address, such as 192.168.1.1 or [2001:db8::1]:53") from None
    return Upstream(host, int(port_text))


class Forwarder:
    """Forwards queries to upstreams in order, failing over and coalescing identical ones."""

    def __init__(self, upstreams: list[Upstream], timeout: float, query_timeout: float, recheck: float):
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.timeout = timeout
        self.query_timeout = query_timeout
        self.recheck = recheck
        self._inflight: dict[tuple, list[Pending]] = {}
        self._udp: UdpExchanges | None = None
        self._all_up_after = 0.0  # no upstream is resting after this time
        self._tcp_tasks: set[asyncio.Task] = set()
        self._random = b""
        self._random_at = 0

    @property
    def ignored_responses(self) -> int:
        """Responses dropped because their ID or question did not match (noise or spoofing)."""
        return self._udp.ignored_responses if self._udp else 0

    def close(self) -> None:
        for task in self._tcp_tasks:
            task.cancel()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def candidates(self, now: float) -> list[Upstream]:
        """Healthy upstreams in their configured order, then those resting (tried only if all else fails)."""
        if now >= self._all_up_after:
            return self.upstreams
        healthy = [u for u in self.upstreams if u.down_until <= now]
        resting = sorted((u for u in self.upstreams if u.down_until > now), key=lambda u: u.down_until)
        return healthy + resting

    def resolve(self, query: Query) -> Pending:
        """The upstream's answer to `query`, later: (data, ResponseInfo, Upstream) or UpstreamFailure.

        Identical queries in flight share one upstream exchange.
        """
        pending = Pending()
        waiting = self._inflight.get(query.key)
        if waiting is not None:
            waiting.append(pending)
            return pending
        self._inflight[query.key] = [pending]
        udp = self._udp
        if udp is None:
            udp = self._udp = UdpExchanges(asyncio.get_running_loop())
        _Exchange(self, udp, query).next_attempt()
        return pending

    def random_id(self) -> int:
        """A query ID from the OS's CSPRNG, drawn 2 KiB at a time (one system call per 1,024 IDs)."""
        if self._random_at >= len(self._random):
            self._random = secrets.token_bytes(2048)
            self._random_at = 0
        at = self._random_at
        self._random_at = at + 2
        return self._random[at] << 8 | self._random[at + 1]

    def _finish(self, key: tuple, outcome) -> None:
        for pending in self._inflight.pop(key):
            pending.settle(outcome)


class _Exchange(Flight):
    """One query's way through the upstreams: try, fail over, fall back to TCP, finish."""

    __slots__ = (
        "forwarder",
        "udp",
        "query",
        "question",
        "give_up_at",
        "attempts",
        "problems",
        "upstream",
        "ident",
        "packet",
        "started",
        "sock",
        "deadline",
    )

    def __init__(self, forwarder: Forwarder, udp: UdpExchanges, query: Query):
        self.forwarder = forwarder
        self.udp = udp
        self.query = query
        self.question = query.question
        self.sock = None
        self.give_up_at = udp.loop.time() + forwarder.query_timeout
        order = forwarder.candidates(time.monotonic())
        # A single upstream gets a second try: one lost UDP packet should not fail a query.
        self.attempts = iter(order if len(order) > 1 else order * 2)
        self.problems: list[str] = []

    def next_attempt(self) -> None:
        f = self.forwarder
        now = self.udp.loop.time()
        remaining = self.give_up_at - now
        upstream = next(self.attempts, None) if remaining > 0 else None
        if upstream is None:
            f._finish(self.query.key, UpstreamFailure("; ".join(self.problems) or "no upstream could be tried in time"))
            return
        query = self.query
        self.upstream = upstream
        self.started = now
        self.ident = f.random_id()
        self.packet = make_query(self.ident, self.question, edns=query.edns_version >= 0, do=query.do, cd=bool(query.flags & CD))
        self.udp.send(self, upstream.address, upstream.family, self.packet, min(f.timeout, remaining))

    def on_udp(self, outcome) -> None:
        if isinstance(outcome, BaseException):
            self.failed(outcome)
            return
        data, info = outcome
        if not info.truncated:
            self.answered(data, info)
            return
        timeout = max(0.1, min(self.forwarder.timeout, self.give_up_at - self.udp.loop.time()))
        task = asyncio.ensure_future(_tcp_exchange(self.upstream, self.packet, self.ident, self.query.question, timeout))
        tasks = self.forwarder._tcp_tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self.on_tcp)

    def on_tcp(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return  # shutting down
        exc = task.exception()
        if exc is not None:
            self.failed(exc)
        else:
            self.answered(*task.result())

    def failed(self, exc: BaseException) -> None:
        f = self.forwarder
        upstream = self.upstream
        upstream.failed(time.monotonic(), f.recheck)
        f._all_up_after = max(f._all_up_after, upstream.down_until)
        self.problems.append(f"{upstream}: {_describe(exc)}")
        self.next_attempt()

    def answered(self, data: bytes, info: ResponseInfo) -> None:
        upstream = self.upstream
        upstream.succeeded(self.udp.loop.time() - self.started)
        if info.rcode in (SERVFAIL, REFUSED):
            # Alive, but it could not answer this one: another upstream may.
            self.problems.append(f"{upstream}: rcode {info.rcode}")
            self.next_attempt()
            return
        self.forwarder._finish(self.query.key, (data, info, upstream))


class _BadAnswer(Exception):
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


async def _tcp_exchange(
    upstream: Upstream, packet: bytes, ident: int, question: bytes, timeout: float
) -> tuple[bytes, ResponseInfo]:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(U16.pack(len(packet)) + packet)
            await writer.drain()
            while True:
                (length,) = U16.unpack(await reader.readexactly(2))
                data = await reader.readexactly(length)
                info = check_response(data, ident, question)
                if info is not None and not info.truncated:
                    return data, info
                if info is not None:
                    raise _BadAnswer("truncated answer over TCP")
        finally:
            writer.close()
