"""The policy store on a real SQLite file: migrations, round trips, atomic writes, revisions, cascades."""

from __future__ import annotations

import os
import sqlite3
import stat
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent.policy.document import from_document
from agent.policy.model import Device, Override, Profile, Rule, Schedule, default_policy
from agent.storage import Database
from agent.storage import policy_store as store_module
from agent.storage.policy_schema import MIGRATIONS
from agent.storage.policy_store import (
    PolicyStore,
    PolicyStoreError,
    open_policy_store,
    policy_db_path,
)
from tests.test_policy_document import KNOWN, SERVICES, doc_examples, rich_policy

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def family():
    return from_document(tomllib.loads(doc_examples()["family"]), KNOWN, SERVICES)


def school():
    return from_document(tomllib.loads(doc_examples()["school"]), KNOWN, SERVICES)


@pytest.fixture
def store(tmp_path):
    return open_policy_store(tmp_path)


def rows(tmp_path, sql: str) -> list[tuple]:
    """Read the file through a separate plain connection: what is really on disk."""
    conn = sqlite3.connect(policy_db_path(tmp_path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- migrations


def test_a_fresh_database_holds_the_default_policy(tmp_path, store):
    assert store.load() == default_policy()
    assert store.revision() == 0
    assert store.database.schema_version() == len(MIGRATIONS)
    tables = {
        name for (name,) in rows(tmp_path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert {
        "meta",
        "profiles",
        "profile_categories",
        "profile_services",
        "devices",
        "rules",
    } <= tables
    assert {"schedules", "overrides", "seen_devices"} <= tables
    assert rows(tmp_path, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_migrates_nothing_and_keeps_the_data(tmp_path, store):
    store.replace(family())
    revision = store.revision()
    store.database.close()
    again = open_policy_store(tmp_path)
    assert again.database.schema_version() == len(MIGRATIONS)
    assert again.load() == family()
    assert again.revision() == revision
    assert rows(tmp_path, "SELECT count(*) FROM profiles WHERE id = 'default'") == [(1,)]


def test_the_data_folder_and_database_files_are_private(tmp_path):
    data = tmp_path / "var"
    store = open_policy_store(data)
    store.replace(family())  # names children and their birth months
    store.record_seen([("10.0.5.8", None, 1, NOW, NOW)])
    names = {p.name for p in data.iterdir()}
    assert {"safenest.db", "safenest.db-wal", "safenest.db-shm"} <= names
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("safenest.db", "safenest.db-wal", "safenest.db-shm"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    store.database.close()


def test_an_existing_open_data_folder_and_file_are_made_private(tmp_path):
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as another part of SafeNest (the lists) may have made it
    first = open_policy_store(data)
    first.database.close()
    os.chmod(policy_db_path(data), 0o644)
    again = open_policy_store(data)
    assert again.load() == default_policy()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(policy_db_path(data).stat().st_mode) == 0o600


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("make", [family, school, rich_policy, default_policy])
def test_replace_then_load_gives_the_same_policy(tmp_path, store, make):
    store.replace(make())
    assert store.load() == make()
    # and from another connection, as the running agent reads it
    assert PolicyStore(Database(policy_db_path(tmp_path), MIGRATIONS)).load() == make()


def test_sets_are_stored_sorted_and_times_as_fixed_width_utc_text(tmp_path, store):
    store.replace(rich_policy())
    assert rows(
        tmp_path, "SELECT days, categories, services FROM schedules WHERE id = 'homework'"
    ) == [("[0, 2]", '["online_games"]', '["youtube"]')]
    assert rows(tmp_path, "SELECT starts, until FROM overrides WHERE id = 'games'") == [
        ("2026-11-28T09:00:00.250000Z", "2026-11-28T10:00:00.250000Z")
    ]
    assert rows(
        tmp_path, "SELECT service FROM profile_services WHERE profile = 'lan' ORDER BY service"
    ) == [
        ("roblox",),
        ("tiktok",),
    ]


def test_replace_removes_what_the_new_policy_does_not_have(store):
    store.replace(family())
    store.replace(school())
    assert store.load() == school()


# ---------------------------------------------------------------- all or nothing


def test_an_invalid_policy_changes_nothing(tmp_path, store):
    store.replace(family())
    before, revision = store.load(), store.revision()
    bad = family()
    last = bad.overrides[-1]
    bad = replace(bad, overrides=bad.overrides[:-1] + (replace(last, until=last.starts),))
    with pytest.raises(PolicyStoreError) as caught:
        store.replace(bad)
    assert caught.value.problems == [
        "overrides[0].until: 2026-11-28T09:00:00Z is not after starts (2026-11-28T09:00:00Z)"
    ]
    assert open_policy_store(tmp_path).load() == before
    assert store.revision() == revision


def test_a_failure_while_writing_rolls_back_everything(tmp_path, store, monkeypatch):
    store.replace(family())
    before, revision = store.load(), store.revision()

    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module, "_write_schedule", broken)  # after profiles, devices, rules
    with pytest.raises(sqlite3.OperationalError):
        store.replace(school())
    monkeypatch.undo()
    assert open_policy_store(tmp_path).load() == before
    assert store.revision() == revision
    assert rows(tmp_path, "SELECT count(*) FROM devices") == [(3,)]


# ---------------------------------------------------------------- revisions


def test_every_policy_write_bumps_the_revision_and_seen_devices_do_not(store):
    revisions = [store.revision()]
    store.save_profile(Profile("lan", "Lan", birth=(2017, 3)))
    revisions.append(store.revision())
    store.save_device(Device("tab", "Tablet", "ip", "192.168.1.40", "lan"))
    revisions.append(store.revision())
    store.add_rule(Rule("youtube.com", "block", "lan"))
    revisions.append(store.revision())
    store.save_schedule(
        Schedule("bed", "lan", "Bed", frozenset({0}), "21:30", "06:30", "internet_off")
    )
    revisions.append(store.revision())
    store.add_override(Override("p", "lan", "pause", NOW, NOW + timedelta(hours=1)))
    revisions.append(store.revision())
    store.save_options(timezone="UTC")
    revisions.append(store.revision())
    assert revisions == [0, 1, 2, 3, 4, 5, 6]
    store.record_seen([("192.168.1.50", None, 3, NOW, NOW)])
    assert store.revision() == 6
    assert store.prune_overrides(NOW) == 0
    assert store.revision() == 6
    assert store.prune_overrides(NOW + timedelta(hours=1)) == 1
    assert store.revision() == 7


def test_a_refused_edit_does_not_bump_the_revision(store):
    with pytest.raises(PolicyStoreError, match='no profile "minh"'):
        store.save_device(Device("phone", "Phone", "ip", "192.168.1.31", "minh"))
    assert store.revision() == 0
    assert store.load() == default_policy()


# ---------------------------------------------------------------- edits


def test_deleting_a_profile_takes_its_devices_rules_schedules_and_overrides(tmp_path, store):
    store.replace(family())
    store.delete_profile("minh")
    policy = store.load()
    assert "minh" not in {p.id for p in policy.profiles}
    for section in ("devices", "rules", "schedules", "overrides"):
        assert all(x.profile != "minh" for x in getattr(policy, section))
    assert [d.id for d in policy.devices] == ["lan-phone", "tablet"]
    assert [s.id for s in policy.schedules] == ["school-nights"]
    for table in (
        "devices",
        "rules",
        "schedules",
        "overrides",
        "profile_services",
        "profile_categories",
    ):
        assert rows(tmp_path, f"SELECT count(*) FROM {table} WHERE profile = 'minh'") == [(0,)]


def test_the_default_profile_cannot_be_deleted_until_another_is_default(store):
    store.replace(family())
    with pytest.raises(PolicyStoreError, match="default profile"):
        store.delete_profile("default")
    store.save_options(default_profile="parents")
    store.delete_profile("default")
    assert store.load().default_profile == "parents"
    with pytest.raises(PolicyStoreError, match='no profile "default"'):
        store.delete_profile("default")


def test_changing_a_profile_keeps_its_devices_and_replaces_its_choices(store):
    store.replace(family())
    minh = store.load().profile("minh")
    store.save_profile(
        replace(
            minh,
            name="Minh (14)",
            services=frozenset({"roblox"}),
            categories={"messaging": "block"},
        )
    )
    policy = store.load()
    assert policy.profile("minh").name == "Minh (14)"
    assert policy.profile("minh").services == {"roblox"}
    assert policy.profile("minh").categories == {"messaging": "block"}
    assert [d.id for d in policy.devices] == [d.id for d in family().devices]
    assert [p.id for p in policy.profiles] == [p.id for p in family().profiles]  # keeps its place


def test_edits_are_validated_like_a_document(store):
    with pytest.raises(PolicyStoreError) as caught:
        store.save_profile(Profile("lan", "Lan", birth=(2017, 13), categories={"malware": "allow"}))
    assert caught.value.problems == [
        "profiles[1].birth.month: 13 is not a month (1-12)",
        'profiles[1].categories.malware: "malware" is blocked for everyone (always) and cannot be loosened',
    ]
    with pytest.raises(PolicyStoreError, match="host bits"):
        store.save_device(Device("net", "", "cidr", "10.0.7.5/24", "default"))
    with pytest.raises(PolicyStoreError, match="not a known time zone"):
        store.save_options(timezone="Mars/Olympus")
    with pytest.raises(PolicyStoreError, match='no profile "nobody"'):
        store.save_options(default_profile="nobody")
    assert store.load() == default_policy()
    assert store.revision() == 0


def test_devices_are_saved_normalized_and_deleted(store):
    store.save_device(Device("tab", "Tablet", "mac", "AA-BB-CC-DD-EE-FF", "default"))
    assert store.load().devices == (Device("tab", "Tablet", "mac", "aa:bb:cc:dd:ee:ff", "default"),)
    store.save_device(Device("tab", "Tablet", "ip", "192.168.1.40", "default"))  # same id: changed
    assert store.load().devices == (Device("tab", "Tablet", "ip", "192.168.1.40", "default"),)
    with pytest.raises(PolicyStoreError, match="another device has"):
        store.save_device(Device("tab2", "", "ip", "192.168.1.40", "default"))
    store.delete_device("tab")
    assert store.load().devices == ()
    with pytest.raises(PolicyStoreError, match='no device "tab"'):
        store.delete_device("tab")


def test_a_rule_for_the_same_profile_and_domain_is_replaced(store):
    store.save_profile(Profile("lan", "Lan", band="00+"))
    store.add_rule(Rule("YouTube.com", "block", "lan"))
    store.add_rule(Rule("youtube.com", "allow", None))
    store.add_rule(Rule("youtube.com", "allow", "lan", "homework"))
    assert store.load().rules == (
        Rule("youtube.com", "allow", None),
        Rule("youtube.com", "allow", "lan", "homework"),
    )
    store.delete_rule("youtube.com")
    assert store.load().rules == (Rule("youtube.com", "allow", "lan", "homework"),)
    with pytest.raises(PolicyStoreError, match="no rule for youtube.com of everyone"):
        store.delete_rule("youtube.com")
    store.delete_rule("YOUTUBE.com", "lan")
    assert store.load().rules == ()


def test_schedules_are_saved_and_deleted(store):
    bed = Schedule("bed", "default", "Bed", frozenset({6, 0}), "21:30", "06:30", "internet_off")
    store.save_schedule(bed)
    store.save_schedule(replace(bed, end="07:00"))
    assert store.load().schedules == (replace(bed, end="07:00"),)
    with pytest.raises(PolicyStoreError, match="not HH:MM"):
        store.save_schedule(replace(bed, start="7:00"))
    store.delete_schedule("bed")
    assert store.load().schedules == ()


def test_overrides_end_early_and_are_pruned(store):
    reward = Override(
        "yt", "default", "reward", NOW, NOW + timedelta(hours=1), services=frozenset({"youtube"})
    )
    later = Override(
        "later", "default", "pause", NOW + timedelta(hours=2), NOW + timedelta(hours=3)
    )
    store.add_override(reward)
    store.add_override(later)
    with pytest.raises(PolicyStoreError, match="already exists"):
        store.add_override(reward)
    store.end_override("yt", NOW + timedelta(minutes=10))
    store.end_override("later", NOW + timedelta(minutes=10))  # not started: gone
    assert store.load().overrides == (replace(reward, until=NOW + timedelta(minutes=10)),)
    with pytest.raises(PolicyStoreError, match='no override "later"'):
        store.end_override("later", NOW)
    assert store.prune_overrides(NOW + timedelta(minutes=9)) == 0
    assert store.prune_overrides(NOW + timedelta(minutes=10)) == 1
    assert store.load().overrides == ()


# ---------------------------------------------------------------- seen devices


def test_seen_devices_add_up_and_unassigned_ones_are_listed(store):
    store.replace(school())
    t1, t2 = NOW, NOW + timedelta(minutes=5)
    store.record_seen(
        [
            ("10.0.7.23", None, 10, t2, t2),  # in the 7A subnet
            ("10.0.5.8", "AA:BB:CC:00:11:22", 4, t1, t1),
            ("10.0.5.9", None, 1, t1, t1),
        ]
    )
    early = t1 - timedelta(minutes=1)
    store.record_seen(
        [("10.0.5.8", None, 6, t2, t2), ("10.0.5.9", "02:00:00:00:00:09", 2, early, t1)]
    )
    seen = {s.ip: s for s in store.seen_devices()}
    assert seen["10.0.5.8"].queries == 10
    assert seen["10.0.5.8"].mac == "aa:bb:cc:00:11:22"  # kept when a later batch has none
    assert (seen["10.0.5.8"].first_seen, seen["10.0.5.8"].last_seen) == (t1, t2)
    assert seen["10.0.5.9"].first_seen == early
    assert [s.ip for s in store.unassigned_devices()] == ["10.0.5.8", "10.0.5.9"]
    store.save_device(Device("printer", "", "mac", "aa:bb:cc:00:11:22", "staff"))
    assert [s.ip for s in store.unassigned_devices()] == ["10.0.5.9"]
    assert store.forget_seen(t1 + timedelta(seconds=1)) == 1
    # the same last_seen: ordered by ip
    assert [s.ip for s in store.seen_devices()] == ["10.0.5.8", "10.0.7.23"]


def test_the_real_first_seen_time_is_kept(store):
    t0 = NOW - timedelta(seconds=50)  # the first query of the window, not the flush time
    store.record_seen([("10.0.5.8", None, 3, t0, NOW)])
    store.record_seen(
        [("10.0.5.8", None, 2, NOW + timedelta(minutes=1), NOW + timedelta(minutes=2))]
    )
    (seen,) = store.seen_devices()
    assert (seen.first_seen, seen.last_seen, seen.queries) == (t0, NOW + timedelta(minutes=2), 5)


def test_randomized_macs_are_stored(tmp_path, store):
    store.record_seen(
        [
            ("10.0.5.8", "3A:11:22:33:44:55", 1, NOW, NOW),  # 0x3a: locally administered
            ("10.0.5.9", "3c:22:fb:10:20:30", 1, NOW, NOW),  # a manufacturer's address
            ("10.0.5.10", None, 1, NOW, NOW),
        ]
    )
    flags = {s.ip: s.randomized for s in store.seen_devices()}
    assert flags == {"10.0.5.8": True, "10.0.5.9": False, "10.0.5.10": False}
    later = NOW + timedelta(minutes=1)
    # A batch without the MAC keeps the flag; a new MAC on the address sets it again.
    store.record_seen(
        [("10.0.5.8", None, 1, later, later), ("10.0.5.9", "02:00:00:00:00:01", 1, later, later)]
    )
    flags = {s.ip: s.randomized for s in store.seen_devices()}
    assert flags == {"10.0.5.8": True, "10.0.5.9": True, "10.0.5.10": False}
    assert rows(tmp_path, "SELECT ip FROM seen_devices WHERE randomized = 1 ORDER BY ip") == [
        ("10.0.5.8",),
        ("10.0.5.9",),
    ]


def test_migration_2_marks_the_randomized_macs_already_seen(tmp_path):
    version_1 = Database(policy_db_path(tmp_path), MIGRATIONS[:1])
    version_1.conn.executemany(
        "INSERT INTO seen_devices (ip, mac, first_seen, last_seen, queries) VALUES (?, ?, ?, ?, 1)",
        [
            (f"10.0.0.{n}", mac, "2026-11-28T09:00:00.000000Z", "2026-11-28T09:00:00.000000Z")
            for n, mac in enumerate(
                [
                    None,
                    "00:11:22:33:44:55",
                    "f2:11:22:33:44:55",
                    "0e:00:00:00:00:01",
                    "a6:00:00:00:00:01",
                    "fc:00:00:00:00:01",
                ]
            )
        ],
    )
    version_1.close()
    store = open_policy_store(tmp_path)
    assert store.database.schema_version() == 2
    flags = {s.mac: s.randomized for s in store.seen_devices()}
    assert flags == {
        None: False,
        "00:11:22:33:44:55": False,
        "f2:11:22:33:44:55": True,
        "0e:00:00:00:00:01": True,
        "a6:00:00:00:00:01": True,
        "fc:00:00:00:00:01": False,
    }


def test_a_bad_seen_entry_is_skipped_and_counted_the_rest_is_kept(store):
    store.record_seen([("10.0.5.8", None, 1, NOW, NOW)])
    naive = datetime(2026, 11, 28, 9, 0)
    result = store.record_seen(
        [
            ("10.0.5.8", None, 5, NOW, NOW),
            ("10.0.5.9", "zz", 1, NOW, NOW),
            ("not-an-ip", None, 1, NOW, NOW),
            ("10.0.5.10", None, -1, NOW, NOW),
            ("10.0.5.11", None, 1, naive, naive),
            ("10.0.5.12", None, 1, NOW + timedelta(seconds=1), NOW),
            ("10.0.5.13", None, 1, "yesterday", NOW),
            ("10.0.5.14",),
            ("10.0.5.15", None, 2, NOW, NOW),
        ]
    )
    assert result.written == 2
    assert len(result.skipped) == 7
    assert "'zz' is not a MAC address" in result.skipped[0]
    assert [(s.ip, s.queries) for s in store.seen_devices()] == [("10.0.5.15", 2), ("10.0.5.8", 6)]


def test_seen_devices_are_capped_to_the_most_recently_seen(store, monkeypatch):
    monkeypatch.setattr(store_module, "SEEN_MAX_ROWS", 50)
    old = [(f"10.1.0.{n}", None, 1, NOW, NOW + timedelta(seconds=n)) for n in range(40)]
    store.record_seen(old)
    later = NOW + timedelta(minutes=1)
    # A burst of spoofed sources: the newest 50 rows stay, the oldest go first.
    spoofed = [(f"10.2.{n // 250}.{n % 250}", None, 1, later, later) for n in range(30)]
    assert store.record_seen(spoofed).written == 30
    seen = store.seen_devices()
    assert len(seen) == 50
    assert sum(s.ip.startswith("10.2.") for s in seen) == 30
    assert {s.ip for s in seen if s.ip.startswith("10.1.")} == {
        f"10.1.0.{n}" for n in range(20, 40)
    }
