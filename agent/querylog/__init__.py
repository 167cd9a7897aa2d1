"""The query log: what was asked, answered and why, kept within a privacy level and a retention.

`QueryLog.record()` is called by the resolver for every answer and never waits; a writer
process (agent/querylog/writer.py, with its own GIL) stores batches in DATA/querylog.db
(agent/storage/querylog.py holds the SQL). See docs/querylog.md for what is stored, the
privacy levels and the retention.
"""

from ..storage.querylog import PRIVACY_LEVELS, PeriodStats, ProfileCounts, QueryLogStore
from .export import day_bounds, export_queries_csv, export_rollups_csv
from .log import QueryLog, stricter

__all__ = [
    "PRIVACY_LEVELS",
    "PeriodStats",
    "ProfileCounts",
    "QueryLog",
    "QueryLogStore",
    "day_bounds",
    "export_queries_csv",
    "export_rollups_csv",
    "stricter",
]
