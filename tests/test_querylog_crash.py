"""Crashes and power cuts: SIGKILL the process that logs, SIGKILL its writer process, SIGTERM
`safenest run`.

1. **The logging process killed.** A child records q<N>.example in order, with small batches
   written every 20 ms by its writer process, and prints how many entries were committed and
   the writer's pid. The test kills the logging process with SIGKILL after several commits,
   three times over the same file. Each time the writer process must exit by itself (its input
   ended) after writing what it held, and then the file must pass `PRAGMA integrity_check`,
   every entry reported committed must be there, what is there must be the first K entries in
   order (a batch is all or nothing, and the writer wrote everything it was handed) and the
   rollups must count exactly them.
2. **The writer process killed**, three times, while this process keeps logging: the file
   stays intact, a new writer is started each time, and every entry is either written or
   counted as dropped (the ones the dead writer held).
3. **`safenest run` stopped by SIGTERM** writes what its writer process held, and leaves no
   process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from agent.model import AnswerKind
from agent.querylog import QueryLog, QueryLogStore
from tests.dnsfakes import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time
from agent.querylog import QueryLog, QueryLogStore
from agent.model import AnswerKind

path, first = sys.argv[1], int(sys.argv[2])
# A queue that never fills: a dropped entry would be a gap that is not the crash's doing.
ql = QueryLog(QueryLogStore.open(path), flush_entries=200, flush_seconds=0.02, queue_entries=10**7)
ql.start()
while ql.writer_pid is None:
    time.sleep(0.01)
print("writer", ql.writer_pid, flush=True)
reported = -1
i = first
while True:
    for _ in range(50):
        kind = AnswerKind.BLOCKED if i % 4 == 0 else AnswerKind.CACHED
        ql.record("192.168.1.20", f"q{i}.example", 1, kind, "category=adult" if i % 4 == 0 else "", "kid")
        i += 1
    if ql.written != reported:
        reported = ql.written
        print(first + reported, flush=True)
    time.sleep(0.005)  # about 10,000 entries a second
"""


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"process {pid} still runs {timeout:g} s after its parent died")
        time.sleep(0.02)


def writers_of(pid: int) -> list[int]:
    """The query log writer processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"agent.querylog.child" in cmdline:
                found.append(int(entry))
    return found


def run_and_kill(path: Path, first: int) -> tuple[int, int]:
    """Start a logging child, SIGKILL it after several commits; returns the last count it
    reported and its writer process's pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(first)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    committed = first
    writer = 0
    seen = 0
    try:
        for line in child.stdout:
            if line.startswith("writer "):
                writer = int(line.split()[1])
                continue
            committed = int(line)
            seen += 1
            if seen >= 12 and committed > first:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert writer > 0
    return committed, writer


def read_back(path: Path) -> tuple[list[str], int]:
    """The logged names in id order and the sum of the rollups, after an integrity check."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        names = [
            row[0]
            for row in conn.execute(
                "SELECT n.name FROM queries q JOIN names n ON n.id = q.name ORDER BY q.id"
            )
        ]
        counted = conn.execute("SELECT coalesce(sum(queries), 0) FROM rollups").fetchone()[0]
    finally:
        conn.close()
    return names, counted


def test_sigkill_of_the_logging_process_loses_nothing_it_handed_over(tmp_path):
    path = tmp_path / "querylog.db"
    stored = 0
    for _ in range(3):
        committed, writer = run_and_kill(path, stored)
        # The writer saw its input end: it writes what it was handed, and exits.
        wait_gone(writer)
        names, counted = read_back(path)
        assert len(names) >= committed  # nothing that was committed is lost
        assert names == [f"q{i}.example" for i in range(len(names))]  # no gap, no half batch
        assert counted == len(names)  # counts and raw rows were committed together
        stored = len(names)
    assert stored > 0


def test_sigkill_of_the_writer_process_mid_write(tmp_path):
    path = tmp_path / "querylog.db"
    ql = QueryLog(
        QueryLogStore.open(path), flush_entries=200, flush_seconds=0.02, queue_entries=10**7
    )
    ql.start()
    recorded = 0

    def record(n: int) -> None:
        nonlocal recorded
        for _ in range(n):
            i = recorded
            kind = AnswerKind.BLOCKED if i % 4 == 0 else AnswerKind.CACHED
            reason = "category=adult" if i % 4 == 0 else ""
            ql.record("192.168.1.20", f"q{i}.example", 1, kind, reason, "kid")
            recorded += 1

    try:
        for _ in range(3):
            wait_until(lambda: ql.writer_pid is not None, "a writer process")
            pid = ql.writer_pid
            written = ql.written
            while ql.written < written + 1000:  # several commits, and more on the way
                record(50)
                time.sleep(0.005)
            record(500)
            os.kill(pid, signal.SIGKILL)
            record(500)  # the resolver goes on meanwhile: queued for the next writer
            wait_until(lambda p=pid: ql.writer_pid not in (None, p), "a new writer process")
            assert not running(pid)
        assert ql.restarts == 3
    finally:
        ql.stop()
    counters = ql.counters()
    names, counted = read_back(path)
    # Every entry recorded was written or counted as dropped (held by a writer that died).
    assert counters["written"] + counters["dropped"] == recorded
    assert counters["dropped"] == ql.lost  # the queue itself never dropped
    # A writer killed after a commit and before saying so: its entries are counted as dropped
    # although written; never the reverse.
    assert counters["written"] <= len(names) <= recorded
    assert counted == len(names)
    numbers = [int(name[1:].split(".")[0]) for name in names]
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert numbers[-1] == recorded - 1  # the last ones, recorded before stop(), are there


def test_sigterm_of_safenest_run_writes_what_its_writer_held(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "gambling.txt").write_text("casino.test\nfb88.test\n")
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFENEST_")}
    env |= {
        "SAFENEST_BLOCKLISTS_DIR": str(lists),
        "SAFENEST_QUERYLOG_FLUSH_SECONDS": "3600",  # held by the writer until it is stopped
    }
    script = Path(sys.executable).with_name("safenest")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
    err = tmp_path / "safenest.err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                *argv,
                "run",
                "--dns",
                f"127.0.0.1:{port}",
                "--upstream",
                "127.0.0.1:9",
                "--data",
                str(data),
                "--admin",
                "off",
            ],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, err.read_text()
            try:
                query = dns.message.make_query("casino.test", "A")
                dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
                break
            except (OSError, dns.exception.Timeout):
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.05)
        for name in ("fb88.test", "www.casino.test"):
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)
        wait_until(lambda: writers_of(proc.pid), "the writer process")
        writers = writers_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in writers:
        assert not running(pid)
    store = QueryLogStore.open(data / "querylog.db")
    try:
        names = [row[4] for row in store.export_queries(0, time.time() + 60)]
    finally:
        store.close()
    # (the first name may have been asked more than once while SafeNest was starting)
    assert set(names) == {"casino.test", "fb88.test", "www.casino.test"}
    assert names[-2:] == ["fb88.test", "www.casino.test"]
    assert "Traceback" not in err.read_text()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))  # given back
