"""`safenest sync`: fetch a feed from a real local HTTP server, accept or reject it, keep the last good one.

The server is http.server on 127.0.0.1 (port chosen by the OS), allowed with allow_insecure=True as
a test or local mirror would be. It answers conditional GETs (ETag, Last-Modified) and counts every
request, so that a 304 can be shown to fetch nothing else.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.feed.build import build_feed
from agent.feed.format import FeedError
from agent.feed.sign import generate_key, sign, write_keypair
from agent.feed.sync import feeds_in_force, read_status, sync_feed, sync_pinned
from agent.feed.verify import verify_feed

NOW = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
PUBLISHER = "test.example.vn"


class _FeedHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under ``root`` with ETag and Last-Modified; counts requests; may stall;
    answers a path in ``redirects`` with a 302 to the URL given there."""

    root: Path
    log: list
    redirects: dict
    use_etag = True
    delay = 0.0  # seconds before answering manifest.json

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append(self.path)
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.delay and self.path.endswith("manifest.json"):
            time.sleep(self.delay)
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        modified = email.utils.formatdate(int(path.stat().st_mtime), usegmt=True)
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        if (self.use_etag and inm == etag) or (inm is None and ims == modified):
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.use_etag:
            self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server:
    def __init__(self, root: Path) -> None:
        self.log: list[str] = []
        self.handler = type("H", (_FeedHandler,), {"root": root, "log": self.log, "redirects": {}})
        self._listen(0)
        self.url = f"http://127.0.0.1:{self.port}/feed/"

    def _listen(self, port: int) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), self.handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        if self.httpd is None:
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        self.httpd = None

    def down(self) -> None:
        """Stop listening: a connection to the feed's URL is refused until ``up``."""
        self.close()

    def up(self) -> None:
        """Listen again on the same port (the feed's URL is unchanged)."""
        if self.httpd is None:
            self._listen(self.port)


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    key = generate_key(PUBLISHER, "Trường Thử Nghiệm")
    secret, public = write_keypair(tmp_path / "keys" / "feed.key", key)
    return key, public


@pytest.fixture
def site(tmp_path, keys):
    """A publisher's source folder and its feed (version 1) served over HTTP at ``/feed/``."""
    key, public = keys
    src = tmp_path / "src"
    src.mkdir()
    (src / "gambling.txt").write_text("fb88.com\nnew88.com\n")
    (src / "messaging.txt").write_text("zalo.me\n")
    out = tmp_path / "www" / "feed"
    build_feed(src, out, key, now=NOW)
    server = Server(out.parent)
    yield Site(tmp_path, src, out, key, public, server)
    server.close()


class Site:
    def __init__(self, tmp_path, src, out, key, public, server) -> None:
        self.tmp, self.src, self.out, self.key, self.public, self.server = (
            tmp_path,
            src,
            out,
            key,
            public,
            server,
        )
        self.store = tmp_path / "var" / "feeds"

    def publish(self, **kw) -> None:
        """Build the next version into the served folder."""
        kw.setdefault("now", NOW)
        build_feed(self.src, self.out, self.key, **kw)

    def sync(self, url: str | None = None, **kw):
        kw.setdefault("allow_insecure", True)
        kw.setdefault("now", LATER)
        kw.setdefault("timeout", 2)
        return sync_feed(url or self.server.url, self.public, self.store, **kw)

    def in_force(self) -> int:
        feeds = feeds_in_force(self.store)
        assert [f.publisher_id for f in feeds] == [PUBLISHER]
        feed = feeds[0]
        # The copy in force is complete and still verifies on its own.
        assert verify_feed(feed.folder, self.public, now=LATER).version == feed.version
        for lst, path in feed.lists:
            assert path.is_file() and path.read_bytes().count(b"\n") >= lst.count
        return feed.version

    def versions_on_disk(self) -> list[str]:
        return sorted(p.name for p in (self.store / PUBLISHER).iterdir() if p.name.startswith("v"))

    def status(self) -> dict:
        return read_status(self.store, PUBLISHER)


def test_first_sync_then_304_then_new_version(site):
    r = site.sync()
    assert (r.result, r.version, r.reason) == ("accepted", 1, None)
    assert r.line() == f"{PUBLISHER} ({site.server.url}): accepted v1"
    assert site.in_force() == 1
    assert os.readlink(site.store / PUBLISHER / "current") == "v1"
    st = site.status()
    assert st["last_sync"]["result"] == "accepted"
    assert st["in_force"]["version"] == 1
    assert st["in_force"]["lists"] == {"lists/gambling.txt": 2, "lists/messaging.txt": 1}
    assert st["last_success"]["fetched_at"] == "2026-11-29T09:00:00Z"
    assert st["last_success"]["expires_at"] == "2026-12-28T09:00:00Z"
    assert st["http"]["etag"]

    # Nothing changed: one conditional request, answered 304, and nothing else is fetched.
    site.server.log.clear()
    r = site.sync()
    assert (r.result, r.in_force.version) == ("not_modified", 1)
    assert site.server.log == ["/feed/manifest.json"]
    assert site.status()["last_sync"]["how"] == "304"

    # A new version is accepted and swapped in; the previous one is kept one step.
    site.publish()
    r = site.sync()
    assert (r.result, r.version, r.previous_version) == ("accepted", 2, 1)
    assert r.line().endswith("accepted v2 (was v1)")
    assert site.in_force() == 2
    assert site.versions_on_disk() == ["v1", "v2"]
    site.publish()
    assert site.sync().result == "accepted"
    assert site.in_force() == 3
    assert site.versions_on_disk() == ["v2", "v3"]
    assert not list((site.store / PUBLISHER).glob(".staging-*"))


def test_last_modified_only_and_same_bytes(site):
    site.server.handler.use_etag = False
    assert site.sync().result == "accepted"
    site.server.log.clear()
    r = site.sync()
    assert r.result == "not_modified" and site.server.log == ["/feed/manifest.json"]
    # A server without validators that serves the same bytes: "no change", no list fetched.
    os.utime(site.out / "manifest.json", (time.time() + 5, time.time() + 5))
    site.server.log.clear()
    r = site.sync()
    assert (r.result, site.status()["last_sync"]["how"]) == ("not_modified", "same manifest")
    assert site.server.log == ["/feed/manifest.json"]


def test_rollback_and_reused_version_are_refused(site):
    old = site.tmp / "old"
    shutil.copytree(site.out, old)
    site.publish()
    assert site.sync().version == 2
    # The server (or an attacker) serves version 1 again, validly signed.
    shutil.rmtree(site.out)
    shutil.copytree(old, site.out)
    site.server.log.clear()
    r = site.sync()
    assert (r.result, r.reason, r.version) == ("rejected", "rollback", 1)
    assert (
        r.message
        == f"rollback: the server offers version 1 of feed {PUBLISHER}, lower than version 2 in force"
    )
    assert r.line().endswith("; v2 in force")
    assert not any("/lists/" in p for p in site.server.log)  # refused before any list is fetched
    assert site.in_force() == 2
    # The same version number with other contents is refused too.
    other = site.tmp / "other"
    (site.src / "dating.txt").write_text("tinder.com\n")
    build_feed(site.src, other, site.key, now=NOW, version=2)
    shutil.rmtree(site.out)
    shutil.copytree(other, site.out)
    r = site.sync()
    assert (r.result, r.reason) == ("rejected", "version_reused")
    assert site.in_force() == 2
    st = site.status()
    assert st["last_error"]["reason"] == "version_reused"
    assert st["last_success"]["version"] == 2 and st["in_force"]["version"] == 2


def _tamper_manifest(site):
    path = site.out / "manifest.json"
    path.write_bytes(path.read_bytes().replace("Trường Thử Nghiệm".encode(), b"Truong Gia Mao"))


def _bad_signature(site):
    (site.out / "manifest.json.sig").write_bytes(sign(site.key, b"something else"))


def _wrong_key(site):
    other = generate_key(PUBLISHER, "Kẻ Mạo Danh")
    build_feed(site.src, site.out, other, now=NOW)


def _sha256_mismatch(site):
    with open(site.out / "lists" / "gambling.txt", "a") as f:
        f.write("evil.example\n")


def _truncated(site):
    path = site.out / "lists" / "gambling.txt"
    path.write_bytes(path.read_bytes()[:-5])


def _expired(site):
    (site.src / "dating.txt").write_text("tinder.com\n")
    build_feed(site.src, site.out, site.key, now=NOW - timedelta(days=40), valid_days=30)


def _missing_list(site):
    (site.out / "lists" / "messaging.txt").unlink()


@pytest.mark.parametrize(
    ("breakage", "reason", "start"),
    [
        (_tamper_manifest, "bad_signature", "bad signature"),
        (_bad_signature, "bad_signature", "bad signature"),
        (_wrong_key, "wrong_key", "wrong key: the feed is signed with key ed25519:"),
        (_sha256_mismatch, "sha256_mismatch", "sha256 mismatch for list lists/gambling.txt"),
        (_truncated, "sha256_mismatch", "sha256 mismatch for list lists/gambling.txt"),
        (
            _expired,
            "expired",
            "expired: version 3 of feed test.example.vn expired at 2026-11-18T09:00:00Z",
        ),
        (_missing_list, "not_found", "lists/messaging.txt is missing"),
    ],
)
def test_bad_feeds_leave_the_last_good_one_in_force(site, breakage, reason, start):
    assert site.sync().result == "accepted"
    site.publish()  # version 2, then broken on the server
    breakage(site)
    r = site.sync()
    assert (r.result, r.reason) == ("rejected", reason)
    assert r.message.startswith(start), r.message
    assert r.in_force.version == 1 and site.in_force() == 1
    assert site.versions_on_disk() == ["v1"]
    assert not list((site.store / PUBLISHER).glob(".staging-*"))
    st = site.status()
    assert st["last_error"]["reason"] == reason and st["last_error"]["at"] == "2026-11-29T09:00:00Z"
    assert st["last_error"]["message"] == r.message
    assert st["last_sync"] == st["last_error"] and st["last_success"]["version"] == 1
    assert st["in_force"]["version"] == 1 and st["in_force"]["expired"] is False


def test_a_feed_in_force_that_expires_stays_in_force(site):
    assert site.sync().result == "accepted"
    much_later = NOW + timedelta(days=60)
    r = site.sync(now=much_later)
    assert r.result == "not_modified" and r.in_force.expired(much_later)
    assert [f.version for f in feeds_in_force(site.store)] == [1]
    st = site.status()["in_force"]
    assert (st["version"], st["expired"], st["expires_at"]) == (1, True, "2026-12-28T09:00:00Z")


def test_leftovers_of_an_interrupted_sync_are_cleaned(site):
    pub_dir = site.store / PUBLISHER
    (pub_dir / ".staging-crashed" / "lists").mkdir(parents=True)
    (pub_dir / "v1").mkdir()  # renamed, but `current` was never switched to it
    (pub_dir / "v1" / "junk.txt").write_text("half\n")
    assert site.sync().version == 1
    assert site.in_force() == 1 and not (pub_dir / "v1" / "junk.txt").exists()
    assert not list(pub_dir.glob(".staging-*"))


def test_caps(site):
    assert site.sync().result == "accepted"
    site.publish()
    (site.src / "gambling.txt").write_text("".join(f"site{i}.example.com\n" for i in range(200)))
    site.publish()
    r = site.sync(max_bytes=1000)
    assert (r.result, r.reason) == ("rejected", "too_large")
    assert r.message.startswith("lists/gambling.txt is larger than the limit of 1000 bytes")
    assert site.in_force() == 1
    assert site.sync().version == 3  # with the default cap it is fine


def test_server_down_and_slow(site):
    assert site.sync().result == "accepted"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"http://127.0.0.1:{port}/feed/"
    r = site.sync(down)
    assert (r.result, r.reason) == ("rejected", "fetch")
    assert r.message == f"cannot fetch {down}manifest.json: [Errno 111] Connection refused"
    assert site.in_force() == 1
    # A server that does not answer in time.
    site.publish()
    site.server.handler.delay = 1.0
    started = time.monotonic()
    r = site.sync(timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert (r.result, r.reason) == ("rejected", "fetch")
    assert r.message == f"cannot fetch {site.server.url}manifest.json: timed out"
    assert site.in_force() == 1 and site.status()["last_error"]["reason"] == "fetch"


def test_https_only_unless_allowed(site):
    site.server.log.clear()
    r = site.sync(allow_insecure=False)
    assert (r.result, r.reason) == ("rejected", "insecure")
    assert r.message.startswith(
        f"{site.server.url}: plain http is not allowed; feeds are synced over https only"
    )
    assert site.server.log == []  # refused before any request
    assert r.in_force is None and feeds_in_force(site.store) == []
    assert site.status()["last_error"]["reason"] == "insecure"
    # A local folder is a mirror too: only when allowed.
    assert site.sync(str(site.out), allow_insecure=False).reason == "insecure"
    assert site.sync(str(site.out)).version == 1
    assert site.sync(str(site.out)).result == "not_modified"


def test_two_publishers_and_an_unreadable_key(site, tmp_path):
    assert site.sync().result == "accepted"
    other = generate_key("ngo.example.org", "NGO")
    _, other_pub = write_keypair(tmp_path / "keys" / "ngo.key", other)
    other_out = tmp_path / "www" / "ngo"
    build_feed(site.src, other_out, other, now=NOW)
    r = sync_feed(
        site.server.url.replace("/feed/", "/ngo/"),
        other_pub,
        site.store,
        allow_insecure=True,
        now=LATER,
    )
    assert r.result == "accepted"
    assert [(f.publisher_id, f.version) for f in feeds_in_force(site.store)] == [
        ("ngo.example.org", 1),
        (PUBLISHER, 1),
    ]
    # The NGO's key does not accept the school's feed.
    r = sync_feed(site.server.url, other_pub, site.store, allow_insecure=True, now=LATER)
    assert (r.result, r.reason) == ("rejected", "wrong_key")
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    with pytest.raises(FeedError):
        sync_feed(site.server.url, bad, site.store, allow_insecure=True)


def test_cli(site, tmp_path):
    from agent.feed.cli import sync

    def run(*args):
        return CliRunner().invoke(sync, [str(a) for a in args], catch_exceptions=False)

    site.publish(now=datetime.now(UTC))  # the command uses the real clock
    data = tmp_path / "data"
    args = ("--feed", site.server.url, "--pubkey", site.public, "--data", data)
    r = run(*args)
    assert r.exit_code == 1
    assert r.stdout.startswith(f"{PUBLISHER} ({site.server.url}): rejected: insecure: ")
    assert r.stdout.rstrip().endswith("; no version in force")
    r = run(*args, "--allow-insecure")
    assert (r.exit_code, r.stdout) == (0, f"{PUBLISHER} ({site.server.url}): accepted v2\n")
    assert (
        json.loads((data / "feeds" / PUBLISHER / "status.json").read_text())["in_force"]["version"]
        == 2
    )
    r = run(*args, "--allow-insecure")
    assert (r.exit_code, r.stdout) == (
        0,
        f"{PUBLISHER} ({site.server.url}): not modified, v2 in force\n",
    )
    site.publish(now=datetime.now(UTC))
    _sha256_mismatch(site)
    r = run(*args, "--allow-insecure")
    assert r.exit_code == 1
    assert "rejected: sha256_mismatch: sha256 mismatch for list lists/gambling.txt" in r.stdout
    assert r.stdout.rstrip().endswith("; v2 in force")


def test_a_version_published_in_the_same_second_is_not_missed(site):
    # A static server without ETags: Last-Modified has whole seconds only.
    site.server.handler.use_etag = False
    stamp = int(time.time())
    os.utime(site.out / "manifest.json", (stamp, stamp))
    assert site.sync().result == "accepted"
    site.publish()  # version 2 ...
    os.utime(site.out / "manifest.json", (stamp, stamp))  # ... with the same Last-Modified second
    r = site.sync()
    assert (r.result, r.version) == ("accepted", 2)


# ---------------------------------------------------------------- a sync already running


def test_a_sync_while_another_one_runs_is_busy_and_changes_nothing(site):
    assert site.sync().result == "accepted"
    site.publish()
    before = site.status()
    with open(site.store / PUBLISHER / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a sync stuck on a slow server holds it
        site.server.log.clear()
        r = site.sync()  # returns at once instead of waiting behind it
        assert site.server.log == []
    busy = f"busy: another sync of feed {PUBLISHER} is running; try again later"
    assert (r.result, r.reason, r.message, r.ok) == ("busy", "busy", busy, False)
    assert r.line() == f"{PUBLISHER} ({site.server.url}): {busy}; v1 in force"
    assert r.in_force.version == 1 and site.in_force() == 1
    assert site.status() == before  # the running sync owns status.json
    assert site.sync().version == 2  # once it is done, the next sync goes ahead


# ---------------------------------------------------------------- the reserved publisher id


def test_a_remote_feed_may_not_claim_the_default_feeds_publisher_id(site, tmp_path):
    from agent.feed.default import PUBLISHER_ID, ensure_default_feed

    data = tmp_path / "data"
    bundled = ensure_default_feed(site.src, data, now=NOW)
    assert bundled.built and bundled.in_force.publisher_id == PUBLISHER_ID == "safenest-default"
    store = data / "feeds"
    status = read_status(store, PUBLISHER_ID)

    # Someone makes a key for the same publisher id and gets the admin to pin it.
    impostor = generate_key(PUBLISHER_ID, "SafeNest")
    _, impostor_pub = write_keypair(tmp_path / "keys" / "impostor.key", impostor)
    (site.src / "gambling.txt").write_text("other.test\n")
    build_feed(site.src, site.tmp / "www" / "impostor", impostor, now=NOW, version=9)
    url = site.server.url.replace("/feed/", "/impostor/")
    site.server.log.clear()
    for r in (
        sync_feed(url, impostor_pub, store, allow_insecure=True, now=LATER),
        sync_pinned(url, [impostor.public], store, allow_insecure=True, now=LATER),
    ):
        assert (r.result, r.reason, r.in_force) == ("rejected", "reserved_publisher", None)
        assert r.message.startswith(
            f"reserved publisher: the pinned key {impostor.key_id} is for publisher "
            "safenest-default, which is reserved for the default feed built on this device"
        )
    assert site.server.log == ["/impostor/manifest.json"]  # only sync_pinned's look at the key id
    # The bundled lists stay in force, untouched.
    ((feed),) = feeds_in_force(store)
    assert (feed.publisher_id, feed.version) == (PUBLISHER_ID, 1)
    assert feed.manifest.publisher.key_id == bundled.in_force.manifest.publisher.key_id
    assert read_status(store, PUBLISHER_ID) == status
