"""docs/settings.md, generated from the settings registry so the two cannot drift.

Regenerate after changing agent/settings.py or the command-line flags:

    python -m agent.settings_doc > docs/settings.md

tests/test_settings.py fails when the committed file differs from this output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from . import settings as registry
from .settings import ENV_PREFIX, SETTINGS, Setting

# The example configuration file in the docs; tests load it with load_settings().
EXAMPLE_TOML: tuple[tuple[str, Any, str], ...] = (
    ("data", "/var/lib/safenest", "databases and compiled lists"),
    ("dns", ["0.0.0.0:53", "[::]:53"], "every IPv4 and IPv6 address, port 53"),
    ("upstream", ["192.168.1.1", "1.1.1.1:53"], "the router first, then a public resolver"),
    ("blocklists_dir", "/etc/safenest/blocklists", "gambling.txt, adult.txt, adult.allow.txt, ..."),
    ("block_mode", "nxdomain", ""),
    ("block_ttl", 30, ""),
    ("allowed_clients", ["127.0.0.0/8", "::1/128", "192.168.1.0/24"], "only this home network"),
    ("local_names", ["safenest.home.arpa"], ""),
    ("log_level", "info", ""),
)


def env_var(setting: Setting) -> str:
    """The environment variable that sets `setting`: SAFENEST_<NAME>."""
    return ENV_PREFIX + setting.name.upper()


def toml_value(value: Any) -> str:
    """`value` written as TOML (strings, numbers, booleans and lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def value_type(setting: Setting) -> str:
    """What kind of value the setting takes, in words, from its parser."""
    parse = setting.parse
    if parse is registry._as_networks:
        return "list of networks (`192.168.1.0/24`, `fd00::/8`, or a single address)"
    if parse is registry._as_list:
        return "list of text"
    if parse is registry._as_positive_int:
        return "whole number, 0 or more"
    if parse is registry._as_positive_float:
        return "number greater than 0 (decimals allowed)"
    if parse is registry._as_non_negative_float:
        return "number, 0 or more (decimals allowed)"
    if parse is registry._as_cpus:
        return "list of CPU numbers (`3`, `0,2`, `2-3`)"
    if parse is registry._as_feed_urls:
        return "list of URLs"
    if parse is registry._as_bool:
        return "true or false"
    if parse is getattr(registry, "_as_text", None) or parse is str:
        return "text"
    if getattr(parse, "__qualname__", "").startswith("_one_of.") and parse.__closure__:
        for cell in parse.__closure__:
            choices = cell.cell_contents
            if isinstance(choices, tuple):
                return "one of " + ", ".join(f"`{c}`" for c in choices)
    if isinstance(setting.default, str):
        return "text"
    return type(setting.default).__name__


def cli_flags() -> dict[str, list[str]]:
    """Setting name -> the command-line flags that set it, e.g. ``--dns (safenest run)``."""
    import click

    from .cli import main

    commands: dict[str, dict[str, list[str]]] = {}  # setting -> flag -> commands
    for command_name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and param.name in registry.REGISTRY:
                flag = max(param.opts, key=len)
                commands.setdefault(param.name, {}).setdefault(flag, []).append(
                    f"safenest {command_name}"
                )
    return {
        name: [f"`{flag}` ({', '.join(used)})" for flag, used in sorted(by_flag.items())]
        for name, by_flag in commands.items()
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The whole of docs/settings.md."""
    flags = cli_flags()
    flag_list = ", ".join(f.split(" ", 1)[0] for s in SETTINGS for f in flags.get(s.name, []))
    out: list[str] = []
    add = out.append
    add("# SafeNest settings")
    add("")
    add(
        "<!-- Generated from agent/settings.py by `python -m agent.settings_doc > docs/settings.md`. "
        "Do not edit by hand: tests/test_settings.py fails when this file and the registry differ. -->"
    )
    add("")
    add(
        "Every setting has a name, a default, and can be changed in a TOML file, "
        "with an environment variable, and for a few with a command-line flag. "
        "`safenest run` logs every setting when it starts, with its value and where the value came from."
    )
    add("")
    add("## Where a value comes from")
    add("")
    add(
        "From lowest to highest precedence; a later source replaces the whole value of an earlier one (lists are not merged):"
    )
    add("")
    add("1. the default, listed below;")
    add(
        "2. the TOML file given with `--config FILE` or the `SAFENEST_CONFIG` environment variable "
        "(its top-level keys are the setting names);"
    )
    add(
        "3. the environment variable `SAFENEST_<NAME>`, the setting's name in capitals, e.g. `SAFENEST_BLOCK_MODE=nxdomain`;"
    )
    add(f"4. command-line flags: {flag_list}." if flag_list else "4. command-line flags.")
    add("")
    add(
        "A value that cannot be used stops SafeNest with a message naming the setting and the source. "
        "So does an unknown key in the TOML file or an unknown `SAFENEST_` variable: both are usually typos."
    )
    add("")
    add("## Writing values")
    add("")
    add(
        '- **Lists** are TOML arrays in the file (`upstream = ["192.168.1.1", "1.1.1.1:53"]`). '
        "In an environment variable the items are separated by commas or spaces, or both: "
        '`SAFENEST_UPSTREAM="192.168.1.1, 1.1.1.1:53"`. An empty variable gives an empty list.'
    )
    add(
        "- **Numbers** may be written as TOML numbers or as text (`block_ttl = 30`, `SAFENEST_BLOCK_TTL=30`)."
    )
    add("- **Choices** are not case-sensitive (`SAFENEST_LOG_LEVEL=DEBUG`).")
    if any(s.parse is registry._as_bool for s in SETTINGS):
        add("- **true or false**: `true`, `yes`, `on`, `1` or `false`, `no`, `off`, `0`.")
    add("- **Addresses** are `ADDR:PORT`, or `[ADDR]:PORT` for IPv6.")
    add("")
    add("## All settings")
    add("")
    add("| Setting | Environment variable | Default |")
    add("|---|---|---|")
    for s in SETTINGS:
        add(f"| [`{s.name}`](#{s.name}) | `{env_var(s)}` | `{_cell(toml_value(s.default))}` |")
    add("")
    for s in SETTINGS:
        add(f"### {s.name}")
        add("")
        add(s.help.strip())
        add("")
        add(f"- TOML key: `{s.name}`")
        add(f"- Environment variable: `{env_var(s)}`")
        if s.name in flags:
            add(f"- Command-line flag: {', '.join(flags[s.name])}")
        add(f"- Type: {value_type(s)}")
        add(f"- Default: `{toml_value(s.default)}`")
        if s.secret:
            add("- Secret: shown as `***` in the start-up log.")
        add("")
    add("## Example configuration file")
    add("")
    add(
        "Give it with `safenest run --config /etc/safenest/safenest.toml` (or `SAFENEST_CONFIG`). Leave out every setting you do not change."
    )
    add("")
    add("```toml")
    add("# /etc/safenest/safenest.toml")
    for name, value, comment in EXAMPLE_TOML:
        line = f"{name} = {toml_value(value)}"
        add(f"{line}  # {comment}" if comment else line)
    add("```")
    add("")
    return "\n".join(out)


def main() -> None:
    sys.stdout.write(settings_markdown())


if __name__ == "__main__":
    main()
