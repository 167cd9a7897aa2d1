"""Who may ask: LAN clients only (no open resolver), each within a rate limit."""

from __future__ import annotations

import ipaddress
import time

from ...model import Answer, AnswerKind
from ..wire import REFUSED, Query, reply
from .base import Result, Step

MAX_TRACKED_CLIENTS = 65_536
ADMITTED, NOT_ALLOWED, RATE_LIMITED = 0, 1, 2


class _Client:
    __slots__ = ("allowed", "tokens", "last", "dropped")

    def __init__(self, allowed: bool, tokens: float, now: float):
        self.allowed = allowed
        self.tokens = tokens
        self.last = now
        self.dropped = 0


class ClientGate(Step):
    """REFUSED for clients outside `allowed_networks`; a token bucket per client address."""

    def __init__(self, allowed_networks: list[str], rate_queries: int, rate_seconds: float):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self.capacity = float(rate_queries)
        self.refill = rate_queries / rate_seconds if rate_queries else 0.0
        self.dropped = 0
        self.refused = 0
        self._clients: dict[str, _Client] = {}

    def describe(self) -> str:
        limit = f"{int(self.capacity)} queries per {self.capacity / self.refill:.0f} s" if self.refill else "no rate limit"
        return f"ClientGate: answers {', '.join(map(str, self.networks))}; {limit}"

    def allowed(self, client: str) -> bool:
        return self._state(client).allowed

    def _state(self, client: str) -> _Client:
        state = self._clients.get(client)
        if state is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                self._clients.clear()  # a flood of spoofed sources must not grow memory
            try:
                address = ipaddress.ip_address(client.partition("%")[0])
                address = getattr(address, "ipv4_mapped", None) or address
                ok = any(address in net for net in self.networks)
            except ValueError:
                ok = False
            state = self._clients[client] = _Client(ok, self.capacity, time.monotonic())
        return state

    def admit(self, client: str) -> int:
        """ADMITTED, NOT_ALLOWED or RATE_LIMITED; takes a token when admitted."""
        state = self._clients.get(client) or self._state(client)
        if not state.allowed:
            return NOT_ALLOWED
        if self.refill:
            now = time.monotonic()
            tokens = state.tokens + (now - state.last) * self.refill
            state.tokens = tokens if tokens < self.capacity else self.capacity
            state.last = now
            if state.tokens < 1.0:
                state.dropped += 1
                self.dropped += 1
                return RATE_LIMITED
            state.tokens -= 1.0
        return ADMITTED

    def __call__(self, query: Query) -> Result:
        verdict = self.admit(query.client)
        if verdict == ADMITTED:
            return self.next(query)
        if verdict == NOT_ALLOWED:
            self.refused += 1
            return Answer(reply(query, REFUSED), AnswerKind.REFUSED, "client not in allowed_clients")
        return Answer(None, AnswerKind.RATE_LIMITED, "rate limit")
