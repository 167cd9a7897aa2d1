"""`safenest log export / delete-profile / stats` through click's CliRunner, once through the
installed script, on a real DATA/querylog.db filled through QueryLogStore and QueryLog."""

from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.querylog import QueryLog, QueryLogStore
from agent.querylog import cli as querylog_cli
from agent.storage.querylog import QUERY_COLUMNS, ROLLUP_COLUMNS, Entry, hour_of

SCRIPT = Path(sys.executable).with_name("safenest")
FOREVER = 4e9  # 2096: after every entry of these tests


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# 2026-11-01 in Asia/Ho_Chi_Minh (UTC+7) is [2026-10-31T17:00Z, 2026-11-01T17:00Z).
NOV1_START = utc("2026-10-31T17:00:00")
NOV1_END = utc("2026-11-01T17:00:00")
NASTY = 'a,b"c.example'  # a comma and a quote: CSV quoting must keep it whole
FORMULA = "=hyperlink(evil)"  # a spreadsheet must show it, not run it


def entry(t: float, name: str, profile: str = "lan", kind: str = "forwarded", reason: str = ""):
    return Entry(t, "192.168.1.31", "lan-phone", profile, name, 1, kind, reason, "", 1.5)


def fill(data: Path, entries: list[Entry]) -> None:
    store = QueryLogStore.open(data / "querylog.db")
    try:
        store.write(entries, entries)
    finally:
        store.close()


def read_back(data: Path, profile: str | None = None, rollups: bool = False) -> list[tuple]:
    store = QueryLogStore.open(data / "querylog.db")
    try:
        read = store.export_rollups if rollups else store.export_queries
        return list(read(0, FOREVER, profile))
    finally:
        store.close()


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFENEST_CONFIG", raising=False)
    monkeypatch.delenv("SAFENEST_DATA", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture
def november(data):
    """Entries on both sides of 2026-11-01's local boundaries, one nasty name, one formula."""
    fill(
        data,
        [
            entry(NOV1_START - 0.002, "before.example"),
            entry(NOV1_START, "first.example"),
            entry(NOV1_START + 3600, NASTY, kind="blocked", reason="category=gambling min_age=18+"),
            entry(NOV1_START + 7200, FORMULA, profile="minh"),
            entry(NOV1_END - 0.002, "last.example"),
            entry(NOV1_END, "after.example"),
        ],
    )
    return data


def test_export_is_the_local_day_with_its_boundaries(november):
    result = run(
        "log", "export", "--from", "2026-11-01", "--to", "2026-11-01", "--data", str(november)
    )
    assert result.exit_code == 0, result.output
    rows = rows_of(result.stdout)
    assert tuple(rows[0]) == QUERY_COLUMNS
    names = [row[4] for row in rows[1:]]
    assert names == ["first.example", NASTY, "'" + FORMULA, "last.example"]
    first = rows[1]
    assert first[0] == "2026-10-31T17:00:00.000Z"
    assert first[1:4] == ["192.168.1.31", "lan-phone", "lan"]
    blocked = rows[2]
    assert blocked[6:8] == ["blocked", "category=gambling min_age=18+"]
    assert "exported 4 log entries" in result.stderr


def test_the_csv_quotes_a_comma_and_a_quote(november):
    result = run(
        "log", "export", "--from", "2026-11-01", "--to", "2026-11-01", "--data", str(november)
    )
    assert '"a,b""c.example"' in result.stdout
    assert b"\r\n" in result.stdout_bytes  # RFC 4180 line ends


def test_full_times_without_an_offset_are_local_and_the_end_is_excluded(november):
    result = run(
        "log", "export", "--from", "2026-11-01T01:00", "--to", "2026-11-01T02:00",
        "--data", str(november),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # 01:00 local is 18:00Z: only the name at NOV1_START + 3600; 02:00 local is excluded.
    assert [row[4] for row in rows_of(result.stdout)[1:]] == [NASTY]
    with_offset = run(
        "log", "export", "--from", "2026-10-31T17:00:00Z", "--to", "2026-10-31T18:00:00+00:00",
        "--data", str(november),
    )  # fmt: skip
    assert [row[4] for row in rows_of(with_offset.stdout)[1:]] == ["first.example"]


def test_export_of_several_days_and_one_profile(november):
    result = run(
        "log", "export", "--from", "2026-10-31", "--to", "2026-11-02", "--profile", "minh",
        "--data", str(november),
    )  # fmt: skip
    assert [row[4] for row in rows_of(result.stdout)[1:]] == ["'" + FORMULA]
    everything = run(
        "log", "export", "--from", "2026-10-31", "--to", "2026-11-02", "--data", str(november)
    )
    assert len(rows_of(everything.stdout)) == 1 + 6


def test_rollups_export_has_counts_and_top_names(data):
    hour = NOV1_START + 3 * 3600
    fill(
        data,
        [
            entry(hour + i, "tiktok.com", kind="blocked", reason="category=social min_age=16+")
            for i in range(3)
        ]
        + [entry(hour + 10, "vnexpress.net")]
        + [entry(NOV1_END + 60, "later.example")],
    )
    store = QueryLogStore.open(data / "querylog.db")
    store.roll_up(hour_of(NOV1_END) + 2)
    store.close()
    result = run(
        "log", "export", "--rollups", "--from", "2026-11-01", "--to", "2026-11-01",
        "--data", str(data),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = rows_of(result.stdout)
    assert tuple(rows[0]) == ROLLUP_COLUMNS
    assert rows[1:] == [
        ["2026-10-31T20:00:00.000Z", "lan", "forwarded", "", "1", "vnexpress.net:1"],
        ["2026-10-31T20:00:00.000Z", "lan", "blocked", "social", "3", "tiktok.com:3"],
    ]


def test_export_to_a_file_is_private_and_replaces_it_whole(november, tmp_path):
    out = tmp_path / "report.csv"
    out.write_text("old report", encoding="utf-8")
    os.chmod(out, 0o644)
    result = run(
        "log", "export", "--from", "2026-11-01", "--to", "2026-11-01", "--output", str(out),
        "--data", str(november),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_bytes().decode("utf-8")
    assert [row[4] for row in rows_of(text)[1:]] == [
        "first.example",
        NASTY,
        "'" + FORMULA,
        "last.example",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "report.csv"]


def test_export_into_a_missing_folder_is_a_clear_error(november, tmp_path):
    result = run(
        "log", "export", "--from", "2026-11-01", "--to", "2026-11-01",
        "--output", str(tmp_path / "no" / "report.csv"), "--data", str(november),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot write" in result.stderr


@pytest.mark.parametrize(
    "first, last, message",
    [
        ("2026-13-01", "2026-11-01", "'2026-13-01' is not a date"),
        ("yesterday", "2026-11-01", "'yesterday' is not a date"),
        ("2026-11-01", "20261102", "'20261102' is not a date"),
        ("2026-11-01", "2026-11-01T25:00", "'2026-11-01T25:00' is not a date"),
        ("2026-11-02", "2026-11-01", "before it starts"),
        ("2026-11-01T10:00", "2026-11-01T10:00", "before it starts"),
    ],
)
def test_bad_dates_are_clear_errors(november, first, last, message):
    result = run("log", "export", "--from", first, "--to", last, "--data", str(november))
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_missing_database_is_a_clear_error_and_is_not_created(data):
    for args in (
        ("export", "--from", "2026-11-01", "--to", "2026-11-01"),
        ("delete-profile", "lan", "--yes"),
        ("stats",),
    ):
        result = run("log", *args, "--data", str(data))
        assert result.exit_code == 1, args
        assert f"no query log at {data / 'querylog.db'}" in result.stderr
    assert list(data.iterdir()) == []


def test_a_file_that_is_not_a_query_log_is_a_clear_error(data):
    (data / "querylog.db").write_bytes(b"this is not SQLite" * 100)
    result = run("log", "stats", "--data", str(data))
    assert result.exit_code == 1
    assert "cannot read the query log" in result.stderr


def test_delete_profile_removes_only_that_profile(november):
    store = QueryLogStore.open(november / "querylog.db")
    store.roll_up(hour_of(NOV1_END) + 2)
    store.close()
    assert read_back(november, "minh") and read_back(november, "minh", rollups=True)
    lan_before = read_back(november, "lan")
    lan_rollups = read_back(november, "lan", rollups=True)

    result = run("log", "delete-profile", "minh", "--yes", "--data", str(november))
    assert result.exit_code == 0, result.output
    assert "profile 'minh': 1 log entries, 1 hourly counts" in result.stdout

    assert read_back(november, "minh") == []
    assert read_back(november, "minh", rollups=True) == []
    assert read_back(november, "lan") == lan_before
    assert read_back(november, "lan", rollups=True) == lan_rollups
    assert (
        FORMULA.encode() not in (november / "querylog.db").read_bytes()
    )  # zeroed, not just unlinked


def test_delete_profile_asks_first(november):
    refused = run("log", "delete-profile", "lan", "--data", str(november), input="n\n")
    assert refused.exit_code == 1
    assert "Delete profile 'lan''s 5 log entries" in refused.output
    assert len(read_back(november, "lan")) == 5
    accepted = run("log", "delete-profile", "lan", "--data", str(november), input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert read_back(november, "lan") == []
    assert len(read_back(november, "minh")) == 1


def test_delete_of_an_unknown_profile_deletes_nothing(november):
    result = run("log", "delete-profile", "nobody", "--yes", "--data", str(november))
    assert result.exit_code == 0
    assert "nothing is logged for profile 'nobody'" in result.stdout
    assert len(read_back(november)) == 6


def test_delete_and_export_while_the_writer_runs(data):
    """A running QueryLog (its own connection and writer thread, as in `safenest run`) keeps
    writing after another process deleted a profile and its names under it."""
    ql = QueryLog.open(data, flush_seconds=0.05, flush_entries=1)
    ql.start()
    try:
        for name in ("a.example", "b.example"):
            ql.record("192.168.1.31", name, 1, "forwarded", profile="lan")
            ql.record("192.168.1.32", name, 1, "forwarded", profile="minh")
        wait_for(lambda: len(read_back(data)) == 4)
        result = run("log", "delete-profile", "minh", "--yes", "--data", str(data))
        assert result.exit_code == 0, result.output
        ql.record("192.168.1.31", "c.example", 1, "forwarded", profile="lan")
        ql.record("192.168.1.32", "a.example", 1, "forwarded", profile="minh")
        wait_for(lambda: len(read_back(data)) == 4)
        # Days are the policy's (Asia/Ho_Chi_Minh, UTC+7): from 17:00 UTC it is tomorrow there.
        today = datetime.now(querylog_cli._zone(data)).date().isoformat()
        exported = run("log", "export", "--from", "2000-01-01", "--to", today, "--data", str(data))
        assert exported.exit_code == 0, exported.output
    finally:
        ql.stop()
    rows = rows_of(exported.stdout)[1:]
    assert sorted((row[3], row[4]) for row in rows) == [
        ("lan", "a.example"),
        ("lan", "b.example"),
        ("lan", "c.example"),
        ("minh", "a.example"),
    ]
    assert ql.write_errors == 0


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting")
        time.sleep(0.02)


def test_stats_prints_the_last_day_and_week(data):
    now = time.time()
    fill(
        data,
        [
            entry(now - 7200, "tiktok.com", kind="blocked", reason="category=social min_age=16+"),
            entry(now - 7100, "tiktok.com", kind="blocked", reason="category=social min_age=16+"),
            entry(now - 7000, "vnexpress.net"),
            entry(
                now - 3 * 86_400,
                "fb88.com",
                profile="minh",
                kind="blocked",
                reason="category=gambling",
            ),
            entry(now - 3 * 86_400 + 5, "wikipedia.org", profile="minh"),
        ],
    )
    store = QueryLogStore.open(data / "querylog.db")
    store.roll_up(hour_of(now))  # as the writer does once an hour is over
    store.close()
    result = run("log", "stats", "--data", str(data))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["queries", "3", "5"]
    assert lines[2].split() == ["blocked", "2", "3"]
    assert lines[3].split() == ["lan", "3", "3", "blocked", "2", "/", "2"]
    assert lines[4].split() == ["minh", "0", "2", "blocked", "0", "/", "1"]
    day = lines.index("top blocked, 24 h:")
    week = lines.index("top blocked, 7 days:")
    assert [line.split() for line in lines[day + 1 : week]] == [["2", "tiktok.com"]]
    assert [line.split() for line in lines[week + 1 :]] == [["2", "tiktok.com"], ["1", "fb88.com"]]


def test_the_installed_script_exports_and_deletes(november, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFENEST_")}

    def safenest(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), "log", *args, "--data", str(november)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    out = tmp_path / "school.csv"
    exported = safenest("export", "--from", "2026-11-01", "--to", "2026-11-01", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="", encoding="utf-8") as f:
        assert [row[4] for row in list(csv.reader(f))[1:]] == [
            "first.example",
            NASTY,
            "'" + FORMULA,
            "last.example",
        ]
    deleted = safenest("delete-profile", "lan", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert read_back(november, "lan") == []
    missing = subprocess.run(
        [str(SCRIPT), "log", "stats", "--data", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "no query log at" in missing.stderr
