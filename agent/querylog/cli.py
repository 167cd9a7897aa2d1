"""`safenest log`: the query log's CSV export, one profile's deletion and the statistics.

For a school's report or a parent's records, without the admin page. Every command opens
DATA/querylog.db in its own connection, so it runs while `safenest run` writes: exports read
a WAL snapshot, and a deletion uses the store's batched deletes (1,000 rows per transaction),
so the writer never waits long for the lock.

Dates without a time are whole days in the policy's time zone (Asia/Ho_Chi_Minh unless the
policy says otherwise): `--from 2026-11-01 --to 2026-11-30` is all of November there. Times in
the CSV itself are UTC (ISO 8601 with `Z`). An export names children's browsing: a file is
written 0600, atomically (a half-written report never appears under its name).
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

import click

from ..cli_options import config_option, data_option, settings_or_exit
from ..storage.querylog import MAX_HOUR, PeriodStats, QueryLogStore
from .export import export_queries_csv, export_rollups_csv

__all__ = ["log_group"]

QUERYLOG_FILE = "querylog.db"
PRIVATE_FILE_MODE = 0o600
FOREVER = MAX_HOUR * 3600.0  # past every entry's time, still a valid id bound
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ].+")

def _settings(config, data):
    return settings_or_exit(config, data=data)


def _open_store(data_dir) -> QueryLogStore:
    """The existing query log; never creates one (a wrong --data must not look like an empty log)."""
    path = Path(data_dir) / QUERYLOG_FILE
    if not path.is_file():
        raise click.ClickException(
            f"no query log at {path}: `safenest run` creates it when it logs its first answer"
            " (is --data right?)"
        )
    try:
        store = QueryLogStore.open(path)
        store.count_queries()  # a file that is not a query log fails here, not halfway
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the query log {path}: {exc}") from None
    return store


def _zone(data_dir) -> ZoneInfo:
    """The policy's time zone; the default one when there is no policy yet."""
    from ..policy.model import DEFAULT_TIMEZONE
    from ..storage.policy_store import open_policy_store, policy_db_path

    name = DEFAULT_TIMEZONE
    if Path(policy_db_path(data_dir)).is_file():
        try:
            name = open_policy_store(data_dir).load().timezone
        except Exception as exc:  # an unreadable policy must not stop a report
            click.echo(
                f"warning: cannot read the policy's time zone ({exc}); using {name}", err=True
            )
    return ZoneInfo(name)


def parse_bound(text: str, zone: ZoneInfo, *, end: bool, option: str) -> datetime:
    """A day (YYYY-MM-DD: its start, or for the end the start of the next day) or an ISO time
    (without an offset: in `zone`). The range is [from, to)."""
    text = text.strip()
    try:
        if _DAY.fullmatch(text):
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(), zone)
        if _TIME.fullmatch(text):
            when = datetime.fromisoformat(text)
            return when.replace(tzinfo=zone) if when.tzinfo is None else when
    except ValueError:
        pass
    raise click.BadParameter(
        f"{text!r} is not a date: give YYYY-MM-DD (a whole day) or an ISO time like"
        " 2026-11-28T21:45 (in the policy's time zone unless it has an offset)",
        param_hint=option,
    )


def _write_private_file(path: Path, write: Callable[[TextIO], int]) -> int:
    """Write through a 0600 temporary file in the same folder, then rename it into place."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            rows = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return rows


@click.group("log")
def log_group() -> None:
    """The query log: export it as CSV, delete a profile's history, print the statistics."""


@log_group.command()
@click.option(
    "--from", "first", required=True, metavar="DATE", help="First day (YYYY-MM-DD) or time (ISO)."
)
@click.option(
    "--to", "last", required=True, metavar="DATE", help="Last day, included, or time, excluded."
)
@click.option(
    "--rollups", is_flag=True, help="The hourly counts and top names instead of every query."
)
@click.option("--profile", metavar="ID", help="Only this profile's rows.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Write to FILE (mode 0600). Default: stdout.",
)
@config_option
@data_option
def export(first, last, rollups, profile, output, config, data) -> None:
    """Export the log (or with --rollups its hourly counts) of a date range as CSV.

    Days are in the policy's time zone; the CSV's times are UTC. Cells a spreadsheet would run
    as a formula start with a ' so that they show as text."""
    settings = _settings(config, data)
    zone = _zone(settings.data)
    start = parse_bound(first, zone, end=False, option="--from")
    end = parse_bound(last, zone, end=True, option="--to")
    if end <= start:
        raise click.UsageError(
            f"the range ends ({end.isoformat()}) before it starts ({start.isoformat()}):"
            " --to must not be before --from"
        )
    store = _open_store(settings.data)
    export_csv = export_rollups_csv if rollups else export_queries_csv

    def write(out: TextIO) -> int:
        return export_csv(store, out, start.timestamp(), end.timestamp(), profile)

    try:
        if output is None or output == "-":
            rows = write(sys.stdout)
        else:
            rows = _write_private_file(Path(output), write)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the query log: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc}") from None
    finally:
        store.close()
    what = "hourly rollups" if rollups else "log entries"
    where = f" to {output}" if output not in (None, "-") else ""
    click.echo(f"exported {rows} {what}{where}", err=True)


@log_group.command("delete-profile")
@click.argument("profile_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
@data_option
def delete_profile(profile_id, yes, config, data) -> None:
    """Delete PROFILE_ID's whole history: its log entries, hourly counts and top names.

    Deleted rows are zeroed in the file. Safe while `safenest run` runs; entries of that
    profile still waiting in its memory (up to querylog_flush_seconds) are written afterwards."""
    settings = _settings(config, data)
    store = _open_store(settings.data)
    try:
        entries = sum(1 for _ in store.export_queries(0, FOREVER, profile_id))
        counts = sum(1 for _ in store.export_rollups(0, FOREVER, profile_id))
        if not entries and not counts:
            click.echo(f"nothing is logged for profile {profile_id!r}; nothing deleted")
            return
        if not yes:
            click.confirm(
                f"Delete profile {profile_id!r}'s {entries} log entries and {counts} hourly"
                " counts? This cannot be undone",
                abort=True,
            )
        deleted = 0
        try:
            for rows in store.delete_profile(profile_id):
                deleted += rows
        except sqlite3.Error as exc:
            raise click.ClickException(
                f"stopped after deleting {deleted} rows: {exc}; run the command again to finish"
            ) from None
    finally:
        store.close()
    click.echo(
        f"deleted {deleted} rows of profile {profile_id!r}: {entries} log entries,"
        f" {counts} hourly counts, their top names and the names nothing else used"
    )


def _stats_table(stats: dict[str, PeriodStats]) -> list[str]:
    day, week = stats["24h"], stats["7d"]
    lines = [f"{'':<20} {'24 h':>10} {'7 days':>10}"]
    lines.append(f"{'queries':<20} {day.queries:>10} {week.queries:>10}")
    lines.append(f"{'blocked':<20} {day.blocked:>10} {week.blocked:>10}")
    day_of = {p.profile: p for p in day.profiles}
    for p in week.profiles:
        today = day_of.get(p.profile)
        label = f"  {p.profile or '(none)'}"
        lines.append(
            f"{label[:20]:<20} {today.queries if today else 0:>10} {p.queries:>10}"
            f"   blocked {today.blocked if today else 0} / {p.blocked}"
        )
    for title, period in (("24 h", day), ("7 days", week)):
        lines.append(f"top blocked, {title}:")
        lines += [f"  {count:>8}  {name}" for name, count in period.top_blocked] or ["  (none)"]
    return lines


@log_group.command()
@click.option(
    "--top", default=10, show_default=True, type=click.IntRange(1, 100), help="Names per list."
)
@config_option
@data_option
def stats(top, config, data) -> None:
    """Queries and blocks of the last 24 hours and 7 days, per profile, and the names most blocked."""
    settings = _settings(config, data)
    store = _open_store(settings.data)
    try:
        table = _stats_table(store.statistics(top=top))
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the query log: {exc}") from None
    finally:
        store.close()
    for line in table:
        click.echo(line)
