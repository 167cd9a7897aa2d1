"""All SQL of SafeNest lives in this package: connections, migrations and the stores built on them.

Two database files, so that the busy query log never contends with (or risks) the settings:
``DATA/safenest.db`` (the policy and settings the parent sets) and ``DATA/querylog.db``.
"""

from .db import Database, Migration, open_database

__all__ = ["Database", "Migration", "open_database"]
