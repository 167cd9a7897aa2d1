"""Wiring: settings -> lists and policy -> chain -> sockets; signals for stop and reload.

The policy in force is one immutable PolicySnapshot (policy/snapshot.py) built off the event
loop from the compiled lists' index, the criteria in force, the policy database and the
services catalogue, and swapped into the Policy step with one assignment. It is rebuilt after
a list compile or sync, and within about a second of a change in the policy database (a
watcher thread polls its revision). At the snapshot's next change (a schedule window, an
override, a birthday) a loop timer makes the Policy step forget its decisions; the watcher
also catches wall-clock jumps (a Pi has no RTC: NTP sets the clock after boot).

The query log (DATA/querylog.db) gets every answer from the DNS server without slowing it
(see agent/dns/server.py and docs/querylog.md); the admin server (webui/, /healthz and
/metrics) runs in a background thread on `admin_listen`. Neither can stop DNS: a query log
that cannot be opened or an admin port that cannot be had is logged, and DNS goes on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from . import compiled_guard
from .devices import (
    NeighbourTable,
    RandomizedMacWarnings,
    SeenClients,
    check_router_forwarding,
    default_gateways,
    randomized_assignment_text,
)
from .devices.neighbours import REFRESH_SECONDS as NEIGHBOURS_REFRESH
from .devices.neighbours import canonical_ip
from .dns.cache import AnswerCache
from .dns.pipeline import build_chain
from .dns.server import DnsServer, batched_udp, parse_listen
from .dns.steps.caching import Caching
from .dns.steps.client_gate import ClientGate
from .dns.steps.forwarding import Forwarding
from .dns.steps.local_names import LocalNames
from .dns.steps.local_zones import REASONS as LOCAL_REASONS
from .dns.steps.local_zones import LocalZones, private_upstreams
from .dns.steps.policy import Policy
from .dns.steps.special_queries import SpecialQueries
from .dns.upstream import Forwarder
from .feed.schedule import FeedSync
from .gc_clock import CollectorClock
from .lists import compile_lists, last_good, load_lists
from .querylog import QueryLog
from .settings import Settings
from .storage.policy_store import SEEN_KEEP_DAYS, open_policy_store
from .upstreams import choose_upstreams

log = logging.getLogger("safenest")

POLICY_POLL_SECONDS = 0.5  # the policy database's revision is read this often (a change acts within 2 s)
CLOCK_JUMP_SECONDS = 1.0  # a wall-clock step larger than this re-evaluates the schedules
SWITCH_INTERVAL = 0.0005  # seconds; see serve()
REBUILD_RETRY_SECONDS = 5.0  # after a failed policy rebuild (e.g. the database was locked)
SEEN_FLUSH_SECONDS = 60.0  # the clients seen are written to the database this often


def policy_snapshot(policy, lists, data_dir):
    """The PolicySnapshot of `policy` over the compiled `lists` (shared with `safenest explain`)."""
    from .lists import criteria_in_force
    from .policy.catalogue import load_catalogue
    from .policy.snapshot import build_snapshot

    try:
        criteria = criteria_in_force(data_dir)
    except Exception as exc:  # unreadable feeds must not stop DNS: the default ages apply
        from .feed.categories import DEFAULT_CATEGORIES

        log.error("cannot read the categories of the feeds in force (%s); using the default ages", exc)
        criteria = {c.id: c for c in DEFAULT_CATEGORIES}
    return build_snapshot(policy, criteria, lists.index, load_catalogue(), lists.label)


def _open_querylog(settings):
    """The query log, or None when DATA/querylog.db cannot be opened: DNS must start anyway."""
    try:
        return QueryLog.open(settings.data, settings)
    except Exception as exc:
        log.error(
            "cannot open the query log in %s (%s): answers are not logged until SafeNest is "
            "restarted; move querylog.db away if it is damaged",
            settings.data,
            exc,
        )
        return None


def _open_store(data_dir):
    """The policy store, or None when DATA/safenest.db cannot be opened: DNS must start anyway
    (with the default policy), and the error says what to fix."""
    try:
        return open_policy_store(data_dir)
    except Exception as exc:
        log.error(
            "cannot open the policy database in %s (%s): every device gets the default 12+ profile; "
            "restore it with `safenest policy import` or move the file away and restart",
            data_dir,
            exc,
        )
        return None


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
        # The router (or whoever private_upstream names) for the LAN's own names; None: NXDOMAIN.
        private = private_upstreams(s.private_upstream, self.upstreams)
        self.private_forwarder = (
            Forwarder(private, s.upstream_timeout, s.query_timeout, s.upstream_recheck_seconds)
            if private
            else None
        )
        self.gate = ClientGate(s.allowed_clients, s.rate_limit_queries, s.rate_limit_seconds)
        # Start from the lists compiled last time, if any, so DNS is filtering at once;
        # the fresh compile runs in the background and is swapped in.
        saved = last_good(s.data)
        self.lists = saved or load_lists(s.blocklists_dir, s.data)
        self._need_compile = saved is not None
        self.store = _open_store(s.data)
        self._revision_built = self._revision()  # read before the policy: a later write is seen
        self.neighbours = NeighbourTable()  # refreshed by the watcher thread, off the loop
        self.neighbours.refresh()  # a few ms: MAC-assigned devices are known from the first query
        self.policy = Policy(
            self._policy_snapshot(self.lists, at_start=True), s.block_mode, s.block_ttl, self.neighbours
        )
        self.seen = SeenClients(self.neighbours)  # for the admin page and the router check
        self.policy.seen = self.seen
        self._router_warned = False
        self._randomized_warned = RandomizedMacWarnings()  # each MAC once per run
        self.steps = build_chain(
            self.gate,
            LocalNames(s.local_names, s.local_addresses),
            self.policy,
            SpecialQueries(),
            Caching(self.cache),
            LocalZones(
                Forwarding(self.private_forwarder, LOCAL_REASONS["asked"])
                if self.private_forwarder
                else None
            ),
            Forwarding(self.forwarder),
        )
        self.server = DnsServer(
            self.steps[0],
            gate=self.gate,
            udp_receive_buffer=s.udp_receive_buffer,
            tcp_idle_timeout=s.tcp_idle_timeout,
            tcp_max_connections=s.tcp_max_connections,
        )
        # The replay memo keys its answers by the profile the Policy step found for each client.
        self.server.replay.tags = self.policy.tags
        self.server.replay.until = self.policy.valid_until
        self.policy.on_change = self._policy_changed
        # Every answer goes to the query log, with the device the Policy step placed.
        self.server.devices = self.policy.devices
        self.querylog = _open_querylog(s)
        self.server.attach_log(self.querylog)
        self.policy_revision = self._revision_built  # the revision of the snapshot in force
        self._revision_seen = self._revision_built  # the latest the watcher read
        from webui.server import parse_admin_listen

        self.admin_listen = parse_admin_listen(s.admin_listen)  # ValueError: a bad setting
        self.admin = None  # webui.server.AdminServer once started
        self._reloading: asyncio.Task | None = None
        self._rebuilding: asyncio.Task | None = None
        self._build_lock = asyncio.Lock()  # one snapshot build at a time (lists or policy)
        self._rebuild_wanted = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = threading.Event()  # set: the watcher thread stops
        self._watcher: threading.Thread | None = None
        self.feed_sync = FeedSync(settings, self.reload_after_sync)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.server.start(self.listen)
        if self.querylog is not None:
            self.querylog.start(self._loop)  # the hand-off runs between packets
        self._start_admin()
        if compiled_guard.STATE.startswith("stale"):
            log.warning("running plain Python: %s (run `make compile` again)", compiled_guard.STATE.removeprefix("stale: "))
        else:
            log.info("modules: %s", "compiled by mypyc" if compiled_guard.STATE == "compiled" else "plain Python")
        log.info("UDP: %s", "a burst per system call (_udpio)" if batched_udp() else "one datagram per system call")
        for step in self.steps:
            log.info("chain: %s", step.describe())
        for proto, host, port in self.server.addresses:
            log.info("serving DNS on %s %s", proto, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self._arm_timer(self.policy.valid_until)
        self._watcher = threading.Thread(target=self._watch, name="policy-watch", daemon=True)
        self._watcher.start()
        if self._need_compile:
            self.reload()
        self.feed_sync.start()

    def _start_admin(self) -> None:
        if self.admin_listen is None:
            return
        from webui import create_app
        from webui.server import AdminServer

        host, port = self.admin_listen
        app = create_app({"SAFENEST": self, "METRICS_CLIENTS": self.settings.metrics_clients})
        try:
            self.admin = AdminServer(app, host, port)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.error(
                "cannot serve the admin page on %s (%s); DNS goes on. Choose another address "
                "with --admin ADDR:PORT or the admin_listen setting",
                where,
                exc.strerror or exc,
            )
            return
        self.admin.start()
        log.info("admin server on http://%s/ (/healthz, /metrics)", self.admin.address)

    def set_log_privacy(self, level: str | None, profile: str | None = None) -> bool:
        """Change a privacy level of the query log (the admin page); on the event loop. The
        replay memo is emptied: its entries carry their prebuilt log entries (or none)."""
        if self.querylog is None:
            raise RuntimeError("the query log could not be opened")
        done = self.querylog.set_privacy(level, profile, wait=False)
        self.server.attach_log(self.querylog)
        return done

    # -- the policy snapshot ------------------------------------------------

    def _policy_snapshot(self, lists, at_start: bool = False):
        """Build a PolicySnapshot (blocking: run it in a worker thread once serving). At start a
        policy database that cannot be read gives the default policy (every device a 12+ child),
        so DNS starts filtering; later, the exception keeps the snapshot in force."""
        from .policy.model import default_policy

        try:
            if self.store is None:
                raise RuntimeError("the policy database could not be opened")
            policy = self.store.load()
        except Exception as exc:
            if not at_start:
                raise
            log.error("cannot read the policy (%s): every device gets the default 12+ profile until it can", exc)
            policy = default_policy()
        snapshot = policy_snapshot(policy, lists, self.settings.data)
        for warning in snapshot.warnings:
            log.warning("policy: %s", warning)
        return snapshot

    def rebuild_policy(self) -> None:
        """The policy database changed: rebuild the snapshot off the loop (requests made while
        one is waiting are served by that one)."""
        self._rebuild_wanted = True
        if self._rebuilding is not None and not self._rebuilding.done():
            return

        async def run() -> None:
            while self._rebuild_wanted:
                async with self._build_lock:
                    self._rebuild_wanted = False
                    lists = self.lists
                    revision = self._revision_seen
                    try:
                        snapshot = await asyncio.to_thread(self._policy_snapshot, lists)
                    except Exception as exc:
                        log.error("cannot rebuild the policy, keeping the one in force (retrying in %g s): %s", REBUILD_RETRY_SECONDS, exc)
                        self._loop.call_later(REBUILD_RETRY_SECONDS, self.rebuild_policy)
                        return
                    self.policy.swap(snapshot)
                    self.policy_revision = revision
                    p = snapshot.policy
                    log.info(
                        "policy in force: %d profiles, %d devices, %d schedules, %d overrides",
                        len(p.profiles),
                        len(p.devices),
                        len(p.schedules),
                        len(p.overrides),
                    )

        self._rebuilding = asyncio.ensure_future(run())

    def _policy_changed(self, valid_until: float) -> None:
        """The Policy step forgot its decisions (swap, time, clients): so does the replay memo."""
        self.server.replay.clear(until=valid_until)
        self._arm_timer(valid_until)

    def _arm_timer(self, valid_until: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and valid_until != float("inf"):
            # The loop's clock is time.monotonic(), the clock of valid_until.
            self._timer = self._loop.call_at(valid_until, self.policy.refresh_time)

    # -- the watcher thread: database revision, neighbours, clock jumps -------

    def _watch(self) -> None:
        loop = self._loop
        built = self._revision_built
        next_neighbours = time.monotonic()
        next_seen = time.monotonic() + SEEN_FLUSH_SECONDS
        while not self._watching.wait(POLICY_POLL_SECONDS):
            revision = self._revision()
            if revision is not None and revision != built:
                built = self._revision_seen = revision
                loop.call_soon_threadsafe(self.rebuild_policy)
            drift = (time.time() - time.monotonic()) - self.policy.wall_offset
            if abs(drift) > CLOCK_JUMP_SECONDS:
                log.info("the wall clock moved by %.1f s: schedules are evaluated again", drift)
                loop.call_soon_threadsafe(self.policy.refresh_time)
            if time.monotonic() >= next_neighbours:
                next_neighbours = time.monotonic() + NEIGHBOURS_REFRESH
                try:
                    self.neighbours.refresh()
                except Exception as exc:
                    log.warning("cannot read the neighbour table: %s", exc)
                else:
                    loop.call_soon_threadsafe(self._neighbours_refreshed)
            if time.monotonic() >= next_seen:
                next_seen = time.monotonic() + SEEN_FLUSH_SECONDS
                self._flush_seen()
        if self.store is not None:
            self.store.database.close()

    def _flush_seen(self) -> None:
        """In the watcher thread: store the clients seen since the last flush, and warn once when
        nearly every query comes from the router (it forwards DNS: client identity is lost)."""

        async def drain():  # SeenClients is the loop's: drain it there
            return self.seen.drain()

        try:  # a device assigned by a randomized MAC may stop being recognised: once per MAC
            for device in self._randomized_warned.new(self.policy.snapshot.policy.devices):
                log.warning("policy: %s", randomized_assignment_text(device).en)
        except Exception as exc:  # the watcher thread must go on
            log.warning("cannot check the devices' MACs: %s", exc)
        if self.store is None:
            return
        try:
            batch = asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout=5)
            rows = [
                (
                    canonical_ip(c.ip) or c.ip,
                    c.mac,
                    c.queries,
                    datetime.fromtimestamp(c.first_seen, UTC),
                    datetime.fromtimestamp(c.last_seen, UTC),
                )
                for c in batch
            ]
            recorded = self.store.record_seen(rows)
            if recorded.skipped:
                skipped = recorded.skipped
                log.warning("%d clients seen were not recorded, e.g. %s", len(skipped), skipped[0])
            # Bounded: phones change addresses, and spoofed sources must not fill the database.
            self.store.forget_seen(datetime.now(UTC) - timedelta(days=SEEN_KEEP_DAYS))
            warning = check_router_forwarding(self.seen.query_counts(), default_gateways())
        except Exception as exc:
            log.warning("cannot record the clients seen: %s", exc)
            return
        if warning is not None and not self._router_warned:
            self._router_warned = True
            log.warning(
                "%.0f%% of %d queries came from the router %s: %s",
                100 * warning.share,
                warning.queries,
                warning.gateway,
                warning.text.en,
            )

    def _revision(self) -> int | None:
        if self.store is None:
            return None
        try:
            return self.store.revision()
        except Exception as exc:
            log.warning("cannot read the policy revision: %s", exc)
            return None

    def _neighbours_refreshed(self) -> None:
        if self.policy.neighbours_changed():
            self.server.replay.clear()

    # -- lists ------------------------------------------------------------------

    def reload(self) -> None:
        """Recompile the lists off the event loop and swap them in; queries keep being answered."""
        if self._reloading is not None and not self._reloading.done():
            log.info("a reload is already running")
            return

        async def run() -> None:
            s = self.settings
            try:
                lists = await asyncio.to_thread(compile_lists, s.blocklists_dir, s.data)
            except Exception as exc:
                log.error("cannot compile the block lists, keeping the ones in force: %s", exc)
                return
            async with self._build_lock:
                try:
                    snapshot = await asyncio.to_thread(self._policy_snapshot, lists)
                except Exception as exc:
                    log.error("cannot build the policy on the new lists, keeping the ones in force: %s", exc)
                    return
                self.lists = lists
                self.policy.swap(snapshot)
            log.info("lists in force: %d names", len(lists.index))

        self._reloading = asyncio.ensure_future(run())

    async def reload_after_sync(self) -> None:
        """A feed was accepted: recompile. A recompile that started before the sync would miss
        the new feed, so wait for it first."""
        running = self._reloading
        if running is not None and not running.done():
            await asyncio.wait([running])
        self.reload()

    async def stop(self) -> None:
        self.feed_sync.stop()
        self._watching.set()
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._reloading, self._rebuilding):
            if task is not None:
                task.cancel()
        if self.admin is not None:
            await asyncio.to_thread(self.admin.stop)
        self.server.close()
        self.forwarder.close()
        if self.private_forwarder is not None:
            self.private_forwarder.close()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 5)
        if self.querylog is not None:
            await asyncio.to_thread(self.querylog.stop)  # writes what is queued


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
    # scanning it again and again; then collect on a clock, in short pauses (gc_clock.py).
    gc.freeze()
    collector = CollectorClock()
    collector.start(loop)
    # The admin server and a few housekeeping threads are Python threads (the query log's writer
    # is a process, its hand-off runs on the DNS loop):
    # by default a thread that wants the GIL waits up to 5 ms for the holder to let go, which
    # the DNS thread must not.
    sys.setswitchinterval(SWITCH_INTERVAL)
    if ready is not None:
        ready.set()
    log.info("SafeNest is running")
    try:
        await stopping.wait()
    finally:
        log.info("stopping")
        collector.stop()
        await agent.stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0
