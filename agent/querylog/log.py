"""QueryLog: the resolver hands every answer to `record()`; a writer process stores them.

`record()` runs on the DNS event loop, so it must never wait: it appends a tuple to a
deque (an atomic operation under the GIL, no lock) or, when the queue is full, counts a drop.

Everything else happens in a child process, ``python -m agent.querylog.child``
(agent/querylog/writer.py): turning entries into rows, the privacy levels, the batches (one
transaction every `flush_seconds` or `flush_entries`), the roll-ups, the prunes, the purges.
Why a process and not a thread: the GIL. The writer's Python, about 16,000 instructions an
entry, held the GIL of the DNS process when it was a thread of it, and the DNS thread waited
for it (at 5,000 queries/s the 99th percentile of the latency was 12 times that with the log
off). The child has its own interpreter and GIL, and on a Pi its own core.

What stays in the DNS process is the hand-off (agent/querylog/handoff.py): every 0.1 s
(handoff.POLL) the DNS thread's own event loop takes up to CHUNK entries off the deque at a time
(``popleft`` called from C, no Python per entry) and writes them to the child's pipe as one
frame (marshal: see writer.encode), a slice per callback, between packets, and reads the
child's acknowledgements (its counters, the commands done) when they arrive. Not threads of
their own: a second thread of the DNS process, encoding entries or waking up for each
acknowledgement, makes the DNS thread wait for the GIL. The pipe is non-blocking: when it is
full, entries stay in the deque, which keeps its bound and drops. One small thread sleeps
while the writer runs well: the supervisor, which starts the child, restarts it and stops it.

Privacy changes and a profile's deletion are `Command`s appended to the same deque as the
entries, so the child sees them in order: the entries queued before a stricter level are
written with the level of their time and then purged, the ones after follow the new level.

If the child cannot start or dies, DNS goes on: entries wait in the deque (dropped and
counted when it is full), the entries the child held but had not written are counted as
dropped, the commands it had not finished are sent again, and the supervisor starts a new child
after a pause that grows (RESTART_DELAYS), logging once per outage. stop() hands over what
is queued and waits for the child to write it and exit. A child whose parent died (SIGKILL)
sees the end of its input, writes what it holds and exits.

Privacy levels (global, or per profile, the profile's own winning):
  full          every answer is logged and counted;
  hide_allowed  only blocks and rewrites are logged; every answer is counted;
  counts_only   nothing is logged: the rollups get the counts, without names;
  off           nothing at all.
Making a level stricter purges what the new level would not have kept, at once; the level
applied is saved in the database, so a stricter global level set while SafeNest was stopped
is purged when it starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import repeat, starmap
from multiprocessing.connection import Connection
from pathlib import Path

from ..model import AnswerKind
from ..storage.querylog import GLOBAL, PRIVACY_LEVELS, QueryLogStore
from .handoff import CHUNK, LoopSender, unframe
from .writer import Command, Writer, decode, encode, lower_priority, place

log = logging.getLogger(__name__)

_KIND_VALUE = {kind: kind.value for kind in AnswerKind}  # a member's plain str

COMMAND_WAIT = 60.0  # how long set_privacy()/delete_profile() wait for the writer
START_WAIT = 60.0  # seconds a new writer has to open the file and say it is ready
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # before each new try, then the last
STABLE = 60.0  # a writer that ran this long ends an outage: the next death is logged again
CHILD_MODULE = "agent.querylog.child"
COUNTS = 5  # consumed, written, rejected, flushes, write_errors


def stricter(new: str, old: str) -> bool:
    """True when `new` keeps less than `old`."""
    return PRIVACY_LEVELS.index(new) > PRIVACY_LEVELS.index(old)


def _check_level(level: str) -> str:
    if level not in PRIVACY_LEVELS:
        raise ValueError(
            f"unknown privacy level {level!r}: expected one of {', '.join(PRIVACY_LEVELS)}"
        )
    return level


def _child_env() -> dict[str, str]:
    """The environment of the writer: this checkout first on its path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Waiter:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Child:
    """One writer process and its two pipes."""

    def __init__(self, proc: subprocess.Popen, inbox: Connection, acks: Connection):
        self.proc = proc
        self.inbox = inbox  # we write the stream here
        self.acks = acks  # and read its answers here (on the loop, see handoff.py)
        self.gone = threading.Event()  # its answers ended: it exited (or closed them)
        self.failed: str | None = None  # why it could not open the file
        self.counts: tuple[int, ...] = (0,) * COUNTS  # its totals, as last acknowledged
        self.sent = 0  # items of the stream sent to it (entries and commands)

    def send(self, message) -> None:
        self.inbox.send_bytes(encode(message))

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def reap(self, timeout: float) -> None:
        """Wait for the process (killed after `timeout`) and close its pipes."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.inbox.close()
        self.acks.close()

    def status(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class QueryLog:
    def __init__(
        self,
        store: QueryLogStore,
        *,
        privacy: str = "full",
        flush_seconds: float = 10.0,
        flush_entries: int = 1_000,
        queue_entries: int = 20_000,
        raw_days: float = 7,
        rollup_days: float = 90,
        busy_timeout: float | None = None,
        writer_cpus: Iterable[int] = (),
        clock: Callable[[], float] = time.time,
    ):
        # The store of this process: reading, and writing when the writer process does not run
        # (before start(), after stop()). The writer process opens its own connection.
        self.store = store
        self.path = Path(store.database.path)
        self.flush_seconds = flush_seconds
        self.flush_entries = max(1, flush_entries)
        self.queue_entries = max(1, queue_entries)
        self.raw_days = raw_days
        self.rollup_days = rollup_days
        self.busy_timeout = busy_timeout
        self.writer_cpus = frozenset(writer_cpus)  # empty: the writer runs where this process may
        self._told_cpus = False  # the writer's CPUs could not be set: said once
        self.clock = clock
        self._queue: deque = deque()
        self._lock = threading.Lock()  # the levels, and the order of the commands
        self._inline = threading.Lock()  # one writer in this process at a time
        self._commands: dict[int, Command] = {}  # queued or sent, not done yet, in order
        self._waiters: dict[int, _Waiter] = {}
        self._next_command = 1
        self._supervisor: threading.Thread | None = None  # starts, restarts and stops the writer
        self._sender: LoopSender | None = None  # the hand-off, on `_loop`
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: threading.Thread | None = None  # when start() was given no loop
        self._stopping = threading.Event()
        self._wake = threading.Event()  # for the supervisor: stop(), or a writer ended
        self._deadline = 0.0  # monotonic: when stop() gives up on the writer
        self._abandon = False  # stop() gave up: the supervisor ends without a new writer
        self._child: _Child | None = None
        self._start_error = ""
        self._base = [0] * COUNTS  # the totals of writers that ended
        # Counters, read by the metrics and the tests.
        self.dropped = 0  # queue full (the resolver adds to it too: agent/dns/server.py)
        self.lost = 0  # handed to a writer that died before writing them
        self.restarts = 0  # writers started again after one died or could not start
        # Privacy: the profiles' own levels and the global one, as set (in force for new
        # entries), and as last applied by a writer (the levels a new writer starts with).
        saved = store.privacy_levels()
        self._global = saved.pop(GLOBAL, "full")
        self._levels: dict[str, str] = saved
        self._done_levels: tuple[str, dict[str, str]] = (self._global, dict(saved))
        self._set_global(_check_level(privacy), wait=False, start=True)

    @classmethod
    def open(cls, data_dir: str | Path, settings=None, **options) -> QueryLog:
        """DATA/querylog.db, with the querylog_* settings when `settings` is given."""
        if settings is not None:
            options = {
                "privacy": settings.querylog_privacy,
                "flush_seconds": settings.querylog_flush_seconds,
                "flush_entries": settings.querylog_flush_entries,
                "queue_entries": settings.querylog_queue_entries,
                "raw_days": settings.querylog_raw_days,
                "rollup_days": settings.querylog_rollup_days,
                "writer_cpus": settings.querylog_writer_cpus,
                **options,
            }
        return cls(QueryLogStore.open(Path(data_dir) / "querylog.db"), **options)

    # -- the hot path ---------------------------------------------------------------

    def record(
        self,
        client: str,
        name: str | bytes,
        qtype: int,
        kind: str,
        reason: str = "",
        profile: str = "",
        device: str = "",
        upstream: str = "",
        latency_ms: float = 0.0,
    ) -> None:
        """Queue one answered query. Never waits: when the queue is full the entry is dropped.

        `name` may be the lower-cased wire-format name from the packet: the writer makes the
        text, in its own process. `kind` is an AnswerKind (or its value): its value is queued,
        a plain str, which the hand-off encodes with marshal.
        """
        queue = self._queue
        if len(queue) >= self.queue_entries:
            self.dropped += 1
            return
        kind = _KIND_VALUE.get(kind, kind)
        queue.append(
            (self.clock(), client, device, profile, name, qtype, kind, reason, upstream, latency_ms)
        )

    @property
    def queue(self) -> deque:
        """The entries waiting. The resolver's inlined fast path appends to it directly, after
        checking `queue_entries` itself (counting `dropped`), entries of the shape
        ``(time, client, device, (profile, name, qtype, kind, reason))``, the inner tuple
        prebuilt once per remembered answer (agent/dns/replay.py). record() queues the flat
        ``(time, client, device, profile, name, qtype, kind, reason, upstream, latency_ms)``:
        the writer slices the answer out of it, in its own process. Commands (privacy, a
        profile's deletion) are queued here too, between the entries they follow."""
        return self._queue

    @property
    def queued(self) -> int:
        """Entries not written yet: in the queue, and handed to the writer but not finished."""
        child = self._child
        in_flight = child.sent - child.counts[0] if child is not None else 0
        return len(self._queue) + max(0, in_flight)

    # -- start and stop ----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the writer process; `loop` (the DNS thread's) hands it the queue. Without
        one, a loop of the query log's own runs in a thread (tools and tests)."""
        if self._supervisor is not None:
            return
        self.store.close()  # this thread's connection: the writer process has its own
        self._stopping.clear()
        self._abandon = False
        if loop is None:
            loop = asyncio.new_event_loop()
            self._own_loop = threading.Thread(
                target=loop.run_forever, name="querylog-handoff", daemon=True
            )
            running = threading.Event()
            loop.call_soon(running.set)
            self._own_loop.start()
            # Running before the supervisor uses it: _on_loop calls directly on a loop that does
            # not run yet, and a loop asleep in select() would not see that call.
            running.wait(10)
        self._loop = loop
        self._sender = LoopSender(loop, self._queue, self.clock)
        self._supervisor = threading.Thread(
            target=self._supervise, name="querylog-writer", daemon=True
        )
        self._supervisor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer."""
        supervisor = self._supervisor
        if supervisor is None:
            self._write_here()
            return
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        supervisor.join(timeout + 5)
        self._stop_own_loop()
        if supervisor.is_alive():  # stuck sending to a writer that does not read (stopped, hung)
            self._abandon = True
            child = self._child
            if child is not None:
                child.kill()
            supervisor.join(10)
            log.warning(
                "query log writer did not stop within %.0f s; %d entries not written",
                timeout,
                self.queued,
            )
            self._supervisor = None
            return
        self._supervisor = None
        if self._queue or self._unsent_commands():
            self._write_here()  # the writer could not be started again: this process writes

    def _stop_own_loop(self) -> None:
        thread, self._own_loop = self._own_loop, None
        if thread is None:
            return
        loop = self._loop
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()

    def _on_loop(self, fn: Callable[[], object]) -> object:
        """fn() run on the hand-off's loop (the sender is only touched there), its result."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(COMMAND_WAIT)

    def _running(self) -> bool:
        """The supervisor runs (a command queued now is the writer's, or stop()'s)."""
        return self._supervisor is not None

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id (None while there is none)."""
        child = self._child
        return child.proc.pid if child is not None else None

    # -- the supervisor thread ------------------------------------------------------------

    def _supervise(self) -> None:
        failures = 0  # in a row: writers that could not start, or died before STABLE
        tries_after_stop = 0  # a writer that dies while stopping is started once more
        told = False  # this outage was logged
        told_back = False  # and its end too
        try:
            while not self._abandon:
                child = self._spawn()
                if child is None:
                    failures += 1
                    if not told:
                        told = True
                        log.error(
                            "query log: cannot start the writer process (%s); DNS goes on, "
                            "entries wait in the queue (dropped and counted when it is full); "
                            "trying again",
                            self._start_error,
                        )
                    if self._stopping.is_set():
                        return  # stop() writes the rest in this process
                    self._stopping.wait(RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1])
                    continue
                if told and not told_back:
                    told_back = True
                    log.warning("query log: writer process running again (pid %d)", child.proc.pid)
                started = time.monotonic()
                if self._stopping.is_set():
                    tries_after_stop += 1
                stopped = self._pump(child)
                lost = self._bury(child)
                if stopped or self._abandon or tries_after_stop >= 2:
                    return  # (after two deaths while stopping, stop() writes the rest here)
                self.restarts += 1
                if time.monotonic() - started >= STABLE:
                    failures, told, told_back = 0, False, False
                failures += 1
                if not told:
                    told = True
                    log.error(
                        "query log: the writer process (pid %d) ended (%s) with %d entries not "
                        "written (counted as dropped); DNS goes on, starting a new one",
                        child.proc.pid,
                        child.status(),
                        lost,
                    )
                self._stopping.wait(RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1])
        except Exception:
            log.exception(
                "query log: the writer supervisor stopped by an error; entries are not written"
            )

    def _spawn(self) -> _Child | None:
        """A new writer process, ready; None when it could not start (`_start_error` says why)."""
        r_in, w_in = os.pipe()  # the stream: we write, the child reads
        r_out, w_out = os.pipe()  # its answers
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, str(r_in), str(w_out)],
                pass_fds=(r_in, w_out),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=_child_env(),
                close_fds=True,
            )
        except OSError as exc:
            for fd in (w_in, r_out):
                os.close(fd)
            self._start_error = str(exc)
            return None
        finally:
            os.close(r_in)
            os.close(w_out)
        # Now, not when the child gets to it: its interpreter's start and imports are CPU
        # that a restart would otherwise take from the DNS thread at its own priority.
        lower_priority(proc.pid)
        if self.writer_cpus:
            why = place(proc.pid, self.writer_cpus)
            if why and not self._told_cpus:
                self._told_cpus = True
                log.warning("query log: writer not moved to querylog_writer_cpus: %s", why)
        child = _Child(proc, Connection(w_in, readable=False), Connection(r_out, writable=False))
        try:
            child.send(
                {
                    "path": str(self.path),
                    "now": self.clock(),
                    "levels": self._done_levels,
                    "flush_seconds": self.flush_seconds,
                    "flush_entries": self.flush_entries,
                    "queue_entries": self.queue_entries,
                    "raw_days": self.raw_days,
                    "rollup_days": self.rollup_days,
                    "busy_timeout": self.busy_timeout,
                    "log_level": logging.getLogger("agent").getEffectiveLevel(),
                }
            )
        except OSError:
            pass  # it died at once: seen below
        if not self._handshake(child):
            child.kill()
            child.reap(5)
            self._start_error = child.failed or (
                child.status() if child.gone.is_set() else "not ready in time"
            )
            return None
        with self._lock:
            self._child = child
        return child

    def _handshake(self, child: _Child) -> bool:
        """Wait (this thread) for the new writer to say it opened the file: True when ready."""
        deadline = time.monotonic() + START_WAIT
        while not self._abandon:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if not child.acks.poll(min(left, 1.0)):
                    continue
                message = decode(child.acks.recv_bytes())
            except (EOFError, OSError):
                child.gone.set()  # it exited ("failed" came first when it could say why)
                return False
            if message[0] == "ready":
                return True
            self._acknowledged(child, message)
        return False

    def _acknowledged(self, child: _Child, message) -> None:
        """One message of the writer's (on the hand-off's loop, or in stop's thread)."""
        what = message[0]
        if what == "counts":
            child.counts = message[1:]
        elif what == "done":
            self._done(message[1], message[2])
        elif what == "failed":
            child.failed = message[1]

    def _attach(self, child: _Child) -> None:
        """On the loop: the sender takes `child`; its answers are read there too."""

        def on_message(message) -> None:
            try:
                self._acknowledged(child, message)
            except Exception:
                log.exception("query log: unreadable answer from the writer process")
                child.kill()

        def on_gone() -> None:
            child.gone.set()
            self._wake.set()

        self._sender.attach(child, on_message, on_gone)

    def _drain_acks(self, child: _Child, pending: bytearray, timeout: float) -> None:
        """After the last message: the writer's answers until it exits (this thread)."""
        fd = child.acks.fileno()
        deadline = time.monotonic() + timeout
        for message in unframe(pending):
            self._acknowledged(child, message)
        while time.monotonic() < deadline:
            if not child.acks.poll(max(0.0, deadline - time.monotonic())):
                break
            data = os.read(fd, 65536)
            if not data:
                break
            pending += data
            for message in unframe(pending):
                self._acknowledged(child, message)
        child.gone.set()

    def _pump(self, child: _Child) -> bool:
        """Hand the stream to `child` until it dies (False) or stop() (True, once it exited)."""
        queue = self._queue
        try:
            redo = self._unsent_commands()  # sent to a writer that died before doing them
            if redo:
                child.send((self.clock(), redo))
                child.sent += len(redo)
            self._on_loop(lambda: self._attach(child))
            while True:  # asleep while the loop hands the queue over
                self._wake.clear()
                if child.gone.is_set() or self._stopping.is_set():
                    break
                self._wake.wait(5.0)
            begun, acks = self._on_loop(self._sender.detach)
            if child.gone.is_set() or not self._stopping.is_set():
                for message in unframe(acks):  # the last counts it sent before it died
                    self._acknowledged(child, message)
                return False
            # Stopping: the rest of the stream from this thread, the pipes blocking again.
            _write_all(child.inbox.fileno(), begun)
            left = len(queue)  # what the resolver queued before stop()
            while left > 0 and queue:
                left -= self._send_chunk(child)
            child.send((self.clock(), None))  # write what you have and exit
            self._drain_acks(child, acks, max(0.5, self._deadline - time.monotonic()))
            child.reap(max(0.5, self._deadline - time.monotonic()))
            return True
        except (OSError, ValueError):
            pass  # the pipe broke: the child died
        return False

    def _send_chunk(self, child: _Child) -> int:
        """Send up to CHUNK queued items; returns how many."""
        queue = self._queue
        # popleft() called from C, not a Python loop: the DNS thread appends meanwhile, safely.
        chunk = list(starmap(queue.popleft, repeat((), min(len(queue), CHUNK))))
        if not chunk:
            return 0
        try:
            child.send((self.clock(), chunk))
        except BaseException:
            queue.extendleft(reversed(chunk))  # not sent: back in front, in order
            raise
        child.sent += len(chunk)
        return len(chunk)

    def _bury(self, child: _Child) -> int:
        """After a writer ended: its totals kept, what it held counted as lost; returns that."""
        child.kill()  # when it is alive but its pipe broke
        child.reap(5)
        unsent = len(self._unsent_commands())  # sent to it but not done: sent again
        with self._lock:
            for i, n in enumerate(child.counts):
                self._base[i] += n
            lost = max(0, child.sent - child.counts[0] - unsent)
            self.lost += lost
            self._child = None
        return lost

    def _unsent_commands(self) -> list[Command]:
        """The commands not done and no longer in the queue: a writer took them and died."""
        with self._lock:
            if not self._commands:
                return []
            while True:
                try:
                    queued = set(map(id, self._queue))
                    break
                except RuntimeError:  # the deque changed while it was read: read it again
                    continue
            return [c for c in self._commands.values() if id(c) not in queued]

    # -- writing in this process (never started, or stopped) -------------------------------

    def _write_here(self) -> None:
        """Write the queue and run its commands in this process, as the writer would."""
        with self._inline:
            writer = Writer(
                self.store,
                levels=self._done_levels,
                flush_seconds=self.flush_seconds,
                flush_entries=self.flush_entries,
                raw_days=self.raw_days,
                rollup_days=self.rollup_days,
                clock=self.clock,
            )
            items: list = self._unsent_commands()
            queue = self._queue
            items += starmap(queue.popleft, repeat((), len(queue)))
            try:
                start = 0
                for i, item in enumerate(items):
                    if item.__class__ is Command:
                        writer.add(items[start:i])
                        start = i + 1
                        writer.flush()
                        self._done(item.id, writer.run(item))
                writer.add(items[start:])
                if not writer.flush():
                    log.error("query log: %d entries not written", len(writer.pending))
                    self.lost += len(writer.pending)
            finally:
                with self._lock:
                    self._base[1] += writer.written
                    self._base[2] += writer.rejected
                    self._base[3] += writer.flushes
                    self._base[4] += writer.write_errors

    # -- privacy and deletion ------------------------------------------------------------

    def _done(self, command_id: int, error: BaseException | None) -> None:
        """A command was done (by the writer process, or here)."""
        with self._lock:
            command = self._commands.pop(command_id, None)
            waiter = self._waiters.pop(command_id, None)
            if command is not None and command.op == "privacy" and error is None:
                self._done_levels = command.levels
        if waiter is not None:
            waiter.error = error
            waiter.done.set()

    def _queue_command(self, op: str, profile: str | None, **fields) -> _Waiter:
        """Append a command to the queue (the caller holds `_lock`)."""
        command = Command(self._next_command, op, profile, **fields)
        self._next_command += 1
        waiter = self._waiters[command.id] = _Waiter()
        self._commands[command.id] = command
        self._queue.append(command)  # never dropped, whatever the bound
        return waiter

    def _await(self, waiter: _Waiter, wait: bool) -> bool:
        if not self._running():
            if not wait:
                return False  # runs when the writer starts, or at stop()
            self._write_here()
        elif not wait or not waiter.done.wait(COMMAND_WAIT):
            return False
        if not waiter.done.is_set():
            return False
        if waiter.error is not None:
            raise waiter.error
        return True

    def privacy(self, profile: str | None = None) -> str:
        """The level in force for `profile` (None: the global level)."""
        if profile is None:
            return self._global
        return self._levels.get(profile, self._global)

    def set_privacy(self, level: str | None, profile: str | None = None, wait: bool = True) -> bool:
        """Set the global level, or a profile's own (None removes the profile's own level).

        New entries follow it at once; entries queued before keep the level of their time. A
        stricter level purges what it would not have kept, after those entries are written.
        Returns True when that is done, False when the writer still has it to do (`wait`
        False, or COMMAND_WAIT passed).
        """
        if profile is None:
            if level is None:
                raise ValueError("the global privacy level cannot be removed")
            return self._set_global(_check_level(level), wait)
        if level is not None:
            _check_level(level)
        with self._lock:
            old = self.privacy(profile)
            if level is None:
                self._levels.pop(profile, None)
            else:
                self._levels[profile] = level
            new = self.privacy(profile)
            waiter = self._queue_command(
                "privacy",
                profile,
                level=level,
                levels=(self._global, dict(self._levels)),
                purge=(new, [profile], ()) if stricter(new, old) else None,
            )
        return self._await(waiter, wait)

    def _set_global(self, level: str, wait: bool, start: bool = False) -> bool:
        with self._lock:
            old = self._global
            if start and level == old:
                return True  # as saved (or the default, full, on a new file): nothing to do
            self._global = level  # new entries follow it from now on
            waiter = self._queue_command(
                "privacy",
                None,
                level=level,
                levels=(level, dict(self._levels)),
                purge=(level, None, list(self._levels)) if stricter(level, old) else None,
            )
        return self._await(waiter, wait)

    def delete_profile(self, profile: str, wait: bool = True) -> bool:
        """Delete one profile's whole history: raw entries, counts and top names (the entries
        queued before included; the ones queued after are kept)."""
        with self._lock:
            waiter = self._queue_command("delete", profile)
        return self._await(waiter, wait)

    # -- reading (any thread) -----------------------------------------------------------

    def _total(self, i: int) -> int:
        with self._lock:
            child = self._child
            return self._base[i] + (child.counts[i] if child is not None else 0)

    @property
    def written(self) -> int:
        """Entries stored (logged or counted)."""
        return self._total(1)

    @property
    def rejected(self) -> int:
        """Entries that could not be read (a bug upstream of us)."""
        return self._total(2)

    @property
    def flushes(self) -> int:
        return self._total(3)

    @property
    def write_errors(self) -> int:
        return self._total(4)

    def counters(self) -> dict[str, int]:
        """`dropped` counts the entries the queue had no room for and those a writer process
        held when it died."""
        with self._lock:
            child = self._child
            counts = [b + (child.counts[i] if child else 0) for i, b in enumerate(self._base)]
        return {
            "queued": self.queued,
            "dropped": self.dropped + self.lost,
            "rejected": counts[2],
            "written": counts[1],
            "flushes": counts[3],
            "write_errors": counts[4],
            "restarts": self.restarts,
        }
