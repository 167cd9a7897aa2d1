"""The policy a parent or a school sets, kept in DATA/safenest.db (schema: policy_schema.py).

`PolicyStore.load()` gives the whole :class:`~agent.policy.model.Policy`; `replace()` writes a
whole one (an import) in one transaction; the small edits the admin page makes (save a profile,
delete a device, add a rule, start a reward, ...) are one transaction each too.

Every write is checked before anything is saved, by the same rules as an imported document
(`agent.policy.document.check_policy`): inside the write transaction the store reads the policy,
applies the edit to the values, validates the result and only then writes the rows that
changed. An unknown profile, a bad MAC or a schedule ending before it starts is a
`PolicyStoreError` and nothing is half-saved. The store does not know the catalogue or the
criteria in force, so unknown category and service ids are the caller's check (the import
command and the admin page pass what is in force); the ``always`` categories are always protected.

Every policy write bumps ``meta.revision`` in the same transaction: the running agent compares
one integer to know whether to rebuild its snapshot. Recording seen devices does not bump it,
since it changes nothing a decision reads. Seen devices are bounded, since any source address on
the LAN can be spoofed: the `SEEN_MAX_ROWS` most recently seen are kept, and the agent forgets
those unseen for `SEEN_KEEP_DAYS`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from agent.devices.mac import is_randomized_mac
from agent.index import normalize_domain
from agent.policy.document import PolicyDocumentError, check_policy
from agent.policy.model import (
    DEFAULT_PROFILE_ID,
    DEFAULT_TIMEZONE,
    Device,
    Override,
    Policy,
    Profile,
    Rule,
    Schedule,
)

from .db import Database
from .policy_schema import MIGRATIONS

__all__ = [
    "DB_NAME",
    "PolicyStore",
    "PolicyStoreError",
    "SEEN_KEEP_DAYS",
    "SEEN_MAX_ROWS",
    "SeenDevice",
    "SeenRecorded",
    "open_policy_store",
    "policy_db_path",
]

DB_NAME = "safenest.db"
SEEN_MAX_ROWS = 1024  # seen_devices keeps the most recently seen: spoofed sources cannot grow it
SEEN_KEEP_DAYS = 30  # the watcher forgets devices not seen for this long
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class PolicyStoreError(ValueError):
    """An edit that was refused; nothing was saved. `problems` lists each reason."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class SeenDevice:
    """A client the resolver has answered, for the admin page's "devices not yet assigned"."""

    ip: str
    mac: str | None
    first_seen: datetime
    last_seen: datetime
    queries: int
    randomized: bool = False  # the MAC is randomized (private Wi-Fi address): it may change


@dataclass(frozen=True, slots=True)
class SeenRecorded:
    """What `record_seen` did: rows written, and entries skipped (each with its reason)."""

    written: int
    skipped: tuple[str, ...] = ()


def policy_db_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_NAME


def open_policy_store(data_dir: str | Path) -> PolicyStore:
    """The store on DATA/safenest.db, created and migrated on first use."""
    return PolicyStore(Database(policy_db_path(data_dir), MIGRATIONS))


def _time_text(t: datetime) -> str:
    """Fixed width, so that comparing the text compares the times."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{t!r} has no time zone: give an aware datetime")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_value(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _seen_row(entry: tuple) -> tuple[str, str | None, str, str, int, int]:
    """The seen_devices row of one (ip, mac, queries, first seen, last seen); ValueError if bad."""
    ip, mac, queries, first, last = entry
    address = str(ipaddress.ip_address(ip))
    if mac is not None:
        mac = mac.strip().lower().replace("-", ":")
        if not _MAC_RE.fullmatch(mac):
            raise ValueError(f"{mac!r} is not a MAC address (like aa:bb:cc:dd:ee:ff)")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise ValueError(f"queries must be a whole number >= 0, got {queries!r}")
    first_text, last_text = _time_text(first), _time_text(last)
    if first_text > last_text:
        raise ValueError(f"first seen {first_text} is after last seen {last_text}")
    randomized = mac is not None and is_randomized_mac(mac)
    return address, mac, first_text, last_text, queries, int(randomized)


def _json_list(values: Iterable) -> str:
    return json.dumps(sorted(values))


class PolicyStore:
    """Loads and saves the policy; `database` must carry policy_schema.MIGRATIONS."""

    def __init__(self, database: Database):
        self.database = database

    # ------------------------------------------------------------ reading

    def load(self) -> Policy:
        """The whole policy as one consistent read (a fresh database gives `default_policy()`)."""
        with self._read() as conn:
            return _read_policy(conn)

    def revision(self) -> int:
        row = self.database.conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    def seen_devices(self) -> list[SeenDevice]:
        rows = self.database.conn.execute(
            "SELECT ip, mac, first_seen, last_seen, queries, randomized FROM seen_devices"
            " ORDER BY last_seen DESC, ip"
        ).fetchall()
        return [
            SeenDevice(ip, mac, _time_value(first), _time_value(last), n, bool(randomized))
            for ip, mac, first, last, n, randomized in rows
        ]

    def unassigned_devices(self, policy: Policy | None = None) -> list[SeenDevice]:
        """Seen devices that no device entry (IP, subnet or MAC) covers, most recent first."""
        policy = policy or self.load()
        ips = {d.value for d in policy.devices if d.match == "ip"}
        macs = {d.value for d in policy.devices if d.match == "mac"}
        nets = [ipaddress.ip_network(d.value) for d in policy.devices if d.match == "cidr"]

        def assigned(seen: SeenDevice) -> bool:
            if seen.ip in ips or (seen.mac is not None and seen.mac in macs):
                return True
            address = ipaddress.ip_address(seen.ip)
            return any(address in net for net in nets)

        return [s for s in self.seen_devices() if not assigned(s)]

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # A read transaction: WAL gives it one snapshot even while the admin writes.
        conn = self.database.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # ------------------------------------------------------------ writing the whole policy

    def replace(self, policy: Policy) -> int:
        """Write `policy` in place of everything, all or nothing; returns the new revision."""
        checked = _checked(policy)
        with self.database.transaction() as db:
            conn = db.conn
            conn.execute(
                "DELETE FROM profiles WHERE id NOT IN (SELECT value FROM json_each(?))",
                (json.dumps([p.id for p in checked.profiles]),),
            )
            for table in ("devices", "rules", "schedules", "overrides"):
                conn.execute(f"DELETE FROM {table}")
            for position, profile in enumerate(checked.profiles):
                _write_profile(conn, profile, position)
            for position, device in enumerate(checked.devices):
                _write_device(conn, device, position)
            for position, rule in enumerate(checked.rules):
                _write_rule(conn, rule, position)
            for position, schedule in enumerate(checked.schedules):
                _write_schedule(conn, schedule, position)
            for position, override in enumerate(checked.overrides):
                _write_override(conn, override, position)
            _write_options(conn, checked)
            return _bump(conn)

    # ------------------------------------------------------------ the admin page's edits

    def save_options(
        self,
        default_profile: str | None = None,
        timezone: str | None = None,
        schedule_ttl_cap: int | None = None,
    ) -> int:
        """Change the default profile, the time zone or the schedule TTL cap (None: unchanged)."""
        changes = {
            k: v
            for k, v in (
                ("default_profile", default_profile),
                ("timezone", timezone),
                ("schedule_ttl_cap", schedule_ttl_cap),
            )
            if v is not None
        }
        return self._edit(lambda p: replace(p, **changes), lambda conn, p: _write_options(conn, p))

    def save_profile(self, profile: Profile) -> int:
        """Add a profile, or change the one with this id (its devices and rules stay)."""
        return self._edit(
            lambda p: replace(p, profiles=_put(p.profiles, profile)),
            lambda conn, p: _write_profile(
                conn, _by_id(p.profiles, profile.id), _position(conn, "profiles", profile.id)
            ),
        )

    def delete_profile(self, profile_id: str) -> int:
        """Delete a profile with its devices, rules, schedules and overrides; never the default one."""

        def change(p: Policy) -> Policy:
            _require_profile(p, profile_id)
            if profile_id == p.default_profile:
                raise PolicyStoreError(
                    f'profile "{profile_id}" is the default profile (for unknown devices): '
                    "choose another default profile first"
                )
            return p

        return self._edit(
            change, lambda conn, p: conn.execute("DELETE FROM profiles WHERE id = ?", (profile_id,))
        )

    def save_device(self, device: Device) -> int:
        def change(p: Policy) -> Policy:
            _require_profile(p, device.profile)
            return replace(p, devices=_put(p.devices, device))

        return self._edit(
            change,
            lambda conn, p: _write_device(
                conn, _by_id(p.devices, device.id), _position(conn, "devices", device.id)
            ),
        )

    def delete_device(self, device_id: str) -> int:
        return self._delete("devices", device_id, "device")

    def add_rule(self, rule: Rule) -> int:
        """Add a rule; one for the same profile (or everyone) and domain is replaced."""

        def change(p: Policy) -> Policy:
            if rule.profile is not None:
                _require_profile(p, rule.profile)
            kept = tuple(r for r in p.rules if (r.profile, r.domain) != (rule.profile, rule.domain))
            return replace(p, rules=kept + (rule,))

        def write(conn: sqlite3.Connection, p: Policy) -> None:
            saved = p.rules[-1]  # normalized (the domain in canonical form)
            conn.execute(
                "DELETE FROM rules WHERE ifnull(profile, '') = ifnull(?, '') AND domain = ?",
                (saved.profile, saved.domain),
            )
            _write_rule(conn, saved, _next_position(conn, "rules"))

        return self._edit(change, write)

    def delete_rule(self, domain: str, profile: str | None = None) -> int:
        """Delete the rule for `domain` of `profile` (None: the rule for everyone)."""
        name = normalize_domain(domain) or domain
        with self.database.transaction() as db:
            deleted = db.conn.execute(
                "DELETE FROM rules WHERE ifnull(profile, '') = ifnull(?, '') AND domain = ?",
                (profile, name),
            ).rowcount
            if not deleted:
                whose = f'profile "{profile}"' if profile else "everyone"
                raise PolicyStoreError(f"no rule for {name} of {whose}")
            return _bump(db.conn)

    def save_schedule(self, schedule: Schedule) -> int:
        def change(p: Policy) -> Policy:
            _require_profile(p, schedule.profile)
            return replace(p, schedules=_put(p.schedules, schedule))

        return self._edit(
            change,
            lambda conn, p: _write_schedule(
                conn, _by_id(p.schedules, schedule.id), _position(conn, "schedules", schedule.id)
            ),
        )

    def delete_schedule(self, schedule_id: str) -> int:
        return self._delete("schedules", schedule_id, "schedule")

    def add_override(self, override: Override) -> int:
        """Start a pause or a reward; its id must be new."""

        def change(p: Policy) -> Policy:
            _require_profile(p, override.profile)
            if any(o.id == override.id for o in p.overrides):
                raise PolicyStoreError(
                    f'an override "{override.id}" already exists: choose another id'
                )
            return replace(p, overrides=p.overrides + (override,))

        return self._edit(
            change,
            lambda conn, p: _write_override(
                conn, p.overrides[-1], _next_position(conn, "overrides")
            ),
        )

    def end_override(self, override_id: str, now: datetime) -> int:
        """End a pause or reward now: one not started yet is deleted, one running ends at `now`."""
        now_text = _time_text(now)
        with self.database.transaction() as db:
            row = db.conn.execute(
                "SELECT starts, until FROM overrides WHERE id = ?", (override_id,)
            ).fetchone()
            if row is None:
                raise PolicyStoreError(f'no override "{override_id}"')
            starts, until = row
            if now_text <= starts:
                db.conn.execute("DELETE FROM overrides WHERE id = ?", (override_id,))
            elif now_text < until:
                db.conn.execute(
                    "UPDATE overrides SET until = ? WHERE id = ?", (now_text, override_id)
                )
            return _bump(db.conn)

    def prune_overrides(self, now: datetime) -> int:
        """Delete the overrides that ended by `now`; returns how many (the revision moves only if any)."""
        with self.database.transaction() as db:
            count = db.conn.execute(
                "DELETE FROM overrides WHERE until <= ?", (_time_text(now),)
            ).rowcount
            if count:
                _bump(db.conn)
            return count

    def record_seen(
        self, batch: Iterable[tuple[str, str | None, int, datetime, datetime]]
    ) -> SeenRecorded:
        """Add a batch of (ip, mac or None, queries, first seen, last seen) to seen_devices.

        A bad entry is skipped and counted (with its reason) instead of losing the batch; the
        stored first-seen time is the earliest ever given. Then only the `SEEN_MAX_ROWS` most
        recently seen rows are kept.
        """
        rows = []
        skipped = []
        for entry in batch:
            try:
                rows.append(_seen_row(entry))
            except (TypeError, ValueError, AttributeError) as exc:
                skipped.append(f"{entry!r}: {exc}")
        if rows:
            with self.database.transaction() as db:
                db.conn.executemany(
                    """INSERT INTO seen_devices (ip, mac, first_seen, last_seen, queries, randomized)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (ip) DO UPDATE SET
                         mac = coalesce(excluded.mac, mac),
                         randomized = CASE WHEN excluded.mac IS NULL THEN randomized
                                           ELSE excluded.randomized END,
                         first_seen = min(first_seen, excluded.first_seen),
                         last_seen = max(last_seen, excluded.last_seen),
                         queries = queries + excluded.queries""",
                    rows,
                )
                db.conn.execute(
                    """DELETE FROM seen_devices WHERE ip NOT IN
                       (SELECT ip FROM seen_devices ORDER BY last_seen DESC, ip LIMIT ?)""",
                    (SEEN_MAX_ROWS,),
                )
        return SeenRecorded(len(rows), tuple(skipped))

    def forget_seen(self, before: datetime) -> int:
        """Forget devices not seen since `before` (phones change addresses; the list must not grow forever)."""
        with self.database.transaction() as db:
            return db.conn.execute(
                "DELETE FROM seen_devices WHERE last_seen < ?", (_time_text(before),)
            ).rowcount

    # ------------------------------------------------------------ plumbing

    def _edit(
        self,
        change: Callable[[Policy], Policy],
        write: Callable[[sqlite3.Connection, Policy], object],
    ) -> int:
        """Read, change the values, check the result, write the rows: one transaction."""
        with self.database.transaction() as db:
            new = _checked(change(_read_policy(db.conn)))
            write(db.conn, new)
            return _bump(db.conn)

    def _delete(self, table: str, row_id: str, what: str) -> int:
        with self.database.transaction() as db:
            if not db.conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,)).rowcount:
                raise PolicyStoreError(f'no {what} "{row_id}"')
            return _bump(db.conn)


def _checked(policy: Policy) -> Policy:
    try:
        return check_policy(policy)
    except PolicyDocumentError as exc:
        raise PolicyStoreError(exc.problems) from None


def _require_profile(policy: Policy, profile_id: str) -> None:
    if all(p.id != profile_id for p in policy.profiles):
        raise PolicyStoreError(f'no profile "{profile_id}"')


def _put(items: tuple, item) -> tuple:
    """`items` with `item` in place of the one with its id, or appended."""
    if any(i.id == item.id for i in items):
        return tuple(item if i.id == item.id else i for i in items)
    return items + (item,)


def _by_id(items: tuple, item_id: str):
    return next(i for i in items if i.id == item_id)


def _position(conn: sqlite3.Connection, table: str, row_id: str) -> int:
    row = conn.execute(f"SELECT position FROM {table} WHERE id = ?", (row_id,)).fetchone()
    return row[0] if row else _next_position(conn, table)


def _next_position(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT ifnull(max(position) + 1, 0) FROM {table}").fetchone()[0]


def _bump(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
    return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])


# ---------------------------------------------------------------- rows <-> values


def _read_policy(conn: sqlite3.Connection) -> Policy:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    categories: dict[str, dict[str, str]] = {}
    for profile_id, category, choice in conn.execute(
        "SELECT profile, category, choice FROM profile_categories ORDER BY profile, category"
    ):
        categories.setdefault(profile_id, {})[category] = choice
    services: dict[str, set[str]] = {}
    for profile_id, service in conn.execute("SELECT profile, service FROM profile_services"):
        services.setdefault(profile_id, set()).add(service)
    profiles = tuple(
        Profile(
            id=pid,
            name=name,
            kind=kind,
            birth=None if year is None else (year, month),
            band=band,
            categories=categories.get(pid, {}),
            services=frozenset(services.get(pid, ())),
            allowlist_mode=bool(allowlist_mode),
            safesearch=safesearch,
            youtube=youtube,
            bypass_defaults=bool(bypass),
        )
        for pid, name, kind, year, month, band, allowlist_mode, safesearch, youtube, bypass in conn.execute(
            """SELECT id, name, kind, birth_year, birth_month, band, allowlist_mode, safesearch, youtube,
                      bypass_defaults FROM profiles ORDER BY position, id"""
        )
    )
    devices = tuple(
        Device(*row)
        for row in conn.execute(
            "SELECT id, name, match, value, profile FROM devices ORDER BY position, id"
        )
    )
    rules = tuple(
        Rule(domain, action, profile, note)
        for domain, action, profile, note in conn.execute(
            "SELECT domain, action, profile, note FROM rules ORDER BY position, id"
        )
    )
    schedules = tuple(
        Schedule(
            sid,
            profile,
            name,
            frozenset(json.loads(days)),
            start,
            end,
            mode,
            frozenset(json.loads(cats)),
            frozenset(json.loads(svcs)),
        )
        for sid, profile, name, days, start, end, mode, cats, svcs in conn.execute(
            """SELECT id, profile, name, days, start, "end", mode, categories, services
               FROM schedules ORDER BY position, id"""
        )
    )
    overrides = tuple(
        Override(
            oid,
            profile,
            kind,
            _time_value(starts),
            _time_value(until),
            frozenset(json.loads(cats)),
            frozenset(json.loads(svcs)),
            frozenset(json.loads(domains)),
            note,
        )
        for oid, profile, kind, starts, until, cats, svcs, domains, note in conn.execute(
            """SELECT id, profile, kind, starts, until, categories, services, domains, note
               FROM overrides ORDER BY position, id"""
        )
    )
    return Policy(
        profiles=profiles,
        devices=devices,
        rules=rules,
        schedules=schedules,
        overrides=overrides,
        default_profile=meta.get("default_profile", DEFAULT_PROFILE_ID),
        timezone=meta.get("timezone", DEFAULT_TIMEZONE),
        schedule_ttl_cap=int(meta.get("schedule_ttl_cap", 300)),
    )


def _write_options(conn: sqlite3.Connection, policy: Policy) -> None:
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [
            ("default_profile", policy.default_profile),
            ("timezone", policy.timezone),
            ("schedule_ttl_cap", str(policy.schedule_ttl_cap)),
        ],
    )


def _write_profile(conn: sqlite3.Connection, p: Profile, position: int) -> None:
    year, month = p.birth if p.birth is not None else (None, None)
    # An upsert, not INSERT OR REPLACE: replacing the row would cascade-delete its devices.
    conn.execute(
        """INSERT INTO profiles (id, position, name, kind, birth_year, birth_month, band, allowlist_mode,
                                 safesearch, youtube, bypass_defaults)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET position = excluded.position, name = excluded.name,
             kind = excluded.kind, birth_year = excluded.birth_year, birth_month = excluded.birth_month,
             band = excluded.band, allowlist_mode = excluded.allowlist_mode,
             safesearch = excluded.safesearch, youtube = excluded.youtube,
             bypass_defaults = excluded.bypass_defaults""",
        (
            p.id,
            position,
            p.name,
            p.kind,
            year,
            month,
            p.band,
            int(p.allowlist_mode),
            p.safesearch,
            p.youtube,
            int(p.bypass_defaults),
        ),
    )
    conn.execute("DELETE FROM profile_categories WHERE profile = ?", (p.id,))
    conn.executemany(
        "INSERT INTO profile_categories (profile, category, choice) VALUES (?, ?, ?)",
        [(p.id, category, choice) for category, choice in sorted(p.categories.items())],
    )
    conn.execute("DELETE FROM profile_services WHERE profile = ?", (p.id,))
    conn.executemany(
        "INSERT INTO profile_services (profile, service) VALUES (?, ?)",
        [(p.id, service) for service in sorted(p.services)],
    )


def _write_device(conn: sqlite3.Connection, d: Device, position: int) -> None:
    conn.execute(
        """INSERT INTO devices (id, position, name, match, value, profile) VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET position = excluded.position, name = excluded.name,
             match = excluded.match, value = excluded.value, profile = excluded.profile""",
        (d.id, position, d.name, d.match, d.value, d.profile),
    )


def _write_rule(conn: sqlite3.Connection, r: Rule, position: int) -> None:
    conn.execute(
        "INSERT INTO rules (position, profile, domain, action, note) VALUES (?, ?, ?, ?, ?)",
        (position, r.profile, r.domain, r.action, r.note),
    )


def _write_schedule(conn: sqlite3.Connection, s: Schedule, position: int) -> None:
    conn.execute(
        """INSERT INTO schedules (id, position, profile, name, days, start, "end", mode, categories, services)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET position = excluded.position, profile = excluded.profile,
             name = excluded.name, days = excluded.days, start = excluded.start, "end" = excluded."end",
             mode = excluded.mode, categories = excluded.categories, services = excluded.services""",
        (
            s.id,
            position,
            s.profile,
            s.name,
            _json_list(s.days),
            s.start,
            s.end,
            s.mode,
            _json_list(s.categories),
            _json_list(s.services),
        ),
    )


def _write_override(conn: sqlite3.Connection, o: Override, position: int) -> None:
    conn.execute(
        """INSERT INTO overrides (id, position, profile, kind, starts, until, categories, services, domains, note)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            o.id,
            position,
            o.profile,
            o.kind,
            _time_text(o.starts),
            _time_text(o.until),
            _json_list(o.categories),
            _json_list(o.services),
            _json_list(o.domains),
            o.note,
        ),
    )
