"""A power cut in the middle of writes: SIGKILL a process that logs continuously.

The child records q<N>.example in order, with small batches written every 20 ms, and prints
how many entries its writer has committed. The parent kills it with SIGKILL after several
commits, three times over the same file. Each time the file must pass `PRAGMA
integrity_check`, every entry reported committed must be there, what is there must be the
first K entries in order (a batch is all or nothing) and the rollups must count exactly them.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time
from agent.querylog import QueryLog, QueryLogStore
from agent.model import AnswerKind

path, first = sys.argv[1], int(sys.argv[2])
# A queue that never fills: a dropped entry would be a gap that is not the crash's doing.
ql = QueryLog(QueryLogStore.open(path), flush_entries=200, flush_seconds=0.02, queue_entries=10**7)
ql.start()
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


def run_and_kill(path: Path, first: int) -> int:
    """Start a logging child, SIGKILL it after several commits; returns the last count it reported."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(first)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    committed = first
    seen = 0
    try:
        for line in child.stdout:
            committed = int(line)
            seen += 1
            if seen >= 12 and committed > first:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return committed


def test_sigkill_mid_write_loses_only_the_unwritten_entries(tmp_path):
    path = tmp_path / "querylog.db"
    stored = 0
    for _ in range(3):
        committed = run_and_kill(path, stored)
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT n.name FROM queries q JOIN names n ON n.id = q.name ORDER BY q.id"
                )
            ]
            counted = conn.execute("SELECT sum(queries) FROM rollups").fetchone()[0]
        finally:
            conn.close()
        assert len(names) >= committed  # nothing that was committed is lost
        assert names == [f"q{i}.example" for i in range(len(names))]  # no gap, no half batch
        assert counted == len(names)  # counts and raw rows were committed together
        stored = len(names)
    assert stored > 0
