"""Extra sources: public categorized lists fetched by URL from a real local HTTP(S) server.

The server is tests/test_feed_sync.py's (http.server on 127.0.0.1, ETag and Last-Modified,
a log of every request); plain http is allowed with allow_insecure as a test or a local mirror
would be, and one test serves https with a self-signed certificate made by openssl.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from agent.feed.extra import parse_spec, read_source_status, sources_in_force, sync_sources
from agent.lists import compile_lists
from tests.policy_fixtures import decide_as
from tests.test_feed_sync import Server

SHARED_LISTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lists"

MIXED = """\
# A public list in every common format
! adblock comment
[Adblock Plus 2.0]
0.0.0.0 casino1.test
127.0.0.1 casino2.test casino3.test
0.0.0.0 localhost
plain.test
||adblock.test^
||opts.test^$important
*.wildcard.test
||*.wild2.test^
@@||learn.casino1.test^
"""


class Lists:
    """A folder of list files served at ``self.url(name)``."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "www"
        (self.root / "feed").mkdir(parents=True)
        self.server = Server(self.root)

    def put(self, name: str, text: str | bytes) -> str:
        path = self.root / "feed" / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return self.url(name)

    def url(self, name: str) -> str:
        return self.server.url + name

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def www(tmp_path):
    made = Lists(tmp_path)
    yield made
    made.close()


@pytest.fixture
def bundled(tmp_path) -> Path:
    folder = tmp_path / "blocklists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("bundled-bet.test\n")
    return folder


def sync(specs, data: Path, **kw):
    kw.setdefault("allow_insecure", True)
    kw.setdefault("timeout", 5)
    return sync_sources(specs, data, **kw)


def stored(data: Path, url: str, kind: str) -> list[str]:
    (folder,) = [
        p
        for p in (data / "sources").iterdir()
        if p.is_dir() and p.name == parse_spec(f"x={url}").id
    ]
    return (folder / f"{kind}.txt").read_text().split()


def test_hosts_plain_and_adblock_lines_with_exceptions_and_wildcards(www, bundled, tmp_path):
    data = tmp_path / "var"
    url = www.put("gambling.txt", MIXED)
    (result,) = sync([f"gambling={url}"], data)
    assert (result.result, result.entries, result.bad) == ("accepted", 9, 0)
    assert result.line() == f"source gambling={url}: accepted, 9 names"
    assert stored(data, url, "block") == [
        "casino1.test",
        "casino2.test",
        "casino3.test",
        "plain.test",
        "adblock.test",
        "opts.test",
        "wildcard.test",
        "wild2.test",
    ]
    assert stored(data, url, "allow") == ["learn.casino1.test"]
    status = read_source_status(data)["sources"][url]
    assert status["category"] == "gambling" and status["entries"] == 9 and status["bad_lines"] == 0
    assert status["last_success"]["result"] == "accepted" and "last_error" not in status

    # Compiled into the index with a label naming the URL, next to the default feed.
    compiled = compile_lists(str(bundled), data)
    gambling = (True, "category=gambling min_age=18+")
    for band in ("16+", "00+"):
        assert decide_as(compiled, data, "www.casino2.test", band) == gambling
        assert decide_as(compiled, data, "a.b.wild2.test", band) == gambling
        assert decide_as(compiled, data, "bundled-bet.test", band) == gambling
        assert decide_as(compiled, data, "casino1.test", band) == gambling
    assert compiled.index.lookup_text("casino2.test").sources == (f"source {url}",)
    # The @@ exception says learn.casino1.test is not gambling, for every age, as in any ad
    # blocker: it is indexed as an allow list from 00+ and beats its listed parent.
    assert compiled.index.lookup_text("learn.casino1.test").kind == "allow"
    for band in ("18+", "16+", "00+"):
        blocked, reason = decide_as(compiled, data, "learn.casino1.test", band)
        assert not blocked and reason.startswith("allowlist=gambling"), (band, reason)


def test_an_age_category_applies_by_the_profiles_band(www, bundled, tmp_path):
    data = tmp_path / "var"
    social = www.put("social.txt", "social.test\n")
    games = www.put("games.txt", "||game18.test^\n")
    results = sync([f"social_networks={social}", f"online_games@18+={games}"], data)
    assert [r.result for r in results] == ["accepted", "accepted"]
    compiled = compile_lists(str(bundled), data)
    # Social networks are 16+: open to a 16+ child, blocked for a 9-year-old.
    assert decide_as(compiled, data, "social.test", "16+") == (False, "default")
    assert decide_as(compiled, data, "social.test", "00+") == (
        True,
        "category=social_networks min_age=16+",
    )
    # The source's own age (online_games is 12+) makes it 18+: blocked for both.
    for band in ("16+", "00+"):
        assert decide_as(compiled, data, "game18.test", band) == (
            True,
            "category=online_games min_age=18+",
        )


def test_garbage_within_the_budget_is_skipped_and_counted(www, tmp_path):
    data = tmp_path / "var"
    good = "".join(f"site{i}.test\n" for i in range(95))
    url = www.put("list.txt", good + "not a domain\nhttp://x.test/path\n<html>\n!!\n1.2.3.4\n")
    (r,) = sync([f"adult={url}"], data)
    assert (r.result, r.entries, r.bad) == ("accepted", 95, 4)  # "!!" is an adblock comment
    assert r.line().endswith("accepted, 95 names (4 bad lines skipped)")
    assert read_source_status(data)["sources"][url]["bad_lines"] == 4


def test_garbage_beyond_the_budget_rejects_the_source_and_keeps_the_last_good(
    www, bundled, tmp_path
):
    data = tmp_path / "var"
    url = www.put("list.txt", "good1.test\ngood2.test\n")
    assert sync([f"adult={url}"], data)[0].result == "accepted"
    # The server now sends an HTML error page with a 200, then a list with 11% garbage.
    for body in (
        "<html>\n<body>Service unavailable</body>\n</html>\n",
        "".join(f"n{i}.test\n" for i in range(8)) + "bad one\n",
    ):
        www.put("list.txt", body)
        (r,) = sync([f"adult={url}"], data)
        assert (r.result, r.reason, r.entries) == ("rejected", "bad_lines", 2), r.message
        assert "over the budget of 10%" in r.message
        assert r.line().endswith("; 2 names in force")
        assert stored(data, url, "block") == ["good1.test", "good2.test"]
    status = read_source_status(data)["sources"][url]
    assert (
        status["last_error"]["reason"] == "bad_lines"
        and status["last_success"]["result"] == "accepted"
    )
    assert status["entries"] == 2
    compiled = compile_lists(str(bundled), data)
    assert decide_as(compiled, data, "good1.test") == (True, "category=adult min_age=18+")
    assert decide_as(compiled, data, "n1.test", "00+") == (False, "default")
    # An empty list is refused as well (a list that moved away).
    www.put("list.txt", "# nothing here\n")
    assert sync([f"adult={url}"], data)[0].reason == "empty"
    assert not list((data / "sources").rglob(".*.tmp"))  # no temporary file left behind


def test_conditional_get_and_same_content(www, tmp_path):
    data = tmp_path / "var"
    url = www.put("list.txt", "a.test\n")
    assert sync([f"malware={url}"], data)[0].result == "accepted"
    www.server.log.clear()
    (r,) = sync([f"malware={url}"], data)
    assert (r.result, r.entries) == ("not_modified", 1)
    assert read_source_status(data)["sources"][url]["last_sync"]["how"] == "304"
    assert www.server.log == ["/feed/list.txt"]
    # A server without an ETag that sends the same bytes: not modified either.
    www.server.handler.use_etag = False
    (r,) = sync([f"malware={url}"], data)
    assert r.result == "not_modified"
    # New content is accepted.
    www.put("list.txt", "a.test\nb.test\n")
    www.server.handler.use_etag = True
    assert sync([f"malware={url}"], data)[0].entries == 2


def test_a_list_over_the_size_cap_is_rejected(www, tmp_path):
    data = tmp_path / "var"
    url = www.put("list.txt", "small.test\n")
    assert sync([f"malware={url}"], data, max_bytes=1000)[0].result == "accepted"
    www.put("list.txt", "".join(f"host{i}.test\n" for i in range(200)))
    (r,) = sync([f"malware={url}"], data, max_bytes=1000)
    assert (r.result, r.reason) == ("rejected", "too_large")
    assert stored(data, url, "block") == ["small.test"]


def test_a_server_that_is_down_or_missing_the_list(www, tmp_path):
    data = tmp_path / "var"
    url = www.put("list.txt", "kept.test\n")
    assert sync([f"malware={url}"], data)[0].result == "accepted"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/list.txt"
    results = sync(
        [f"malware={url}", f"phishing_scam={down}", f"adult={www.url('gone.txt')}"], data, timeout=2
    )
    assert [(r.result, r.reason) for r in results] == [
        ("not_modified", None),
        ("rejected", "fetch"),
        ("rejected", "not_found"),
    ]
    assert results[1].message.startswith(f"cannot fetch {down}: ")
    assert results[1].line().endswith("; nothing in force")
    assert stored(data, url, "block") == ["kept.test"]


def test_https_only_unless_insecure_is_allowed(www, tmp_path):
    data = tmp_path / "var"
    url = www.put("list.txt", "a.test\n")
    www.server.log.clear()
    (r,) = sync([f"malware={url}"], data, allow_insecure=False)
    assert (r.result, r.reason) == ("rejected", "insecure")
    assert www.server.log == []  # refused before any request
    for bad in (f"malware=ftp://127.0.0.1/{url}", "malware=file:///etc/hosts"):
        assert sync([bad], data)[0].reason == "insecure"


@pytest.fixture
def https_server(tmp_path):
    """An HTTPS server for 127.0.0.1 with a self-signed certificate (openssl)."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed: .ci/run installs it")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    www = Lists(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    www.server.httpd.socket = context.wrap_socket(www.server.httpd.socket, server_side=True)
    www.server.url = www.server.url.replace("http://", "https://")
    yield www, cert
    www.close()


def test_https_with_a_trusted_and_an_untrusted_certificate(https_server, tmp_path, monkeypatch):
    www, cert = https_server
    data = tmp_path / "var"
    url = www.put("list.txt", "secure.test\n")
    assert url.startswith("https://")
    (r,) = sync([f"malware={url}"], data, allow_insecure=False)
    assert (r.result, r.reason) == ("rejected", "fetch")
    assert "certificate could not be verified" in r.message
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the admin trusts this certificate
    (r,) = sync([f"malware={url}"], data, allow_insecure=False)
    assert (r.result, r.entries) == ("accepted", 1)


def test_bad_specs_unknown_categories_and_removed_sources(www, bundled, tmp_path):
    data = tmp_path / "var"
    url = www.put("list.txt", "x.test\n")
    results = sync(
        [
            "no-equals-sign",
            f"Gambling={url}",
            "gambling=not a url",
            f"casino={url}",
            f"gambling={url}",
        ],
        data,
        known_categories={"gambling"},
    )
    assert [(r.result, r.reason) for r in results] == [
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "unknown_category"),
        ("accepted", None),
    ]
    assert "expected CATEGORY=URL" in results[0].message
    assert [s.label for s in sources_in_force(data)] == [f"source {url}"]
    compiled = compile_lists(str(bundled), data)
    assert decide_as(compiled, data, "x.test", "00+") == (True, "category=gambling min_age=18+")
    # Removed from the setting: dropped at the next sync, and from the index.
    (r,) = sync([], data)
    assert (r.result, r.url) == ("removed", url)
    assert sources_in_force(data) == []
    assert json.loads((data / "sources" / "status.json").read_text())["sources"] == {}
    assert decide_as(compile_lists(str(bundled), data), data, "x.test", "00+") == (False, "default")


@pytest.mark.skipif(not (SHARED_LISTS / "hostsVN").is_dir(), reason="third-party lists not present")
def test_real_public_lists(www, tmp_path):
    data = tmp_path / "var"
    hosts = www.put("hosts", (SHARED_LISTS / "hostsVN" / "gambling-hosts-VN").read_bytes())
    adblock = www.put(
        "adblock.txt", (SHARED_LISTS / "blocklistproject" / "drugs-adblock.txt").read_bytes()
    )
    results = sync([f"gambling={hosts}", f"drugs={adblock}"], data)
    assert [r.result for r in results] == ["accepted", "accepted"], [r.line() for r in results]
    assert all(r.entries > 100 for r in results)


def test_the_sync_command_syncs_the_sources(www, tmp_path):
    from tests.test_feed_enforce import child_env, safenest_cli

    data = tmp_path / "var"
    good = www.put("good.txt", "0.0.0.0 bet1.test\n0.0.0.0 bet2.test\n")
    bad = www.put("bad.txt", "<html>\n<p>moved</p>\n</html>\n")
    env = child_env(sources=f"gambling={good} adult={bad}", feed_allow_insecure="true")
    out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"source gambling={good}: accepted, 2 names"
    assert lines[1].startswith(f"source adult={bad}: rejected: bad_lines: ")
    assert lines[1].endswith("; nothing in force") and len(lines) == 2
    assert set(read_source_status(data)["sources"]) == {good, bad}
    # A source naming a category that no feed defines is refused.
    env = child_env(sources=f"casino={good}", feed_allow_insecure="true")
    out = safenest_cli("sync", "--data", str(data), env=env, cwd=tmp_path)
    assert (
        out.returncode == 1
        and "rejected: unknown_category: unknown category 'casino'" in out.stdout
    )
    assert "removed" in out.stdout  # the two sources no longer configured


# ---------------------------------------------------------------- during a query loop


def test_a_sync_during_a_continuous_query_loop_loses_no_query(
    safenest, fake_upstream, www, bundled
):
    from tests.test_feed_enforce import run_sync_job

    upstream = fake_upstream()
    names = [f"ok{i}.test" for i in range(20)]
    for name in names:
        upstream.answer(name, "A", "192.0.2.1")
    url = www.put("list.txt", "".join(f"listed{i}.test\n" for i in range(5000)))
    server = safenest(
        upstream=[upstream.address],
        blocklists_dir=str(bundled),
        sources=[f"gambling={url}"],
        feed_allow_insecure=True,
        rate_limit_queries=0,  # one client asks as fast as it can: not a flood to limit here
    )
    # Sources alone start the scheduled sync.
    assert server.agent.feed_sync.scheduler is not None
    sent = answered = 0
    errors: list[str] = []
    stop = threading.Event()

    def ask_forever() -> None:
        nonlocal sent, answered
        i = 0
        while not stop.is_set() and sent < 20000:
            name = names[i % len(names)] if i % 3 else f"listed{i % 5000}.test"
            i += 1
            sent += 1
            try:
                reply = dns.query.udp(
                    dns.message.make_query(name, "A"), server.host, port=server.port, timeout=5
                )
            except Exception as exc:  # a lost or unreadable answer
                errors.append(f"{name}: {exc!r}")
                continue
            if reply.rcode() == dns.rcode.NOERROR:
                answered += 1
            else:
                errors.append(f"{name}: {dns.rcode.to_text(reply.rcode())}")

    asker = threading.Thread(target=ask_forever)
    asker.start()
    try:
        results = run_sync_job(server)  # fetch, store, recompile and swap, while queries flow
        assert [r.result for r in results] == ["accepted"]
        www.put("list.txt", "".join(f"listed{i}.test\n" for i in range(2500)))
        assert [r.result for r in run_sync_job(server)] == ["accepted"]
    finally:
        stop.set()
        asker.join(60)
    assert not asker.is_alive()
    assert errors == [] and sent > 0 and answered == sent
    reply = dns.query.udp(
        dns.message.make_query("listed7.test", "A"), server.host, port=server.port, timeout=5
    )
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["0.0.0.0"]
    # The second version dropped listed4000.test: forwarded again (the fake upstream has no data).
    reply = dns.query.udp(
        dns.message.make_query("listed4000.test", "A"), server.host, port=server.port, timeout=5
    )
    assert (reply.rcode(), reply.answer) == (dns.rcode.NOERROR, [])


# ---------------------------------------------------------------- robustness


def test_a_source_mapped_to_another_category_is_refiled_when_the_list_is_unchanged(
    www, bundled, tmp_path
):
    data = tmp_path / "var"
    url = www.put("list.txt", "bet.test\n")
    assert sync([f"adult={url}"], data)[0].result == "accepted"
    # The admin maps the source to gambling; the server answers 304 ...
    www.server.log.clear()
    (r,) = sync([f"gambling={url}"], data)
    assert (r.result, r.category, r.entries) == ("accepted", "gambling", 1)
    assert www.server.log == ["/feed/list.txt"]
    status = read_source_status(data)["sources"][url]
    assert status["category"] == "gambling"
    assert (status["last_sync"]["how"], status["last_sync"]["category_was"]) == ("304", "adult")
    assert [s.category for s in sources_in_force(data)] == ["gambling"]
    gambling = (True, "category=gambling min_age=18+")
    assert decide_as(compile_lists(str(bundled), data), data, "bet.test", "00+") == gambling
    assert sync([f"gambling={url}"], data)[0].result == "not_modified"  # nothing new since
    # ... or, without validators, sends the same bytes again.
    www.server.handler.use_etag = False
    (r,) = sync([f"malware={url}"], data)
    assert (r.result, r.entries) == ("accepted", 1)
    status = read_source_status(data)["sources"][url]
    assert (status["last_sync"]["how"], status["last_sync"]["category_was"]) == (
        "same content",
        "gambling",
    )
    assert [s.category for s in sources_in_force(data)] == ["malware"]
    compiled = compile_lists(str(bundled), data)
    assert decide_as(compiled, data, "bet.test", "00+") == (True, "always=malware")


def test_a_sources_sync_while_another_one_runs_is_busy_and_changes_nothing(www, tmp_path):
    import fcntl

    data = tmp_path / "var"
    url = www.put("list.txt", "a.test\n")
    assert sync([f"malware={url}"], data)[0].result == "accepted"
    www.put("list.txt", "a.test\nb.test\n")
    before = read_source_status(data)
    with open(data / "sources" / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a sync stuck on a slow server holds it
        www.server.log.clear()
        (r,) = sync([f"malware={url}"], data)  # returns at once instead of waiting behind it
        assert www.server.log == []
    busy = "busy: another sync of the sources is running; try again later"
    assert (r.result, r.reason, r.message, r.entries, r.ok) == ("busy", "busy", busy, 1, False)
    assert r.line() == f"source malware={url}: {busy}; 1 names in force"
    assert read_source_status(data) == before and stored(data, url, "block") == ["a.test"]
    assert sync([f"malware={url}"], data)[0].entries == 2  # once it is done


def test_redirects_are_checked_hop_by_hop_before_they_are_followed(
    https_server, tmp_path, monkeypatch
):
    from agent.feed.build import build_feed
    from agent.feed.sign import generate_key
    from agent.feed.sync import sync_feed

    secure, cert = https_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    plain_root = tmp_path / "plain"
    (plain_root / "feed").mkdir(parents=True)
    (plain_root / "feed" / "list.txt").write_text("plain.test\n")
    plain = Server(plain_root)
    try:
        data = tmp_path / "var"
        secure.put("list.txt", "secure.test\n")
        # https to https (a relative Location) is followed.
        secure.server.handler.redirects["/feed/moved.txt"] = "/feed/list.txt"
        r = sync([f"malware={secure.url('moved.txt')}"], data, allow_insecure=False)[0]
        assert (r.result, r.entries) == ("accepted", 1)

        # https to plain http is refused without sending the plain request.
        to_plain = plain.url + "list.txt"
        secure.server.handler.redirects["/feed/down.txt"] = to_plain
        source = secure.url("down.txt")
        r = sync([f"malware={source}"], data, allow_insecure=False)[0]
        assert (r.result, r.reason) == ("rejected", "insecure")
        assert r.message == (
            f"{source} redirected to {to_plain} (http:), which is not allowed: sources are "
            "fetched over https only; the redirect was not followed"
        )
        assert plain.log == []
        # The same for a feed's files.
        key = generate_key("school.example.vn", "School")
        src = tmp_path / "src"
        src.mkdir()
        (src / "gambling.txt").write_text("feedbet.test\n")
        build_feed(src, secure.root / "signed", key)
        secure.server.handler.redirects["/signed/manifest.json"] = plain.url + "manifest.json"
        feed_url = secure.server.url.replace("/feed/", "/signed/")
        r = sync_feed(feed_url, key.public, data / "feeds", allow_insecure=False)
        assert (r.result, r.reason) == ("rejected", "insecure")
        assert "redirected to http://127.0.0.1:" in r.message and plain.log == []

        # Where plain http is allowed (a local mirror), it is followed; a loop is not.
        r = sync([f"malware={source}"], data, allow_insecure=True)[0]
        assert (r.result, r.entries, plain.log) == ("accepted", 1, ["/feed/list.txt"])
        plain.handler.redirects["/feed/loop.txt"] = "/feed/loop.txt"
        r = sync([f"malware={plain.url}loop.txt"], data)[0]
        assert (r.result, r.reason) == ("rejected", "fetch")
        assert r.message == f"cannot fetch {plain.url}loop.txt: more than 5 redirects"
        assert plain.log.count("/feed/loop.txt") == 6
    finally:
        plain.close()
