"""One SQLite file: WAL mode, one connection per thread, numbered migrations through sqlite-utils.

WAL lets the DNS process read while the admin page writes, and batches fsyncs, which an SD
card needs. sqlite3 connections must not be shared between threads, so each thread gets its
own, opened on first use and tuned the same way.

The files hold children's data (names, birth months, the names they ask for): the folder is
made 0700 and the file 0600 before SQLite opens it, so the -wal and -shm files SQLite creates
get 0600 too (it gives them the database file's mode).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils  # imported when first needed: the query log's writer process never
    # does (raw connections only), which keeps about 9.5 MB of modules out of its memory

BUSY_TIMEOUT_MS = 5_000
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """Step `version` of a schema; `apply` gets a sqlite_utils.Database inside a transaction."""

    version: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


class Database:
    """A database file shared by threads; `conn` is this thread's connection, `db` the same
    connection as a sqlite_utils.Database."""

    def __init__(
        self,
        path: str | Path,
        migrations: Sequence[Migration] = (),
        page_size: int | None = None,
        wal_autocheckpoint: int | None = None,
    ):
        self.path = Path(path)
        # Bytes per page of a new file (None: SQLite's 4096). Smaller pages mean fewer bytes
        # per small commit; it takes effect only before the file's first table (WAL keeps it).
        self.page_size = page_size
        # Pages in the WAL before a commit copies them into the file (None: SQLite's 1,000).
        self.wal_autocheckpoint = wal_autocheckpoint
        _make_private(self.path)
        self._local = threading.local()
        self._migrations = tuple(sorted(migrations, key=lambda m: m.version))
        versions = [m.version for m in self._migrations]
        if len(set(versions)) != len(versions):
            raise ValueError(f"{self.path.name}: two migrations share a version number")
        self.migrate()

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            import sqlite_utils

            db = self._local.db = sqlite_utils.Database(self.conn)
        return db

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            if self.page_size is not None:
                conn.execute(f"PRAGMA page_size={int(self.page_size)}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a power cut may lose the last commits but never corrupts the file.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if self.wal_autocheckpoint is not None:
                conn.execute(f"PRAGMA wal_autocheckpoint={int(self.wal_autocheckpoint)}")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self, raw: bool = False) -> Iterator:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: all or nothing. Yields
        this thread's sqlite_utils.Database, or with `raw` its sqlite3 connection."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn if raw else self.db
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Apply the migrations newer than the file's `user_version`, each in its own transaction."""
        for migration in self._migrations:
            with self.transaction() as db:
                # Read inside the transaction: two processes starting together must not both apply it.
                if db.conn.execute("PRAGMA user_version").fetchone()[0] >= migration.version:
                    continue
                migration.apply(db)
                db.conn.execute(f"PRAGMA user_version={int(migration.version)}")
        return self.schema_version()

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap way to notice the admin's edits."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.db = None


def _make_private(path: Path) -> None:
    """The folder 0700 and the file (created empty if missing), -wal and -shm 0600.

    chmod rather than umask: the umask is the whole process's, and other threads create files."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    try:
        os.chmod(folder, PRIVATE_DIR_MODE)
    except OSError as exc:  # not ours (a folder the admin made for us): the files stay private
        log.warning("cannot make %s private (mode 700): %s", folder, exc)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
    except OSError:
        return  # SQLite gives the clearer error when it opens the file
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            os.chmod(name, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot make %s private (mode 600): %s", name, exc)


def open_database(path: str | Path, migrations: Sequence[Migration] = ()) -> Database:
    return Database(path, migrations)
