"""Wiring: settings -> lists -> resolver chain -> sockets; signals for stop and reload."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from .dns.cache import AnswerCache
from .dns.pipeline import build_chain
from .dns.server import DnsServer, parse_listen
from .dns.steps.blocking import Blocking
from .dns.steps.caching import Caching
from .dns.steps.client_gate import ClientGate
from .dns.steps.forwarding import Forwarding
from .dns.steps.local_names import LocalNames
from .dns.steps.special_queries import SpecialQueries
from .dns.upstream import Forwarder
from .feed.schedule import FeedSync
from .lists import compile_lists, last_good, load_snapshot
from .settings import Settings
from .upstreams import choose_upstreams

log = logging.getLogger("safenest")

class Agent:
    """One running SafeNest: built from settings, started, reloaded, stopped."""

    def __init__(self, settings: Settings):
        self.settings = settings
        s = settings
        self.listen = [parse_listen(a) for a in s.dns]
        self.upstreams = choose_upstreams(s.upstream, s.resolv_conf, self.listen)
        self.cache = AnswerCache(
            s.cache_max_entries, s.cache_max_bytes, s.cache_max_ttl, s.negative_max_ttl, s.serve_stale_seconds
        )
        self.forwarder = Forwarder(self.upstreams, s.upstream_timeout, s.query_timeout, s.upstream_recheck_seconds)
        self.gate = ClientGate(s.allowed_clients, s.rate_limit_queries, s.rate_limit_seconds)
        # Start from the lists compiled last time, if any, so DNS is filtering at once;
        # the fresh compile runs in the background and is swapped in.
        saved = last_good(s.data)
        self.blocking = Blocking(saved or load_snapshot(s.blocklists_dir, s.data), s.block_mode, s.block_ttl)
        self._need_compile = saved is not None
        self.steps = build_chain(
            self.gate,
            LocalNames(s.local_names, s.local_addresses),
            self.blocking,
            SpecialQueries(),
            Caching(self.cache),
            Forwarding(self.forwarder),
        )
        self.server = DnsServer(
            self.steps[0],
            gate=self.gate,
            udp_receive_buffer=s.udp_receive_buffer,
            tcp_idle_timeout=s.tcp_idle_timeout,
            tcp_max_connections=s.tcp_max_connections,
        )
        self._reloading: asyncio.Task | None = None
        self.feed_sync = FeedSync(settings, self.reload_after_sync)

    async def start(self) -> None:
        await self.server.start(self.listen)
        for step in self.steps:
            log.info("chain: %s", step.describe())
        for proto, host, port in self.server.addresses:
            log.info("serving DNS on %s %s", proto, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if self._need_compile:
            self.reload()
        self.feed_sync.start()

    def reload(self) -> None:
        """Recompile the lists off the event loop and swap them in; queries keep being answered."""
        if self._reloading is not None and not self._reloading.done():
            log.info("a reload is already running")
            return

        async def run() -> None:
            s = self.settings
            try:
                snapshot = await asyncio.to_thread(compile_lists, s.blocklists_dir, s.data)
            except Exception as exc:
                log.error("cannot compile the block lists, keeping the ones in force: %s", exc)
                return
            self.swap(snapshot)
            log.info("lists in force: %d names", len(snapshot.index))

        self._reloading = asyncio.ensure_future(run())

    async def reload_after_sync(self) -> None:
        """A feed was accepted: recompile. A recompile that started before the sync would miss
        the new feed, so wait for it first."""
        running = self._reloading
        if running is not None and not running.done():
            await asyncio.wait([running])
        self.reload()

    def swap(self, snapshot) -> None:
        """Put a new policy snapshot in force; remembered answers made under the old one are dropped."""
        self.blocking.swap(snapshot)
        self.server.replay.clear()

    async def stop(self) -> None:
        self.feed_sync.stop()
        if self._reloading is not None:
            self._reloading.cancel()
        self.server.close()
        self.forwarder.close()


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM or SIGINT (exit 0); SIGHUP recompiles the lists."""
    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    # Handlers first: a signal during start-up must still stop (or reload) cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, agent.reload)
    try:
        await agent.start()
    except BaseException:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        raise
    # What start-up built lives as long as the process: keep the collector from
    # scanning it again and again, and collect the young generation less often, as
    # the cache fills with objects that live for minutes.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    if ready is not None:
        ready.set()
    log.info("SafeNest is running")
    try:
        await stopping.wait()
    finally:
        log.info("stopping")
        await agent.stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0
