"""Query log figures (issue 5): sustained logging, SD-card bytes, size per day, statistics time.

    .venv/bin/python -m bench.querylog_bench [--rate 5000] [--seconds 60] [--days 7]
        [--per-day 50000] [--json PATH] [--keep-tmp]

1. **record() alone**: 1,000,000 calls into a QueryLog whose writer is not started (its queue
   emptied every 10,000 calls): the cost of one call on the DNS thread.
2. **Sustained**: a QueryLog with the default settings (flush every 10 s or 1,000 entries,
   privacy full), its hand-off (on a loop of its own here, in a thread) and its writer
   process; this thread calls record() at
   ``--rate`` entries/s, paced every 2 ms, for ``--seconds``. Measured: the mean record()
   cost under load; the CPU of this process's query log threads (the hand-off, which also
   reads the writer's acknowledgements, and the supervisor: utime + stime of
   /proc/self/task/TID/stat), which is what
   the log still costs the DNS process besides record(); the writer process's CPU
   (/proc/PID/stat), the bytes it wrote (wchar: what SQLite handed to write(); write_bytes:
   what reached the block layer, from /proc/PID/io) and its memory (VmRSS, VmHWM and the
   private RssAnon of /proc/PID/status); the file sizes (database + WAL), drops, and the
   statistics query with those entries all in the current hour (its worst case: the raw rows
   of the hour are read for the top blocked names). The writer's figures are read after a
   privacy command (the level in force, set again) came back done: every entry queued before
   it is written by then. The lateness of the 2 ms sleeps is compared with the same loop run
   for up to 20 s without a query log: it is how long the calling thread, like the DNS thread,
   waited for the GIL or a CPU while the log worked.
3. **A household for ``--days`` days** at ``--per-day`` queries a day, written as the writer
   writes them with the default 10 s flush: one transaction per 10-second window that has
   entries, the top names rolled up every hour, a retention prune every hour. The day's
   queries are spread over 16 waking hours. Measured in this thread (/proc/thread-self/io):
   bytes written per 1,000 queries, the file size after each day (after a checkpoint), the
   bytes of each table (dbstat), and the statistics query's time with 7 days of logs. The
   first day is written once more with 60 s windows (querylog_flush_seconds = 60), to show
   what the flush interval costs the SD card.

Names: Zipf-distributed over a pool of 4,000 names a day; 5% of the queries are blocked names
read from ../shared/data/lists (hostsVN gambling and adult lists), the allowed names are
phishing-nl.txt names standing in for real names of real lengths. 4 profiles, 8 clients.

Writes bench/results/querylog.json. Exit status 0, or 1 when entries were dropped.

``--flush-cost N [--shape mix|compact|record] [--no-flush]`` instead queues N entries (as the
resolver hands them: ``compact`` the replayed answers' prebuilt shape, ``record`` record()'s,
``mix`` both as the traffic says) and has a Writer (the writer process's work, run here in
this process) write them in batches of 1,000, after a warm-up that wrote the same answers
once; with ``--no-flush`` the batches are dropped instead. Run both under ``valgrind
--tool=callgrind``: the difference of the instruction counts, divided by N, is the writer's
cost per entry (docs/performance.md, "Instruction counts").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.dns.wire import name_to_wire
from agent.model import AnswerKind
from agent.querylog import QueryLog, QueryLogStore
from agent.querylog.writer import Writer
from agent.storage.querylog import Entry, hour_of

ROOT = Path(__file__).resolve().parent.parent
LISTS = ROOT.parent / "shared" / "data" / "lists"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILES = ("minh", "lan", "parents", "guest")
CLIENTS = tuple(f"192.168.1.{20 + i}" for i in range(8))
BLOCKED_SHARE = 0.05
WINDOW = 10.0  # the default flush interval


# -- names -------------------------------------------------------------------------------


def _read_domains(path: Path, limit: int) -> list[str]:
    names = []
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith(("#", "!")):
                    continue
                name = line.split()[-1].lower()
                if "." in name and len(name) < 100:
                    names.append(name)
                if len(names) >= limit:
                    break
    except OSError:
        pass
    return names


def name_pools(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """(allowed names, (blocked name, category)), real names when the shared lists are there."""
    allowed = _read_domains(LISTS / "blocklistproject" / "phishing-nl.txt", 40_000)
    blocked = [
        (n, "gambling") for n in _read_domains(LISTS / "hostsVN" / "gambling-domain.txt", 3_000)
    ]
    blocked += [
        (n, "adult") for n in _read_domains(LISTS / "hostsVN" / "adult-domain-VN.txt", 1_000)
    ]
    if len(allowed) < 4_000 or len(blocked) < 200:
        allowed = [f"www.site{i}.example.com" for i in range(40_000)]
        blocked = [(f"bet{i}.example", "gambling") for i in range(3_000)]
    rng.shuffle(allowed)
    rng.shuffle(blocked)
    return allowed, blocked


class Traffic:
    """Answers a household's devices get: Zipf over a day's names, 5% of them blocked."""

    def __init__(self, rng: random.Random, distinct: int = 4_000):
        self.rng = rng
        allowed, blocked = name_pools(rng)
        self.allowed = allowed[:distinct]
        self.blocked = blocked[: max(50, distinct // 20)]
        self.allowed_weights = [1 / (rank + 1) for rank in range(len(self.allowed))]
        self.blocked_weights = [1 / (rank + 1) for rank in range(len(self.blocked))]

    def entries(self, times: list[float]) -> list[Entry]:
        rng = self.rng
        n = len(times)
        allowed = rng.choices(self.allowed, self.allowed_weights, k=n)
        blocked = rng.choices(self.blocked, self.blocked_weights, k=n)
        out = []
        for i, t in enumerate(times):
            profile = PROFILES[i % 7 % 4]
            client = CLIENTS[(i * 5) % 8]
            r = rng.random()
            if r < BLOCKED_SHARE:
                name, category = blocked[i]
                out.append(
                    Entry(
                        t,
                        client,
                        "",
                        profile,
                        name,
                        1,
                        "blocked",
                        f"category={category} min_age=18+",
                        "",
                        0.05,
                    )
                )
            elif r < 0.35:
                out.append(
                    Entry(
                        t,
                        client,
                        "",
                        profile,
                        allowed[i],
                        1 if r < 0.3 else 28,
                        "forwarded",
                        "upstream 192.168.1.1:53",
                        "192.168.1.1:53",
                        rng.uniform(5, 60),
                    )
                )
            else:
                out.append(
                    Entry(
                        t,
                        client,
                        "",
                        profile,
                        allowed[i],
                        1 if r < 0.8 else 28,
                        "cached",
                        "",
                        "",
                        0.04,
                    )
                )
        return out


# -- /proc -------------------------------------------------------------------------------


def thread_cpu(tid: int) -> float:
    """Seconds on a CPU: schedstat's nanoseconds (stat's utime + stime count 10 ms ticks)."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def thread_io(tid: int | None = None) -> dict[str, int]:
    path = Path("/proc/thread-self/io") if tid is None else Path(f"/proc/self/task/{tid}/io")
    return {k: int(v) for k, v in (line.split(": ") for line in path.read_text().splitlines())}


def process_cpu(pid: int) -> float:
    """Seconds on a CPU of every thread of `pid` (schedstat's nanoseconds, else ticks)."""
    try:
        return sum(
            int((task / "schedstat").read_text().split()[0]) / 1e9
            for task in Path(f"/proc/{pid}/task").iterdir()
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime of every thread


def process_io(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (the peak), RssAnon (private memory) and RssFile (file pages, shared with
    other processes that map the same files) of /proc/PID/status, and Pss (the resident pages
    with each shared page divided among its users) of /proc/PID/smaps_rollup, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def time_statistics(store: QueryLogStore, now: float, runs: int = 30) -> dict:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        stats = store.statistics(now)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": round(statistics.median(times), 2),
        "max_ms": round(max(times), 2),
        "queries_7d": stats["7d"].queries,
        "top_blocked_7d": stats["7d"].top_blocked[:3],
    }


# -- phases -------------------------------------------------------------------------------


def record_cost(workdir: Path, wire_entries: list[tuple]) -> float:
    """ns per record() call on a log whose writer is not started (emptied every 10,000 calls)."""
    ql = QueryLog(QueryLogStore.open(workdir / "alone.db"), queue_entries=20_000)
    record = ql.record
    n = len(wire_entries)
    total_ns = 0
    for chunk in range(100):
        entries = [wire_entries[(chunk * 10_000 + i) % n] for i in range(10_000)]
        t0 = time.perf_counter_ns()
        for entry in entries:
            record(*entry)
        total_ns += time.perf_counter_ns() - t0
        ql._queue.clear()  # not written: this phase measures the call only
    assert ql.dropped == 0
    ql.store.close()
    return total_ns / 1_000_000


def pace(record, wire_entries: list[tuple], rate: int, seconds: float, queued=lambda: 0) -> dict:
    """Call record() `rate` times a second for `seconds`, every 2 ms, as a DNS thread would.

    The lateness of each 2 ms sleep is how long this thread waited to run again: for the GIL
    (held by the writer's Python code) or for a CPU. A DNS answer would wait that long too.
    """
    n = len(wire_entries)
    sent = busy_ns = worst_tick_ns = max_queued = 0
    late_us: list[float] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - sent
        t0 = time.perf_counter_ns()
        for i in range(sent, sent + due):
            record(*wire_entries[i % n])
        spent = time.perf_counter_ns() - t0
        busy_ns += spent
        if due:
            worst_tick_ns = max(worst_tick_ns, spent // due)
        sent += due
        max_queued = max(max_queued, queued())
        before = time.perf_counter()
        time.sleep(0.002)
        late_us.append((time.perf_counter() - before - 0.002) * 1e6)
    late_us.sort()
    return {
        "sent": sent,
        "record_mean_ns": round(busy_ns / max(1, sent)),
        "record_worst_tick_mean_ns": worst_tick_ns,
        "max_queued": max_queued,
        "sleep_late_us": {
            "p50": round(late_us[len(late_us) // 2]),
            "p99": round(late_us[int(len(late_us) * 0.99)]),
            "p999": round(late_us[int(len(late_us) * 0.999)]),
            "max": round(late_us[-1]),
        },
    }


def baseline(wire_entries: list[tuple], rate: int, seconds: float) -> dict:
    """The same loop with no query log: record() appends to a deque that is simply emptied."""
    from collections import deque

    sink: deque = deque()

    def record(*entry) -> None:
        if len(sink) > 10_000:
            sink.clear()
        sink.append(entry)

    return pace(record, wire_entries, rate, seconds)


def sustained(workdir: Path, wire_entries: list[tuple], rate: int, seconds: float) -> dict:
    db = workdir / "sustained" / "querylog.db"
    ql = QueryLog(QueryLogStore.open(db))
    ql.start()
    while ql.writer_pid is None:  # the writer process opens the file and says it is ready
        time.sleep(0.01)
    pid = ql.writer_pid
    memory_idle = process_memory_kib(pid)
    # This process's share: in `safenest run` the hand-off's work is done by the DNS thread.
    threads = [ql._own_loop.native_id, ql._supervisor.native_id]

    def here_cpu() -> float:
        return sum(thread_cpu(tid) for tid in threads)

    here0, cpu0, io0 = here_cpu(), process_cpu(pid), process_io(pid)
    paced = pace(ql.record, wire_entries, rate, seconds, lambda: ql.queued)
    sent = paced["sent"]
    here1 = here_cpu()
    ql.set_privacy(ql.privacy())  # comes back when everything queued before it is written
    cpu1, io1, memory = process_cpu(pid), process_io(pid), process_memory_kib(pid)
    ql.stop()
    counters = ql.counters()
    store = QueryLogStore.open(db)
    stats = time_statistics(store, time.time(), runs=5)
    result = {
        "rate": rate,
        "seconds": seconds,
        "recorded": sent,
        "written": counters["written"],
        "dropped": counters["dropped"],
        "flushes": counters["flushes"],
        "max_queued": paced["max_queued"],
        "record_mean_ns": paced["record_mean_ns"],
        "record_worst_tick_mean_ns": paced["record_worst_tick_mean_ns"],
        "sleep_late_us": paced["sleep_late_us"],
        "handoff_cpu_s": round(here1 - here0, 3),
        "handoff_cpu_per_entry_us": round((here1 - here0) / max(1, sent) * 1e6, 3),
        "writer_cpu_s": round(cpu1 - cpu0, 2),
        "writer_cpu_share": round((cpu1 - cpu0) / seconds, 3),
        "writer_cpu_per_entry_us": round((cpu1 - cpu0) / max(1, sent) * 1e6, 2),
        "writer_wchar_per_1000": round((io1["wchar"] - io0["wchar"]) / sent * 1000),
        "writer_write_bytes_per_1000": round(
            (io1["write_bytes"] - io0["write_bytes"]) / sent * 1000
        ),
        "writer_memory_idle_kib": memory_idle,
        "writer_memory_kib": memory,
        "file_bytes": file_bytes(db),
        "statistics_current_hour": stats,
    }
    store.close()
    return result


def table_bytes(store: QueryLogStore) -> dict[str, int]:
    rows = store.conn.execute(
        "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
    ).fetchall()
    return {name: size for name, size in rows}


def household(
    workdir: Path,
    traffic: Traffic,
    days: int,
    per_day: int,
    rng: random.Random,
    window_s: float = WINDOW,
) -> dict:
    db = workdir / f"household-{window_s:g}" / "querylog.db"
    store = QueryLogStore.open(db)
    day0 = (int(time.time() // 86_400) - days) * 86_400  # the days just before today
    sizes = []
    commits = 0
    day1 = {}
    for day in range(days):
        io0 = thread_io()
        wake = day0 + day * 86_400 + 6 * 3600  # 16 waking hours, 06:00-22:00
        times = sorted(wake + rng.random() * 16 * 3600 for _ in range(per_day))
        entries = traffic.entries(times)
        window, batch = None, []
        rolled_hour = hour_of(times[0])
        for e in entries:
            w = int(e.time // window_s)
            if w != window and batch:
                store.write(batch, batch)
                commits += 1
                batch = []
                if hour_of(e.time) != rolled_hour:  # the writer's hourly work
                    rolled_hour = hour_of(e.time)
                    store.roll_up(rolled_hour)
                    list(store.prune(e.time, 7, 90))
            window = w
            batch.append(e)
        store.write(batch, batch)
        commits += 1
        store.roll_up(hour_of(times[-1]) + 1)
        io1 = thread_io()
        if day == 0:
            day1 = {
                "transactions": commits,
                "wchar_per_1000": round((io1["wchar"] - io0["wchar"]) / per_day * 1000),
                "write_bytes_per_1000": round(
                    (io1["write_bytes"] - io0["write_bytes"]) / per_day * 1000
                ),
            }
        store.forget_unused()
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(file_bytes(db))
    now = day0 + days * 86_400 - 60  # the end of the last day
    result = {
        "flush_seconds": window_s,
        "days": days,
        "per_day": per_day,
        "distinct_names_per_day": len(traffic.allowed) + len(traffic.blocked),
        "day1": day1,
        "size_after_each_day": sizes,
        "size_per_day": round(sizes[-1] / days),
        "tables": table_bytes(store),
        "raw_rows": store.count_queries(),
        "statistics_7_days": time_statistics(store, now),
    }
    store.close()
    return result


def flush_cost(workdir: Path, n: int, shape: str, flush: bool) -> float:
    """Queue `n` entries and flush them 1,000 at a time (or drop them); µs of CPU per entry."""
    from agent.dns.wire import name_to_wire as to_wire

    kinds = {k.value: k for k in AnswerKind}
    prebuilt: dict[tuple, tuple] = {}
    items = []
    for e in Traffic(random.Random(5)).entries([0.0] * 20_000):
        wire, kind = to_wire(e.name).lower(), kinds.get(e.kind, e.kind)
        answer = (e.profile, wire, e.qtype, kind, e.reason)
        if shape == "compact" or (shape == "mix" and e.kind != "forwarded"):
            items.append((None, e.client, prebuilt.setdefault(answer, answer)))
        else:
            items.append(
                (
                    e.client,
                    wire,
                    e.qtype,
                    kind,
                    e.reason,
                    e.profile,
                    e.device,
                    e.upstream,
                    e.latency_ms,
                )
            )
    store = QueryLogStore.open(workdir / "cost.db")
    ql = QueryLog(store, queue_entries=10**7)  # never started: record() only builds entries
    writer = Writer(store, levels=("full", {}))

    def fill(start: int, count: int) -> None:
        queue = ql.queue
        for i in range(start, start + count):
            item = items[i % len(items)]
            if item[0] is None:
                queue.append((time.time(), item[1], "", item[2]))
            else:
                ql.record(*item)

    def write() -> None:
        writer.add(list(ql.queue))
        ql.queue.clear()
        writer.flush()

    for start in range(0, len(items), 5_000):  # warm-up: every answer met once
        fill(start, 5_000)
        write()
    t0 = time.thread_time()
    for start in range(0, n, 1_000):
        fill(start, 1_000)
        if flush:
            write()
        else:
            ql.queue.clear()
    return (time.thread_time() - t0) / max(1, n) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--per-day", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "querylog.json")
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--flush-cost", type=int, metavar="N", help="see the module docstring")
    parser.add_argument("--shape", choices=("mix", "compact", "record"), default="mix")
    parser.add_argument("--no-flush", action="store_true")
    args = parser.parse_args(argv)
    if args.flush_cost is not None:
        workdir = Path(tempfile.mkdtemp(prefix="querylog-cost-"))
        try:
            us = flush_cost(workdir, args.flush_cost, args.shape, not args.no_flush)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"{args.shape}: {us:.2f} µs of CPU per entry (queueing included)")
        return 0

    rng = random.Random(args.seed)
    traffic = Traffic(rng)
    sample = traffic.entries([0.0] * 50_000)
    # As the resolver would call it: the wire name from the packet, the AnswerKind.
    kinds = {k.value: k for k in AnswerKind}
    wire_entries = [
        (
            e.client,
            name_to_wire(e.name).lower(),
            e.qtype,
            kinds.get(e.kind, e.kind),
            e.reason,
            e.profile,
            e.device,
            e.upstream,
            e.latency_ms,
        )
        for e in sample
    ]
    workdir = Path(tempfile.mkdtemp(prefix="querylog-bench-"))
    try:
        results = {"record_alone_ns": round(record_cost(workdir, wire_entries))}
        print(f"record() alone: {results['record_alone_ns']} ns a call", flush=True)
        results["baseline"] = baseline(wire_entries, args.rate, min(args.seconds, 20.0))
        print("without a query log:", json.dumps(results["baseline"]), flush=True)
        results["sustained"] = sustained(workdir, wire_entries, args.rate, args.seconds)
        print(json.dumps(results["sustained"], indent=1), flush=True)
        results["household"] = household(workdir, traffic, args.days, args.per_day, rng)
        print(json.dumps(results["household"], indent=1), flush=True)
        # The same first day written every 60 s instead of 10 s: the SD card's side of the setting.
        rng = random.Random(args.seed)
        results["household_flush_60s"] = household(
            workdir, Traffic(rng), 1, args.per_day, rng, 60.0
        )
        print(json.dumps(results["household_flush_60s"]["day1"], indent=1), flush=True)
    finally:
        if args.keep_tmp:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if results["sustained"]["dropped"] else 0


if __name__ == "__main__":
    sys.exit(main())
