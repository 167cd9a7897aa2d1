"""CSV export of the query log and its rollups, for a parent's records or a school's report.

RFC 4180 quoting (names with commas or quotes survive), and a guard against spreadsheet
formulas: a child can ask for a name like ``=cmd|...``; a cell that starts like a formula gets
a leading ``'`` so that a spreadsheet shows it as text instead of running it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time
from typing import TextIO

from ..storage.querylog import QUERY_COLUMNS, ROLLUP_COLUMNS, QueryLogStore

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(out: TextIO, header: Sequence[str], rows: Iterable[tuple]) -> int:
    """Write the header and `rows` as CSV to the text stream `out`; returns the rows written."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow([_cell(v) for v in row])
        count += 1
    return count


def day_bounds(first: date, last: date) -> tuple[float, float]:
    """Unix seconds of the start of `first` and the end of `last` (UTC days), for an export."""
    if last < first:
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    start = datetime.combine(first, time(), UTC).timestamp()
    end = datetime.combine(last, time(), UTC).timestamp() + 86_400
    return start, end


def export_queries_csv(
    store: QueryLogStore, out: TextIO, start: float, end: float, profile: str | None = None
) -> int:
    """The raw log of [start, end) as CSV; returns the number of rows."""
    return write_csv(out, QUERY_COLUMNS, store.export_queries(start, end, profile))


def export_rollups_csv(
    store: QueryLogStore, out: TextIO, start: float, end: float, profile: str | None = None
) -> int:
    """The hourly rollups of [start, end) as CSV; returns the number of rows."""
    return write_csv(out, ROLLUP_COLUMNS, store.export_rollups(start, end, profile))
