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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .pending import Pending
from .udp_exchange import Flight, UdpExchanges
from .wire import CD, REFUSED, SERVFAIL, U16, Query, ResponseInfo, check_response, make_query

log = logging.getLogger(__name__)
_monotonic = time.monotonic
RANDOM_BATCH = 2048  # bytes of query IDs drawn from the CSPRNG at a time


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
    rtt: float = 0.0  # smoothed round-trip time in seconds (exponential moving average)
    # Worked out once: every upstream query uses them.
    family: int = field(init=False)
    address: tuple[str, int] = field(init=False)
    name: str = field(init=False)  # as in logs and answer reasons: 1.1.1.1:53, [::1]:53

    def __post_init__(self) -> None:
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.address = (self.host, self.port)
        self.name = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.name

    def succeeded(self, rtt: float) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.answered += 1
        self.rtt += (rtt - self.rtt) * 0.2

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

    def __init__(
        self, upstreams: list[Upstream], timeout: float, query_timeout: float, recheck: float
    ):
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.timeout = timeout
        self.query_timeout = query_timeout
        self.recheck = recheck
        # A single upstream gets a second try: one lost UDP packet should not fail a query.
        self.attempts = len(upstreams) if len(upstreams) > 1 else 2
        self._inflight: dict[tuple, _Exchange] = {}
        self._udp: UdpExchanges | None = None
        self._all_up_after = 0.0  # no upstream is resting after this time
        self._tcp_tasks: set[asyncio.Task] = set()
        self._random = b""
        self._random_at = RANDOM_BATCH  # drawn at the first query

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
        resting = sorted(
            (u for u in self.upstreams if u.down_until > now), key=lambda u: u.down_until
        )
        return healthy + resting

    def resolve(self, query: Query, finish: Callable[[Query, Any], Any]) -> Pending:
        """A Pending that settles with finish(query, outcome), where outcome is the upstream's
        answer (data, ResponseInfo, Upstream) or an UpstreamFailure.

        Identical queries in flight share one upstream exchange; each asker's `finish` gets its
        own query (its ID and letter case) with the shared outcome.
        """
        exchange = self._inflight.get(query.key)
        if exchange is not None:
            return exchange.follow(query, finish)
        udp = self._udp
        if udp is None:
            udp = self._udp = UdpExchanges(asyncio.get_running_loop())
        exchange = self._inflight[query.key] = _Exchange(self, udp, query, finish, _monotonic())
        exchange.next_attempt(exchange.started)
        return exchange

    def random_ident(self) -> bytes:
        """Two query ID bytes from the OS's CSPRNG, drawn 2 KiB at a time (one system call per 1,024 IDs)."""
        at = self._random_at
        if at >= RANDOM_BATCH:
            self._random = secrets.token_bytes(RANDOM_BATCH)
            at = 0
        self._random_at = at + 2
        return self._random[at : at + 2]


def _query_bodies() -> tuple[tuple[bytes, bytes], ...]:
    """Our query's header after the ID, and its OPT record, for each client shape: index
    Query.key[3] (0 no EDNS, 1 EDNS, 2 EDNS with DO) + 3 if the client set CD."""
    parts = []
    for cd in (False, True):
        for shape in (0, 1, 2):
            packet = make_query(0, b"", edns=shape > 0, do=shape == 2, cd=cd)
            parts.append((packet[2:12], packet[12:]))
    return tuple(parts)


_QUERY_PARTS = _query_bodies()


class _Exchange(Flight):
    """One query's way through the upstreams: try, fail over, fall back to TCP, finish.

    It is the Pending of the query that started it (one object less per cache miss);
    identical queries that arrive meanwhile follow it with Pendings of their own.
    """

    __slots__ = (
        "forwarder",
        "udp",
        "query",
        "finish",
        "followers",
        "body",
        "order",
        "tries",
        "give_up_at",
        "problems",
        "upstream",
        "started",
    )

    def __init__(self, forwarder: Forwarder, udp: UdpExchanges, query: Query, finish, now: float):
        # Pending's fields, set here rather than through its __init__ (a call less per miss).
        self._steps = []
        self.settled = False
        self.value = None
        self.forwarder = forwarder
        self.udp = udp
        self.query = query
        self.finish = finish
        self.followers: list[tuple[Query, Callable, Pending]] | None = None
        self.question = question = query.data[12 : query.question_end]
        head, opt = _QUERY_PARTS[query.key[3] + (3 if query.flags & CD else 0)]
        self.body = head + question + opt  # the query to send, after its ID
        # candidates(), without the call while every upstream is up (nearly always).
        self.order = (
            forwarder.upstreams if now >= forwarder._all_up_after else forwarder.candidates(now)
        )
        self.tries = 0
        self.started = now
        self.give_up_at = now + forwarder.query_timeout
        self.problems: list[str] | None = None
        self.sock = None

    def follow(self, query: Query, finish) -> Pending:
        pending = Pending()
        if self.followers is None:
            self.followers = []
        self.followers.append((query, finish, pending))
        return pending

    def next_attempt(self, now: float) -> None:
        f = self.forwarder
        tries = self.tries
        if tries >= f.attempts or now >= self.give_up_at:
            problems = (
                "; ".join(self.problems) if self.problems else "no upstream could be tried in time"
            )
            self.done(UpstreamFailure(problems))
            return
        order = self.order
        self.upstream = upstream = order[tries % len(order)]
        self.tries = tries + 1
        self.started = now
        # f.random_ident(), inlined: this runs for every cache miss.
        at = f._random_at
        if at >= RANDOM_BATCH:
            f._random = secrets.token_bytes(RANDOM_BATCH)
            at = 0
        f._random_at = at + 2
        self.ident = ident = f._random[at : at + 2]
        deadline = now + f.timeout
        self.udp.send(
            self,
            upstream.family,
            upstream.address,
            ident + self.body,
            min(deadline, self.give_up_at),
        )

    def on_udp(self, data: bytes, info: ResponseInfo, now: float) -> None:
        if info.truncated:
            self._retry_over_tcp(now)
            return
        upstream = self.upstream
        rcode = info.rcode
        if rcode == SERVFAIL or rcode == REFUSED or upstream.failures:
            self.answered(data, info, now)
            return
        # answered(), without the calls, for the usual case: a healthy upstream's usable answer.
        upstream.answered += 1
        upstream.rtt += (now - self.started - upstream.rtt) * 0.2
        self.done((data, info, upstream))

    def on_udp_error(self, exc: BaseException) -> None:
        self.failed(exc)

    def _retry_over_tcp(self, now: float) -> None:
        timeout = max(0.1, min(self.forwarder.timeout, self.give_up_at - now))
        ident = int.from_bytes(self.ident, "big")
        packet = self.ident + self.body
        task = asyncio.ensure_future(
            _tcp_exchange(self.upstream, packet, ident, self.question, timeout)
        )
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
            self.answered(*task.result(), _monotonic())  # type: ignore[call-arg]

    def failed(self, exc: BaseException) -> None:
        f = self.forwarder
        upstream = self.upstream
        now = _monotonic()
        upstream.failed(now, f.recheck)
        if upstream.down_until > f._all_up_after:
            f._all_up_after = upstream.down_until
        self._problem(f"{upstream}: {_describe(exc)}")
        self.next_attempt(now)

    def answered(self, data: bytes, info: ResponseInfo, now: float) -> None:
        upstream = self.upstream
        upstream.succeeded(now - self.started)
        if info.rcode == SERVFAIL or info.rcode == REFUSED:
            # Alive, but it could not answer this one: another upstream may.
            self._problem(f"{upstream}: rcode {info.rcode}")
            self.next_attempt(now)
            return
        self.done((data, info, upstream))

    def _problem(self, text: str) -> None:
        if self.problems is None:
            self.problems = []
        self.problems.append(text)

    def done(self, outcome) -> None:
        """Settle this exchange and its followers, each with its own finish(query, outcome)."""
        inflight = self.forwarder._inflight
        key = self.query.key
        if inflight.get(key) is self:
            del inflight[key]
        try:
            value = self.finish(self.query, outcome)
        except Exception as exc:  # our bug: the server answers SERVFAIL and logs it
            value = exc
        self.settle(value)
        if self.followers is not None:
            for query, finish, pending in self.followers:
                try:
                    value = finish(query, outcome)
                except Exception as exc:
                    value = exc
                pending.settle(value)


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
