"""`safenest feed keygen | build | verify` as a publisher and an admin run them: exit codes and messages."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.feed.cli import feed

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str):
    return CliRunner().invoke(feed, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def published(tmp_path):
    """A key pair and a feed built from a small source folder."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "gambling.txt").write_text("fb88.com\nwww.fb88.com\nnot a domain\n")
    (src / "messaging.txt").write_text("zalo.me\n")
    key = tmp_path / "school.key"
    r = run("keygen", key, "--publisher-id", "school.example.vn", "--publisher-name", "Trường THCS Ví Dụ")
    assert r.exit_code == 0, r.output
    out = tmp_path / "site" / "feed"
    r = run("build", src, out, "--key", key)
    assert r.exit_code == 0, r.output
    return src, out, key, Path(f"{key}.pub")


def test_keygen(tmp_path):
    key = tmp_path / "moet.key"
    r = run("keygen", key, "--publisher-id", "moet.gov.vn", "--publisher-name", "Bộ Giáo dục và Đào tạo")
    assert r.exit_code == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert Path(f"{key}.pub").read_text().startswith(
        "SafeNest feed public key v1 publisher=moet.gov.vn name=Bộ Giáo dục và Đào tạo\n"
    )
    lines = r.stdout.splitlines()
    assert lines[0] == f"secret key: {key} (mode 0600; keep it private and backed up)"
    assert lines[2] == "publisher:  moet.gov.vn (Bộ Giáo dục và Đào tạo)"
    assert lines[3].startswith("key id:     ed25519:") and len(lines[3].split()[-1]) == len("ed25519:") + 16
    # A second keygen never destroys the first key.
    before = key.read_bytes()
    r = run("keygen", key)
    assert r.exit_code == 1
    assert r.stderr == f"Error: {key} already exists (keep it, or pass --force to replace it)\n"
    assert key.read_bytes() == before
    assert run("keygen", key, "--force").exit_code == 0
    assert key.read_bytes() != before


def test_keygen_default_publisher_and_bad_id(tmp_path):
    r = run("keygen", tmp_path / "My School!.key")
    assert r.exit_code == 0
    assert "publisher:  my-school (my-school)" in r.stdout
    r = run("keygen", tmp_path / "x.key", "--publisher-id", "Not Valid")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: bad publisher id 'Not Valid'")


def test_build_output(published, tmp_path):
    src, out, key, _ = published
    r = run("build", src, out, "--key", key, "--valid-days", "7")
    assert r.exit_code == 0
    assert r.stderr == (
        "warning: src/gambling.txt: skipped 1 line that is not a domain name (line 3: 'not a domain')\n"
    )
    lines = r.stdout.splitlines()
    assert lines[0] == "lists/gambling.txt   block        1 name (dropped 1 covered by a parent)"
    assert lines[1] == "lists/messaging.txt  block        1 name"
    assert lines[2].startswith(f"built feed school.example.vn version 2 (was 1) in {out}: 2 lists, 2 names, expires ")
    assert (out / "lists" / "gambling.txt").read_text().endswith("\nfb88.com\n")


def test_build_failures_exit_1(published, tmp_path):
    src, out, key, pub = published
    r = run("build", src, out, "--key", key, "--strict")
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: src/gambling.txt line 3: 'not a domain' is not a domain name "
        "(1 bad line; fix them, or build without strict to skip them)\n"
    )
    r = run("build", src, out, "--key", pub)
    assert r.exit_code == 1
    assert "is a public key, not a secret key" in r.stderr
    os.chmod(key, 0o640)
    r = run("build", src, out, "--key", key)
    assert (r.exit_code, r.stderr) == (1, f"Error: {key} can be read by other users (mode 0640): run chmod 600 {key}\n")
    os.chmod(key, 0o600)
    r = run("build", src, out, "--key", key, "--version", "1")
    assert (r.exit_code, r.stderr) == (1, f"Error: version 1 is not above version 1 already in {out}\n")
    r = run("build", src, out)
    assert r.exit_code == 2  # usage error: --key is required
    assert "Missing option '--key'" in r.stderr


def test_verify_ok(published):
    _, out, _, pub = published
    r = run("verify", out, "--pubkey", pub)
    assert r.exit_code == 0
    assert r.stdout.startswith(
        "OK: feed school.example.vn (Trường THCS Ví Dụ) version 1, key ed25519:"
    )
    assert ": 25 categories, 2 lists, 2 names; issued " in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize(
    "breakage, reason",
    [
        (lambda out: (out / "lists" / "gambling.txt").write_text("fb88.com\n"), "Error: sha256 mismatch for list lists/gambling.txt (lists[0], category gambling)"),
        (lambda out: (out / "manifest.json").write_bytes((out / "manifest.json").read_bytes().replace(b'"version": 1', b'"version": 2')), "Error: bad signature: manifest.json.sig does not match manifest.json"),
        (lambda out: (out / "manifest.json.sig").write_text("AAAA\n"), "Error: bad signature: manifest.json.sig is not one line of base64"),
        (lambda out: (out / "lists" / "messaging.txt").unlink(), "Error: lists/messaging.txt is missing: no file "),
        (lambda out: (out / "manifest.json").unlink(), "Error: manifest.json is missing: no file "),
    ],
    ids=["tampered-list", "tampered-manifest", "truncated-signature", "missing-list", "no-manifest"],
)
def test_verify_failures_exit_1_with_one_line(published, breakage, reason):
    _, out, _, pub = published
    breakage(out)
    r = run("verify", out, "--pubkey", pub)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.startswith(reason)
    assert r.stderr.count("\n") == 1


def test_verify_wrong_key_and_insecure_url(published, tmp_path):
    _, out, _, _ = published
    assert run("keygen", tmp_path / "other.key", "--publisher-id", "other.example").exit_code == 0
    r = run("verify", out, "--pubkey", tmp_path / "other.key.pub")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: wrong key: the feed is signed with key ed25519:")
    assert "but the pinned key is ed25519:" in r.stderr and "of publisher other.example\n" in r.stderr
    r = run("verify", "http://127.0.0.1:9/feed/", "--pubkey", tmp_path / "other.key.pub")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: http://127.0.0.1:9/feed/: plain http is not allowed; use https")
    r = run("verify", out, "--pubkey", tmp_path / "missing.pub")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: cannot read public key ")


def test_real_process_exit_codes(published):
    """The same through a real child process (what a shell script or cron sees)."""
    _, out, _, pub = published
    cmd = [sys.executable, "-m", "agent.feed.cli", "verify", str(out), "--pubkey", str(pub)]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: feed school.example.vn"), ok.stderr
    (out / "lists" / "messaging.txt").write_text("zalo.me\nevil.example\n")
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.startswith("Error: sha256 mismatch for list lists/messaging.txt")
    assert bad.stderr.count("\n") == 1


def test_safenest_command_has_the_feed_group():
    from agent import cli

    if "feed" not in cli.main.commands:
        pytest.skip("agent/cli.py does not register the feed group yet (main.add_command(feed))")
    assert cli.main.commands["feed"] is feed
    assert set(feed.commands) == {"keygen", "build", "verify", "default"}
