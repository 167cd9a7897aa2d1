"""`safenest policy export/import` through click's CliRunner, and once through the installed script."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.policy.document import from_document
from agent.policy.model import default_policy
from agent.storage.policy_store import open_policy_store
from tests.test_policy_document import KNOWN, SERVICES, doc_examples

SCRIPT = Path(sys.executable).with_name("safenest")


def family():
    return from_document(tomllib.loads(doc_examples()["family"]), KNOWN, SERVICES)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFENEST_CONFIG", raising=False)
    monkeypatch.delenv("SAFENEST_DATA", raising=False)
    return tmp_path / "var"


@pytest.fixture
def family_file(tmp_path):
    path = tmp_path / "family.toml"
    path.write_text(doc_examples()["family"], encoding="utf-8")
    return path


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_export_of_a_fresh_install_is_the_default_policy(data):
    result = run("policy", "export", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert from_document(tomllib.loads(result.output), KNOWN) == default_policy()


def test_import_applies_the_file_and_says_what_changed(data, family_file):
    result = run("policy", "import", str(family_file), "--data", str(data))
    assert result.exit_code == 0, result.output
    assert "applied (policy revision 1)" in result.output
    assert "profiles: 3 added (lan, minh, parents)" in result.output
    assert "devices: 3 added (lan-phone, minh-phone, tablet)" in result.output
    assert "rules: 1 added (youtube.com (minh))" in result.output
    assert open_policy_store(data).load() == family()

    again = run("policy", "import", str(family_file), "--data", str(data))
    assert again.exit_code == 0
    assert "no changes" in again.output
    assert open_policy_store(data).revision() == 1


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_export_then_import_is_a_backup_and_restore(data, family_file, tmp_path, fmt):
    run("policy", "import", str(family_file), "--data", str(data))
    backup = tmp_path / f"backup.{fmt}"
    result = run(
        "policy", "export", "--output", str(backup), "--data", str(data)
    )  # format from the name
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    parsed = json.loads(backup.read_text()) if fmt == "json" else tomllib.loads(backup.read_text())
    assert from_document(parsed, KNOWN, SERVICES) == family()

    fresh = tmp_path / "restored"
    result = run("policy", "import", str(backup), "--data", str(fresh))
    assert result.exit_code == 0, result.output
    assert open_policy_store(fresh).load() == family()


def test_export_format_flag_wins_over_the_file_name(data, tmp_path):
    out = tmp_path / "policy.txt"
    assert (
        run("policy", "export", "--format", "json", "-o", str(out), "--data", str(data)).exit_code
        == 0
    )
    assert json.loads(out.read_text())["format"] == 1


def test_a_bad_file_lists_every_problem_and_changes_nothing(data, family_file, tmp_path):
    run("policy", "import", str(family_file), "--data", str(data))
    store = open_policy_store(data)
    before, revision = store.load(), store.revision()

    doc = tomllib.loads(doc_examples()["school"])
    doc["devices"][0]["profile"] = "minh"
    doc["overrides"] = [
        {
            "id": "late",
            "profile": "guest",
            "kind": "pause",
            "starts": "2026-11-28T10:00:00Z",
            "until": "2026-11-28T09:00:00Z",
        }
    ]  # the last field is bad
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    result = run("policy", "import", str(bad), "--data", str(data))
    assert result.exit_code == 1
    assert "2 problems, nothing was applied" in result.output
    assert 'devices[0].profile: no profile "minh"' in result.output
    assert (
        "overrides[0].until: 2026-11-28T09:00:00Z is not after starts (2026-11-28T10:00:00Z)"
        in result.output
    )
    reread = open_policy_store(data)
    assert reread.load() == before
    assert reread.revision() == revision


def test_dry_run_shows_the_changes_and_applies_nothing(data, family_file):
    result = run("policy", "import", str(family_file), "--dry-run", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert "dry run, nothing applied" in result.output
    assert "profiles: 3 added (lan, minh, parents)" in result.output
    assert open_policy_store(data).load() == default_policy()
    assert open_policy_store(data).revision() == 0


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"format = 1\nprofiles = [", "p.toml", "1 problem, nothing was applied"),
        (b"\xff\xfe", "p.toml", "is not UTF-8 text"),
        (b"{}", "policy.yaml", "cannot tell the format"),
    ],
)
def test_unreadable_files_are_clear_errors(data, tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    result = run("policy", "import", str(path), "--data", str(data))
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert open_policy_store(data).revision() == 0


def test_the_installed_script_exports_and_imports(data, family_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFENEST_")}

    def safenest(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    imported = safenest("policy", "import", str(family_file), "--data", str(data))
    assert imported.returncode == 0, imported.stderr
    assert "applied" in imported.stdout
    exported = safenest("policy", "export", "--format", "json", "--data", str(data))
    assert exported.returncode == 0, exported.stderr
    assert from_document(json.loads(exported.stdout), KNOWN, SERVICES) == family()

    bad = tmp_path / "bad.toml"
    bad.write_text(doc_examples()["family"].replace("month = 3", "month = 13"), encoding="utf-8")
    refused = safenest("policy", "import", str(bad), "--data", str(data))
    assert refused.returncode == 1
    assert "profiles[1].birth.month: 13 is not a month (1-12)" in refused.stderr
    assert open_policy_store(data).load() == family()


def test_import_warns_about_each_device_assigned_by_a_randomized_mac(data, tmp_path):
    doc = tomllib.loads(doc_examples()["family"])
    doc["devices"][0]["value"] = "3A:7F:10:AA:BB:CC"  # Lan's phone: a private Wi-Fi address
    doc["devices"].append(
        {"id": "guest-phone", "match": "mac", "value": "da:a1:19:00:00:01", "profile": "lan"}
    )
    path = tmp_path / "randomized.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    for args in (["--dry-run"], []):
        result = run("policy", "import", str(path), "--data", str(data), *args)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
        assert warnings == [
            "warning: devices[0]: device lan-phone (Lan's phone) is assigned by MAC "
            "3a:7f:10:aa:bb:cc, a randomized (private Wi-Fi) address: when it changes, this "
            "entry no longer recognises the device. Turn the private address off for this "
            "network, or give it a fixed IP in the router and assign that.",
            "warning: devices[3]: device guest-phone is assigned by MAC da:a1:19:00:00:01, a "
            "randomized (private Wi-Fi) address: when it changes, this entry no longer "
            "recognises the device. Turn the private address off for this network, or give it "
            "a fixed IP in the router and assign that.",
        ]
        assert "warning" not in result.stdout
    assert "applied (policy revision 1)" in result.stdout
    assert open_policy_store(data).load().devices[0].value == "3a:7f:10:aa:bb:cc"
