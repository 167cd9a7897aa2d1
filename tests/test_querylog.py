"""The query log: batching, a queue that never waits, rollups, retention, privacy, export, deletion.

Every test uses a real SQLite file in tmp_path and, where the writer matters, the real writer
process (killed, stopped or kept from starting where its failures are the point). Waits are
bounded polls of a condition, never assertions about speed.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import signal
import sqlite3
import time
from collections import Counter
from datetime import date

import pytest

from agent.model import AnswerKind
from agent.querylog import (
    QueryLog,
    QueryLogStore,
    day_bounds,
    export_queries_csv,
    export_rollups_csv,
)
from agent.settings import load_settings
from agent.storage.querylog import BATCH, TOP_NAMES, Entry, hour_of
from tests.dnsfakes import wait_until

NOW = 1_790_000_000.0  # a fixed clock: 2026-09-21, in the middle of an hour
HOUR = 3600


@pytest.fixture
def open_log(tmp_path):
    logs = []

    def make(**options) -> QueryLog:
        options.setdefault("clock", lambda: NOW)
        ql = QueryLog(QueryLogStore.open(tmp_path / "querylog.db"), **options)
        logs.append(ql)
        return ql

    yield make
    for ql in logs:
        ql.stop()


@pytest.fixture
def store(tmp_path):
    s = QueryLogStore.open(tmp_path / "querylog.db")
    yield s
    s.close()


def entry(
    t,
    name="example.com",
    kind="forwarded",
    profile="kid",
    reason="",
    client="192.168.1.20",
    qtype=1,
):
    if kind == "blocked" and not reason:
        reason = "category=adult min_age=18+"
    upstream = "192.168.1.1:53" if kind == "forwarded" else ""
    return Entry(t, client, "", profile, name, qtype, kind, reason, upstream, 12.5)


def raw_rows(s: QueryLogStore, profile=None) -> list[tuple]:
    return list(s.export_queries(0, 4e9, profile))


def rollup_counts(s: QueryLogStore) -> Counter:
    return Counter({(r[0], r[1], r[2], r[3]): r[4] for r in s.export_rollups(0, 4e9)})


def names_in_file(s: QueryLogStore) -> set[str]:
    return {row[0] for row in s.conn.execute("SELECT name FROM names")}


# -- batching and the queue -------------------------------------------------------------


def test_nothing_is_written_before_a_batch_is_full_and_all_of_it_after(open_log):
    ql = open_log(flush_entries=100, flush_seconds=3600)
    ql.start()
    wait_until(lambda: ql.writer_pid is not None, "the writer process")
    for i in range(99):
        ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.FORWARDED)
    time.sleep(0.5)  # the hand-off sends them within 0.1 s; the writer must keep them
    assert ql.store.count_queries() == 0
    assert (ql.queued, ql.written, ql.flushes) == (99, 0, 0)

    ql.record("192.168.1.20", "n99.example", 1, AnswerKind.FORWARDED)
    wait_until(lambda: ql.written == 100, "the batch")
    assert [row[4] for row in raw_rows(ql.store)] == [f"n{i}.example" for i in range(100)]
    assert ql.flushes == 1
    assert ql.queued == 0


def test_the_writer_process_runs_under_sched_idle_or_else_at_nice_19(open_log):
    """Any waking task takes the writer's core at once: its transactions never hold DNS up."""
    import subprocess
    import sys

    from agent.querylog.writer import NICE

    ql = open_log()
    ql.start()
    wait_until(lambda: ql.writer_pid is not None, "the writer process")
    # What this kernel grants an unprivileged process, asked of a process of its own.
    granted = subprocess.run(
        [sys.executable, "-c", "from agent.querylog.writer import lower_priority as p; print(p())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pid = ql.writer_pid
    if granted == "idle":
        wait_until(lambda: os.sched_getscheduler(pid) == os.SCHED_IDLE, "SCHED_IDLE")
    else:
        assert granted == "nice"
        wait_until(lambda: os.getpriority(os.PRIO_PROCESS, pid) == NICE, "nice 19")
    ql.record("192.168.1.20", "idle.example", 1, AnswerKind.FORWARDED)
    ql.stop()
    assert ql.written == 1  # an idle core is enough for it


def test_a_new_writer_process_starts_at_that_priority_before_its_own_code_runs(
    open_log, tmp_path, monkeypatch
):
    # A writer restarted while DNS is busy: its interpreter's start-up and imports must not
    # compete with the DNS thread either. The stand-in child reports the scheduling it found
    # at its first line, long before it could have lowered it itself.
    import agent.querylog.log as log_module
    from agent.querylog.writer import NICE

    if os.sched_getscheduler(0) == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, 0) >= NICE:
        pytest.skip("the tests themselves run at the writer's priority: nothing to tell apart")
    probe = tmp_path / "probe.txt"
    monkeypatch.setenv("SAFENEST_TEST_PROBE_OUT", str(probe))
    monkeypatch.setattr(log_module, "CHILD_MODULE", "tests.querylog_probe_child")
    monkeypatch.setattr(log_module, "START_WAIT", 5.0)
    ql = open_log()
    ql.start()
    wait_until(lambda: probe.exists() and probe.read_text().endswith("\n"), "the stand-in's report")
    policy, nice = map(int, probe.read_text().split())
    assert policy == os.SCHED_IDLE or nice == NICE


def test_a_partial_batch_is_written_after_flush_seconds(open_log):
    ql = open_log(flush_entries=1000, flush_seconds=0.3)
    ql.start()
    for i in range(5):
        ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
    wait_until(lambda: ql.store.count_queries() == 5, "the timed flush")


def test_stop_writes_everything_still_queued(open_log):
    ql = open_log(flush_entries=10**6, flush_seconds=3600)
    ql.start()
    for i in range(5_000):  # some handed to the writer process already, some still queued
        ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
    ql.stop()
    assert ql.store.count_queries() == 5_000
    assert (ql.written, ql.queued, ql.counters()["dropped"]) == (5_000, 0, 0)
    assert ql.writer_pid is None


def test_a_full_queue_drops_new_entries_and_counts_them(open_log):
    ql = open_log(queue_entries=50)
    for i in range(80):
        ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
    assert (ql.queued, ql.dropped) == (50, 30)
    ql.stop()
    # The first 50 were kept; the drops were the newest.
    assert [row[4] for row in raw_rows(ql.store)] == [f"n{i}.example" for i in range(50)]
    assert ql.counters()["dropped"] == 30


def test_record_does_not_wait_for_a_writer_stalled_by_a_write_lock(open_log, tmp_path):
    ql = open_log(flush_entries=1, queue_entries=1000, busy_timeout=60)
    other = sqlite3.connect(tmp_path / "querylog.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. a long export by the admin page holding the lock
    try:
        ql.start()
        ql.record("192.168.1.20", "first.example", 1, AnswerKind.CACHED)
        # The writer process waits for the lock inside its first write: it reads no more, the
        # pipe to it fills, then the queue. Every call below still returns at once.
        for i in range(20_000):
            ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
        assert ql.written == 0
        assert ql.dropped > 0
        assert len(ql.queue) <= 1000
    finally:
        other.execute("COMMIT")
        other.close()
    # Every entry is either written or counted as dropped, none is lost unaccounted.
    wait_until(lambda: ql.written + ql.dropped == 20_001, "the writer to catch up")
    assert ql.store.count_queries() == ql.written
    assert ql.counters()["dropped"] == ql.dropped  # none was lost by a writer process
    names = [row[4] for row in raw_rows(ql.store)]
    assert names[0] == "first.example"
    assert names[1:] == [f"n{i}.example" for i in range(len(names) - 1)]  # the oldest kept


def test_a_killed_writer_is_replaced_and_what_it_held_counts_as_dropped(open_log):
    ql = open_log(flush_entries=10**6, flush_seconds=3600)  # the writer holds what it gets
    ql.start()
    wait_until(lambda: ql.writer_pid is not None, "the writer process")
    for i in range(10):
        ql.record("192.168.1.20", f"held{i}.example", 1, AnswerKind.CACHED)
    wait_until(lambda: len(ql.queue) == 0 and ql.queued == 10, "the entries handed over")
    first = ql.writer_pid
    os.kill(first, signal.SIGKILL)
    for i in range(5):  # the resolver goes on: queued for the next writer
        ql.record("192.168.1.20", f"later{i}.example", 1, AnswerKind.CACHED)
    wait_until(lambda: ql.writer_pid not in (None, first), "a new writer process")
    assert ql.restarts == 1
    assert ql.counters()["dropped"] == 10 and ql.dropped == 0  # lost with the writer
    ql.stop()
    assert [row[4] for row in raw_rows(ql.store)] == [f"later{i}.example" for i in range(5)]
    assert (ql.written, ql.queued) == (5, 0)


def test_record_never_waits_for_a_stopped_writer_and_stop_does_not_hang(open_log):
    ql = open_log(queue_entries=500, flush_seconds=0.05)
    ql.start()
    wait_until(lambda: ql.writer_pid is not None, "the writer process")
    pid = ql.writer_pid
    os.kill(pid, signal.SIGSTOP)  # alive but reading nothing: the pipe fills, then the queue
    try:
        for i in range(20_000):
            ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
        assert ql.dropped > 0
        assert len(ql.queue) <= 500
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: ql.written + ql.dropped == 20_000, "the writer to catch up")
    os.kill(pid, signal.SIGSTOP)
    ql.record("192.168.1.20", "last.example", 1, AnswerKind.CACHED)
    ql.stop(timeout=1)  # gives up on a writer that does not exit, and kills it
    assert ql.writer_pid is None
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), "the writer's end")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_writer_that_cannot_start_costs_dns_nothing_and_is_logged_once(
    open_log, monkeypatch, caplog
):
    import agent.querylog.log as querylog_log

    monkeypatch.setattr(querylog_log, "RESTART_DELAYS", (0.05,))
    monkeypatch.setattr(querylog_log, "CHILD_MODULE", "agent.querylog.no_such_module")
    ql = open_log(queue_entries=100, flush_seconds=0.05)
    with caplog.at_level(logging.INFO, logger="agent.querylog"):
        ql.start()
        for i in range(150):
            ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
        assert (ql.queued, ql.dropped) == (100, 50)  # they wait, within the bound
        wait_until(lambda: "cannot start the writer process" in caplog.text, "the error")
        time.sleep(0.5)  # several more tries
        monkeypatch.setattr(querylog_log, "CHILD_MODULE", "agent.querylog.child")
        wait_until(lambda: ql.written == 100, "a writer at last, and the entries")
    ql.stop()
    assert [row[4] for row in raw_rows(ql.store)] == [f"n{i}.example" for i in range(100)]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "running again" in caplog.text


def test_commands_and_entries_keep_their_order_through_the_writer(open_log):
    ql = open_log(flush_entries=10**6, flush_seconds=3600)  # one write at stop() at most...
    ql.start()
    ql.record("192.168.1.20", "before.example", 1, AnswerKind.CACHED, "", "kid")
    ql.record("192.168.1.30", "teen-before.example", 1, AnswerKind.CACHED, "", "teen")
    # ...but a command writes the entries queued before it first, and then runs.
    assert ql.set_privacy("counts_only", "kid", wait=False) is False
    ql.record("192.168.1.20", "counted.example", 1, AnswerKind.CACHED, "", "kid")
    assert ql.set_privacy("full", "kid", wait=False) is False
    ql.record("192.168.1.20", "after.example", 1, AnswerKind.CACHED, "", "kid")
    assert ql.delete_profile("teen", wait=False) is False
    ql.record("192.168.1.30", "teen-after.example", 1, AnswerKind.CACHED, "", "teen")
    ql.stop()
    # before.example was logged at full, then purged; counted.example was queued while the
    # level was counts_only, so it was only counted although `full` was in force when it
    # was written; teen-before.example went with the teen's history, teen-after stays.
    assert [(row[3], row[4]) for row in raw_rows(ql.store)] == [
        ("kid", "after.example"),
        ("teen", "teen-after.example"),
    ]
    counts = Counter()
    for (_, profile, _, _), n in rollup_counts(ql.store).items():
        counts[profile] += n
    assert counts == {"kid": 3, "teen": 1}
    assert "before.example" not in names_in_file(ql.store)
    assert ql.store.privacy_levels() == {"kid": "full"}


def test_a_failed_write_keeps_its_entries_and_retries(open_log, tmp_path):
    ql = open_log(flush_entries=1, flush_seconds=0.2, busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "querylog.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        ql.start()
        for i in range(5):
            ql.record("192.168.1.20", f"n{i}.example", 1, AnswerKind.CACHED)
        wait_until(lambda: ql.write_errors >= 2, "two failed writes")
        assert ql.written == 0
    finally:
        other.execute("COMMIT")
        other.close()
    wait_until(lambda: ql.written == 5, "the retry")
    assert [row[4] for row in raw_rows(ql.store)] == [f"n{i}.example" for i in range(5)]
    assert ql.dropped == 0


def test_wire_names_answer_kinds_and_bad_entries(open_log):
    ql = open_log()
    ql.record(
        "192.168.1.20",
        b"\x03www\x07example\x03com\x00",
        28,
        AnswerKind.BLOCKED,
        "category=adult min_age=18+",
        "kid",
        "tablet",
        "",
        0.25,
    )
    ql.record("192.168.1.20", "ok.example", "not a type", AnswerKind.CACHED)  # a caller's bug
    ql.stop()
    assert raw_rows(ql.store) == [
        (
            "2026-09-21T14:13:20.000Z",
            "192.168.1.20",
            "tablet",
            "kid",
            "www.example.com",
            28,
            "blocked",
            "category=adult min_age=18+",
            "",
            "0.250",
        )
    ]
    assert ql.rejected == 1


def test_open_takes_the_querylog_settings(tmp_path):
    settings = load_settings(
        environ={"SAFENEST_QUERYLOG_PRIVACY": "counts_only", "SAFENEST_QUERYLOG_RAW_DAYS": "3"}
    )
    ql = QueryLog.open(tmp_path, settings)
    try:
        assert (ql.privacy(), ql.raw_days, ql.rollup_days) == ("counts_only", 3, 90)
        assert (ql.flush_seconds, ql.flush_entries, ql.queue_entries) == (10.0, 1000, 20000)
        assert (tmp_path / "querylog.db").exists()
    finally:
        ql.stop()


# -- rollups and statistics ----------------------------------------------------------


def mixed_day(start: float) -> list[Entry]:
    """Three hours of two profiles, several kinds and categories, and 25 names in one key."""
    entries = []
    for i in range(600):
        t = start + i * 18  # 3 hours
        kind = ("forwarded", "cached", "blocked", "blocked", "rewritten")[i % 5]
        reason = {"blocked": "category=gambling" if i % 2 else "category=adult min_age=18+"}.get(
            kind, ""
        )
        entries.append(
            entry(t, f"site{(i // 5) % 25}.example", kind, ("minh", "lan")[i % 3 == 0], reason)
        )
    return entries


def test_rollups_match_the_raw_counts_and_keep_the_top_names(store):
    start = (hour_of(NOW) - 5) * HOUR
    entries = mixed_day(start)
    store.write(entries, entries)
    assert store.roll_up(hour_of(NOW)) == 5
    assert store.roll_up(hour_of(NOW)) == 0  # an hour is rolled up once

    raw = Counter()
    names = {}
    for time_, _, _, profile, name, _, kind, reason, _, _ in raw_rows(store):
        category = reason[9:].split(" ")[0] if reason.startswith("category=") else ""
        key = (time_[:13] + ":00:00.000Z", profile, kind, category)
        raw[key] += 1
        names.setdefault(key, Counter())[name] += 1
    assert rollup_counts(store) == raw
    assert sum(raw.values()) == 600

    for hour, profile, kind, category, _, top in store.export_rollups(0, 4e9):
        counted = names[(hour, profile, kind, category)]
        got = [(pair.rsplit(":", 1)[0], int(pair.rsplit(":", 1)[1])) for pair in top.split(" ")]
        # The most asked names with their true counts (which of equal counts is kept may vary).
        assert [n for _, n in got] == sorted(counted.values(), reverse=True)[:TOP_NAMES]
        assert all(counted[name] == n for name, n in got)
    longest = max(len(top.split(" ")) for *_, top in store.export_rollups(0, 4e9))
    assert longest == TOP_NAMES  # bounded although one key has 25 names


def test_the_writer_rolls_up_each_finished_hour(open_log):
    now = [NOW]
    ql = open_log(flush_entries=1, flush_seconds=0.1, clock=lambda: now[0])
    ql.start()
    ql.record("192.168.1.20", "late.example", 1, AnswerKind.BLOCKED, "category=adult")
    wait_until(lambda: ql.written == 1, "the first write")
    assert list(ql.store.export_rollups(0, 4e9))[0][5] == ""  # the hour is not over
    now[0] = (hour_of(NOW) + 1) * HOUR + 5
    ql.record("192.168.1.20", "next.example", 1, AnswerKind.CACHED)
    wait_until(lambda: ql.store.rolled_up_until() == hour_of(NOW) + 1, "the roll-up")
    assert list(ql.store.export_rollups(0, 4e9))[0][5] == "late.example:1"


def test_statistics_read_the_rollups_and_the_current_hour_only(store):
    current = hour_of(NOW)
    old = [entry((current - 24 * 8) * HOUR + 60, "old.example", "blocked")]  # outside both periods
    week = [entry((current - 30) * HOUR + i, "week.example", "blocked", "lan") for i in range(4)]
    day = [entry((current - 2) * HOUR + i, "day.example", "blocked") for i in range(3)]
    day += [entry((current - 2) * HOUR + 10 + i, "fine.example", "cached") for i in range(5)]
    store.write(old + week + day, old + week + day)
    store.roll_up(current)
    now_hour = [entry(current * HOUR + i, "now.example", "blocked") for i in range(2)]
    store.write(now_hour, now_hour)

    stats = store.statistics(NOW)
    assert (stats["24h"].queries, stats["24h"].blocked) == (10, 5)
    assert stats["24h"].top_blocked == [("day.example", 3), ("now.example", 2)]
    assert (stats["7d"].queries, stats["7d"].blocked) == (14, 9)
    assert stats["7d"].top_blocked == [("week.example", 4), ("day.example", 3), ("now.example", 2)]
    assert [(p.profile, p.queries, p.blocked) for p in stats["7d"].profiles] == [
        ("kid", 10, 5),
        ("lan", 4, 4),
    ]

    # Delete the raw rows of the finished hours: nothing changes, since they were not read.
    list(store.prune(current * HOUR, 0, 90))
    assert len(raw_rows(store)) == 2
    assert store.statistics(NOW) == stats


# -- retention ---------------------------------------------------------------------------


def test_retention_prunes_raw_rows_and_rollups_in_batches(store):
    old = [entry(NOW - 8 * 86_400 + i, f"old{i % 3}.example") for i in range(2 * BATCH + 500)]
    recent = [entry(NOW - 6 * 86_400, "recent.example"), entry(NOW - 60, "now.example")]
    ancient = [entry(NOW - 100 * 86_400, "ancient.example", "blocked")]
    store.write(ancient + old + recent, ancient + old + recent)
    store.roll_up(hour_of(NOW))
    assert "ancient.example" in names_in_file(store)

    batches = list(store.prune(NOW, raw_days=7, rollup_days=90))
    assert batches[:3] == [BATCH, BATCH, 501]  # 2,500 old rows and the ancient one
    assert [row[4] for row in raw_rows(store)] == ["recent.example", "now.example"]
    hours = {row[0] for row in store.export_rollups(0, 4e9)}
    assert min(hours) >= "2026-06"  # the ancient hour's counts are gone, the 8-day-old ones kept
    assert sum(rollup_counts(store).values()) == len(old) + len(recent)

    store.forget_unused()
    # Old names stay while an hour's top names still show them; the ancient one is gone.
    assert names_in_file(store) == {
        "old0.example",
        "old1.example",
        "old2.example",
        "recent.example",
        "now.example",
    }


def test_the_writer_prunes_when_it_starts(open_log, tmp_path):
    s = QueryLogStore.open(tmp_path / "querylog.db")
    rows = [entry(NOW - 9 * 86_400, "stale.example"), entry(NOW - 60, "fresh.example")]
    s.write(rows, rows)
    s.close()
    ql = open_log(raw_days=7)
    ql.start()
    wait_until(lambda: ql.store.count_queries() == 1, "the prune")
    assert [row[4] for row in raw_rows(ql.store)] == ["fresh.example"]
    wait_until(lambda: "stale.example" not in names_in_file(ql.store), "the unused name to go")


# -- privacy ---------------------------------------------------------------------------


KINDS = [AnswerKind.FORWARDED, AnswerKind.CACHED, AnswerKind.BLOCKED, "rewritten", AnswerKind.LOCAL]


def record_each_kind(ql: QueryLog, profile: str = "kid") -> None:
    for kind in KINDS:
        reason = "category=adult" if kind == AnswerKind.BLOCKED else ""
        ql.record("192.168.1.20", f"{kind}.{profile}.example", 1, kind, reason, profile)


@pytest.mark.parametrize(
    "level, logged",
    [
        ("full", ["forwarded", "cached", "blocked", "rewritten", "local"]),
        ("hide_allowed", ["blocked", "rewritten"]),
        ("counts_only", []),
        ("off", []),
    ],
)
def test_each_privacy_level_keeps_what_it_says(open_log, level, logged):
    ql = open_log(privacy=level)
    record_each_kind(ql)
    ql.stop()
    assert [row[6] for row in raw_rows(ql.store)] == logged
    counts = rollup_counts(ql.store)
    assert sum(counts.values()) == (0 if level == "off" else 5)
    assert names_in_file(ql.store) == {f"{k}.kid.example" for k in logged}


def test_a_profiles_own_level_wins_over_the_global_one(open_log):
    ql = open_log(privacy="counts_only")
    ql.set_privacy("full", "teacher")
    record_each_kind(ql, "kid")
    record_each_kind(ql, "teacher")
    ql.stop()
    assert {row[3] for row in raw_rows(ql.store)} == {"teacher"}
    assert len(raw_rows(ql.store)) == 5
    assert (ql.privacy("kid"), ql.privacy("teacher"), ql.privacy()) == (
        "counts_only",
        "full",
        "counts_only",
    )


def test_a_stricter_level_purges_what_it_would_not_have_kept(open_log):
    ql = open_log(privacy="full", flush_seconds=0.1)
    ql.start()
    record_each_kind(ql, "kid")
    record_each_kind(ql, "teen")
    wait_until(lambda: ql.written == 10, "the writes")
    ql.store.roll_up(hour_of(NOW) + 1)  # top names too, as after the hour

    assert ql.set_privacy("hide_allowed", "kid")
    assert sorted((r[3], r[6]) for r in raw_rows(ql.store, "kid")) == [
        ("kid", "blocked"),
        ("kid", "rewritten"),
    ]
    assert len(raw_rows(ql.store, "teen")) == 5
    tops = {(r[1], r[2]): r[5] for r in ql.store.export_rollups(0, 4e9)}
    assert tops[("kid", "cached")] == "" and tops[("kid", "blocked")] == "blocked.kid.example:1"
    assert "cached.kid.example" not in names_in_file(ql.store)

    assert ql.set_privacy("counts_only", "kid")
    assert raw_rows(ql.store, "kid") == []
    assert not any(name.endswith(".kid.example") for name in names_in_file(ql.store))
    assert (
        sum(n for (h, p, k, c), n in rollup_counts(ql.store).items() if p == "kid") == 5
    )  # counts stay

    assert ql.set_privacy("off", "kid")
    assert all(key[1] != "kid" for key in rollup_counts(ql.store))
    assert len(raw_rows(ql.store, "teen")) == 5  # the other profile untouched throughout

    # Looser again: nothing comes back, and new entries follow the new level.
    assert ql.set_privacy("full", "kid")
    record_each_kind(ql, "kid")
    wait_until(lambda: ql.written == 15, "the new writes")
    assert len(raw_rows(ql.store, "kid")) == 5


def test_a_stricter_global_level_spares_profiles_with_their_own(open_log):
    ql = open_log(privacy="full")
    ql.set_privacy("full", "teacher")
    record_each_kind(ql, "kid")
    record_each_kind(ql, "teacher")
    ql.stop()
    assert ql.set_privacy("counts_only")
    assert {row[3] for row in raw_rows(ql.store)} == {"teacher"}


def test_a_level_made_stricter_while_stopped_is_purged_at_start(open_log, tmp_path):
    ql = open_log(privacy="full")
    record_each_kind(ql)
    ql.stop()
    ql.store.close()
    again = open_log(privacy="hide_allowed")
    assert again.privacy() == "hide_allowed"  # in force for new entries at once
    again.start()  # the purge is the writer's first work
    wait_until(lambda: len(raw_rows(again.store)) == 2, "the purge")
    assert sorted(row[6] for row in raw_rows(again.store)) == ["blocked", "rewritten"]
    wait_until(lambda: again.store.privacy_levels() == {"*": "hide_allowed"}, "the level saved")


def test_an_unknown_level_is_refused(open_log):
    ql = open_log()
    with pytest.raises(ValueError, match="unknown privacy level 'secret'"):
        ql.set_privacy("secret", "kid")
    with pytest.raises(ValueError):
        ql.set_privacy(None)


# -- export and deletion ---------------------------------------------------------------------


def test_csv_export_escapes_commas_quotes_and_formulas(open_log):
    ql = open_log()
    hostile = b'\x07a,b"c\nd\x07example\x00'  # commas, quotes, a newline (escaped as \010)
    ql.record("192.168.1.20", hostile, 1, AnswerKind.BLOCKED, 'category=adult note="x, y"', "kid")
    ql.record("192.168.1.20", b"\x0a=cmd|calc!\x07example\x00", 16, AnswerKind.CACHED, "", "kid")
    ql.stop()
    start, end = day_bounds(date(2026, 9, 21), date(2026, 9, 21))
    out = io.StringIO()
    assert export_queries_csv(ql.store, out, start, end) == 2
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == [
        "time",
        "client",
        "device",
        "profile",
        "name",
        "qtype",
        "kind",
        "reason",
        "upstream",
        "latency_ms",
    ]
    assert rows[1][4] == 'a,b"c\\010d.example'
    assert rows[1][7] == 'category=adult note="x, y"'
    assert rows[2][4] == "'=cmd|calc!.example"  # shown as text by a spreadsheet, not run
    assert out.getvalue().count("\r\n") == 3

    out = io.StringIO()
    assert export_rollups_csv(ql.store, out, start, end) == 2
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["hour", "profile", "kind", "category", "queries", "top_names"]
    assert sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows[1:]) == [
        ("2026-09-21T14:00:00.000Z", "kid", "blocked", "adult", "1"),
        ("2026-09-21T14:00:00.000Z", "kid", "cached", "", "1"),
    ]


def test_export_covers_only_the_date_range_and_profile(store):
    rows = [
        entry(NOW - 86_400, "yesterday.example"),
        entry(NOW, "today.example"),
        entry(NOW, "lan.example", profile="lan"),
    ]
    store.write(rows, rows)
    start, end = day_bounds(date(2026, 9, 21), date(2026, 9, 21))
    assert [r[4] for r in store.export_queries(start, end)] == ["today.example", "lan.example"]
    assert [r[4] for r in store.export_queries(start, end, "lan")] == ["lan.example"]
    assert [r[1] for r in store.export_rollups(start, end, "kid")] == ["kid"]
    with pytest.raises(ValueError, match="ends"):
        day_bounds(date(2026, 9, 21), date(2026, 9, 20))


def test_deleting_a_profiles_history_leaves_the_others(open_log):
    ql = open_log(flush_seconds=0.1)
    ql.start()
    record_each_kind(ql, "kid")
    record_each_kind(ql, "teen")
    wait_until(lambda: ql.written == 10, "the writes")
    ql.store.roll_up(hour_of(NOW) + 1)
    assert ql.delete_profile("kid")
    assert {row[3] for row in raw_rows(ql.store)} == {"teen"}
    assert {key[1] for key in rollup_counts(ql.store)} == {"teen"}
    assert not any(name.endswith(".kid.example") for name in names_in_file(ql.store))
    assert [p.profile for p in ql.store.statistics(NOW)["24h"].profiles] == ["teen"]
    terms = {row[0] for row in ql.store.conn.execute("SELECT text FROM terms")}
    assert "kid" not in terms


def test_a_purged_name_is_nowhere_in_the_files_any_more(open_log, tmp_path):
    ql = open_log(flush_seconds=0.1)
    ql.start()
    ql.record("192.168.1.20", "secret-diary-site.example", 1, AnswerKind.CACHED, "", "kid")
    ql.record(
        "192.168.1.20", "homework-help.example", 1, AnswerKind.BLOCKED, "category=adult", "kid"
    )
    wait_until(lambda: ql.written == 2, "the writes")
    ql.store.roll_up(hour_of(NOW) + 1)

    def file_bytes() -> bytes:
        return b"".join(
            p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("querylog.db")
        )

    assert b"secret-diary-site" in file_bytes()
    assert ql.set_privacy("hide_allowed", "kid")
    assert b"secret-diary-site" not in file_bytes()  # not in free pages, not in the WAL
    assert b"homework-help" in file_bytes()  # a block is still logged at this level


# -- ids and caches -------------------------------------------------------------------------


def test_ids_keep_the_order_of_writing_when_the_clock_steps_back(store):
    rows = [
        entry(NOW, "a.example"),
        entry(NOW - 0.5, "b.example"),  # queued a little late: keeps its place
        entry(NOW - 0.5, "c.example"),
        entry(NOW - 3600, "d.example"),  # the clock set back an hour: its true time
    ]
    store.write(rows, rows)
    exported = raw_rows(store)
    assert [r[4] for r in exported] == ["d.example", "a.example", "b.example", "c.example"]
    assert exported[0][0] == "2026-09-21T13:13:20.000Z"


def test_a_colliding_id_is_moved_not_lost(tmp_path):
    first = QueryLogStore.open(tmp_path / "querylog.db")
    second = QueryLogStore.open(tmp_path / "querylog.db")  # e.g. a restart in the same millisecond
    try:
        first.write([entry(NOW, "one.example")], [entry(NOW, "one.example")])
        second.write([entry(NOW, "two.example")], [entry(NOW, "two.example")])
        assert [r[4] for r in raw_rows(first)] == ["one.example", "two.example"]
    finally:
        first.close()
        second.close()


def test_names_deleted_by_another_connection_are_not_reused_from_the_cache(tmp_path):
    writer = QueryLogStore.open(tmp_path / "querylog.db")
    admin = QueryLogStore.open(tmp_path / "querylog.db")  # the admin page, another connection
    try:
        rows = [entry(NOW, "x.example")]
        writer.write(rows, rows)
        list(admin.delete_profile("kid"))
        assert names_in_file(admin) == set()
        rows = [entry(NOW + 1, "x.example")]
        writer.write(rows, rows)
        assert [(r[3], r[4]) for r in raw_rows(admin)] == [("kid", "x.example")]
    finally:
        writer.close()
        admin.close()


# -- the resolver's prebuilt entries and the writer's remembered answers -----------------


def test_prebuilt_answers_shared_by_many_entries_are_logged_and_counted(open_log):
    ql = open_log()
    blocked = ("kid", b"\x03bet\x07example\x00", 1, AnswerKind.BLOCKED, "category=gambling")
    cached = ("kid", b"\x04news\x07example\x00", 28, AnswerKind.CACHED, "cache")
    for i in range(300):  # as the resolver's replay path appends them, sharing one tuple
        ql.queue.append(
            (NOW + i / 1000, f"192.168.1.{20 + i % 2}", "tablet", (blocked, cached)[i % 3 > 0])
        )
    ql.record(
        "192.168.1.30",
        b"\x04news\x07example\x00",
        28,
        AnswerKind.FORWARDED,
        "upstream 1.1.1.1:53",
        "kid",
        "",
        "1.1.1.1:53",
        12.5,
    )
    ql.stop()
    rows = raw_rows(ql.store)
    assert len(rows) == 301 and ql.written == 301
    assert rows[0] == (
        "2026-09-21T14:13:20.000Z",
        "192.168.1.20",
        "tablet",
        "kid",
        "bet.example",
        1,
        "blocked",
        "category=gambling",
        "",
        "0.000",
    )
    assert Counter(r[4] for r in rows) == {"bet.example": 100, "news.example": 201}
    assert rows[-1][1:] == (
        "192.168.1.30",
        "",
        "kid",
        "news.example",
        28,
        "forwarded",
        "upstream 1.1.1.1:53",
        "1.1.1.1:53",
        "12.500",
    )
    assert rollup_counts(ql.store) == {
        ("2026-09-21T14:00:00.000Z", "kid", "blocked", "gambling"): 100,
        ("2026-09-21T14:00:00.000Z", "kid", "cached", ""): 200,
        ("2026-09-21T14:00:00.000Z", "kid", "forwarded", ""): 1,
    }
    # Absent texts are stored as 0, not NULL (binding None is slow): read back as "".
    assert (
        ql.store.conn.execute("SELECT count(*) FROM queries WHERE upstream IS NULL").fetchone()[0]
        == 0
    )


def test_a_batch_across_an_hour_counts_each_hour(store):
    end = (hour_of(NOW) + 1) * HOUR
    rows = [entry(end - 2 + i, f"n{i}.example", "cached") for i in range(4)]
    store.write(rows, rows)
    assert sorted(rollup_counts(store).values()) == [2, 2]
    assert len({key[0] for key in rollup_counts(store)}) == 2


def test_bad_prebuilt_entries_are_rejected_and_the_rest_written(open_log):
    ql = open_log()
    good = ("kid", b"\x02ok\x07example\x00", 1, AnswerKind.CACHED, "")
    for bad in [
        (NOW, "192.168.1.20", "", ("kid", b"\x02ok\x00", 1)),  # a short answer
        (NOW, None, "", good),  # no client
        ("soon", "192.168.1.20", "", good),  # not a time
        (float("inf"), "192.168.1.20", "", good),
        (NOW, "192.168.1.20", "", ["kid", b"\x00", 1, "cached", ""]),  # unhashable
        (NOW, "192.168.1.20", "", *good, "1.1.1.1:53"),  # record()'s shape, one short
    ]:
        ql.queue.append(bad)
    ql.queue.append((NOW, "192.168.1.20", "", good))
    ql.stop()
    assert (ql.rejected, ql.written) == (6, 1)
    assert [r[4] for r in raw_rows(ql.store)] == ["ok.example"]
    assert sum(rollup_counts(ql.store).values()) == 1


def test_a_stricter_level_applies_to_answers_the_writer_remembers(open_log):
    ql = open_log(flush_seconds=0.05)
    ql.start()
    answer = ("kid", b"\x06diary1\x07example\x00", 1, AnswerKind.CACHED, "")
    ql.queue.append((NOW, "192.168.1.20", "", answer))
    wait_until(lambda: ql.written == 1, "the first write")
    assert ql.set_privacy("counts_only", "kid")
    ql.queue.append((NOW + 1, "192.168.1.20", "", answer))  # the same prebuilt answer again
    wait_until(lambda: ql.written == 2, "the second write")
    ql.stop()
    assert raw_rows(ql.store) == []
    assert sum(rollup_counts(ql.store).values()) == 2


def test_a_new_file_has_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    store = QueryLogStore.open(tmp_path / "new.db")
    try:
        assert store.conn.execute("PRAGMA page_size").fetchone()[0] == 1024
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
    old = sqlite3.connect(tmp_path / "old.db")  # a file made before 1 KiB pages
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.close()
    store = QueryLogStore.open(tmp_path / "old.db")
    try:
        assert store.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        rows = [entry(NOW, "kept.example")]
        store.write(rows, rows)
        assert [r[4] for r in raw_rows(store)] == ["kept.example"]
    finally:
        store.close()


def test_remembered_answers_are_bounded_when_nothing_is_kept(store, monkeypatch):
    # counts_only keeps no row, so no answer key is used up: the memory of answers must still
    # be bounded, or a long run would remember every name ever asked.
    import agent.storage.querylog as ql

    monkeypatch.setattr(ql, "ANSWERS", 10)
    base = time.time()
    for batch in range(5):
        items = [entry(base + i, name=f"n{batch}-{i}.example") for i in range(10)]
        store.write_items(items, lambda profile, kind: False)
        assert len(store._answers) <= 20
    assert store.statistics(now=base + 60)["24h"].queries == 50  # every entry still counted


def test_a_batch_of_new_names_stores_each_once_and_every_row_points_at_its_own(store):
    # The names of a batch's new answers are stored and looked up by SQLite in two
    # statements: the same name in several answers (A and AAAA, blocked and not, a wire name
    # and its text) must still be one row of names, and each query row must get its own name.
    base = time.time()
    wire = b"\x04wire\x07example\x00"
    items = []
    for i in range(200):
        name = f"n{i}.example"
        items.append(entry(base + i / 1000, name, qtype=1))
        items.append(entry(base + i / 1000, name, qtype=28, kind="cached"))
    items.append(Entry(base + 1, "192.168.1.20", "", "kid", wire, 1, "forwarded", "", "", 1.0))
    items.append(entry(base + 1, "wire.example", qtype=28))
    items.append(entry(base + 1, "", qtype=1))  # no name: stored as none
    assert store.write_items(items, lambda profile, kind: True) == (len(items), 0)
    rows = raw_rows(store)
    assert [r[4] for r in rows] == [
        *(f"n{i}.example" for i in range(200) for _ in range(2)),
        "wire.example",
        "wire.example",
        "",
    ]
    names = [row[0] for row in store.conn.execute("SELECT name FROM names")]
    assert sorted(names) == sorted({*(f"n{i}.example" for i in range(200)), "wire.example"})


def test_beyond_answers_the_older_half_is_forgotten_and_the_newer_half_still_used(
    store, monkeypatch
):
    import agent.storage.querylog as ql

    monkeypatch.setattr(ql, "ANSWERS", 10)
    base = time.time()
    keep = lambda profile, kind: True  # noqa: E731
    first = [entry(base + i / 1000, f"a{i}.example") for i in range(12)]  # 12 answers > 10
    store.write_items(first, keep)
    looked_up = []
    answer = store._answer
    monkeypatch.setattr(store, "_answer", lambda *a: looked_up.append(a[0][1]) or answer(*a))
    # The next write keeps the 5 newest answers (a7 to a11) and the rows of their keys.
    again = [entry(base + 1 + i / 1000, f"a{i}.example") for i in (11, 7, 0, 6)]
    store.write_items(again, keep)
    assert looked_up == ["a0.example", "a6.example"]  # the newer half was remembered
    assert [r[4] for r in raw_rows(store)][12:] == [
        "a11.example",
        "a7.example",
        "a0.example",
        "a6.example",
    ]
    kept_keys = sorted(info[1] for info in store._answers.values())
    in_table = [r[0] for r in store.conn.execute("SELECT id FROM temp.answer_columns ORDER BY id")]
    assert in_table == kept_keys  # the forgotten answers' rows are gone with them


def test_the_wal_holds_many_commits_before_they_are_copied_into_the_file(store, tmp_path):
    # A checkpoint copies a page once however many commits rewrote it: fewer bytes on the card
    # than SQLite's default of one checkpoint per 1,000 pages.
    from agent.storage.querylog import PAGE_SIZE, WAL_AUTOCHECKPOINT

    db, wal = tmp_path / "querylog.db", tmp_path / "querylog.db-wal"
    size_before = db.stat().st_size
    base = time.time()
    keep = lambda profile, kind: True  # noqa: E731
    frames = batches = 0
    while frames <= 1_500 and batches < 20:  # past SQLite's default of 1,000 pages
        items = [entry(base + batches + i / 10_000, f"n{batches}-{i}.ex") for i in range(2_000)]
        store.write_items(items, keep)
        batches += 1
        frames = (wal.stat().st_size - 32) // (PAGE_SIZE + 24)
    assert 1_500 < frames < WAL_AUTOCHECKPOINT
    assert db.stat().st_size == size_before  # nothing copied yet
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.stat().st_size > size_before and len(raw_rows(store)) == batches * 2_000
