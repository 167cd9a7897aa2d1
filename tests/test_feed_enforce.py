"""Feeds in force feed the resolver: the scheduled sync, the index built from feeds, explain, `safenest sync`.

A real HTTP server on 127.0.0.1 (port chosen by the OS) serves the feeds, allowed with
feed_allow_insecure as a test or local mirror would be; SafeNest runs for real (tests/dnsfakes.py).
The sync job is called on the agent's loop instead of waiting for its timer.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from agent.feed.build import build_feed
from agent.feed.schedule import SYNC_JOB_ID, SYNC_RETRY_JOB_ID
from agent.feed.sign import generate_key, sign, write_keypair
from agent.feed.sync import feeds_in_force, read_status, sync_pinned
from agent.feed.verify import DEFAULT_MAX_LIST_BYTES
from agent.lists import feed_sources, last_good
from tests.dnsfakes import FakeUpstream, RunningSafeNest
from tests.test_feed_sync import Server

PUBLISHER = "school.example.vn"
_SCRIPT = Path(sys.executable).with_name("safenest")
SAFENEST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "agent"]


class Feed:
    """A publisher's key (pinned in ``keys``), its source lists and the feed served over HTTP."""

    def __init__(self, tmp: Path, publisher: str = PUBLISHER, name: str = "feed") -> None:
        self.keys = tmp / "keys"
        self.keys.mkdir(exist_ok=True)
        self.key = generate_key(publisher, "Trường Thử Nghiệm")
        secret_dir = tmp / "secret"
        secret_dir.mkdir(exist_ok=True)
        _, public = write_keypair(secret_dir / f"{name}.key", self.key)
        self.public = self.keys / public.name
        self.public.write_text(public.read_text())
        self.src = tmp / f"src-{name}"
        self.src.mkdir()
        (self.src / "gambling.txt").write_text("feedbet.test\n")  # gambling: 18+
        (self.src / "online_games.18.txt").write_text("game18.test\n")  # a list rated 18+
        (self.src / "messaging.txt").write_text("chat12.test\n")  # messaging: 12+, not yet
        (self.src / "sex_education.allow.txt").write_text("learn.fb88.test\n")  # an allow list, 12+
        self.out = tmp / "www" / name
        build_feed(self.src, self.out, self.key)
        self.server = Server(self.out.parent)
        self.url = self.server.url.replace("/feed/", f"/{name}/")

    def publish(self) -> None:
        build_feed(self.src, self.out, self.key)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def feed(tmp_path):
    made = Feed(tmp_path)
    yield made
    made.close()


@pytest.fixture
def lists(tmp_path) -> Path:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("# bundled\nfb88.test\n")
    return folder


@pytest.fixture
def upstream(fake_upstream):
    server = fake_upstream()
    for name in ("ok.test", "chat12.test", "learn.fb88.test", "feedbet.test", "new.test"):
        server.answer(name, "A", "192.0.2.1")
    return server


def ask(server, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    return dns.query.udp(query, server.host, port=server.port, timeout=5)


def blocked_by(server, name: str) -> str | None:
    """The EDE text of a blocked answer, or None when the name was answered from upstream."""
    answer = ask(server, name)
    assert answer.rcode() == dns.rcode.NOERROR
    values = [r.to_text() for rrset in answer.answer for r in rrset]
    ede = [o.text for o in answer.options if o.otype == dns.edns.EDE]
    if values == ["0.0.0.0"]:
        assert ede, name
        return ede[0]
    assert values == ["192.0.2.1"], (name, values)
    return None


def run_sync_job(server) -> list:
    """Call the scheduled job on the agent's loop, then wait for the recompile it started."""

    async def job():
        results = await server.agent.feed_sync.run_once()
        if server.agent._reloading is not None:
            await server.agent._reloading
        return results

    return asyncio.run_coroutine_threadsafe(job(), server.loop).result(timeout=60)


def settings_for(feed: Feed, lists: Path, upstream) -> dict:
    return {
        "upstream": [upstream.address],
        "blocklists_dir": str(lists),
        "feeds": [feed.url],
        "feed_keys_dir": str(feed.keys),
        "feed_allow_insecure": True,
    }


def child_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFENEST_")}
    env.update({f"SAFENEST_{k.upper()}": v for k, v in settings.items()})
    return env


def safenest_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SAFENEST, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------- the scheduled sync in `safenest run`


def test_the_sync_job_puts_the_feed_in_force(safenest, feed, lists, upstream, tmp_path):
    server = safenest(**settings_for(feed, lists, upstream))
    assert (
        blocked_by(server, "www.fb88.test") == "category=gambling min_age=18+"
    )  # bundled, as before
    assert blocked_by(server, "feedbet.test") is None  # not synced yet

    results = run_sync_job(server)
    assert [(r.result, r.publisher_id, r.version) for r in results] == [("accepted", PUBLISHER, 1)]

    # The default profile is a 12+ child: the feed's 18+ lists are blocked (a list with its own
    # age too), its 12+ list is not.
    assert blocked_by(server, "feedbet.test") == "category=gambling min_age=18+"
    assert blocked_by(server, "www.game18.test") == "category=online_games min_age=18+"
    assert blocked_by(server, "chat12.test") is None
    # The feed's allow list counts too; the bundled block of its parent still holds elsewhere.
    assert blocked_by(server, "learn.fb88.test") is None
    assert blocked_by(server, "fb88.test") == "category=gambling min_age=18+"

    # `safenest explain` names the feed, its version and the list.
    env = child_env(
        blocklists_dir=str(lists),
        feeds=feed.url,
        feed_keys_dir=str(feed.keys),
        feed_allow_insecure="true",
    )
    data = str(server.agent.settings.data)
    out = safenest_cli("explain", "www.feedbet.test", "--data", data, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "www.feedbet.test: blocked for profile default (12+): category gambling"
    )
    assert f"feed {PUBLISHER} v1 lists/gambling.txt" in out.stdout
    out = safenest_cli("explain", "game18.test", "--data", data, env=env, cwd=tmp_path)
    assert f"feed {PUBLISHER} v1 lists/online_games.18.txt" in out.stdout, out.stdout
    out = safenest_cli("explain", "learn.fb88.test", "--data", data, env=env, cwd=tmp_path)
    assert (
        "allowed for profile default (12+): it is on the allow list of category sex_education"
        in out.stdout
    )
    assert f"feed {PUBLISHER} v1 lists/sex_education.allow.txt" in out.stdout

    # Nothing new: not modified, no recompile needed, still in force.
    results = run_sync_job(server)
    assert [r.result for r in results] == ["not_modified"]
    assert blocked_by(server, "feedbet.test") == "category=gambling min_age=18+"

    # A new version adds a name: in force after the next sync.
    (feed.src / "gambling.txt").write_text("feedbet.test\nnew.test\n")
    feed.publish()
    assert blocked_by(server, "new.test") is None
    assert [(r.result, r.version) for r in run_sync_job(server)] == [("accepted", 2)]
    assert blocked_by(server, "new.test") == "category=gambling min_age=18+"
    out = safenest_cli("explain", "new.test", "--data", data, env=env, cwd=tmp_path)
    assert f"feed {PUBLISHER} v2 lists/gambling.txt" in out.stdout, out.stdout


def test_a_rejected_feed_leaves_the_previous_one_in_force(safenest, feed, lists, upstream):
    server = safenest(**settings_for(feed, lists, upstream))
    assert [r.result for r in run_sync_job(server)] == ["accepted"]
    assert blocked_by(server, "feedbet.test") == "category=gambling min_age=18+"

    # Version 2 drops feedbet.test and is tampered with on the server.
    (feed.src / "gambling.txt").write_text("other.test\n")
    feed.publish()
    manifest = feed.out / "manifest.json"
    manifest.write_bytes(
        manifest.read_bytes().replace("Trường Thử Nghiệm".encode(), b"Truong Gia Mao")
    )
    results = run_sync_job(server)
    assert [(r.result, r.reason) for r in results] == [("rejected", "bad_signature")]
    in_force = feeds_in_force(Path(server.agent.settings.data) / "feeds")
    assert [(f.publisher_id, f.version) for f in in_force] == [
        ("safenest-default", 1),
        (PUBLISHER, 1),
    ]
    # Version 1 still answers; DNS answers throughout.
    assert blocked_by(server, "feedbet.test") == "category=gambling min_age=18+"
    assert blocked_by(server, "ok.test") is None
    # A retry is scheduled (5 minutes later, then 15 and 60).
    retry = server.call(server.agent.feed_sync.scheduler.get_job, SYNC_RETRY_JOB_ID)
    assert retry is not None and server.agent.feed_sync.failures == 1


def test_a_feed_signed_with_a_key_that_is_not_pinned_is_rejected(feed, tmp_path):
    store = tmp_path / "var" / "feeds"
    other = generate_key("other.example.org", "Other")
    r = sync_pinned(feed.url, [other.public], store, allow_insecure=True, keys_label="keys/")
    assert (r.result, r.reason, r.publisher_id) == ("rejected", "unknown_key", PUBLISHER)
    assert r.message.startswith(
        f"unknown key: the feed names key id {feed.key.key_id} (publisher {PUBLISHER})"
    )
    assert "keys/" in r.message
    assert feeds_in_force(store) == []
    # With both pinned, the one the manifest names is used; the next sync remembers it.
    r = sync_pinned(feed.url, [other.public, feed.key.public], store, allow_insecure=True)
    assert (r.result, r.version) == ("accepted", 1)
    feed.server.log.clear()
    r = sync_pinned(feed.url, [other.public, feed.key.public], store, allow_insecure=True)
    assert r.result == "not_modified" and feed.server.log == ["/feed/manifest.json"]


def test_an_expired_feed_in_force_stays_in_force_with_a_warning(feed, tmp_path, caplog):
    then = datetime.now(UTC) - timedelta(days=10)
    build_feed(feed.src, feed.out, feed.key, now=then, valid_days=1)  # expired 9 days ago
    data = tmp_path / "var"
    r = sync_pinned(
        feed.url,
        [feed.key.public],
        data / "feeds",
        allow_insecure=True,
        now=then + timedelta(hours=1),
    )
    assert (r.result, r.version) == ("accepted", 2)
    (installed,) = feeds_in_force(data / "feeds")
    assert installed.expired()
    with caplog.at_level("WARNING", logger="agent.lists"):
        labels = {s.label: s.category for s in feed_sources(data)}
    # Every list is indexed, whatever its age; the snapshot decides what is blocked.
    assert labels[f"feed {PUBLISHER} v2 lists/gambling.txt"] == "gambling"
    assert labels[f"feed {PUBLISHER} v2 lists/messaging.txt"] == "messaging"
    assert labels[f"feed {PUBLISHER} v2 lists/online_games.18.txt"] == "online_games@18+"
    assert any(
        "expired" in r.getMessage() and "stays in force" in r.getMessage() for r in caplog.records
    )


# ---------------------------------------------------------------- the schedule


def test_the_sync_job_is_scheduled_when_feeds_are_configured(safenest, feed, lists, upstream):
    server = safenest(
        **settings_for(feed, lists, upstream), sync_interval_hours=3, sync_jitter_minutes=10
    )
    job = server.call(server.agent.feed_sync.scheduler.get_job, SYNC_JOB_ID)
    assert job.trigger.interval == timedelta(hours=3)
    assert job.trigger.jitter == 600
    assert job.coalesce is True and job.max_instances == 1
    assert job.func == server.agent.feed_sync.run_once
    # The first run is about a minute after start, not at start.
    wait = (job.next_run_time - datetime.now(job.next_run_time.tzinfo)).total_seconds()
    assert 30 < wait <= 60


def test_no_scheduler_without_feeds(safenest, lists, upstream):
    server = safenest(upstream=[upstream.address], blocklists_dir=str(lists))
    assert server.agent.feed_sync.scheduler is None
    assert blocked_by(server, "fb88.test") == "category=gambling min_age=18+"


# ---------------------------------------------------------------- `safenest sync` without --feed


def test_sync_command_syncs_every_configured_feed(feed, tmp_path):
    second = Feed(tmp_path, "ngo.example.org", "ngo")
    try:
        data = tmp_path / "data"
        env = child_env(
            feeds=f"{feed.url} {second.url}",
            feed_keys_dir=str(feed.keys),
            feed_allow_insecure="true",
        )
        out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            f"{PUBLISHER} ({feed.url}): accepted v1",
            f"ngo.example.org ({second.url}): accepted v1",
        ]
        assert [f.publisher_id for f in feeds_in_force(data / "feeds")] == [
            "ngo.example.org",
            PUBLISHER,
        ]
        out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
        assert (out.returncode, out.stdout.count("not modified, v1 in force")) == (0, 2), out.stdout

        # One rejected: exit 1, one line each, the other still synced.
        second.publish()
        (second.out / "lists" / "gambling.txt").write_text("evil.test\n")
        feed.publish()
        out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
        assert out.returncode == 1
        lines = out.stdout.splitlines()
        assert lines[0] == f"{PUBLISHER} ({feed.url}): accepted v2 (was v1)"
        assert lines[1].startswith(f"ngo.example.org ({second.url}): rejected: sha256_mismatch: ")
        assert lines[1].endswith("; v1 in force") and len(lines) == 2

        # Plain http without feed_allow_insecure: rejected before any request.
        env.pop("SAFENEST_FEED_ALLOW_INSECURE")
        out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
        assert out.returncode == 1 and out.stdout.count("rejected: insecure: ") == 2, out.stdout

        # No feeds configured: a clear error.
        out = safenest_cli("sync", "--data", str(data), env=child_env(), cwd=tmp_path)
        assert out.returncode == 1 and "no feeds are configured" in out.stderr
        # --feed still syncs one feed by hand, and needs --pubkey.
        out = safenest_cli(
            "sync", "--feed", feed.url, "--data", str(data), env=child_env(), cwd=tmp_path
        )
        assert out.returncode == 2 and "--feed needs --pubkey" in out.stderr
        out = safenest_cli(
            "sync", "--feed", feed.url, "--pubkey", str(feed.public), "--allow-insecure", "--data", str(data),
            env=child_env(), cwd=tmp_path,
        )  # fmt: skip
        assert (out.returncode, out.stdout) == (
            0,
            f"{PUBLISHER} ({feed.url}): not modified, v2 in force\n",
        )
    finally:
        second.close()


# ---------------------------------------------------------------- every failure, over real DNS


class World:
    """One running SafeNest, one feed server and one upstream, shared by the failure cases.

    Version 1 is synced, then version 2 (the same names), so that an older version can be
    offered too. ``reset`` serves version 2 again and undoes what a case changed."""

    def __init__(self, tmp: Path) -> None:
        self.feed = Feed(tmp)
        self.upstream = FakeUpstream()
        for name in ("ok.test", "feedbet.test", "other.test", "othergame.test"):
            self.upstream.answer(name, "A", "192.0.2.1")
        lists = tmp / "lists"
        lists.mkdir()
        (lists / "gambling.txt").write_text("fb88.test\n")
        self.sources = {p.name: p.read_text() for p in self.feed.src.iterdir()}
        self.v1 = tmp / "served-v1"
        shutil.copytree(self.feed.out, self.v1)
        self.feed.publish()
        self.v2 = tmp / "served-v2"
        shutil.copytree(self.feed.out, self.v2)
        settings = settings_for(self.feed, lists, self.upstream)
        # A short wait for the slow server; the feed's own lists stay far below the size cap.
        settings.update(dns=["127.0.0.1:0"], feed_timeout_seconds=0.5)
        self.server = RunningSafeNest(tmp / "var", settings)
        # The cases call the job themselves: the timer (a minute after start) must not race them.
        self.server.call(self.server.agent.feed_sync.scheduler.pause)
        self.store = Path(self.server.agent.settings.data) / "feeds"
        assert [(r.result, r.version) for r in run_sync_job(self.server)] == [("accepted", 2)]

    def reset(self) -> None:
        self.feed.server.handler.delay = 0.0
        self.feed.server.up()
        for name, text in self.sources.items():
            (self.feed.src / name).write_text(text)
        self.serve(self.v2)

    def serve(self, folder: Path) -> None:
        shutil.rmtree(self.feed.out)
        shutil.copytree(folder, self.feed.out)  # copy2: same bytes and times, so a 304 again

    def close(self) -> None:
        self.server.stop()
        self.upstream.close()
        self.feed.close()


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory):
    made = World(tmp_path_factory.mktemp("world"))
    yield made
    made.close()


@pytest.fixture
def world(shared_world):
    shared_world.reset()
    yield shared_world
    shared_world.reset()


def _next_version_without_the_names(world: World) -> None:
    """Version 3 drops the names in force: were it accepted, DNS would show it."""
    (world.feed.src / "gambling.txt").write_text("other.test\n")
    (world.feed.src / "online_games.18.txt").write_text("othergame.test\n")
    world.feed.publish()


def _resign(world: World, change) -> None:
    """Change the served manifest (as parsed JSON) and sign it again with the publisher's key."""
    path = world.feed.out / "manifest.json"
    manifest = json.loads(path.read_bytes())
    change(manifest)
    raw = json.dumps(manifest, ensure_ascii=False, indent=2).encode("utf-8")
    path.write_bytes(raw)
    (world.feed.out / "manifest.json.sig").write_bytes(sign(world.feed.key, raw))


def _list_path(world: World) -> Path:
    return world.feed.out / "lists" / "gambling.txt"


def dns_bad_signature(world):
    _next_version_without_the_names(world)
    (world.feed.out / "manifest.json.sig").write_bytes(sign(world.feed.key, b"something else"))


def dns_wrong_key(world):
    (world.feed.src / "gambling.txt").write_text("other.test\n")
    build_feed(world.feed.src, world.feed.out, generate_key(PUBLISHER, "Kẻ Mạo Danh"))


def dns_sha256_mismatch(world):
    _next_version_without_the_names(world)
    with open(_list_path(world), "a") as f:
        f.write("evil.test\n")


def dns_truncated_list(world):
    _next_version_without_the_names(world)
    _list_path(world).write_bytes(_list_path(world).read_bytes()[:-4])


def dns_list_over_the_cap(world):
    _next_version_without_the_names(world)
    with open(_list_path(world), "r+b") as f:
        f.truncate(DEFAULT_MAX_LIST_BYTES + 1)  # sparse: cheap to make, refused from its length


def dns_older_version(world):
    world.serve(world.v1)


def dns_expired(world):
    (world.feed.src / "gambling.txt").write_text("other.test\n")
    then = datetime.now(UTC) - timedelta(days=40)
    build_feed(world.feed.src, world.feed.out, world.feed.key, now=then, valid_days=30)


def dns_server_down(world):
    _next_version_without_the_names(world)
    world.feed.server.down()


def dns_slow_server(world):
    _next_version_without_the_names(world)
    world.feed.server.handler.delay = 3.0  # beyond feed_timeout_seconds (0.5)


def dns_not_modified(world):
    pass  # version 2 is served as it was: the conditional GET gets a 304


def dns_garbage_lines(world):
    _next_version_without_the_names(world)
    body = _list_path(world).read_bytes() + b"not a domain!\n<html>\n"
    _list_path(world).write_bytes(body)

    def rehash(manifest):
        for lst in manifest["lists"]:
            if lst["path"] == "lists/gambling.txt":
                lst["sha256"] = hashlib.sha256(body).hexdigest()

    _resign(world, rehash)  # validly signed, hashes right: only the lines are wrong


_DNS_CASES = [  # what breaks, the result and reason, how the message starts
    (dns_bad_signature, "rejected", "bad_signature", "bad signature"),
    (dns_wrong_key, "rejected", "wrong_key", "wrong key: the feed is signed with key ed25519:"),
    (dns_sha256_mismatch, "rejected", "sha256_mismatch", "sha256 mismatch for list lists/gambling.txt"),
    (dns_truncated_list, "rejected", "sha256_mismatch", "sha256 mismatch for list lists/gambling.txt"),
    (dns_list_over_the_cap, "rejected", "too_large", "lists/gambling.txt is larger than the limit"),
    (dns_older_version, "rejected", "rollback", "rollback: the server offers version 1"),
    (dns_expired, "rejected", "expired", "expired: version 3 of feed school.example.vn expired at"),
    (dns_server_down, "rejected", "fetch", "cannot fetch http://127.0.0.1:"),
    (dns_slow_server, "rejected", "fetch", "cannot fetch http://127.0.0.1:"),
    (dns_not_modified, "not_modified", None, None),
    (dns_garbage_lines, "rejected", "bad_list", "list lists/gambling.txt line "),
]  # fmt: skip


@pytest.mark.parametrize(
    ("breakage", "result", "reason", "start"),
    _DNS_CASES,
    ids=[case[0].__name__.removeprefix("dns_") for case in _DNS_CASES],
)
def test_a_failed_sync_leaves_the_names_in_force_over_dns(world, breakage, result, reason, start):
    breakage(world)
    (r,) = run_sync_job(world.server)
    assert (r.result, r.reason) == (result, reason), r.message
    assert start is None or r.message.startswith(start), r.message
    if breakage is dns_slow_server:
        assert r.message.endswith("manifest.json: timed out")
    # Version 2 still answers DNS; the broken version's names were never put in force.
    server = world.server
    assert blocked_by(server, "feedbet.test") == "category=gambling min_age=18+"
    assert blocked_by(server, "www.game18.test") == "category=online_games min_age=18+"
    assert blocked_by(server, "fb88.test") == "category=gambling min_age=18+"  # the bundled lists
    for name in ("ok.test", "other.test", "othergame.test"):
        assert blocked_by(server, name) is None
    assert [f.version for f in feeds_in_force(world.store) if f.publisher_id == PUBLISHER] == [2]
    # The status file says what happened, for the admin page and the LED.
    status = read_status(world.store, PUBLISHER)
    assert status["in_force"]["version"] == 2
    if result == "rejected":
        assert status["last_sync"] == status["last_error"]
        assert (status["last_error"]["reason"], status["last_error"]["message"]) == (
            reason,
            r.message,
        )
    else:
        assert (status["last_sync"]["result"], status["last_sync"]["how"]) == (
            "not_modified",
            "304",
        )


def test_a_sync_job_that_finds_another_sync_running_is_busy(world):
    _next_version_without_the_names(world)
    before = read_status(world.store, PUBLISHER)
    with open(world.store / PUBLISHER / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # e.g. a `safenest sync` stuck on a slow server
        (r,) = run_sync_job(world.server)
    assert (r.result, r.reason) == ("busy", "busy")
    assert r.line().endswith(
        f"busy: another sync of feed {PUBLISHER} is running; try again later; v2 in force"
    )
    assert blocked_by(world.server, "feedbet.test") == "category=gambling min_age=18+"
    assert blocked_by(world.server, "other.test") is None
    assert read_status(world.store, PUBLISHER) == before  # the running sync owns it
    # It is retried like a failure (5 minutes later, then 15 and 60).
    retry = world.server.call(world.server.agent.feed_sync.scheduler.get_job, SYNC_RETRY_JOB_ID)
    assert retry is not None
    (r,) = run_sync_job(world.server)  # the lock is free again: version 3 goes in
    assert (r.result, r.version) == ("accepted", 3)
    assert blocked_by(world.server, "other.test") == "category=gambling min_age=18+"
    assert blocked_by(world.server, "feedbet.test") is None
    # Back to the state the other cases expect: version 2 in force (dropped by hand, as an
    # admin would, then synced again).
    shutil.rmtree(world.store / PUBLISHER)
    world.reset()
    (r,) = run_sync_job(world.server)
    assert (r.result, r.version) == ("accepted", 2)


# ---------------------------------------------------------------- a restart


def test_the_set_in_force_survives_a_restart_without_the_feed_server(
    feed, lists, upstream, tmp_path
):
    data = tmp_path / "var"
    settings = {**settings_for(feed, lists, upstream), "dns": ["127.0.0.1:0"]}
    first = RunningSafeNest(data, settings)
    try:
        assert [r.result for r in run_sync_job(first)] == ["accepted"]
        (feed.src / "gambling.txt").write_text("feedbet.test\nnew.test\n")
        feed.publish()
        assert [(r.result, r.version) for r in run_sync_job(first)] == [("accepted", 2)]
        assert blocked_by(first, "new.test") == "category=gambling min_age=18+"
    finally:
        first.stop()
    feed.server.down()
    status = read_status(data / "feeds", PUBLISHER)
    # What starts DNS is the index saved last time: it already holds version 2.
    saved = last_good(data)
    assert saved.index.lookup_text("new.test").sources == (
        f"feed {PUBLISHER} v2 lists/gambling.txt",
    )

    second = RunningSafeNest(data, settings)
    try:
        assert blocked_by(second, "new.test") == "category=gambling min_age=18+"
        assert blocked_by(second, "feedbet.test") == "category=gambling min_age=18+"
        assert blocked_by(second, "ok.test") is None
        # No sync has run: the first is about a minute away, and the status is as it was.
        job = second.call(second.agent.feed_sync.scheduler.get_job, SYNC_JOB_ID)
        assert job.next_run_time > datetime.now(job.next_run_time.tzinfo)
        assert read_status(data / "feeds", PUBLISHER) == status
        # When it runs, the server is unreachable: rejected, and version 2 stays in force.
        assert [(r.result, r.reason) for r in run_sync_job(second)] == [("rejected", "fetch")]
        assert blocked_by(second, "new.test") == "category=gambling min_age=18+"
    finally:
        second.stop()
