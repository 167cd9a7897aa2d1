"""The settings registry: documented, helpful, and merged in the documented order."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent import settings as settings_module
from agent.settings import REGISTRY, SETTINGS, Setting, SettingsError, load_settings
from agent.settings_doc import EXAMPLE_TOML, env_var, settings_markdown, toml_value

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "settings.md"


# ---------------------------------------------------------------- documentation


def test_docs_settings_md_is_the_generated_output():
    assert DOC.read_text(encoding="utf-8") == settings_markdown(), (
        "docs/settings.md is out of date: run `python -m agent.settings_doc > docs/settings.md`"
    )


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented_with_its_env_var_and_default(setting):
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"\n### {setting.name}\n", 1)
    assert len(section) == 2, f"docs/settings.md has no section for {setting.name}"
    body = section[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert f"`SAFENEST_{setting.name.upper()}`" in body
    assert f"TOML key: `{setting.name}`" in body
    assert f"Default: `{toml_value(setting.default)}`" in body
    assert setting.help.strip() in body
    assert (
        f"`SAFENEST_{setting.name.upper()}`"
        in text.split("## All settings", 1)[1].split("\n### ", 1)[0]
    )


def test_the_module_prints_the_document():
    result = subprocess.run(
        [sys.executable, "-m", "agent.settings_doc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == settings_markdown()


def test_docs_describe_precedence_and_list_syntax():
    text = settings_markdown()
    order = [
        text.index(word)
        for word in ("the default", "`--config FILE`", "`SAFENEST_<NAME>`", "command-line flags:")
    ]
    assert order == sorted(order)
    assert "SAFENEST_CONFIG" in text
    assert "commas or spaces" in text
    for flag in ("`--data`", "`--dns`", "`--upstream`"):
        assert flag in text


def test_example_toml_in_the_docs_loads_and_every_value_takes_effect(tmp_path):
    block = re.search(r"```toml\n(.*?)```", settings_markdown(), re.S)
    assert block is not None
    config = tmp_path / "safenest.toml"
    config.write_text(block.group(1), encoding="utf-8")
    loaded = load_settings(config, environ={})
    assert tomllib.loads(block.group(1)).keys() == {name for name, _, _ in EXAMPLE_TOML}
    for name, value, _ in EXAMPLE_TOML:
        assert loaded[name] == value
        assert loaded.origin(name) == f"config file {config}"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_defaults_written_as_toml_read_back_equal(setting):
    assert tomllib.loads(f"x = {toml_value(setting.default)}")["x"] == setting.default


def test_env_var_name():
    assert env_var(REGISTRY["block_mode"]) == "SAFENEST_BLOCK_MODE"


# ---------------------------------------------------------------- the registry itself


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_has_help(setting):
    assert setting.help.strip(), f"{setting.name} has no help text"
    assert len(setting.help.strip()) >= 15, f"{setting.name}: help text is too short to help"


def test_setting_names_are_unique_lowercase_identifiers():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert name != "config", "SAFENEST_CONFIG names the config file, it cannot be a setting"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_default_passes_its_own_parser(setting):
    assert setting.parse(setting.default) == setting.default


def test_defaults_with_no_sources():
    loaded = load_settings(None, environ={})
    assert set(loaded) == {s.name for s in SETTINGS}
    for s in SETTINGS:
        assert loaded[s.name] == s.default
        assert loaded.origin(s.name) == "default"
    assert loaded.block_mode == "null"
    with pytest.raises(AttributeError):
        _ = loaded.no_such_setting


# ---------------------------------------------------------------- precedence


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "safenest.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("toml", "env", "overrides", "expected", "origin"),
    [
        (None, {}, {}, 10, "default"),
        ("block_ttl = 20\n", {}, {}, 20, "config file"),
        (
            "block_ttl = 20\n",
            {"SAFENEST_BLOCK_TTL": "30"},
            {},
            30,
            "environment SAFENEST_BLOCK_TTL",
        ),
        ("block_ttl = 20\n", {"SAFENEST_BLOCK_TTL": "30"}, {"block_ttl": "40"}, 40, "command line"),
        (None, {"SAFENEST_BLOCK_TTL": "30"}, {}, 30, "environment SAFENEST_BLOCK_TTL"),
        (None, {}, {"block_ttl": 40}, 40, "command line"),
        ("block_ttl = 20\n", {}, {"block_ttl": 40}, 40, "command line"),
        # An override that is None or empty means "flag not given": the lower source stays.
        ("block_ttl = 20\n", {}, {"block_ttl": None}, 20, "config file"),
    ],
)
def test_precedence_default_toml_env_overrides(tmp_path, toml, env, overrides, expected, origin):
    config = _write(tmp_path, toml) if toml is not None else None
    loaded = load_settings(config, environ=env, overrides=overrides)
    assert loaded.block_ttl == expected
    assert loaded.origin("block_ttl").startswith(origin)
    if origin == "config file":
        assert loaded.origin("block_ttl") == f"config file {config}"
    # Settings no source mentions keep their default.
    assert loaded.block_mode == "null" and loaded.origin("block_mode") == "default"


def test_each_source_sets_a_different_setting_and_all_origins_are_recorded(tmp_path):
    config = _write(tmp_path, 'block_mode = "nxdomain"\nupstream = ["192.0.2.1"]\n')
    loaded = load_settings(
        config,
        environ={
            "SAFENEST_UPSTREAM": "192.0.2.2:5300",
            "SAFENEST_LOG_LEVEL": "DEBUG",
            "HOME": "/root",
        },
        overrides={"dns": ["127.0.0.1:5300"], "data": None, "upstream": []},
    )
    assert (
        loaded.block_mode == "nxdomain" and loaded.origin("block_mode") == f"config file {config}"
    )
    assert loaded.upstream == ["192.0.2.2:5300"]
    assert loaded.origin("upstream") == "environment SAFENEST_UPSTREAM"
    assert loaded.log_level == "debug"
    assert loaded.dns == ["127.0.0.1:5300"] and loaded.origin("dns") == "command line"
    assert loaded.data == "var" and loaded.origin("data") == "default"
    described = "\n".join(loaded.describe())
    assert f"block_mode = 'nxdomain' (config file {config})" in described
    assert "upstream = ['192.0.2.2:5300'] (environment SAFENEST_UPSTREAM)" in described
    assert "dns = ['127.0.0.1:5300'] (command line)" in described


def test_a_later_source_replaces_a_list_whole(tmp_path):
    config = _write(tmp_path, 'local_names = ["a.lan", "b.lan"]\n')
    loaded = load_settings(config, environ={"SAFENEST_LOCAL_NAMES": "c.lan"})
    assert loaded.local_names == ["c.lan"]


def test_safenest_config_variable_is_not_a_setting():
    loaded = load_settings(None, environ={"SAFENEST_CONFIG": "/nonexistent.toml"})
    assert "config" not in loaded


def test_default_environ_is_os_environ(monkeypatch):
    monkeypatch.setenv("SAFENEST_BLOCK_TTL", "77")
    loaded = load_settings(None)
    assert loaded.block_ttl == 77
    assert loaded.origin("block_ttl") == "environment SAFENEST_BLOCK_TTL"


def test_settings_are_read_only():
    loaded = load_settings(None, environ={})
    with pytest.raises(TypeError):
        loaded["block_ttl"] = 5  # type: ignore[index]


# ---------------------------------------------------------------- parsing values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a, b c", ["a", "b", "c"]),
        ("a,b,c", ["a", "b", "c"]),
        ("  a  ", ["a"]),
        ("a,,b , ,c", ["a", "b", "c"]),
        (
            "192.168.1.1:53\t[2001:db8::1]:53\n1.1.1.1",
            ["192.168.1.1:53", "[2001:db8::1]:53", "1.1.1.1"],
        ),
        ("", []),
    ],
)
def test_lists_from_the_environment(raw, expected):
    loaded = load_settings(None, environ={"SAFENEST_UPSTREAM": raw})
    assert loaded.upstream == expected
    assert loaded.origin("upstream") == "environment SAFENEST_UPSTREAM"


def test_lists_from_toml_are_kept_item_by_item(tmp_path):
    loaded = load_settings(
        _write(tmp_path, 'upstream = [" 192.0.2.1 ", "192.0.2.2:53"]\n'), environ={}
    )
    assert loaded.upstream == ["192.0.2.1", "192.0.2.2:53"]


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("block_ttl", "0", 0),
        ("block_ttl", " 25 ", 25),
        ("upstream_timeout", "0.25", 0.25),
        ("upstream_timeout", "2", 2.0),
        ("block_mode", "NXDOMAIN", "nxdomain"),
        ("log_level", " Warning ", "warning"),
        (
            "allowed_clients",
            "192.168.1.0/24, fd00::/8 10.1.2.3",
            ["192.168.1.0/24", "fd00::/8", "10.1.2.3"],
        ),
        ("allowed_clients", "192.168.1.1/24", ["192.168.1.1/24"]),  # host bits are tolerated
    ],
)
def test_values_from_the_environment_are_parsed(name, raw, expected):
    loaded = load_settings(None, environ={f"SAFENEST_{name.upper()}": raw})
    assert loaded[name] == expected
    assert type(loaded[name]) is type(expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        ("1", True),
        ("true", True),
        ("Yes", True),
        (" ON ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_bool_values(raw, expected):
    assert settings_module._as_bool(raw) is expected


@pytest.fixture
def with_bool_setting(monkeypatch):
    """A boolean setting in the registry (none of the real ones is boolean yet)."""
    flag = Setting("test_flag", False, "A boolean setting for the tests.", settings_module._as_bool)
    monkeypatch.setattr(settings_module, "SETTINGS", (*SETTINGS, flag))
    monkeypatch.setattr(settings_module, "REGISTRY", {**REGISTRY, "test_flag": flag})
    return flag


def test_bool_setting_from_each_source(tmp_path, with_bool_setting):
    assert load_settings(None, environ={}).test_flag is False
    assert load_settings(_write(tmp_path, "test_flag = true\n"), environ={}).test_flag is True
    assert load_settings(None, environ={"SAFENEST_TEST_FLAG": "yes"}).test_flag is True
    assert (
        load_settings(
            None, environ={"SAFENEST_TEST_FLAG": "yes"}, overrides={"test_flag": "off"}
        ).test_flag
        is False
    )


# ---------------------------------------------------------------- errors name the setting and the source


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SAFENEST_BLOCK_TTL": "ten"}, ["block_ttl", "environment SAFENEST_BLOCK_TTL", "ten"]),
        ({"SAFENEST_BLOCK_TTL": "-1"}, ["block_ttl", "environment SAFENEST_BLOCK_TTL", "negative"]),
        ({"SAFENEST_BLOCK_TTL": "1.5"}, ["block_ttl", "environment SAFENEST_BLOCK_TTL"]),
        (
            {"SAFENEST_UPSTREAM_TIMEOUT": "0"},
            ["upstream_timeout", "environment SAFENEST_UPSTREAM_TIMEOUT", "greater than zero"],
        ),
        (
            {"SAFENEST_UPSTREAM_TIMEOUT": "soon"},
            ["upstream_timeout", "environment SAFENEST_UPSTREAM_TIMEOUT"],
        ),
        (
            {"SAFENEST_BLOCK_MODE": "refuse"},
            ["block_mode", "environment SAFENEST_BLOCK_MODE", "null, nxdomain", "refuse"],
        ),
        ({"SAFENEST_LOG_LEVEL": "loud"}, ["log_level", "environment SAFENEST_LOG_LEVEL", "loud"]),
        (
            {"SAFENEST_ALLOWED_CLIENTS": "192.168.1.0/24, 300.1.2.3/8"},
            ["allowed_clients", "environment SAFENEST_ALLOWED_CLIENTS", "300.1.2.3/8"],
        ),
        (
            {"SAFENEST_ALLOWED_CLIENTS": "home-network"},
            ["allowed_clients", "environment SAFENEST_ALLOWED_CLIENTS", "home-network"],
        ),
        (
            {"SAFENEST_ALLOWED_CLIENTS": "10.0.0.0/33"},
            ["allowed_clients", "environment SAFENEST_ALLOWED_CLIENTS"],
        ),
        ({"SAFENEST_COLOUR": "red"}, ["environment SAFENEST_COLOUR", "unknown setting", "colour"]),
        (
            {"SAFENEST_BLOCKMODE": "nxdomain"},
            ["environment SAFENEST_BLOCKMODE", "unknown setting", "blockmode"],
        ),
    ],
    ids=lambda v: (
        next(iter(v)) + "=" + str(next(iter(v.values()))) if isinstance(v, dict) else None
    ),
)
def test_bad_environment_values(env, words):
    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ=env)
    message = str(caught.value)
    for word in words:
        assert word in message


def test_bad_bool_names_the_setting_and_source(tmp_path, with_bool_setting):
    with pytest.raises(
        SettingsError,
        match=r"environment SAFENEST_TEST_FLAG: test_flag: expected true or false, got 'maybe'",
    ):
        load_settings(None, environ={"SAFENEST_TEST_FLAG": "maybe"})
    config = _write(tmp_path, 'test_flag = "sometimes"\n')
    with pytest.raises(
        SettingsError, match=rf"config file {re.escape(str(config))}: test_flag: .*'sometimes'"
    ):
        load_settings(config, environ={})
    with pytest.raises(SettingsError, match=r"command line: test_flag: .*'2'"):
        load_settings(None, environ={}, overrides={"test_flag": "2"})


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('block_ttl = "ten"\n', ["block_ttl", "ten"]),
        (
            'allowed_clients = ["192.168.1.0/24", "192.168.1.0/99"]\n',
            ["allowed_clients", "192.168.1.0/99"],
        ),
        ('block_mode = "refuse"\n', ["block_mode", "refuse"]),
        ('colour = "red"\n', ["unknown setting", "colour"]),
        # A value of the wrong TOML type is refused, not coerced with str() or int().
        ("[dns]\nport = 53\n", ["dns", "expected a list of text"]),
        ('upstream = { host = "192.0.2.1" }\n', ["upstream", "expected a list of text"]),
        ('upstream = ["192.0.2.1", 53]\n', ["upstream", "expected a list of text"]),
        ('data = ["/a", "/b"]\n', ["data", "expected text"]),
        ("resolv_conf = 1\n", ["resolv_conf", "expected text"]),
        ("block_ttl = 1.9\n", ["block_ttl", "expected a whole number"]),
        ("block_ttl = true\n", ["block_ttl", "expected a whole number"]),
        ("upstream_timeout = true\n", ["upstream_timeout", "expected a number"]),
        ("upstream_timeout = inf\n", ["upstream_timeout", "finite"]),
        ("upstream_timeout = nan\n", ["upstream_timeout", "greater than zero"]),
        ("block_mode = 1\n", ["block_mode", "expected text"]),
    ],
)
def test_bad_values_in_the_toml_file_name_the_file(tmp_path, toml, words):
    config = _write(tmp_path, toml)
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    assert f"config file {config}" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"block_ttl": "many"}, ["command line", "block_ttl", "many"]),
        ({"dns": ["127.0.0.1:53"], "colour": "red"}, ["command line", "unknown setting", "colour"]),
    ],
)
def test_bad_command_line_values(overrides, words):
    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ={}, overrides=overrides)
    for word in words:
        assert word in str(caught.value)


def test_unreadable_config_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(
        SettingsError, match=rf"cannot read config file {re.escape(str(missing))}: No such file"
    ):
        load_settings(missing, environ={})
    with pytest.raises(SettingsError, match=rf"cannot read config file {re.escape(str(tmp_path))}"):
        load_settings(tmp_path, environ={})  # a folder, not a file


def test_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'data = "/home/j\xe9r\xf4me"\n')
    with pytest.raises(SettingsError, match=rf"{re.escape(str(config))}: not UTF-8"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    "text", ["block_ttl = \n", "block_ttl = 10\nblock_ttl = 11\n", "[[[", 'dns = ["a"\n']
)
def test_bad_toml(tmp_path, text):
    config = _write(tmp_path, text)
    with pytest.raises(SettingsError, match=rf"{re.escape(str(config))}: not valid TOML"):
        load_settings(config, environ={})


def test_the_error_is_a_value_error():
    """The CLI turns SettingsError into a clean message; callers that catch ValueError still work."""
    assert issubclass(SettingsError, ValueError)
