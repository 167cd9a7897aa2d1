"""Feeds in force feed the resolver: the scheduled sync, the index built from feeds, explain, `safenest sync`.

A real HTTP server on 127.0.0.1 (port chosen by the OS) serves the feeds, allowed with
feed_allow_insecure as a test or local mirror would be; SafeNest runs for real (tests/dnsfakes.py).
The sync job is called on the agent's loop instead of waiting for its timer.
"""

from __future__ import annotations

import asyncio
import os
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
from agent.feed.sign import generate_key, write_keypair
from agent.feed.sync import feeds_in_force, sync_pinned
from agent.lists import feed_sources
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
        [*SAFENEST, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


# ---------------------------------------------------------------- the scheduled sync in `safenest run`


def test_the_sync_job_puts_the_feed_in_force(safenest, feed, lists, upstream, tmp_path):
    server = safenest(**settings_for(feed, lists, upstream))
    assert blocked_by(server, "www.fb88.test") == "category=gambling min_age=18+"  # bundled, as before
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
        blocklists_dir=str(lists), feeds=feed.url, feed_keys_dir=str(feed.keys), feed_allow_insecure="true"
    )
    data = str(server.agent.settings.data)
    out = safenest_cli("explain", "www.feedbet.test", "--data", data, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("www.feedbet.test: blocked for profile default (12+): category gambling")
    assert f"feed {PUBLISHER} v1 lists/gambling.txt" in out.stdout
    out = safenest_cli("explain", "game18.test", "--data", data, env=env, cwd=tmp_path)
    assert f"feed {PUBLISHER} v1 lists/online_games.18.txt" in out.stdout, out.stdout
    out = safenest_cli("explain", "learn.fb88.test", "--data", data, env=env, cwd=tmp_path)
    assert "allowed for profile default (12+): it is on the allow list of category sex_education" in out.stdout
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
    manifest.write_bytes(manifest.read_bytes().replace("Trường Thử Nghiệm".encode(), b"Truong Gia Mao"))
    results = run_sync_job(server)
    assert [(r.result, r.reason) for r in results] == [("rejected", "bad_signature")]
    in_force = feeds_in_force(Path(server.agent.settings.data) / "feeds")
    assert [(f.publisher_id, f.version) for f in in_force] == [("safenest-default", 1), (PUBLISHER, 1)]
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
    assert r.message.startswith(f"unknown key: the feed names key id {feed.key.key_id} (publisher {PUBLISHER})")
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
    r = sync_pinned(feed.url, [feed.key.public], data / "feeds", allow_insecure=True, now=then + timedelta(hours=1))
    assert (r.result, r.version) == ("accepted", 2)
    (installed,) = feeds_in_force(data / "feeds")
    assert installed.expired()
    with caplog.at_level("WARNING", logger="agent.lists"):
        labels = {s.label: s.category for s in feed_sources(data)}
    # Every list is indexed, whatever its age; the snapshot decides what is blocked.
    assert labels[f"feed {PUBLISHER} v2 lists/gambling.txt"] == "gambling"
    assert labels[f"feed {PUBLISHER} v2 lists/messaging.txt"] == "messaging"
    assert labels[f"feed {PUBLISHER} v2 lists/online_games.18.txt"] == "online_games@18+"
    assert any("expired" in r.getMessage() and "stays in force" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- the schedule


def test_the_sync_job_is_scheduled_when_feeds_are_configured(safenest, feed, lists, upstream):
    server = safenest(**settings_for(feed, lists, upstream), sync_interval_hours=3, sync_jitter_minutes=10)
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
            feeds=f"{feed.url} {second.url}", feed_keys_dir=str(feed.keys), feed_allow_insecure="true"
        )
        out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            f"{PUBLISHER} ({feed.url}): accepted v1",
            f"ngo.example.org ({second.url}): accepted v1",
        ]
        assert [f.publisher_id for f in feeds_in_force(data / "feeds")] == ["ngo.example.org", PUBLISHER]
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
        out = safenest_cli("sync", "--feed", feed.url, "--data", str(data), env=child_env(), cwd=tmp_path)
        assert out.returncode == 2 and "--feed needs --pubkey" in out.stderr
        out = safenest_cli(
            "sync", "--feed", feed.url, "--pubkey", str(feed.public), "--allow-insecure", "--data", str(data),
            env=child_env(), cwd=tmp_path,
        )  # fmt: skip
        assert (out.returncode, out.stdout) == (0, f"{PUBLISHER} ({feed.url}): not modified, v2 in force\n")
    finally:
        second.close()
