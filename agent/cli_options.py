"""What every `safenest` command shares: the --config and --data options, and loading settings.

A module of its own so that the command groups (feed, policy, log) can use it without importing
agent.cli, which imports them.
"""

from __future__ import annotations

import click

from .settings import Settings, SettingsError, load_settings

config_option = click.option(
    "--config",
    envvar="SAFENEST_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML settings file.",
)
data_option = click.option("--data", help="Data folder (databases, compiled lists). Default: ./var")


def settings_or_exit(config: str | None, **overrides) -> Settings:
    """The settings `safenest run` would use (file, SAFENEST_* variables, flags); a bad one ends
    the command with its message."""
    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
