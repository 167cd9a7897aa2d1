"""The query log's writer: everything that writes DATA/querylog.db, in one ordered stream.

It runs in its own process (``python -m agent.querylog.child``, started by QueryLog), not in
the DNS process. The reason is the GIL: the writer's Python (QueryLogStore.write_items, about
16,000 instructions an entry, the roll-ups, the prunes) held the GIL of the process it ran
in, and as a thread of the DNS process it made the DNS thread wait for it: at 5,000 queries/s
the 99th percentile of the answers' latency was 12 times that of the same SafeNest with the
log off (docs/performance.md). A process has its own GIL, and on a Pi its own core.

The stream is what QueryLog's queue held, in its order: batches of entries and, between them,
`Command`s (a privacy level changed, a profile's history deleted). The writer

- keeps the entries it is handed and writes them in one transaction every `flush_seconds`,
  or as soon as `flush_entries` wait (QueryLogStore.write_items: the privacy level applied is
  the one in force when the entries were queued, since a level change is a command of the
  stream);
- runs a command only after every entry before it is written, and runs it to its end before
  the entries after it (a purge after entries purges them; a profile deleted is not deleted
  again from entries queued after the deletion);
- between batches, rolls up each finished hour and prunes old rows a few deleting
  statements at a time.

`Writer` is that work, independent of where it runs: `serve` runs it in the child process
(and QueryLog runs it in its own process when it was never started, or after stop()).

The protocol, over two pipes (multiprocessing.connection framing; each message `encode`d:
marshal when it holds only plain types, as the entries do, else pickle):

  parent -> child   the config (a dict), then ``(now, entries)`` (a list of queued entries),
                    ``(now, Command)``, or ``(now, None)``: write what you have and exit.
                    ``now`` is QueryLog's clock when it was sent: the child's clock for the
                    roll-ups and the retention is that one, moved on by the time since.
  child -> parent   ``("ready", pid)`` or ``("failed", text)`` after opening the file;
                    ``("counts", consumed, written, rejected, flushes, write_errors)`` after
                    each write or command (totals since the child started; `consumed` is
                    the entries finished with: written, counted, rejected or not kept);
                    ``("done", command id, error or None)`` after each command.

The child exits when told to, and when its input ends (the parent died, even by SIGKILL),
after writing what it holds. It ignores SIGTERM, SIGINT and SIGHUP, which systemd and a
terminal send to the whole group: it is the parent's to stop it once the parent's own
entries are handed over.
"""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection

from ..storage.querylog import GLOBAL, KINDS_KEPT_WHEN_HIDING, QueryLogStore, hour_of

log = logging.getLogger(__name__)

POLL = 0.2  # most seconds between two looks at the clock (flush, roll-up, prune)
ROLLUP_GRACE = 1.0  # an hour is rolled up by a flush that started this long after its end
PRUNE_EVERY = 3_600.0  # seconds between two retention prunes
STEPS_PER_CYCLE = 10  # deleting statements of a prune between two looks at the stream
ERROR_LOG_EVERY = 60.0  # at most one log line a minute about failing writes
NICE = 19  # the child's CPU priority where SCHED_IDLE is refused (see lower_priority)
PROTOCOL = pickle.HIGHEST_PROTOCOL
MARSHAL_VERSION = 4
_MARSHAL, _PICKLE = b"M", b"P"  # a message's first byte: how the rest is encoded


def encode(message) -> bytes:
    """One message of either pipe. A batch of entries holds only plain types (str, bytes,
    int, float, None, tuples, lists) and goes by marshal, under half of pickle's instructions
    (pickle memoizes every object it writes, and the DNS thread pays for it: see
    docs/performance.md); anything marshal refuses (a Command, an exception, an AnswerKind
    member, which is a str subclass) goes by pickle."""
    try:
        return _MARSHAL + marshal.dumps(message, MARSHAL_VERSION)
    except ValueError:
        return _PICKLE + pickle.dumps(message, PROTOCOL)


def decode(payload: bytes | bytearray | memoryview):
    """The message `encode` made."""
    body = memoryview(payload)[1:]
    if payload[0] == _MARSHAL[0]:
        return marshal.loads(body)
    return pickle.loads(body)


class Command:
    """A privacy level set, or a profile's history deleted: one item of the stream.

    `op` "privacy": `profile` (None: the global level) gets `level` (None: the profile's own
    level removed); `levels` is the whole state afterwards, ``(global level, {profile: level})``,
    the levels of the entries that follow; `purge` is ``(level, profiles or None, profiles
    spared)`` for QueryLogStore.purge when the level is stricter than before, else None.
    `op` "delete": `profile`'s whole history.

    No __eq__: QueryLog finds a command among the entries of a batch with a list search by
    identity, done in C (comparing a tuple with a Command gives False without Python code).
    """

    __slots__ = ("id", "op", "profile", "level", "levels", "purge")

    def __init__(
        self,
        id: int,
        op: str,
        profile: str | None,
        level: str | None = None,
        levels: tuple[str, dict[str, str]] | None = None,
        purge: tuple | None = None,
    ):
        self.id = id
        self.op = op
        self.profile = profile
        self.level = level
        self.levels = levels
        self.purge = purge

    def __reduce__(self):
        return (Command, (self.id, self.op, self.profile, self.level, self.levels, self.purge))

    def __repr__(self) -> str:
        return f"Command({self.id}, {self.op!r}, {self.profile!r}, {self.level!r})"


class Writer:
    """Writes the stream's entries in batches and runs its commands, in order."""

    def __init__(
        self,
        store: QueryLogStore,
        *,
        levels: tuple[str, dict[str, str]],
        flush_seconds: float = 10.0,
        flush_entries: int = 1_000,
        raw_days: float = 7,
        rollup_days: float = 90,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.flush_seconds = flush_seconds
        self.flush_entries = max(1, flush_entries)
        self.raw_days = raw_days
        self.rollup_days = rollup_days
        self.clock = clock
        self.pending: list[tuple] = []  # entries handed over, not written yet
        # Totals, sent back to QueryLog.
        self.consumed = 0
        self.written = 0
        self.rejected = 0
        self.flushes = 0
        self.write_errors = 0
        self._global, self._levels = levels[0], dict(levels[1])
        self._epoch = 0  # changes with the levels: the store asks keep() again
        self._last_error_log = -ERROR_LOG_EVERY
        self._flushed_at: float | None = None  # clock() when the last successful flush began
        self._rolled_up_until: int | None = None
        self._next_prune = 0.0  # monotonic; 0: prune once at start
        self._prune: Iterator[int] | None = None
        store.resume_ids()  # ids go on after the last row, whoever wrote it

    # -- entries ------------------------------------------------------------------------

    def keep(self, profile: str, kind: str) -> bool | None:
        """What the privacy level of `profile` does with an answer of `kind`: True to log it,
        False to count it only, None for neither. The store asks once per distinct answer."""
        level = self._levels.get(profile, self._global)
        if level == "full":
            return True
        if level == "hide_allowed":
            return kind in KINDS_KEPT_WHEN_HIDING
        return None if level == "off" else False

    def add(self, entries: list[tuple]) -> None:
        self.pending += entries

    def flush(self) -> bool:
        """Write every pending entry in one transaction; False (entries kept) when it failed."""
        started = self.clock()
        batch = self.pending
        if not batch:
            self._flushed_at = started
            return True
        try:
            counted, rejected = self.store.write_items(batch, self.keep, self._epoch)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_EVERY:
                self._last_error_log = now
                log.error("query log: cannot write %d entries (kept to retry): %s", len(batch), exc)
            return False
        self.pending = []
        self.consumed += len(batch)
        self.written += counted
        self.rejected += rejected
        self.flushes += 1
        self._flushed_at = started
        return True

    def counts(self) -> tuple:
        return (
            "counts",
            self.consumed,
            self.written,
            self.rejected,
            self.flushes,
            self.write_errors,
        )

    # -- commands -----------------------------------------------------------------------

    def run(self, command: Command) -> BaseException | None:
        """Run one command to its end (the pending entries must be written first); returns
        the error that stopped it, if any."""
        try:
            if command.op == "privacy":
                self._global, self._levels = command.levels[0], dict(command.levels[1])
                self._epoch += 1
                self.store.save_privacy_level(
                    GLOBAL if command.profile is None else command.profile, command.level
                )
                if command.purge is not None:
                    for _ in self.store.purge(*command.purge):
                        pass
            elif command.op == "delete":
                for _ in self.store.delete_profile(command.profile):
                    pass
            else:
                raise ValueError(f"unknown query log command {command.op!r}")
        except Exception as exc:
            log.error("query log: %s of %r failed: %s", command.op, command.profile, exc)
            return exc
        finally:
            self.consumed += 1
        return None

    # -- between batches ------------------------------------------------------------------

    def maintain(self) -> bool:
        """Roll up finished hours, then run a few deleting statements of the prune; True when
        the prune has more to do (come back soon)."""
        flushed_at = self._flushed_at
        if flushed_at is not None:
            until = hour_of(flushed_at - ROLLUP_GRACE)
            if self._rolled_up_until is None or until > self._rolled_up_until:
                try:
                    self.store.roll_up(until)
                    self._rolled_up_until = until
                except sqlite3.Error as exc:
                    log.warning("query log: roll-up of finished hours failed, will retry: %s", exc)
        now = time.monotonic()
        if self._prune is None and now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self._prune = self._prune_steps()
        if self._prune is None:
            return False
        try:
            for _ in range(STEPS_PER_CYCLE):
                next(self._prune)
            return True
        except StopIteration:
            pass
        except Exception as exc:  # the prune ends; it is tried again in an hour
            log.error("query log: prune failed: %s", exc)
        self._prune = None
        return False

    def _prune_steps(self) -> Iterator[int]:
        pruned = 0
        for deleted in self.store.prune(self.clock(), self.raw_days, self.rollup_days):
            pruned += deleted
            yield deleted
        if pruned:
            yield self.store.forget_unused()


# -- the child process ---------------------------------------------------------------------


class _Clock:
    """QueryLog's clock as last sent, moved on by the monotonic time since."""

    def __init__(self) -> None:
        self.sent = time.time()
        self.at = time.monotonic()

    def set(self, now: float) -> None:
        self.sent, self.at = now, time.monotonic()

    def __call__(self) -> float:
        return self.sent + (time.monotonic() - self.at)


def _split(items: list) -> deque:
    """A message's items as runs of entries and the commands between them."""
    parts: deque = deque()
    start = 0
    for i, item in enumerate(items):  # Python per entry, but in this process
        if item.__class__ is Command:
            if i > start:
                parts.append(items[start:i])
            parts.append(item)
            start = i + 1
    if start == 0:
        parts.append(items)
    elif start < len(items):
        parts.append(items[start:])
    return parts


def serve(inbox: Connection, outbox: Connection) -> int:
    """The child's loop: read the stream, write it; returns the exit status."""
    parent = os.getppid()
    config = decode(inbox.recv_bytes())
    logging.basicConfig(
        level=config.get("log_level", logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    clock = _Clock()
    clock.set(config["now"])

    def send(message: tuple) -> None:
        try:
            outbox.send_bytes(encode(message))
        except (OSError, EOFError):
            pass  # the parent is gone: go on writing what is held, then exit
        except pickle.PicklingError:
            if message[0] == "done":  # an error that does not pickle: its text
                send(("done", message[1], RuntimeError(str(message[2]))))

    try:
        store = QueryLogStore.open(config["path"], migrate=False)
        if config.get("busy_timeout") is not None:
            store.conn.execute(f"PRAGMA busy_timeout={int(config['busy_timeout'] * 1000)}")
        writer = Writer(
            store,
            levels=config["levels"],
            flush_seconds=config["flush_seconds"],
            flush_entries=config["flush_entries"],
            raw_days=config["raw_days"],
            rollup_days=config["rollup_days"],
            clock=clock,
        )
    except Exception as exc:
        log.error("query log writer: cannot open %s: %s", config["path"], exc)
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return 1
    send(("ready", os.getpid()))
    bound = max(1, config.get("queue_entries", 20_000))
    flush_seconds = writer.flush_seconds
    next_flush = time.monotonic() + flush_seconds  # the next timed write (or retry)
    failing = False  # the last write failed: the next try waits for next_flush
    parts: deque = deque()  # read, not handed to the writer yet: a command waits for a write
    busy = False  # the prune has more to do

    def write() -> bool:
        nonlocal failing, next_flush
        had = len(writer.pending)
        failing = not writer.flush()
        next_flush = time.monotonic() + flush_seconds
        if had:
            send(writer.counts())
        return not failing

    try:
        while True:
            now = time.monotonic()
            # Read the stream unless a command waits for a failed write, or enough is held
            # (then the pipe fills, QueryLog's queue fills, and the DNS side drops and counts).
            if not parts and len(writer.pending) < bound:
                wait = 0.0 if busy else max(0.0, min(next_flush - now, POLL))
                if inbox.poll(wait):
                    try:
                        sent_at, body = decode(inbox.recv_bytes())
                    except EOFError:
                        break  # the parent is gone (a message cut short counts as gone)
                    clock.set(sent_at)
                    if body is None:
                        break
                    parts = _split(body)
            elif os.getppid() != parent:
                break  # orphaned while writes keep failing: one more try below, then exit
            else:
                time.sleep(max(0.0, min(next_flush - now, POLL)))
            now = time.monotonic()
            while parts:
                part = parts[0]
                if part.__class__ is Command:
                    if writer.pending and ((failing and now < next_flush) or not write()):
                        break  # the entries before it first: retried at next_flush
                    parts.popleft()
                    send(("done", part.id, writer.run(part)))
                    send(writer.counts())
                else:
                    parts.popleft()
                    writer.add(part)
                    if len(writer.pending) >= writer.flush_entries and not (
                        failing and now < next_flush
                    ):
                        write()
            if now >= next_flush:
                write()  # also when nothing waits: the roll-ups go by the last write's time
            busy = writer.maintain()
    except BaseException:
        log.exception("query log writer stopped by an error")
        raise
    finally:
        try:
            for part in parts:  # what could not be written before a command is given up
                if part.__class__ is Command:
                    if writer.pending and not writer.flush():
                        log.error("query log writer: %d entries not written", len(writer.pending))
                        writer.pending = []
                    send(("done", part.id, writer.run(part)))
                else:
                    writer.add(part)
            if writer.pending and not writer.flush():
                log.error("query log writer: %d entries not written", len(writer.pending))
            send(writer.counts())
        finally:
            store.close()
    return 0


def lower_priority(pid: int = 0) -> str:
    """Run process `pid` (0: this one) under SCHED_IDLE: it gets a core only when no other
    task wants it. QueryLog calls it on each writer it starts, as soon as it is spawned, so
    that the start-up (a new interpreter and its imports) does not compete with DNS either.

    Why not only nice 19: with the DNS process on the same core, at 5,000 queries/s, the p99
    of the answers was 1.46 times that with the log off at nice 19, and 1.04 times under
    SCHED_IDLE (docs/performance.md, "Where the log's tail came from"). A SCHED_IDLE task is
    preempted by any other waking task, and a core that runs one counts as idle when the
    kernel places a waking task; at nice 19 the kernel (EEVDF, Linux 6.6 on) may first let
    it finish its slice. The cost: on a core kept busy the log waits, its queue fills, and
    entries are dropped and counted, which is what the log must do then.
    Returns the policy set ("idle", or "nice" where the kernel refuses SCHED_IDLE)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, NICE)
        except OSError:
            pass
        return "nice"


def place(pid: int, cpus: Iterable[int]) -> str:
    """Let process `pid` run only on `cpus` (querylog_writer_cpus), those of them this machine
    has; returns "" when done, else why not (no such CPU here, or the kernel refused).

    Why: where SafeNest is pinned to one core (systemd CPUAffinity=, taskset), the writer
    inherits that core and its transactions run between the DNS thread's packets, even under
    SCHED_IDLE. At 5,000 queries/s that cost the answers' p99 from nothing measurable to 9%
    (docs/performance.md). The CPUs given should be ones no busy task needs: on the bench's
    load generator's core the writer delayed the clients instead."""
    wanted = set(cpus)
    usable = wanted & set(range(os.cpu_count() or 1))
    if not usable:
        return f"this machine has no CPU {', '.join(map(str, sorted(wanted)))}"
    try:
        os.sched_setaffinity(pid, usable)
    except OSError as exc:
        return f"the kernel refused CPUs {sorted(usable)}: {exc.strerror or exc}"
    return ""


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.querylog.child FD_IN FD_OUT``: the pipes' descriptors from QueryLog."""
    argv = sys.argv[1:] if argv is None else argv
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # Its CPU priority: set by QueryLog when it spawned this process (lower_priority).
    inbox = Connection(int(argv[0]), writable=False)
    outbox = Connection(int(argv[1]), readable=False)
    try:
        return serve(inbox, outbox)
    finally:
        inbox.close()
        outbox.close()
