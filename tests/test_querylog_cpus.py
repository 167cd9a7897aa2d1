"""querylog_writer_cpus: the writer process placed on CPUs of its own, read back from the kernel.

Each test starts the real writer process and asks the kernel (sched_getaffinity) where it may
run. The parent's own CPUs are narrowed first, in a thread of its own, as systemd's
CPUAffinity= or taskset would narrow SafeNest's: the writer inherits them unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from agent.model import AnswerKind
from agent.querylog import QueryLog, QueryLogStore
from agent.settings import SettingsError, load_settings
from tests.dnsfakes import wait_until

CPUS = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to tell them apart")


@pytest.mark.parametrize(
    "raw, cpus",
    [
        ("", []),
        ("3", [3]),
        ("0,2", [0, 2]),
        ("1-3", [1, 2, 3]),
        ("2 0-1", [0, 1, 2]),
    ],
)
def test_the_setting_reads_linux_cpu_lists(raw, cpus):
    settings = load_settings(environ={"SAFENEST_QUERYLOG_WRITER_CPUS": raw})
    assert settings.querylog_writer_cpus == cpus


def test_the_setting_takes_a_toml_list_or_number(tmp_path):
    config = tmp_path / "safenest.toml"
    config.write_text("querylog_writer_cpus = [3, 1]\n")
    assert load_settings(config, environ={}).querylog_writer_cpus == [1, 3]
    config.write_text("querylog_writer_cpus = 2\n")
    assert load_settings(config, environ={}).querylog_writer_cpus == [2]


@pytest.mark.parametrize("raw", ["a", "3-1", "-1", "1-", "²", "1.5", "12345"])
def test_a_bad_cpu_list_is_refused_with_the_settings_name(raw):
    with pytest.raises(SettingsError, match="querylog_writer_cpus"):
        load_settings(environ={"SAFENEST_QUERYLOG_WRITER_CPUS": raw})


def writer_cpus_when_started_from(
    parent_cpus: set[int], tmp_path, meanwhile=None, **options
) -> set[int]:
    """Start a QueryLog from a thread pinned to `parent_cpus` (its supervisor thread, which
    spawns the writer, inherits them), run `meanwhile(ql)`, and return the CPUs the kernel
    lets the writer use."""
    ql = QueryLog(QueryLogStore.open(tmp_path / "querylog.db"), **options)
    started = threading.Event()

    def start() -> None:
        os.sched_setaffinity(0, parent_cpus)  # this thread only (Linux: 0 is the caller)
        ql.start()
        started.set()

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(30)
    try:
        assert started.is_set()
        wait_until(lambda: ql.writer_pid is not None, "the writer process")
        if meanwhile is not None:
            meanwhile(ql)
        cpus = os.sched_getaffinity(ql.writer_pid)
        ql.record("192.168.1.20", "placed.example", 1, AnswerKind.FORWARDED)
    finally:
        ql.stop()
    assert ql.written == 1  # wherever it runs, it writes
    return cpus


@two_cpus
def test_by_default_the_writer_runs_where_safenest_may(tmp_path):
    assert writer_cpus_when_started_from({CPUS[-1]}, tmp_path) == {CPUS[-1]}


@two_cpus
def test_the_writer_moves_to_the_cpus_it_is_given(tmp_path):
    got = writer_cpus_when_started_from({CPUS[-1]}, tmp_path, writer_cpus=[CPUS[0]])
    assert got == {CPUS[0]}


def test_cpus_this_machine_lacks_leave_the_writer_where_it_was_and_warn_once(tmp_path, caplog):
    missing = (os.cpu_count() or 1) + 7
    caplog.set_level(logging.WARNING, logger="agent.querylog")
    restarted: list[int] = []

    def kill_and_wait(ql: QueryLog) -> None:
        first = ql.writer_pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: ql.writer_pid not in (None, first), "a new writer process")
        restarted.append(ql.writer_pid)

    got = writer_cpus_when_started_from(
        {CPUS[0]}, tmp_path, writer_cpus=[missing], meanwhile=kill_and_wait
    )
    assert got == {CPUS[0]} and restarted
    warnings = [r.getMessage() for r in caplog.records if "querylog_writer_cpus" in r.getMessage()]
    assert len(warnings) == 1 and f"no CPU {missing}" in warnings[0]


def test_open_takes_the_writer_cpus_setting(tmp_path):
    settings = load_settings(environ={"SAFENEST_QUERYLOG_WRITER_CPUS": "0-1"})
    ql = QueryLog.open(tmp_path, settings)
    try:
        assert ql.writer_cpus == {0, 1}
    finally:
        ql.stop()
