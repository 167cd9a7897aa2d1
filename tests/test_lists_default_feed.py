"""The default feed built on the Pi from the lists folder, and the index of every list in force.

Real files everywhere: a lists folder in tmp_path (top folder and ``age/``), the real key,
builder, verifier and store, the index compiled in a child process, and the real policy engine
deciding on it for a child of a given age band (tests/policy_fixtures.py ``decide_as``).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.feed.build import build_feed
from agent.feed.categories import DEFAULT_CATEGORIES
from agent.feed.default import PUBLISHER_ID, VALID_DAYS, ensure_default_feed
from agent.feed.format import Category, Names
from agent.feed.sign import generate_key
from agent.feed.sync import feeds_in_force, sync_feed
from agent.index import bundled_dir
from agent.lists import compile_lists, criteria_in_force, last_good, load_lists
from tests.policy_fixtures import decide_as


@pytest.fixture
def lists(tmp_path) -> Path:
    folder = tmp_path / "blocklists"
    (folder / "age").mkdir(parents=True)
    (folder / "gambling.txt").write_text("# category: gambling\nfb88.test\n")
    (folder / "adult.txt").write_text("adult.test\n")
    (folder / "age" / "social_networks.txt").write_text("social.test\n")
    (folder / "age" / "online_games.txt").write_text("game.test\n")
    (folder / "age" / "online_games.18.txt").write_text("game18.test\n")
    (folder / "age" / "sex_education.allow.txt").write_text("learn.adult.test\n")
    (folder / "README.md").write_text("not a list\n")
    return folder


def in_force(data: Path) -> dict[str, int]:
    return {f.publisher_id: f.version for f in feeds_in_force(data / "feeds")}


def test_first_run_builds_signs_and_pins_the_default_feed(lists, tmp_path):
    data = tmp_path / "var"
    compiled = compile_lists(str(lists), data)
    assert in_force(data) == {PUBLISHER_ID: 1}
    (feed,) = feeds_in_force(data / "feeds")
    assert {lst.path for lst in feed.manifest.lists} == {
        "lists/gambling.txt",
        "lists/adult.txt",
        "lists/social_networks.txt",
        "lists/online_games.txt",
        "lists/online_games.18.txt",
        "lists/sex_education.allow.txt",
    }
    assert feed.manifest.expires_at - feed.manifest.issued_at == timedelta(days=VALID_DAYS)
    # The key was made on first use: secret 0600, public next to it (pinned in DATA/keys).
    secret = data / "keys" / f"{PUBLISHER_ID}.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (data / "keys" / f"{PUBLISHER_ID}.key.pub").is_file()
    assert feed.manifest.publisher.key_id.startswith("ed25519:")
    status = json.loads((data / "feeds" / PUBLISHER_ID / "status.json").read_text())
    assert status["in_force"]["version"] == 1 and status["url"] == f"bundled lists in {lists}"
    assert not list((data / "feeds").glob(".default-build-*"))  # the build folder is gone

    # Every list is indexed, with category labels (id@band for a list with its own age).
    assert compiled.index.categories == {
        "gambling",
        "adult",
        "social_networks",
        "online_games",
        "online_games@18+",
        "sex_education",
    }
    # Each list applies by the profile's age band: 18+ lists to every child, the age lists
    # (social networks 16+, online games 12+) to the children under their age only.
    expected = {
        # name: (decision for a 16+ child, for a 00+ child)
        "www.fb88.test": ((True, "category=gambling min_age=18+"),) * 2,
        "game18.test": ((True, "category=online_games min_age=18+"),) * 2,  # the list's own age
        "adult.test": ((True, "category=adult min_age=18+"),) * 2,
        "social.test": ((False, "default"), (True, "category=social_networks min_age=16+")),
        "game.test": ((False, "default"), (True, "category=online_games min_age=12+")),
        # sex_education's allow list beats adult from 12+; a 9-year-old stays blocked.
        "learn.adult.test": (
            (False, "allowlist=sex_education"),
            (True, "category=adult min_age=18+"),
        ),
        "other.test": ((False, "default"),) * 2,
    }
    for name, (sixteen, zero) in expected.items():
        assert decide_as(compiled, data, name, "16+") == sixteen, name
        assert decide_as(compiled, data, name, "00+") == zero, name
    match = compiled.index.lookup_text("fb88.test")
    assert match.sources == (f"feed {PUBLISHER_ID} v1 lists/gambling.txt",)
    # The saved index gives the same decisions at the next start.
    saved = last_good(data)
    assert saved.label == f"{data / 'lists.idx'} (last good)"
    assert saved.index.categories == compiled.index.categories
    for name, (sixteen, zero) in expected.items():
        assert decide_as(saved, data, name, "16+") == sixteen, name
        assert decide_as(saved, data, name, "00+") == zero, name


def test_unchanged_lists_are_not_rebuilt_changed_ones_are(lists, tmp_path):
    data = tmp_path / "var"
    compile_lists(str(lists), data)
    manifest = data / "feeds" / PUBLISHER_ID / "v1" / "manifest.json"
    before = manifest.read_bytes()
    compile_lists(str(lists), data)
    assert in_force(data) == {PUBLISHER_ID: 1} and manifest.read_bytes() == before

    # An upgrade changes a bundled list: a new version, in force at once.
    with open(lists / "gambling.txt", "a") as f:
        f.write("new88.test\n")
    compiled = compile_lists(str(lists), data)
    assert in_force(data) == {PUBLISHER_ID: 2}
    assert decide_as(compiled, data, "new88.test") == (True, "category=gambling min_age=18+")
    assert compiled.index.lookup_text("new88.test").sources == (
        f"feed {PUBLISHER_ID} v2 lists/gambling.txt",
    )
    # A new file counts as a change too, and so does a renamed one.
    (lists / "age" / "messaging.txt").write_text("chat.test\n")
    assert "messaging" in compile_lists(str(lists), data).index.categories
    assert in_force(data) == {PUBLISHER_ID: 3}
    os.rename(lists / "age" / "messaging.txt", lists / "age" / "messaging.12.txt")
    compile_lists(str(lists), data)
    assert in_force(data) == {PUBLISHER_ID: 4}


def test_a_feed_close_to_expiry_is_renewed(lists, tmp_path):
    data = tmp_path / "var"
    then = datetime.now(UTC) - timedelta(days=VALID_DAYS - 10)  # expires in 10 days
    assert ensure_default_feed(lists, data, now=then).built
    result = ensure_default_feed(lists, data)
    assert result.built and result.in_force.version == 2
    assert not ensure_default_feed(lists, data).built


def test_a_failed_rebuild_keeps_the_last_good_default_feed(lists, tmp_path, caplog):
    data = tmp_path / "var"
    compile_lists(str(lists), data)
    # The folder changes in a way that cannot be built: a broken categories.json.
    (lists / "gambling.txt").write_text("fb88.test\nother.test\n")
    (lists / "categories.json").write_text("[not json")
    with caplog.at_level("ERROR", logger="safenest.feed.default"):
        compiled = compile_lists(str(lists), data)
    assert any("version 1 stays in force" in r.getMessage() for r in caplog.records)
    assert in_force(data) == {PUBLISHER_ID: 1}
    gambling = (True, "category=gambling min_age=18+")
    assert decide_as(compiled, data, "fb88.test") == gambling  # the last good copy
    assert decide_as(compiled, data, "other.test") == (False, "default")
    assert decide_as(compiled, data, "social.test") == (False, "default")
    assert decide_as(compiled, data, "social.test", "12+") == (
        True,
        "category=social_networks min_age=16+",
    )
    # Fixed: the next compile builds version 2.
    (lists / "categories.json").unlink()
    assert decide_as(compile_lists(str(lists), data), data, "other.test") == gambling
    assert in_force(data) == {PUBLISHER_ID: 2}


def test_a_lost_key_is_replaced_and_the_feed_rebuilt(lists, tmp_path):
    data = tmp_path / "var"
    compile_lists(str(lists), data)
    old = feeds_in_force(data / "feeds")[0].manifest.publisher.key_id
    (data / "keys" / f"{PUBLISHER_ID}.key").unlink()
    compiled = compile_lists(str(lists), data)
    (feed,) = feeds_in_force(data / "feeds")
    assert feed.version == 2 and feed.manifest.publisher.key_id != old
    assert decide_as(compiled, data, "fb88.test") == (True, "category=gambling min_age=18+")


def test_without_any_default_feed_the_top_folder_is_indexed_as_before(lists, tmp_path):
    data = tmp_path / "var"
    (lists / "categories.json").write_text("[not json")  # the very first build fails
    compiled = compile_lists(str(lists), data)
    assert in_force(data) == {}
    assert decide_as(compiled, data, "fb88.test") == (True, "category=gambling min_age=18+")
    assert decide_as(compiled, data, "adult.test") == (True, "category=adult min_age=18+")
    # age/ is not read then: not even a 9-year-old is kept off social networks.
    assert decide_as(compiled, data, "social.test", "00+") == (False, "default")
    assert compiled.index.lookup_text("fb88.test").sources == ("blocklists/gambling.txt",)


def test_files_of_unknown_categories_are_indexed_directly_and_blocked(lists, tmp_path):
    (lists / "school_rules.txt").write_text("homework-cheat.test\n")
    (lists / "my-list.txt").write_text("ignored.test\n")  # not a list name: ignored, as before
    data = tmp_path / "var"
    compiled = compile_lists(str(lists), data)
    (feed,) = feeds_in_force(data / "feeds")
    assert "lists/school_rules.txt" not in {lst.path for lst in feed.manifest.lists}
    # A category of unknown age is taken as 18+ (fail closed): blocked for every child.
    school_rules = (True, "category=school_rules min_age=18+")
    assert decide_as(compiled, data, "homework-cheat.test", "16+") == school_rules
    assert decide_as(compiled, data, "homework-cheat.test", "00+") == school_rules
    assert compiled.index.lookup_text("homework-cheat.test").sources == (
        "blocklists/school_rules.txt",
    )
    assert decide_as(compiled, data, "ignored.test", "00+") == (False, "default")


def test_an_empty_lists_folder_is_refused_and_the_last_good_index_kept(lists, tmp_path):
    data = tmp_path / "var"
    compile_lists(str(lists), data)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        compile_lists(str(empty), data)
    compiled = load_lists(str(empty), data)
    assert compiled.label.endswith("(last good)")
    assert decide_as(compiled, data, "fb88.test") == (True, "category=gambling min_age=18+")


def test_the_bundled_lists_build_and_apply_their_age_categories_by_band(tmp_path):
    data = tmp_path / "var"
    compiled = compile_lists("", data)
    assert in_force(data) == {PUBLISHER_ID: 1}
    top = {p.name.removesuffix(".txt") for p in bundled_dir().glob("*.txt")}
    assert top <= compiled.index.categories
    for category in ("social_networks", "messaging", "video_streaming", "online_games", "ai_chat"):
        assert category in compiled.index.categories
    # Messaging is 12+: open to a 16+ child, blocked for a 9-year-old.
    assert decide_as(compiled, data, "zalo.me", "16+") == (False, "default")
    assert decide_as(compiled, data, "zalo.me", "00+") == (True, "category=messaging min_age=12+")
    for band in ("16+", "00+"):
        assert decide_as(compiled, data, "fb88.com", band) == (
            True,
            "category=gambling min_age=18+",
        )


# ---------------------------------------------------------------- criteria in force


def _feed_with(
    tmp_path: Path, publisher: str, categories, lists: dict[str, str], now: datetime
) -> Path:
    key = generate_key(publisher, publisher)
    src = tmp_path / f"src-{publisher}"
    src.mkdir()
    for name, text in lists.items():
        (src / name).write_text(text)
    out = tmp_path / f"www-{publisher}"
    build_feed(src, out, key, now=now, categories=categories)
    data = tmp_path / "var"
    assert (
        sync_feed(out, key.public, data / "feeds", allow_insecure=True, now=now).result
        == "accepted"
    )
    return data


def _table(**ages: str) -> tuple[Category, ...]:
    out = []
    for c in DEFAULT_CATEGORIES:
        out.append(Category(c.id, c.names, ages.get(c.id, c.min_age), c.description, c.basis))
    return tuple(out)


def test_criteria_in_force_newest_publisher_wins_per_id(lists, tmp_path):
    data = tmp_path / "var"
    assert criteria_in_force(data)["social_networks"].min_age == "16+"  # the default table
    now = datetime.now(UTC).replace(microsecond=0)
    # A ministry tries to lower social networks to 12+ (ignored: looser than the default table)
    # and adds a category of its own.
    homework = Category("homework_help", Names("Giải bài tập", "Homework answers"), "16+", "d", "b")
    _feed_with(
        tmp_path,
        "moet.gov.vn",
        (*_table(social_networks="12+"), homework),
        {"homework_help.txt": "answers.test\n"},
        now - timedelta(hours=2),
    )
    # A school, newer, sets it to 18+ (and changes nothing else).
    _feed_with(
        tmp_path,
        "school.example.vn",
        _table(social_networks="18+"),
        {"gambling.txt": "bet.test\n"},
        now - timedelta(hours=1),
    )
    criteria = criteria_in_force(data)
    assert criteria["social_networks"].min_age == "18+"
    assert criteria["homework_help"].min_age == "16+"
    assert set(criteria) == {c.id for c in DEFAULT_CATEGORIES} | {"homework_help"}
    # The default feed, built later, does not override the publishers.
    compiled = compile_lists(str(lists), data)
    assert set(in_force(data)) == {PUBLISHER_ID, "moet.gov.vn", "school.example.vn"}
    assert criteria_in_force(data)["social_networks"].min_age == "18+"
    # The decisions follow the criteria in force: social networks are 18+ now, so blocked at 16+.
    assert decide_as(compiled, data, "social.test") == (
        True,
        "category=social_networks min_age=18+",
    )
    assert decide_as(compiled, data, "answers.test", "16+") == (False, "default")
    assert decide_as(compiled, data, "answers.test", "12+") == (
        True,
        "category=homework_help min_age=16+",
    )
    assert decide_as(compiled, data, "bet.test") == (True, "category=gambling min_age=18+")


def test_a_pinned_feed_cannot_switch_protection_off(lists, tmp_path, caplog):
    data = tmp_path / "var"
    now = datetime.now(UTC).replace(microsecond=0)
    # An older feed adds a category of its own that is blocked for everyone.
    scam = Category("loan_scam", Names("Tín dụng đen", "Loan sharks"), "always", "d", "b")
    _feed_with(
        tmp_path,
        "old.example.vn",
        (*_table(), scam),
        {"gambling.txt": "b.test\n"},
        now - timedelta(hours=3),
    )
    # A newer, pinned third-party feed tries to turn malware, csam, adult and its scam off,
    # rates phishing 18+, lowers social networks to 12+ (looser: ignored too), and leaves ads off.
    loose = Category("loan_scam", scam.names, "18+", "d", "b")
    _feed_with(
        tmp_path,
        "loose.example",
        (
            *_table(
                malware="off",
                csam="off",
                adult="off",
                phishing_scam="18+",
                social_networks="12+",
                ads_trackers="off",
            ),
            loose,
        ),
        {"malware.txt": "evil.test\n", "adult.txt": "porn.test\n"},
        now - timedelta(hours=1),
    )
    with caplog.at_level("WARNING", logger="agent.lists"):
        criteria = criteria_in_force(data)
    ages = {cid: c.min_age for cid, c in criteria.items()}
    assert ages["malware"] == ages["csam"] == ages["phishing_scam"] == "always"
    assert ages["loan_scam"] == "always"
    assert ages["adult"] == "18+"  # the "off" is ignored: the default table's age stays
    assert ages["social_networks"] == "16+"  # loosening is the parent's choice, per profile
    assert ages["ads_trackers"] == "off"
    warned = [r.getMessage() for r in caplog.records]
    for cid in ("malware", "csam", "adult"):
        assert any(m.startswith(f"feed loose.example v1 rates category {cid} off") for m in warned)
    assert any(
        m.startswith("feed loose.example v1 rates category social_networks 12+") for m in warned
    )
    assert any(
        m.startswith("feed loose.example v1 rates category phishing_scam 18+") for m in warned
    )
    assert any(m.startswith("feed loose.example v1 rates category loan_scam 18+") for m in warned)
    assert not any("ads_trackers" in m for m in warned)
    # The resolver's decisions follow: the feed's own lists stay blocked for an adult too.
    compiled = compile_lists(str(lists), data)
    assert decide_as(compiled, data, "evil.test", "18+") == (True, "always=malware")
    assert decide_as(compiled, data, "porn.test", "16+") == (True, "category=adult min_age=18+")


def test_the_feed_default_command(lists, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from agent.cli import main

    for key in [k for k in os.environ if k.startswith("SAFENEST_")]:
        monkeypatch.delenv(key)
    data = tmp_path / "var"
    monkeypatch.setenv("SAFENEST_BLOCKLISTS_DIR", str(lists))
    (lists / "school_rules.txt").write_text("x.test\n")
    run = CliRunner().invoke(main, ["feed", "default", "--data", str(data)])
    assert run.exit_code == 0, run.output
    assert (
        run.stdout
        == f"default feed {PUBLISHER_ID} built version 1 from {lists}: 6 lists, 6 names\n"
    )
    assert f"not in the feed: {lists / 'school_rules.txt'}" in run.stderr
    run = CliRunner().invoke(main, ["feed", "default", "--data", str(data)])
    assert run.stdout.startswith(f"default feed {PUBLISHER_ID} up to date: version 1 ")
    (lists / "gambling.txt").write_text("changed.test\n")
    (lists / "categories.json").write_text("[not json")
    run = CliRunner().invoke(main, ["feed", "default", "--data", str(data)])
    assert run.exit_code == 1
    assert run.stderr.startswith(f"Error: cannot build the default feed from {lists}: ")
    assert run.stderr.rstrip().endswith("version 1 stays in force")


# -- the build runs in a child process: the serving process never holds the names ----------


def test_compile_lists_builds_the_default_feed_in_a_child_process(
    lists, tmp_path, monkeypatch, caplog
):
    import agent.feed.default as default_mod

    def not_here(*args, **kwargs):
        raise AssertionError("the default feed was built in the serving process")

    # Only this process is patched: the child builds with the real builder.
    monkeypatch.setattr(default_mod, "build_feed", not_here)
    data = tmp_path / "var"
    with caplog.at_level("INFO", logger="safenest.feed.default"):
        compiled = compile_lists(str(lists), data)
    assert in_force(data) == {PUBLISHER_ID: 1}
    assert decide_as(compiled, data, "fb88.test") == (True, "category=gambling min_age=18+")
    # The child's log lines are logged again here, under the child's logger.
    assert any(
        r.name == "safenest.feed.default" and "built version 1" in r.getMessage()
        for r in caplog.records
    )


def test_an_up_to_date_default_feed_is_checked_without_a_child(lists, tmp_path, monkeypatch):
    import agent.feed.default as default_mod

    data = tmp_path / "var"
    (lists / "school_rules.txt").write_text("x.test\n")  # not a category of the table
    assert default_mod.ensure_default_feed_in_child(lists, data).built
    (lists / "adult.txt").write_text("adult.test\nmore.adult.test\n")
    assert default_mod.ensure_default_feed_in_child(lists, data).built

    def no_child(*args, **kwargs):
        raise AssertionError("a child was started for a default feed that is up to date")

    monkeypatch.setattr(default_mod, "run_python_module", no_child)
    result = default_mod.ensure_default_feed_in_child(lists, data)
    assert not result.built and result.error is None and result.in_force.version == 2
    assert result.left_out == (lists / "school_rules.txt",)


def test_a_child_that_times_out_keeps_the_last_good_default_feed(lists, tmp_path, caplog):
    from agent.feed.default import ensure_default_feed_in_child

    data = tmp_path / "var"
    assert ensure_default_feed_in_child(lists, data).built
    (lists / "gambling.txt").write_text("fb88.test\nother.test\n")
    (lists / "school_rules.txt").write_text("x.test\n")
    with caplog.at_level("ERROR", logger="safenest.feed.default"):
        result = ensure_default_feed_in_child(lists, data, timeout=0.001)
    assert not result.built and "the default feed's build timed out" in result.error
    assert result.in_force.version == 1 and in_force(data) == {PUBLISHER_ID: 1}
    assert result.left_out == (lists / "school_rules.txt",)  # still indexed directly
    assert any(
        "timed out" in r.getMessage() and "version 1 stays in force" in r.getMessage()
        for r in caplog.records
    )
    # A build folder left by a killed child is removed by the next build.
    stale = data / "feeds" / ".default-build-killed"
    (stale / "lists").mkdir(parents=True)
    assert ensure_default_feed_in_child(lists, data).in_force.version == 2
    assert not stale.exists()


def test_a_failed_child_build_is_reported_and_dns_keeps_the_last_good_lists(
    lists, tmp_path, caplog
):
    data = tmp_path / "var"
    compile_lists(str(lists), data)
    (lists / "gambling.txt").write_text("fb88.test\nother.test\n")
    (lists / "categories.json").write_text("[not json")
    with caplog.at_level("ERROR", logger="safenest.feed.default"):
        compiled = load_lists(str(lists), data)
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "categories.json" in message and message.endswith("version 1 stays in force")
    assert decide_as(compiled, data, "fb88.test") == (True, "category=gambling min_age=18+")
    assert decide_as(compiled, data, "other.test") == (False, "default")
