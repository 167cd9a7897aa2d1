"""The query log's SQL: raw entries, hourly rollups, retention, privacy purges, exports, statistics.

It lives in DATA/querylog.db, apart from the settings database, so that the busiest writer
never contends with (or risks) the parent's settings. The layout is chosen for an SD card,
where every byte written wears the card:

- ``queries``: one row per logged answer. Its integer primary key *is* the time:
  ``id = time in ms << 12 | a sequence number``. The table's own B-tree is then in time order,
  so reading a time range, the current hour or pruning the oldest rows needs no index at all.
  Strings are small integers: client, device, profile, category, reason and upstream point
  into ``terms``, the name into ``names`` (a household asks for a few thousand names a day,
  each many times); 0 stands for "none" (older rows may hold NULL: readers accept both). The
  latency is kept in microseconds (1 to 3 bytes as an integer).
- ``rollups``: queries per (hour, profile, kind, category), WITHOUT ROWID. The writer adds each
  batch's counts in the same transaction as its raw rows, so they always include the current
  hour and agree with the raw log; the statistics never scan the raw log for counts.
- ``rollup_top``: the top ``TOP_NAMES`` names of each rollup key, computed from the raw rows
  once an hour is over (``roll_up``). The statistics read these, plus the raw rows of the hours
  not yet rolled up (the current one).
- ``privacy``: the privacy level last applied per profile (``*``: the global level), so that a
  level made stricter while SafeNest was stopped is still purged at the next start.
- ``meta``: ``rolled_up_until``, the first hour whose top names are not computed yet.

The writer's Python work per entry is kept small (``write_items``): the ids of each distinct
answer ``(profile, name, type, kind, reason)`` are looked up once and remembered (the resolver
hands thousands of entries that share one prebuilt answer tuple), each row is one tuple of
integers, and the counts are a Counter over small integers. The names of a batch's new
answers are stored and their ids looked up by SQLite, two statements for the lot. Beyond
``ANSWERS`` remembered answers the older half is forgotten. No parameter is ever None: the
sqlite3 module's adapter lookup for a None costs more than the whole rest of a row.
Pages are 1 KiB (``PAGE_SIZE``): a small commit writes a quarter of the bytes of 4 KiB pages.

Deletions (retention, privacy purges, a profile's history) run in batches of ``BATCH`` rows,
each its own transaction, so none holds the write lock for long. Names and terms no longer
used are deleted afterwards (``forget_unused``): a purged name must not stay in the file.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..dns.wire import name_to_text
from .db import Database, Migration

if TYPE_CHECKING:
    import sqlite_utils

TOP_NAMES = 20  # names kept per rollup key and hour
# Entries turned into rows between two INSERT statements (one statement per SLICE rows: few
# sqlite3_step calls). The writer runs in its own process (agent/querylog/writer.py), so its
# GIL is not the DNS thread's; when it ran as a thread of the DNS process, this was also how
# often the DNS thread got the GIL back.
SLICE = 256
PAGE_SIZE = 1024  # bytes per page of a new file: fewer bytes written per small commit
# Pages in the WAL before they are copied into the file (SQLite's default is 1,000). A commit
# rewrites the same few pages (the end of `queries`, a rollups page, the B-trees' inner
# pages), and a checkpoint copies each page once however often the WAL holds it: with 10,000
# (a WAL of about 10 MB) a household's day wrote 17% fewer bytes (664 against 549 KB per
# 1,000 queries, docs/performance.md), and the writer spent 8% less CPU on the bench's stream.
WAL_AUTOCHECKPOINT = 10_000
ANSWERS = 50_000  # distinct answers whose ids are remembered (the older half goes beyond)
BATCH = 1_000  # rows per deleting statement
SEQ_BITS = 12  # ids: time in ms << SEQ_BITS | sequence
SEQ_MASK = (1 << SEQ_BITS) - 1
HOUR_MS = 3_600_000
HOUR_IDS = HOUR_MS << SEQ_BITS
SECOND_IDS = 1000 << SEQ_BITS
MAX_HOUR = (1 << 62) // HOUR_IDS  # ids stay below 2**62, well inside SQLite's integers
# A row is bound as 6 values (binding costs the writer about 50 ns a value): the id, client,
# device, the key of its answer in the connection's TEMP table answer_columns (whose row holds
# the answer's 6 columns of queries: the join happens in SQLite, without the GIL), upstream
# and latency.
BOUND = 6
_SELECT_ROWS = (
    "INSERT INTO queries SELECT v.column1, v.column2, v.column3, a.profile, a.name, a.qtype,"
    " a.kind, a.category, a.reason, v.column5, v.column6 FROM (VALUES {}) AS v"
    " CROSS JOIN temp.answer_columns AS a ON a.id = v.column4"
)
INSERT_ROW = _SELECT_ROWS.format("(?,?,?,?,?,?)")
CHUNK_ROWS = SLICE  # rows per INSERT statement (the rest of a batch: one row per statement)
CHUNK_PARAMS = CHUNK_ROWS * BOUND
INSERT_CHUNK = _SELECT_ROWS.format(",".join(["(?,?,?,?,?,?)"] * CHUNK_ROWS))
GLOBAL = "*"  # the privacy table's key for the global level
# A new answer's row of answer_columns: its name's id (0 for no name) is looked up here, after
# INSERT_NAME stored the names of the lot.
INSERT_NAME = "INSERT OR IGNORE INTO names(name) VALUES (?)"
INSERT_ANSWER = (
    "INSERT OR REPLACE INTO temp.answer_columns VALUES"
    " (?1, ?2, coalesce((SELECT id FROM names WHERE name = ?7), 0), ?3, ?4, ?5, ?6)"
)

# Answer kinds as stored (small integers). The values of agent.model.AnswerKind plus
# "rewritten" (safe search and the like); anything else is stored as 0, "other".
KINDS: tuple[str, ...] = (
    "other",
    "forwarded",
    "cached",
    "stale",
    "blocked",
    "local",
    "refused",
    "rate_limited",
    "servfail",
    "malformed",
    "rewritten",
)
KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(KINDS)}
BLOCKED = KIND_CODE["blocked"]

# Privacy levels, from the one that keeps most to the one that keeps nothing.
PRIVACY_LEVELS: tuple[str, ...] = ("full", "hide_allowed", "counts_only", "off")
KINDS_KEPT_WHEN_HIDING = frozenset({"blocked", "rewritten"})  # "hide allowed" keeps these


class Entry(NamedTuple):
    """One answered query, for QueryLogStore.write() (the tests', the bench's form)."""

    time: float  # Unix seconds
    client: str
    device: str  # "" when unknown
    profile: str  # "" when there are no profiles yet
    name: str
    qtype: int
    kind: str  # an AnswerKind value
    reason: str
    upstream: str  # "" when not forwarded
    latency_ms: float


# What the writer takes (QueryLog's queue): the resolver's ``(time, client, device, answer)``,
# where answer is the prebuilt tuple ``(profile, name, qtype, kind, reason)``, or record()'s
# flat ``(time, client, device, profile, name, qtype, kind, reason, upstream, latency_ms)``
# (an Entry), whose answer is item[3:8]. Entries with equal answers share the answer's ids.
# keep_of(profile, kind): True to log, False to count only, None for neither.
KeepOf = Callable[[str, str], bool | None]


def category_of(reason: str) -> str:
    """'category=adult min_age=18+' -> 'adult'; '' when the reason names no category."""
    if not reason.startswith("category="):
        return ""
    return reason[9:].split(" ", 1)[0]


def hour_of(seconds: float) -> int:
    return int(seconds // 3600)


def _id_bound(seconds: float) -> int:
    """The smallest id of an entry at `seconds` (ids of earlier entries are smaller)."""
    return int(seconds * 1000) << SEQ_BITS


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _check(cursor: sqlite3.Cursor, rows: int) -> None:
    """Every row bound was inserted: a row whose answer key is missing from the TEMP table
    would vanish in the join. Raised as IntegrityError, the write is retried with fresh ids."""
    if cursor.rowcount != rows:
        raise sqlite3.IntegrityError(f"query log: {rows - cursor.rowcount} rows lost their answer")


# -- schema ------------------------------------------------------------------------------


def _create_tables(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE terms (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")
    db.execute("CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    # No index besides the primary key: the key is the time (see the module docstring).
    db.execute(
        """CREATE TABLE queries (
            id INTEGER PRIMARY KEY,
            client INTEGER NOT NULL,
            device INTEGER,
            profile INTEGER NOT NULL,
            name INTEGER,
            qtype INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            category INTEGER,
            reason INTEGER,
            upstream INTEGER,
            latency_us INTEGER NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE rollups (
            hour INTEGER NOT NULL,
            profile INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            category INTEGER NOT NULL,
            queries INTEGER NOT NULL,
            PRIMARY KEY (hour, profile, kind, category)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE rollup_top (
            hour INTEGER NOT NULL,
            profile INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            category INTEGER NOT NULL,
            name INTEGER NOT NULL,
            queries INTEGER NOT NULL,
            PRIMARY KEY (hour, profile, kind, category, name)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE TABLE privacy (profile TEXT PRIMARY KEY, level TEXT NOT NULL) WITHOUT ROWID")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "query log, rollups, privacy", _create_tables),)


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileCounts:
    profile: str
    queries: int
    blocked: int


@dataclass(frozen=True)
class PeriodStats:
    """What the home page shows for one period (the last 24 hours, the last 7 days)."""

    start_hour: int
    queries: int = 0
    blocked: int = 0
    top_blocked: list[tuple[str, int]] = field(default_factory=list)
    profiles: list[ProfileCounts] = field(default_factory=list)


QUERY_COLUMNS = (
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
)
ROLLUP_COLUMNS = ("hour", "profile", "kind", "category", "queries", "top_names")


# -- the store ----------------------------------------------------------------------------


class QueryLogStore:
    """All reads and writes of DATA/querylog.db.

    `write` is meant for one writer (the query log's writer process, agent/querylog/writer.py,
    or QueryLog itself while that process does not run): it caches the ids of terms and the
    answers it met (whose rows of answer_columns hold their names' ids), and drops that cache
    when another connection has committed (``PRAGMA data_version``) or when this store
    deleted names or terms itself.
    """

    def __init__(self, database: Database):
        self.database = database
        self._term_ids: dict[str, int] = {"": 0}
        # answer tuple -> (keep, its key in temp.answer_columns, its rollup slot).
        self._answers: dict[tuple, tuple] = {}
        self._answer_conn: sqlite3.Connection | None = None  # whose temp table they are in
        self._next_key = 1
        # Rows for answer_columns, not inserted yet: (key, profile, qtype, kind, category,
        # reason, name as text); the name's id is found by SQLite (_insert_new_answers).
        self._new_answers: list[tuple] = []
        self._wire_texts: dict[bytes, str] = {}  # wire-format name -> its text
        self._answers_epoch: object = None
        self._slots: dict[tuple[int, int, int], int] = {}  # (profile, kind, category) -> slot
        self._slot_keys: list[tuple[int, int, int]] = []
        self._data_version: tuple[int, int] | None = None  # (connection, PRAGMA data_version)
        self._last_id = 0
        self._legacy_epoch = 0

    @classmethod
    def open(cls, path: str | Path, migrate: bool = True) -> QueryLogStore:
        """The file at `path`, created or migrated; with `migrate` False a file that is
        known to be (the query log's writer process: QueryLog opened it first), opened
        without taking the write lock, which another connection may hold for a while."""
        return cls(
            Database(
                path,
                MIGRATIONS if migrate else (),
                page_size=PAGE_SIZE,
                wal_autocheckpoint=WAL_AUTOCHECKPOINT,
            )
        )

    @property
    def conn(self) -> sqlite3.Connection:
        return self.database.conn

    def close(self) -> None:
        self.database.close()

    # -- ids of strings --------------------------------------------------------------

    def _forget_ids(self) -> None:
        self._term_ids.clear()
        self._term_ids[""] = 0
        self._new_answers.clear()
        self._answers.clear()
        self._next_key = 1  # keys are reused: INSERT OR REPLACE in answer_columns
        self._answer_conn = None  # a rollback may have taken back the TEMP table itself
        self._slots.clear()
        self._slot_keys.clear()

    def _id(self, table: str, column: str, cache: dict[str, int], text: str) -> int:
        found = cache.get(text)
        if found is None:
            if text.__class__ is not str:
                raise TypeError(f"{column}: expected text, got {type(text).__name__}")
            conn = self.conn
            conn.execute(f"INSERT OR IGNORE INTO {table}({column}) VALUES (?)", (text,))
            found = conn.execute(f"SELECT id FROM {table} WHERE {column} = ?", (text,)).fetchone()[
                0
            ]
            if len(cache) >= 100_000:  # bound the memory of a long run
                cache.clear()
                self._term_ids[""] = 0
            cache[text] = found
        return found

    def _term(self, text: str) -> int:
        """The id of a short text; 0 for ''."""
        if text.__class__ is not str:
            raise TypeError(f"expected text, got {type(text).__name__}")
        return self._id("terms", "text", self._term_ids, text) if text else 0

    def _lookup_term(self, text: str) -> int | None:
        row = self.conn.execute("SELECT id FROM terms WHERE text = ?", (text,)).fetchone()
        return row[0] if row else None

    def _insert_new_answers(self, conn: sqlite3.Connection) -> None:
        """Store the new answers' names and their rows in answer_columns: two statements for
        the lot, the names' ids looked up by SQLite. (One INSERT and one SELECT per new name,
        from Python, cost the writer about 10 µs a name; a fresh SafeNest in the bench meets a
        new answer in one entry of four.)"""
        new = self._new_answers
        conn.executemany(INSERT_NAME, [(row[6],) for row in new if row[6]])
        conn.executemany(INSERT_ANSWER, new)
        new.clear()

    def _forget_oldest_answers(self, conn: sqlite3.Connection) -> None:
        """Keep the newer half of the remembered answers, and their rows of answer_columns.

        Not all of them: a fresh SafeNest in the bench meets more than ANSWERS of them in a
        minute, and forgetting them all made the writer look every one of them up again.
        Keys grow in the order answers are met, which is the dict's order."""
        answers = self._answers
        kept = dict(islice(answers.items(), len(answers) - ANSWERS // 2, None))
        first_key = next((info[1] for info in kept.values() if info[1]), self._next_key)
        conn.execute("DELETE FROM temp.answer_columns WHERE id < ?", (first_key,))
        self._answers = kept

    def _answer(self, answer: tuple, keep_of: KeepOf) -> tuple:
        """(keep, key, slot) of an answer, its strings stored; remembered per answer."""
        profile, name, qtype, kind, reason = answer
        keep = keep_of(profile, kind)
        if keep is None:
            info: tuple = (None, 0, 0)
        else:
            qtype = int(qtype)
            if reason.__class__ is not str:
                raise TypeError("reason: expected text")
            kind_code = KIND_CODE.get(kind, 0)
            profile_id, category_id = self._term(profile), self._term(category_of(reason))
            key = 0
            if keep:  # names and reasons are stored only for logged answers
                if name.__class__ is bytes:  # from the packet: many answers share a name
                    text = self._wire_texts.get(name)
                    if text is None:
                        if len(self._wire_texts) >= 100_000:  # bound the memory of a long run
                            self._wire_texts.clear()
                        text = self._wire_texts[name] = name_to_text(name)
                elif name.__class__ is str or not name:
                    text = name or ""  # "" (or None): no name, stored as 0
                else:
                    raise TypeError(f"name: expected text or a wire-format name, got {name!r}")
                reason_id = self._term(reason)
                key = self._next_key
                self._next_key += 1
                # Inserted before the rows that use it (see _write_items).
                self._new_answers.append(
                    (key, profile_id, qtype, kind_code, category_id, reason_id, text)
                )
            counted_as = (profile_id, kind_code, category_id)
            slot = self._slots.get(counted_as)
            if slot is None:
                slot = self._slots[counted_as] = len(self._slot_keys)
                self._slot_keys.append(counted_as)
            info = (keep, key, slot)
        self._answers[answer] = info
        return info

    # -- writing -----------------------------------------------------------------------

    def resume_ids(self) -> None:
        """Go on after the largest id in the file, whoever wrote it (an earlier writer, one
        restarted within the same millisecond): new rows then need no collision retry."""
        largest = self.conn.execute("SELECT max(id) FROM queries").fetchone()[0]
        if largest is not None and largest > self._last_id:
            self._last_id = largest

    def write(self, counted: Sequence[Entry], raw: Sequence[Entry]) -> None:
        """One transaction: `raw` entries into the log, `counted` entries into the rollups.

        `raw` must be part of `counted`, chosen by (profile, kind) as the privacy levels choose.
        (QueryLog writes its queue with write_items(); this form is for tests and benches.)
        """
        kept = {(e.profile, e.kind) for e in raw}
        self._legacy_epoch -= 1  # a fresh keep_of: the remembered answers do not apply
        self.write_items(
            counted,  # an Entry has the flat shape of record()'s entries
            lambda profile, kind: (profile, kind) in kept,
            self._legacy_epoch,
        )

    def write_items(
        self, items: Sequence[tuple], keep_of: KeepOf, epoch: object = 0
    ) -> tuple[int, int]:
        """One transaction for a batch of queued entries; returns (counted, rejected).

        `keep_of(profile, kind)` says what to do with an answer (see KeepOf); it is asked once
        per distinct answer while `epoch` stays the same (change it when the levels change).
        An entry that cannot be read (a caller's bug) is rejected, not written.
        """
        if not items:
            return 0, 0
        try:
            try:
                return self._write_items(items, keep_of, epoch, one_by_one=False)
            except sqlite3.IntegrityError:
                # Two ids collided: a restart or a clock set back within the same millisecond.
                self._forget_ids()
                return self._write_items(items, keep_of, epoch, one_by_one=True)
        except BaseException:
            self._forget_ids()  # the rollback took back the ids of names and terms it added
            raise

    def _write_items(
        self, items: Sequence[tuple], keep_of: KeepOf, epoch: object, one_by_one: bool
    ) -> tuple[int, int]:
        """The loop below is the writer's per-entry cost: keep it to a few operations.

        Ids are ``time in ms << SEQ_BITS``, or the last id + 1 when that is within a second
        ahead (entries of the same millisecond, or queued a little late, keep the order of
        writing); a clock set back by more than a second gets its true time.
        """
        with self.database.transaction(raw=True) as conn:
            conn = conn
            # data_version is per connection: remember whose it is.
            version = (id(conn), conn.execute("PRAGMA data_version").fetchone()[0])
            if version != self._data_version:
                self._forget_ids()  # another connection may have deleted names or terms
                self._data_version = version
            if conn is not self._answer_conn:  # a new connection: a new TEMP table
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS answer_columns (id INTEGER PRIMARY KEY,"
                    " profile, name, qtype, kind, category, reason)"
                )
                self._answers.clear()
                self._next_key = 1
                self._answer_conn = conn
            # Only here, between writes: keys bound in a write must keep their columns.
            if epoch != self._answers_epoch:  # the levels changed: every answer is asked again
                self._answers.clear()
                self._next_key = 1
                self._answers_epoch = epoch
            elif len(self._answers) > ANSWERS:
                self._forget_oldest_answers(conn)
            answers_get, answer = self._answers.get, self._answer
            term_get, term = self._term_ids.get, self._term
            last = self._last_id
            slots_by_hour: dict[int, list[int]] = {}
            slots: list[int] = []
            hour_from = hour_to = 0  # the ids of the current hour of `slots`
            counted = rejected = 0
            params: list[int] = []  # the rows not inserted yet, flat: BOUND values each
            add = params.extend
            for start in range(0, len(items), SLICE):
                for item in items[start : start + SLICE]:
                    try:
                        compact = len(item) == 4  # the resolver's replayed answers
                        logged = item[3] if compact else item[3:8]
                        info = answers_get(logged)
                        if info is None:
                            info = answer(logged, keep_of)
                        keep = info[0]
                        if keep is None:
                            continue
                        wanted = int(item[0] * 1000) << SEQ_BITS
                        if not hour_from <= wanted < hour_to:
                            hour = wanted // HOUR_IDS
                            if not 0 <= hour < MAX_HOUR:
                                raise ValueError("time out of range")
                            hour_from, hour_to = hour * HOUR_IDS, (hour + 1) * HOUR_IDS
                            slots = slots_by_hour.setdefault(hour, [])
                        if keep:
                            client = term_get(item[1])
                            if client is None:
                                client = term(item[1])
                            device = term_get(item[2])
                            if device is None:
                                device = term(item[2])
                            if wanted > last or last - wanted > SECOND_IDS:
                                last = wanted
                            else:
                                last += 1
                            if compact:
                                add((last, client, device, info[1], 0, 0))
                            else:
                                upstream = term_get(item[8])
                                if upstream is None:
                                    upstream = term(item[8])
                                latency = round(item[9] * 1000)
                                add((last, client, device, info[1], upstream, max(latency, 0)))
                        slots.append(info[2])
                    except (TypeError, ValueError, LookupError, AttributeError, ArithmeticError):
                        rejected += 1
                if self._new_answers:
                    self._insert_new_answers(conn)
                if not one_by_one:
                    # Many rows per statement: one sqlite3_step (the GIL released) for each.
                    full = len(params) // CHUNK_PARAMS * CHUNK_PARAMS
                    for i in range(0, full, CHUNK_PARAMS):
                        _check(conn.execute(INSERT_CHUNK, params[i : i + CHUNK_PARAMS]), CHUNK_ROWS)
                    del params[:full]
            rows = list(zip(*[iter(params)] * BOUND, strict=True))
            if one_by_one:
                for row in rows:
                    row_id = row[0]
                    while conn.execute("SELECT 1 FROM queries WHERE id = ?", (row_id,)).fetchone():
                        row_id += 1
                    _check(conn.execute(INSERT_ROW, (row_id, *row[1:])), 1)
            elif rows:
                _check(conn.executemany(INSERT_ROW, rows), len(rows))
            keys = self._slot_keys
            counts = []
            for hour, hour_slots in slots_by_hour.items():
                counted += len(hour_slots)
                counts += [(hour, *keys[slot], n) for slot, n in Counter(hour_slots).items()]
            conn.executemany(
                "INSERT INTO rollups VALUES (?,?,?,?,?) ON CONFLICT (hour, profile, kind, category)"
                " DO UPDATE SET queries = queries + excluded.queries",
                counts,
            )
        self._last_id = last  # committed
        return counted, rejected

    # -- hourly rollup of the top names ------------------------------------------------

    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def rolled_up_until(self) -> int | None:
        """The first hour whose top names are not computed yet (None: nothing rolled up yet)."""
        value = self._meta("rolled_up_until", -1)
        return None if value < 0 else value

    def roll_up(self, until_hour: int) -> int:
        """Compute the top names of every finished hour before `until_hour`; returns the hours done.

        Idempotent: an hour is done once, and the mark moves in the same transaction.
        """
        with self.database.transaction(raw=True) as conn:
            conn = conn
            start = self.rolled_up_until()
            if start is None:
                first = conn.execute("SELECT min(id) FROM queries").fetchone()[0]
                start = until_hour if first is None else (first >> SEQ_BITS) // HOUR_MS
            if start >= until_hour:
                if self.rolled_up_until() is None:
                    self._set_meta("rolled_up_until", until_hour)
                return 0
            conn.execute(
                """INSERT OR REPLACE INTO rollup_top
                   SELECT hour, profile, kind, category, name, n FROM (
                       SELECT hour, profile, kind, category, name, n, row_number() OVER (
                           PARTITION BY hour, profile, kind, category ORDER BY n DESC, name
                       ) AS rank
                       FROM (
                           SELECT (id >> ?) / ? AS hour, profile, kind,
                                  coalesce(category, 0) AS category, name, count(*) AS n
                           FROM queries
                           WHERE id >= ? AND id < ? AND name > 0
                           GROUP BY 1, 2, 3, 4, 5
                       )
                   ) WHERE rank <= ?""",
                (
                    SEQ_BITS,
                    HOUR_MS,
                    _id_bound(start * 3600),
                    _id_bound(until_hour * 3600),
                    TOP_NAMES,
                ),
            )
            self._set_meta("rolled_up_until", until_hour)
            return until_hour - start

    def _set_meta(self, key: str, value: int) -> None:
        self.conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- deleting, in batches ------------------------------------------------------------

    def _delete_queries(self, where: str, params: Sequence) -> Iterator[int]:
        """Delete the raw rows matching `where`, BATCH at a time in id order; yields each count."""
        after = -1
        while True:
            with self.database.transaction(raw=True) as conn:
                last = conn.execute(
                    f"SELECT max(id) FROM (SELECT id FROM queries WHERE id > ? AND ({where})"
                    " ORDER BY id LIMIT ?)",
                    (after, *params, BATCH),
                ).fetchone()[0]
                if last is None:
                    return
                deleted = conn.execute(
                    f"DELETE FROM queries WHERE id > ? AND id <= ? AND ({where})",
                    (after, last, *params),
                ).rowcount
            after = last
            yield deleted

    def _delete_keyed(self, table: str, where: str, params: Sequence) -> Iterator[int]:
        """Delete rows of a rollup table matching `where`, BATCH at a time."""
        key = "hour, profile, kind, category" + (", name" if table == "rollup_top" else "")
        while True:
            with self.database.transaction(raw=True) as conn:
                deleted = conn.execute(
                    f"DELETE FROM {table} WHERE ({key}) IN"
                    f" (SELECT {key} FROM {table} WHERE {where} LIMIT ?)",
                    (*params, BATCH),
                ).rowcount
            if not deleted:
                return
            yield deleted

    def prune(self, now: float, raw_days: float, rollup_days: float) -> Iterator[int]:
        """Retention: raw rows older than `raw_days`, rollups older than `rollup_days`."""
        yield from self._delete_queries("id < ?", (_id_bound(now - raw_days * 86_400),))
        oldest_hour = hour_of(now - rollup_days * 86_400)
        yield from self._delete_keyed("rollups", "hour < ?", (oldest_hour,))
        yield from self._delete_keyed("rollup_top", "hour < ?", (oldest_hour,))

    def purge(
        self, level: str, profiles: Iterable[str] | None = None, keep: Iterable[str] = ()
    ) -> Iterator[int]:
        """Delete what `level` would not have kept, for `profiles` (None: every profile but `keep`).

        hide_allowed: raw rows and top names of answers other than blocks and rewrites;
        counts_only: every raw row and top name; off: those and the counts too.
        """
        if level not in PRIVACY_LEVELS:
            raise ValueError(f"unknown privacy level {level!r}")
        if level == "full":
            return
        if profiles is None:
            ids = [i for i in map(self._lookup_term, keep) if i is not None]
            who = f"profile NOT IN ({','.join('?' * len(ids))})" if ids else "1"
        else:
            ids = [i for i in map(self._lookup_term, profiles) if i is not None]
            if not ids:
                return
            who = f"profile IN ({','.join('?' * len(ids))})"
        what, params = who, list(ids)
        if level == "hide_allowed":
            kept = sorted(KIND_CODE[k] for k in KINDS_KEPT_WHEN_HIDING)
            what += f" AND kind NOT IN ({','.join('?' * len(kept))})"
            params += kept
        conn = self.conn
        # Zero what is deleted instead of leaving it in free space: the point is that it is gone.
        secure = conn.execute("PRAGMA secure_delete").fetchone()[0]
        conn.execute("PRAGMA secure_delete=ON")
        try:
            yield from self._delete_queries(what, params)
            yield from self._delete_keyed("rollup_top", what, params)
            if level == "off":
                yield from self._delete_keyed("rollups", who, ids)
            yield self.forget_unused()
        finally:
            conn.execute(f"PRAGMA secure_delete={int(secure)}")
        # Copy the zeroed pages into the file and empty the WAL, which still holds old pages.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def delete_profile(self, profile: str) -> Iterator[int]:
        """Every raw row, count and top name of one profile (zeroed, as for a purge)."""
        yield from self.purge("off", [profile])

    def forget_unused(self) -> int:
        """Delete names and terms nothing refers to any more; returns how many."""
        with self.database.transaction(raw=True) as conn:
            conn = conn
            names = conn.execute(
                """DELETE FROM names WHERE id NOT IN
                   (SELECT name FROM queries WHERE name IS NOT NULL UNION SELECT name FROM rollup_top)"""
            ).rowcount
            used = " UNION ".join(
                f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
                for table, columns in (
                    ("queries", ("client", "device", "profile", "category", "reason", "upstream")),
                    ("rollups", ("profile", "category")),
                    ("rollup_top", ("profile", "category")),
                )
                for column in columns
            )
            terms = conn.execute(f"DELETE FROM terms WHERE id NOT IN ({used})").rowcount
        self._forget_ids()
        return names + terms

    # -- privacy levels last applied ---------------------------------------------------

    def privacy_levels(self) -> dict[str, str]:
        """Profile -> level last applied; the key GLOBAL holds the global level."""
        return dict(self.conn.execute("SELECT profile, level FROM privacy").fetchall())

    def save_privacy_level(self, profile: str, level: str | None) -> None:
        """Remember `level` for `profile` (GLOBAL: the global one); None forgets the profile's own."""
        with self.database.transaction(raw=True) as conn:
            if level is None:
                conn.execute("DELETE FROM privacy WHERE profile = ?", (profile,))
            else:
                conn.execute(
                    "INSERT INTO privacy VALUES (?, ?) ON CONFLICT (profile) DO UPDATE SET level = excluded.level",
                    (profile, level),
                )

    # -- reading -------------------------------------------------------------------------

    def count_queries(self) -> int:
        return self.conn.execute("SELECT count(*) FROM queries").fetchone()[0]

    def export_queries(
        self, start: float, end: float, profile: str | None = None
    ) -> Iterator[tuple]:
        """Raw rows with start <= time < end, oldest first, as QUERY_COLUMNS."""
        where, params = "q.id >= ? AND q.id < ?", [_id_bound(start), _id_bound(end)]
        if profile is not None:
            where += " AND p.text = ?"
            params.append(profile)
        cursor = self.conn.execute(
            f"""SELECT q.id >> {SEQ_BITS}, c.text, coalesce(d.text, ''), coalesce(p.text, ''),
                       coalesce(n.name, ''), q.qtype, q.kind, coalesce(r.text, ''),
                       coalesce(u.text, ''), q.latency_us
                FROM queries q
                LEFT JOIN terms c ON c.id = q.client
                LEFT JOIN terms d ON d.id = q.device
                LEFT JOIN terms p ON p.id = q.profile
                LEFT JOIN names n ON n.id = q.name
                LEFT JOIN terms r ON r.id = q.reason
                LEFT JOIN terms u ON u.id = q.upstream
                WHERE {where} ORDER BY q.id""",
            params,
        )
        for ms, client, device, prof, name, qtype, kind, reason, upstream, latency_us in cursor:
            yield (
                _iso(ms),
                client or "",
                device,
                prof,
                name,
                qtype,
                KINDS[kind] if 0 <= kind < len(KINDS) else "other",
                reason,
                upstream,
                f"{latency_us / 1000:.3f}",
            )

    def export_rollups(
        self, start: float, end: float, profile: str | None = None
    ) -> Iterator[tuple]:
        """Rollups of the hours that start in [start, end), as ROLLUP_COLUMNS.

        top_names is "name:count" pairs separated by spaces (names never hold a space: the
        resolver writes unprintable and space bytes as \\DDD).
        """
        where, params = "r.hour >= ? AND r.hour < ?", [-(-start // 3600), -(-end // 3600)]
        if profile is not None:
            where += " AND p.text = ?"
            params.append(profile)
        cursor = self.conn.execute(
            f"""SELECT r.hour, coalesce(p.text, ''), r.kind, coalesce(c.text, ''), r.queries,
                       (SELECT group_concat(name || ':' || queries, ' ') FROM (
                            SELECT n.name, t.queries FROM rollup_top t JOIN names n ON n.id = t.name
                            WHERE t.hour = r.hour AND t.profile = r.profile AND t.kind = r.kind
                              AND t.category = r.category
                            ORDER BY t.queries DESC, n.name))
                FROM rollups r
                LEFT JOIN terms p ON p.id = r.profile
                LEFT JOIN terms c ON c.id = r.category
                WHERE {where} ORDER BY r.hour, 2, r.kind, 4""",
            params,
        )
        for hour, prof, kind, category, queries, top in cursor:
            kind_text = KINDS[kind] if 0 <= kind < len(KINDS) else "other"
            yield (_iso(hour * HOUR_MS), prof, kind_text, category, queries, top or "")

    def statistics(self, now: float | None = None, top: int = 10) -> dict[str, PeriodStats]:
        """The home page: the last 24 hours and the last 7 days (current hour included).

        Counts come from `rollups` only; the top blocked names from `rollup_top` for the hours
        rolled up, and from the raw rows of the hours after (the current one, usually).
        """
        now = time.time() if now is None else now
        current = hour_of(now)
        raw_from = self.rolled_up_until()
        raw_from = current if raw_from is None else min(raw_from, current + 1)
        return {
            label: self._period(current - hours + 1, raw_from, top)
            for label, hours in (("24h", 24), ("7d", 24 * 7))
        }

    def _period(self, start_hour: int, raw_from: int, top: int) -> PeriodStats:
        conn = self.conn
        profiles = [
            ProfileCounts(profile or "", queries, blocked)
            for profile, queries, blocked in conn.execute(
                """SELECT p.text, sum(r.queries), sum(CASE WHEN r.kind = ? THEN r.queries ELSE 0 END)
                   FROM rollups r LEFT JOIN terms p ON p.id = r.profile
                   WHERE r.hour >= ? GROUP BY r.profile ORDER BY 2 DESC""",
                (BLOCKED, start_hour),
            )
        ]
        top_blocked = conn.execute(
            """SELECT n.name, t.c FROM (
                   SELECT name_id, sum(c) AS c FROM (
                       SELECT name AS name_id, queries AS c FROM rollup_top
                       WHERE hour >= ? AND hour < ? AND kind = ?
                       UNION ALL
                       SELECT name, 1 FROM queries WHERE id >= ? AND kind = ? AND name > 0
                   ) GROUP BY name_id ORDER BY c DESC LIMIT ?
               ) t JOIN names n ON n.id = t.name_id
               ORDER BY t.c DESC, n.name""",
            (
                start_hour,
                raw_from,
                BLOCKED,
                _id_bound(max(start_hour, raw_from) * 3600),
                BLOCKED,
                top,
            ),
        ).fetchall()
        return PeriodStats(
            start_hour=start_hour,
            queries=sum(p.queries for p in profiles),
            blocked=sum(p.blocked for p in profiles),
            top_blocked=[(name, count) for name, count in top_blocked],
            profiles=profiles,
        )
