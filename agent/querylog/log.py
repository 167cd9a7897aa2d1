"""QueryLog: the resolver hands every answer to `record()`, one writer thread stores them.

`record()` runs on the DNS event loop, so it must never wait: it appends a tuple to a
deque (an atomic operation under the GIL, no lock) or, when the queue is full, counts a drop.
The writer looks up the ids of each distinct answer (profile, name, type, kind, reason) once
(QueryLogStore.write_items), so its cost per entry is small.
The writer thread wakes every POLL seconds and writes when `flush_entries` are waiting or
`flush_seconds` have passed, one transaction per batch (WAL; a crash loses at most the
entries still queued). Between batches it computes the top names of each finished hour and
prunes old rows a few batches at a time, and it runs the privacy purges the admin asks for,
so that every write to the file comes from this one thread in a known order.

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

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import repeat, starmap
from pathlib import Path

from ..storage.querylog import (
    GLOBAL,
    KINDS_KEPT_WHEN_HIDING,
    PRIVACY_LEVELS,
    QueryLogStore,
    hour_of,
)

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between the writer's looks at the queue
ROLLUP_GRACE = 1.0  # an hour is rolled up by a flush that started this long after its end
PRUNE_EVERY = 3_600.0  # seconds between two retention prunes
STEPS_PER_CYCLE = 10  # deleting batches run between two looks at the queue
ERROR_LOG_EVERY = 60.0  # at most one log line a minute about failing writes
COMMAND_WAIT = 60.0  # how long set_privacy()/delete_profile() wait for the writer


def stricter(new: str, old: str) -> bool:
    """True when `new` keeps less than `old`."""
    return PRIVACY_LEVELS.index(new) > PRIVACY_LEVELS.index(old)


def _check_level(level: str) -> str:
    if level not in PRIVACY_LEVELS:
        raise ValueError(
            f"unknown privacy level {level!r}: expected one of {', '.join(PRIVACY_LEVELS)}"
        )
    return level


class _Job:
    """A purge or prune run a few batches at a time by the writer; `done` is set at the end."""

    def __init__(self, steps: Iterator[int]):
        self.steps = steps
        self.done = threading.Event()
        self.error: BaseException | None = None


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
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.flush_seconds = flush_seconds
        self.flush_entries = max(1, flush_entries)
        self.queue_entries = max(1, queue_entries)
        self.raw_days = raw_days
        self.rollup_days = rollup_days
        self.busy_timeout = busy_timeout
        self.clock = clock
        self._queue: deque[tuple] = deque()
        self._pending: list[tuple] = []  # drained, not yet written (the last write failed)
        self._jobs: deque[_Job] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Counters, read by the metrics and the tests.
        self.dropped = 0  # queue full
        self.rejected = 0  # entries that could not be read (a bug upstream of us)
        self.written = 0  # entries stored (logged or counted)
        self.flushes = 0
        self.write_errors = 0
        self.cycles = 0  # the writer's loop turns
        self.in_write = False  # the writer is inside a write (the tests watch it)
        self._last_error_log = -ERROR_LOG_EVERY
        self._rolled_up_until: int | None = None
        self._epoch = 0  # changes with the privacy levels: the store asks _keep() again
        self._flushed_at: float | None = None  # clock() when the last successful flush began
        self._next_prune = 0.0
        # Privacy: the profiles' own levels and the global one, as applied.
        saved = store.privacy_levels()
        self._global = saved.pop(GLOBAL, "full")
        self._levels: dict[str, str] = saved
        self._set_global(_check_level(privacy), wait=False)

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
        text, off the DNS thread. `kind` is an AnswerKind (or its value).
        """
        queue = self._queue
        if len(queue) >= self.queue_entries:
            self.dropped += 1
            return
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
        the writer slices the answer out of it, off the DNS thread."""
        return self._queue

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._pending)

    # -- start and stop ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="querylog-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer."""
        thread = self._thread
        if thread is None:
            self._flush()
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "query log writer did not stop within %.0f s; %d entries not written",
                timeout,
                self.queued,
            )
            return
        self._thread = None

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        if self.busy_timeout is not None:
            self.store.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        next_flush = time.monotonic() + self.flush_seconds
        try:
            while True:
                stopping = self._stop.wait(POLL)
                now = time.monotonic()
                if stopping or len(self._queue) >= self.flush_entries or now >= next_flush:
                    ok = self._flush()
                    # After a failure, retry at the next interval rather than hammering the card.
                    next_flush = now + self.flush_seconds
                    if stopping:
                        if ok and self._queue:
                            self._flush()  # what arrived during the last write
                        self._run_jobs(None)  # a purge asked for must not be left half done
                        break
                self._maintain()
                self.cycles += 1
        except Exception:
            log.exception("query log writer stopped by an error")
        finally:
            self.store.close()

    def _flush(self) -> bool:
        """Write everything queued in one transaction; False (entries kept) when it failed."""
        started = self.clock()
        batch, queue = self._pending, self._queue
        # popleft() called from C, not a Python loop: the DNS thread appends meanwhile, safely.
        batch += starmap(
            queue.popleft, repeat((), min(len(queue), self.queue_entries - len(batch)))
        )
        if not batch:
            self._after_flush(started)
            return True
        self.in_write = True
        try:
            counted, rejected = self.store.write_items(batch, self._keep, self._epoch)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_EVERY:
                self._last_error_log = now
                log.error("query log: cannot write %d entries (kept to retry): %s", len(batch), exc)
            return False
        finally:
            self.in_write = False
        self._pending = []
        self.written += counted
        self.rejected += rejected
        self.flushes += 1
        self._after_flush(started)
        return True

    def _after_flush(self, started: float) -> None:
        self._flushed_at = started

    def _keep(self, profile: str, kind: str) -> bool | None:
        """What the privacy level of `profile` does with an answer of `kind`: True to log it,
        False to count it only, None for neither. The store asks once per distinct answer."""
        level = self._levels.get(profile, self._global)
        if level == "full":
            return True
        if level == "hide_allowed":
            return kind in KINDS_KEPT_WHEN_HIDING
        return None if level == "off" else False

    def _maintain(self) -> None:
        """Roll up finished hours, then run a few deleting batches of the jobs and the prune."""
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
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self._jobs.append(_Job(self._prune_steps()))
        self._run_jobs(STEPS_PER_CYCLE)

    def _prune_steps(self) -> Iterator[int]:
        pruned = 0
        for deleted in self.store.prune(self.clock(), self.raw_days, self.rollup_days):
            pruned += deleted
            yield deleted
        if pruned:
            yield self.store.forget_unused()

    def _run_jobs(self, steps: int | None) -> None:
        while self._jobs and (steps is None or steps > 0):
            job = self._jobs[0]
            try:
                next(job.steps)
                if steps is not None:
                    steps -= 1
                continue
            except StopIteration:
                pass
            except Exception as exc:  # the job ends; the writer goes on
                job.error = exc
                log.error("query log: %s", exc)
            self._jobs.popleft()
            job.done.set()

    def _submit(self, steps: Iterator[int], wait: bool = True) -> bool:
        """Run a deleting job on the writer thread (or here when it is not running)."""
        job = _Job(steps)
        if not self._running():
            self._jobs.append(job)
            self._run_jobs(None)
        else:
            self._jobs.append(job)
            if not wait:
                return False
            if not job.done.wait(COMMAND_WAIT):
                return False
        if job.error is not None:
            raise job.error
        return True

    # -- privacy and deletion ------------------------------------------------------------

    def privacy(self, profile: str | None = None) -> str:
        """The level in force for `profile` (None: the global level)."""
        if profile is None:
            return self._global
        return self._levels.get(profile, self._global)

    def set_privacy(self, level: str | None, profile: str | None = None, wait: bool = True) -> bool:
        """Set the global level, or a profile's own (None removes the profile's own level).

        A stricter level purges what it would not have kept. Returns True when the purge (if
        any) is done, False when it still runs on the writer thread.
        """
        if profile is None:
            if level is None:
                raise ValueError("the global privacy level cannot be removed")
            return self._set_global(_check_level(level), wait)
        old = self.privacy(profile)
        if level is None:
            self._levels.pop(profile, None)
        else:
            self._levels[profile] = _check_level(level)
        new = self.privacy(profile)
        self._epoch += 1

        def steps() -> Iterator[int]:
            self.store.save_privacy_level(profile, level)
            yield 0
            if stricter(new, old):
                yield from self.store.purge(new, [profile])

        return self._submit(steps(), wait)

    def _set_global(self, level: str, wait: bool) -> bool:
        old = self._global
        self._global = level  # new entries follow it from now on
        self._epoch += 1
        keep = list(self._levels)

        def steps() -> Iterator[int]:
            self.store.save_privacy_level(GLOBAL, level)
            yield 0
            if stricter(level, old):
                yield from self.store.purge(level, None, keep)

        return self._submit(steps(), wait)

    def delete_profile(self, profile: str, wait: bool = True) -> bool:
        """Delete one profile's whole history: raw entries, counts and top names."""
        return self._submit(self.store.delete_profile(profile), wait)

    # -- reading (any thread) -----------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "written": self.written,
            "flushes": self.flushes,
            "write_errors": self.write_errors,
        }
