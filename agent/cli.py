"""The `safenest` command: run, explain."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from .settings import SettingsError, load_settings

log = logging.getLogger("safenest")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _settings(config, **overrides):
    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option(
    "--config", envvar="SAFENEST_CONFIG", type=click.Path(dir_okay=False), help="TOML settings file."
)
data_option = click.option("--data", help="Data folder (databases, compiled lists). Default: ./var")


@click.group()
@click.version_option(package_name="safenest")
def main() -> None:
    """SafeNest: a parental-control DNS filter for the home or classroom network."""


@main.command()
@config_option
@data_option
@click.option("--dns", multiple=True, help="Serve DNS on ADDR:PORT (repeatable). Default 0.0.0.0:53 and [::]:53.")
@click.option("--upstream", multiple=True, help="Forward to ADDR[:PORT] (repeatable). Default: /etc/resolv.conf.")
def run(config, data, dns, upstream) -> None:
    """Run the filtering DNS resolver until SIGTERM or SIGINT."""
    from .app import serve
    from .dns.server import BindError

    settings = _settings(config, data=data, dns=list(dns), upstream=list(upstream))
    _setup_logging(settings.log_level)
    log.info("SafeNest starting with these settings:")
    for line in settings.describe():
        log.info("  %s", line)
    try:
        code = asyncio.run(serve(settings))
    except (BindError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
@click.argument("domain")
@config_option
@data_option
def explain(domain, config, data) -> None:
    """Say whether DOMAIN would be blocked, and why (the category, the rule and the list)."""
    from .index import normalize_domain, to_wire
    from .lists import last_good, load_snapshot
    from .policy import decide

    settings = _settings(config, data=data)
    name = normalize_domain(domain)
    if name is None:
        raise click.ClickException(f"{domain!r} is not a domain name (give a name like www.example.com)")
    _setup_logging("warning")
    snapshot = last_good(settings.data) or load_snapshot(settings.blocklists_dir, settings.data)
    if snapshot.label == "none":
        raise click.ClickException("no block lists could be compiled or loaded, so nothing can be explained")
    decision = decide(to_wire(name), snapshot)
    click.echo(f"{name}: {decision.explain()}")
    click.echo(f"reason: {decision.reason}")
    click.echo(f"lists: {snapshot.label}")
    sys.exit(0)


from .feed.cli import feed, sync  # noqa: E402  (registered on `main`, defined above)

main.add_command(feed)
main.add_command(sync)
from .policy.cli import policy  # noqa: E402

main.add_command(policy)


if __name__ == "__main__":
    main()
