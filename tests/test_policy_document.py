"""The policy document: round trips through TOML and JSON, and every check with the path it names.

The family and school examples are read from docs/policy.md itself, so the documentation stays
a valid document.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.policy.document import (
    PolicyDocumentError,
    check_policy,
    default_known_categories,
    dumps,
    from_document,
    loads,
    to_document,
)
from agent.policy.model import Device, Override, Policy, Profile, Rule, Schedule, default_policy

DOCS = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
KNOWN = default_known_categories()
SERVICES = frozenset({"tiktok", "youtube", "roblox", "zalo"})


def doc_examples() -> dict[str, str]:
    """The TOML examples of docs/policy.md by their heading ("family", "school")."""
    text = DOCS.read_text(encoding="utf-8")
    examples = {}
    for heading, block in re.findall(r"## Example: a (\w+).*?```toml\n(.*?)```", text, re.S):
        examples[heading] = block
    assert set(examples) == {"family", "school"}
    return examples


def family_doc() -> dict:
    return tomllib.loads(doc_examples()["family"])


def school_doc() -> dict:
    return tomllib.loads(doc_examples()["school"])


def rich_policy() -> Policy:
    """Every field set to something other than its default."""
    starts = datetime(2026, 11, 28, 16, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=7)))
    return Policy(
        profiles=(
            Profile("default", "Mặc định", band="12+"),
            Profile(
                "lan",
                "Lan",
                birth=(2017, 3),
                categories={"online_games": "allow", "messaging": "block"},
                services=frozenset({"tiktok", "roblox"}),
                allowlist_mode=True,
                safesearch="on",
                youtube="strict",
                bypass_defaults=False,
            ),
            Profile("staff", "Staff", kind="adult", band="18+"),
        ),
        devices=(
            Device("phone", "Lan's phone", "mac", "3c:22:fb:10:20:30", "lan"),
            Device("pc", "PC", "ip", "fd00::23", "staff"),
            Device("net", "Staff net", "cidr", "10.0.1.0/24", "staff"),
        ),
        rules=(
            Rule("youtube.com", "allow", "lan", "school videos"),
            Rule("xn--bcher-kva.de", "block", None, ""),
        ),
        schedules=(
            Schedule(
                "bed",
                "lan",
                "Bedtime",
                frozenset({6, 0, 1, 2, 3}),
                "21:30",
                "06:30",
                "internet_off",
            ),
            Schedule(
                "homework",
                "lan",
                "Homework",
                frozenset({0, 2}),
                "18:00",
                "19:30",
                "block",
                frozenset({"online_games"}),
                frozenset({"youtube"}),
            ),  # fmt: skip
        ),
        overrides=(
            Override(
                "games",
                "lan",
                "reward",
                starts,
                starts + timedelta(hours=1),
                frozenset({"online_games"}),
                frozenset({"roblox"}),
                frozenset({"minecraft.net"}),
                "Saturday",
            ),  # fmt: skip
            Override("pause", "staff", "pause", starts, starts + timedelta(minutes=30)),
        ),
        default_profile="lan",
        timezone="Europe/Berlin",
        schedule_ttl_cap=120,
    )


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["toml", "json"])
@pytest.mark.parametrize("make", [rich_policy, default_policy], ids=["rich", "default"])
def test_policy_round_trips_through_text(fmt, make):
    policy = make()
    assert loads(dumps(policy, fmt), fmt, KNOWN, SERVICES) == policy


@pytest.mark.parametrize("fmt", ["toml", "json"])
@pytest.mark.parametrize("example", ["family", "school"])
def test_document_round_trips_through_policy(fmt, example):
    doc = tomllib.loads(doc_examples()[example])
    policy = from_document(doc, KNOWN, SERVICES)
    text = dumps(policy, fmt)
    again = loads(text, fmt, KNOWN, SERVICES)
    assert again == policy
    assert to_document(again) == to_document(policy)
    # What the author wrote survives (defaults filled in, times in UTC).
    written = to_document(policy)
    for section in ("profiles", "devices", "rules", "schedules"):
        assert [e.get("id", e.get("domain")) for e in written[section]] == [
            e.get("id", e.get("domain")) for e in doc.get(section, [])
        ]


def test_exported_times_are_utc_and_values_normalized():
    doc = family_doc()
    doc["devices"][0]["value"] = "3C-22-FB-10-20-30"
    doc["rules"][0]["domain"] = "YouTube.COM."
    written = to_document(from_document(doc, KNOWN, SERVICES))
    assert written["devices"][0]["value"] == "3c:22:fb:10:20:30"
    assert written["rules"][0]["domain"] == "youtube.com"
    assert written["overrides"][0]["starts"] == "2026-11-28T09:00:00Z"
    assert written["schedules"][0]["days"] == ["mon", "tue", "wed", "thu", "sun"]


def test_toml_native_datetimes_are_accepted():
    text = doc_examples()["family"].replace(
        '"2026-11-28T16:00:00+07:00"', "2026-11-28T16:00:00+07:00"
    )
    policy = loads(text, "toml", KNOWN, SERVICES)
    assert policy.overrides[0].starts == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def test_json_null_means_the_default():
    doc = json.loads(dumps(default_policy(), "json"))
    doc["profiles"][0]["safesearch"] = None
    doc["rules"] = [{"domain": "example.com", "action": "block", "profile": None, "note": None}]
    policy = from_document(doc, KNOWN)
    assert policy.profiles[0].safesearch == "auto"
    assert policy.rules == (Rule("example.com", "block", None, ""),)


def test_services_are_only_checked_against_a_catalogue_when_one_is_given():
    doc = family_doc()
    doc["profiles"][2]["services"] = ["not_in_catalogue"]
    assert from_document(doc, KNOWN, None).profiles[2].services == {"not_in_catalogue"}
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, KNOWN, SERVICES)
    assert caught.value.problems == ['profiles[2].services[0]: unknown service "not_in_catalogue"']


def test_a_category_a_feed_adds_is_known_when_passed():
    doc = family_doc()
    doc["profiles"][1]["categories"] = {"crypto_trading": "block"}
    with pytest.raises(PolicyDocumentError):
        from_document(doc, KNOWN, SERVICES)
    policy = from_document(doc, {**KNOWN, "crypto_trading": "18+"}, SERVICES)
    assert policy.profiles[1].categories == {"crypto_trading": "block"}


def test_a_feed_category_rated_always_cannot_be_loosened():
    doc = family_doc()
    doc["profiles"][1]["categories"] = {"terror": "allow"}
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, {**KNOWN, "terror": "always"}, SERVICES)
    assert "profiles[1].categories.terror" in str(caught.value)


def test_the_bundled_always_categories_stay_protected_whatever_the_table_passed_says():
    # A criteria table in which a feed "switched malware off" must not open the door.
    loosened = {**KNOWN, "malware": "off", "csam": "18+"}
    doc = family_doc()
    doc["profiles"][1]["categories"] = {"malware": "allow", "csam": "allow"}
    doc["overrides"] = [
        {
            "id": "r",
            "profile": "lan",
            "kind": "reward",
            "starts": "2026-11-28T09:00:00Z",
            "until": "2026-11-28T10:00:00Z",
            "categories": ["phishing_scam"],
        }
    ]
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, loosened, SERVICES)
    assert caught.value.problems == [
        'profiles[1].categories.malware: "malware" is blocked for everyone (always) and cannot be loosened',
        'profiles[1].categories.csam: "csam" is blocked for everyone (always) and cannot be loosened',
        'overrides[0].categories: "phishing_scam" is blocked for everyone (always): no reward grants it',
    ]
    doc["profiles"][1]["categories"] = {"malware": "block"}  # tightening is fine
    doc["overrides"] = []
    assert from_document(doc, loosened, SERVICES).profiles[1].categories == {"malware": "block"}


# ---------------------------------------------------------------- each check, with its path


def _set(path: str, value):
    """A mutation that sets doc[path] (dotted, with [i] indexes) to value; ... deletes it."""

    def mutate(doc: dict) -> None:
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        target = doc
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        last = parts[-1]
        key = int(last[1:-1]) if last.startswith("[") else last
        if value is ...:
            del target[key]
        else:
            target[key] = value

    return mutate


BAD_FIELDS = [
    ("format", 2, 'format: 2 is not a format this SafeNest reads (it reads 1)'),
    ("format", ..., "format: missing"),
    ("catagories", {}, "catagories: unknown field (see docs/policy.md)"),
    ("timezone", "Asia/Hanoi_City", 'timezone: "Asia/Hanoi_City" is not a known time zone (like Asia/Ho_Chi_Minh)'),
    ("timezone", "../../etc/passwd", 'timezone: "../../etc/passwd" is not a known time zone (like Asia/Ho_Chi_Minh)'),
    ("schedule_ttl_cap", 0, "schedule_ttl_cap: 0 is not between 5 and 86400"),
    ("schedule_ttl_cap", "300", 'schedule_ttl_cap: expected a whole number (got text "300")'),
    ("default_profile", "nobody", 'default_profile: no profile "nobody"'),
    ("profiles", [], "profiles: at least one profile is needed (the default one)"),
    ("profiles[1].birth.month", 13, "profiles[1].birth.month: 13 is not a month (1-12)"),
    ("profiles[1].birth.year", 1800, "profiles[1].birth.year: 1800 is not between 1900 and 2200"),
    ("profiles[1].birth", "2017-03", 'profiles[1].birth: expected a table/object (got text "2017-03")'),
    ("profiles[1].band", "12+", "profiles[1].band: give birth or band, not both (the band follows the birth date)"),
    ("profiles[0].band", "13+", 'profiles[0].band: "13+" is not one of 00+, 12+, 16+, 18+'),
    ("profiles[1].id", "Lan", "profiles[1].id: \"Lan\" is not an id (1-40 of a-z, 0-9, '_', '-', starting with a letter or digit)"),
    ("profiles[1].id", "default", 'profiles[1].id: "default" is used by an earlier entry'),
    ("profiles[1].name", "  ", "profiles[1].name: must not be empty"),
    ("profiles[1].name", "Lan\nMinh", "profiles[1].name: contains a control character (line breaks included)"),
    ("profiles[1].kind", "kid", 'profiles[1].kind: "kid" is not one of child, class, guest, adult'),
    ("profiles[1].categories", {"malware": "allow"},
     'profiles[1].categories.malware: "malware" is blocked for everyone (always) and cannot be loosened'),
    ("profiles[1].categories", {"gamez": "block"}, 'profiles[1].categories.gamez: unknown category "gamez"'),
    ("profiles[1].categories", {"online_games": "maybe"},
     'profiles[1].categories.online_games: "maybe" is not one of block, allow'),
    ("profiles[2].services", ["tiktok", "tiktok"], 'profiles[2].services[1]: "tiktok" is listed twice'),
    ("profiles[2].services", ["TikTok"],
     "profiles[2].services[0]: \"TikTok\" is not an id (1-40 of a-z, 0-9, '_', '-', starting with a letter or digit)"),
    ("profiles[1].allowlist_mode", "yes", 'profiles[1].allowlist_mode: expected true or false (got text "yes")'),
    ("profiles[1].youtube", "kids", 'profiles[1].youtube: "kids" is not one of auto, strict, moderate, off'),
    ("devices[2].profile", "minh2", 'devices[2].profile: no profile "minh2"'),
    ("devices[2].id", "lan-phone", 'devices[2].id: "lan-phone" is used by an earlier entry'),
    ("devices[1].value", "192.168.1.300", 'devices[1].value: "192.168.1.300" is not an IP address (like 192.168.1.23)'),
    ("devices[0].value", "3c:22:fb:10:20", 'devices[0].value: "3c:22:fb:10:20" is not a MAC address (like aa:bb:cc:dd:ee:ff)'),
    ("devices[1].match", "hostname", 'devices[1].match: "hostname" is not one of ip, cidr, mac'),
    ("devices[2].value", "192.168.1.31", 'devices[2].value: another device has "192.168.1.31"'),
    ("devices[0].profile", ..., "devices[0].profile: missing"),
    ("rules[0].domain", "you tube.com", 'rules[0].domain: "you tube.com" is not a domain name (like example.com)'),
    ("rules[0].action", "deny", 'rules[0].action: "deny" is not one of allow, block'),
    ("rules[0].profile", "nobody", 'rules[0].profile: no profile "nobody"'),
    ("schedules[0].start", "25:00", 'schedules[0].start: "25:00" is not HH:MM (24-hour local time, 00:00-23:59)'),
    ("schedules[0].end", "21:30", 'schedules[0].end: the window starts and ends at "21:30": it would last no time'),
    ("schedules[0].days", [], "schedules[0].days: give at least one day"),
    ("schedules[0].days", ["mon", "funday"], 'schedules[0].days[1]: "funday" is not a day (mon, tue, wed, thu, fri, sat, sun)'),
    ("schedules[0].mode", "sleep", 'schedules[0].mode: "sleep" is not one of internet_off, block'),
    ("schedules[0].services", ["youtube"],
     "schedules[0].services: mode internet_off turns everything off; list categories or services only with mode block"),
    ("schedules[0].mode", "block", "schedules[0].categories: mode block needs at least one category or service to block"),
    ("schedules[1].id", "school-nights", 'schedules[1].id: "school-nights" is used by an earlier entry'),
    ("overrides[0].until", "2026-11-28T15:00:00+07:00",
     "overrides[0].until: 2026-11-28T08:00:00Z is not after starts (2026-11-28T09:00:00Z)"),
    ("overrides[0].until", "2026-11-28T17:00:00", 'overrides[0].until: "2026-11-28 17:00:00" has no UTC offset: add "Z" or "+07:00"'),
    ("overrides[0].starts", "tomorrow", 'overrides[0].starts: "tomorrow" is not a time like "2026-11-28T09:00:00Z"'),
    ("overrides[0].categories", ["csam"], 'overrides[0].categories: "csam" is blocked for everyone (always): no reward grants it'),
    ("overrides[0].kind", "pause", "overrides[0]: a pause blocks everything: categories, services and domains are for rewards"),
    ("overrides[0].categories", [], "overrides[0]: a reward needs at least one category, service or domain to allow"),
    ("overrides[0].domains", ["not a domain"], 'overrides[0].domains[0]: "not a domain" is not a domain name (like example.com)'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "problem"), BAD_FIELDS, ids=[f"{p}={v!r}" for p, v, _ in BAD_FIELDS]
)
def test_each_bad_field_is_reported_with_its_path(path, value, problem):
    doc = family_doc()
    _set(path, value)(doc)
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, KNOWN, SERVICES)
    assert problem in caught.value.problems, caught.value.problems


def test_every_problem_is_reported_at_once():
    doc = family_doc()
    for path, value, _ in (BAD_FIELDS[9], BAD_FIELDS[26], BAD_FIELDS[36], BAD_FIELDS[3]):
        _set(path, value)(doc)
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, KNOWN, SERVICES)
    assert sorted(caught.value.problems) == sorted(
        [BAD_FIELDS[9][2], BAD_FIELDS[26][2], BAD_FIELDS[36][2], BAD_FIELDS[3][2]]
    )
    assert str(caught.value).count("\n") == 3


def test_a_bad_profile_is_not_also_reported_as_missing_where_referenced():
    doc = family_doc()
    doc["profiles"][2]["kind"] = "teen"  # minh is bad, but devices naming minh are not
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, KNOWN, SERVICES)
    assert caught.value.problems == [
        'profiles[2].kind: "teen" is not one of child, class, guest, adult'
    ]


def test_cidr_with_host_bits_suggests_the_network():
    doc = school_doc()
    doc["devices"][0]["value"] = "10.0.7.5/24"
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, KNOWN, SERVICES)
    assert caught.value.problems == [
        'devices[0].value: "10.0.7.5/24" has host bits set: did you mean 10.0.7.0/24?'
    ]


def test_the_same_domain_twice_for_one_profile_is_refused_but_for_two_profiles_is_fine():
    doc = school_doc()
    doc["rules"].append({"domain": "wikipedia.org", "action": "allow", "profile": "class-7a"})
    assert len(from_document(doc, KNOWN, SERVICES).rules) == 4
    doc["rules"].append({"domain": "WIKIPEDIA.org", "action": "block", "profile": "library"})
    with pytest.raises(PolicyDocumentError) as caught:
        from_document(doc, KNOWN, SERVICES)
    assert caught.value.problems == [
        'rules[4].domain: another rule of this profile names "wikipedia.org"'
    ]


@pytest.mark.parametrize(
    ("fmt", "text", "start"),
    [
        ("toml", "format = 1\nprofiles = [\n", "(toml) "),
        ("json", '{"format": 1,', "(json) line 1 column 14"),
        ("json", "[]", "(document): expected a table/object"),
        ("json", "[" * 100_000, "(json) nested too deeply to be a policy"),
    ],
)
def test_unreadable_text_is_one_clear_problem(fmt, text, start):
    with pytest.raises(PolicyDocumentError) as caught:
        loads(text, fmt, KNOWN)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(start)


def test_check_policy_validates_values_built_in_python():
    bad = Policy(
        profiles=(Profile("default", "D", band="12+"),),
        devices=(Device("x", "", "ip", "1.2.3", "default"),),
    )
    with pytest.raises(PolicyDocumentError) as caught:
        check_policy(bad)
    assert caught.value.problems == [
        'devices[0].value: "1.2.3" is not an IP address (like 192.168.1.23)'
    ]
    assert check_policy(copy.deepcopy(rich_policy()), KNOWN, SERVICES) == rich_policy()


def test_a_day_out_of_range_in_a_value_is_reported_not_dropped():
    bad = Policy(
        profiles=(Profile("default", "D", band="12+"),),
        schedules=(
            Schedule("s", "default", "", frozenset({0, 7}), "10:00", "11:00", "internet_off"),
        ),
    )
    with pytest.raises(PolicyDocumentError) as caught:
        check_policy(bad)
    assert caught.value.problems == [
        "schedules[0].days[1]: 7 is not a day (mon, tue, wed, thu, fri, sat, sun)"
    ]
