"""The settings database's schema (DATA/safenest.db), as numbered migrations.

A migration, once released, is never edited: a change is a new, higher-numbered step. That is
why the first step writes the out-of-the-box policy with literal values instead of calling
`default_policy()`, whose later changes must not rewrite history.

Storage choices:

- Profile categories and blocked services are child tables: the admin page toggles them one at
  a time, and "which profiles block TikTok" is a plain query.
- A schedule's days, categories and services and an override's lists are sorted JSON arrays:
  they are only ever read and written with their row, and a row is the unit the admin edits.
- Times are ISO-8601 UTC text of fixed width (``2026-11-28T09:00:00.000000Z``), so that text
  order is time order and ``until <= ?`` works in SQL.
- ``position`` keeps the order a parent or a school's file gave (export gives it back).
- Foreign keys (``db.py`` turns them on) with ON DELETE CASCADE: a deleted profile takes its
  devices, rules, schedules and overrides with it.
"""

from __future__ import annotations

import sqlite_utils

from .db import Migration

_TABLES_V1 = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE profiles (
        id TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        birth_year INTEGER,
        birth_month INTEGER,
        band TEXT,
        allowlist_mode INTEGER NOT NULL DEFAULT 0,
        safesearch TEXT NOT NULL DEFAULT 'auto',
        youtube TEXT NOT NULL DEFAULT 'auto',
        bypass_defaults INTEGER NOT NULL DEFAULT 1
    )""",
    """CREATE TABLE profile_categories (
        profile TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        category TEXT NOT NULL,
        choice TEXT NOT NULL,
        PRIMARY KEY (profile, category)
    )""",
    """CREATE TABLE profile_services (
        profile TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        service TEXT NOT NULL,
        PRIMARY KEY (profile, service)
    )""",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        match TEXT NOT NULL,
        value TEXT NOT NULL,
        profile TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        UNIQUE (match, value)
    )""",
    "CREATE INDEX devices_profile ON devices(profile)",
    """CREATE TABLE rules (
        id INTEGER PRIMARY KEY,
        position INTEGER NOT NULL,
        profile TEXT REFERENCES profiles(id) ON DELETE CASCADE,
        domain TEXT NOT NULL,
        action TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    )""",
    # One rule per (profile or everyone, domain); NULLs are distinct in a plain UNIQUE.
    "CREATE UNIQUE INDEX rules_key ON rules(ifnull(profile, ''), domain)",
    "CREATE INDEX rules_profile ON rules(profile)",
    """CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        profile TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        days TEXT NOT NULL,
        start TEXT NOT NULL,
        "end" TEXT NOT NULL,
        mode TEXT NOT NULL,
        categories TEXT NOT NULL DEFAULT '[]',
        services TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE INDEX schedules_profile ON schedules(profile)",
    """CREATE TABLE overrides (
        id TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        profile TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        starts TEXT NOT NULL,
        until TEXT NOT NULL,
        categories TEXT NOT NULL DEFAULT '[]',
        services TEXT NOT NULL DEFAULT '[]',
        domains TEXT NOT NULL DEFAULT '[]',
        note TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX overrides_profile ON overrides(profile)",
    "CREATE INDEX overrides_until ON overrides(until)",
    """CREATE TABLE seen_devices (
        ip TEXT PRIMARY KEY,
        mac TEXT,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        queries INTEGER NOT NULL DEFAULT 0
    )""",
)

# The out-of-the-box policy (see the module docstring for why these are literals).
_SEED_V1 = (
    ("INSERT INTO meta (key, value) VALUES ('revision', '0')", ()),
    ("INSERT INTO meta (key, value) VALUES ('default_profile', 'default')", ()),
    ("INSERT INTO meta (key, value) VALUES ('timezone', 'Asia/Ho_Chi_Minh')", ()),
    ("INSERT INTO meta (key, value) VALUES ('schedule_ttl_cap', '300')", ()),
    (
        "INSERT INTO profiles (id, position, name, kind, band) VALUES (?, 0, ?, 'child', '12+')",
        ("default", "Mặc định / Default"),
    ),
)


def _policy_tables(db: sqlite_utils.Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration's transaction.
    for statement in _TABLES_V1:
        db.execute(statement)
    for statement, params in _SEED_V1:
        db.execute(statement, params)


# The locally administered bit (0x02 of the first octet) is set when the second hex digit of a
# stored MAC ("x2:..") is one of these: literal SQL, so that this step never changes.
_V2 = (
    "ALTER TABLE seen_devices ADD COLUMN randomized INTEGER NOT NULL DEFAULT 0",
    """UPDATE seen_devices SET randomized = 1
       WHERE mac IS NOT NULL AND substr(mac, 2, 1) IN ('2', '3', '6', '7', 'a', 'b', 'e', 'f')""",
    # forget_seen and the row cap find the oldest rows by it.
    "CREATE INDEX seen_devices_last_seen ON seen_devices(last_seen)",
)


def _seen_randomized(db: sqlite_utils.Database) -> None:
    for statement in _V2:
        db.execute(statement)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "policy tables and the default profile", _policy_tables),
    Migration(2, "seen devices: randomized MAC, index by last seen", _seen_randomized),
)
