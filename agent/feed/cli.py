"""`safenest feed`: the publisher's tool (keygen, build) and the admin's check (verify), and
`safenest sync`, which fetches a pinned feed and keeps the last good one (``sync``, registered on
the top-level `safenest` group by agent/cli.py).

Every failure is one line on stderr and exit status 1 (click's usage errors exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from agent.cli_options import settings_or_exit
from agent.feed.format import FeedError, format_time

__all__ = ["feed", "sync"]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _default_publisher_id(key_path: str) -> str:
    stem = Path(key_path).name.split(".")[0].lower()
    pid = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:64]
    return pid or "publisher"


@click.group()
def feed() -> None:
    """Publish and check criteria feeds (docs/criteria-feed.md)."""


@feed.command()
@click.argument("key", type=click.Path(dir_okay=False))
@click.option(
    "--publisher-id", help="Short id of [a-z0-9._-], e.g. moet.gov.vn. Default: from KEY's name."
)
@click.option("--publisher-name", help="The publisher's name as admins see it. Default: the id.")
@click.option("--force", is_flag=True, help="Replace KEY and KEY.pub if they exist.")
def keygen(key, publisher_id, publisher_name, force) -> None:
    """Make a signing key: KEY (secret, mode 0600) and KEY.pub (to give to admins)."""
    from agent.feed.sign import generate_key, write_keypair

    pid = publisher_id or _default_publisher_id(key)
    try:
        secret = generate_key(pid, publisher_name or pid)
        secret_path, public_path = write_keypair(key, secret, force=force)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"secret key: {secret_path} (mode 0600; keep it private and backed up)")
    click.echo(f"public key: {public_path} (give it to the admins who will pin your feed)")
    click.echo(f"publisher:  {secret.publisher_id} ({secret.publisher_name})")
    click.echo(f"key id:     {secret.key_id}")


@feed.command()
@click.argument("src_dir", type=click.Path(file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The secret key from `feed keygen`.",
)
@click.option(
    "--valid-days",
    default=30,
    show_default=True,
    type=click.IntRange(1, 366),
    help="Days until the feed expires.",
)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    help="Set the version (must be above the one in OUT_DIR). Default: one more.",
)
@click.option("--publisher-name", help="Override the publisher name from the key file.")
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on any line that is not a domain name instead of skipping it.",
)
def build(src_dir, out_dir, key_path, valid_days, version, publisher_name, strict) -> None:
    """Build and sign the feed of SRC_DIR's list files into OUT_DIR."""
    from agent.feed.build import build_feed

    try:
        report = build_feed(
            src_dir,
            out_dir,
            key_path,
            publisher_name,
            valid_days=valid_days,
            version=version,
            strict=strict,
        )
    except FeedError as exc:
        raise click.ClickException(str(exc)) from None
    for s in report.sources:
        if s.bad:
            shown = "; ".join(f"line {n}: {t.strip()!r}" for n, t in s.examples[:3])
            click.echo(
                f"warning: {s.label}: skipped {_n(s.bad, 'line')} that {'is' if s.bad == 1 else 'are'} not a domain name ({shown})",
                err=True,
            )
    width = max((len(lst.path) for lst in report.lists), default=0)
    for lst in report.lists:
        extra = []
        if lst.duplicates:
            extra.append(_n(lst.duplicates, "duplicate"))
        if lst.redundant:
            extra.append(f"{lst.redundant} covered by a parent")
        note = f" (dropped {', '.join(extra)})" if extra else ""
        click.echo(
            f"{lst.path:<{width}}  {lst.kind:<5}  {lst.count:>7} {'name' if lst.count == 1 else 'names'}{note}"
        )
    for rel in report.removed:
        click.echo(f"removed stale {rel}")
    m = report.manifest
    was = f" (was {report.previous_version})" if report.previous_version else ""
    click.echo(
        f"built feed {m.publisher.id} version {m.version}{was} in {report.out_dir}: "
        f"{_n(len(m.lists), 'list')}, {_n(m.entries, 'name')}, expires {format_time(m.expires_at)}, "
        f"signed with key {m.publisher.key_id}"
    )


@feed.command()
@click.argument("dir_or_url")
@click.option(
    "--pubkey",
    required=True,
    type=click.Path(dir_okay=False),
    help="The publisher's pinned KEY.pub.",
)
@click.option(
    "--allow-insecure", is_flag=True, help="Allow plain http (tests and local mirrors only)."
)
def verify(dir_or_url, pubkey, allow_insecure) -> None:
    """Check a feed folder or https URL; exit 0 only if it is valid."""
    from agent.feed.verify import verify_feed

    try:
        m = verify_feed(dir_or_url, pubkey, allow_insecure=allow_insecure)
    except FeedError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"OK: feed {m.publisher.id} ({m.publisher.name}) version {m.version}, key {m.publisher.key_id}: "
        f"{len(m.categories)} categories, {_n(len(m.lists), 'list')}, {_n(m.entries, 'name')}; "
        f"issued {format_time(m.issued_at)}, expires {format_time(m.expires_at)}"
    )


@feed.command("default")
@click.option(
    "--config",
    envvar="SAFENEST_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML settings file (`data`, `blocklists_dir`).",
)
@click.option(
    "--data",
    help="Data folder; the feed is kept in DATA/feeds/safenest-default. Default: the `data` setting (./var).",
)
def default_feed(config, data) -> None:
    """Build the default feed from the bundled lists now, if they changed (as `safenest run` does
    before it compiles). Exit 1 if the build failed; the last good version then stays in force."""
    from agent.feed.default import ensure_default_feed
    from agent.lists import lists_dir

    settings = settings_or_exit(config, data=data)
    src = lists_dir(settings.blocklists_dir)
    result = ensure_default_feed(src, settings.data)
    feed = result.in_force
    if result.error is not None:
        kept = f"version {feed.version} stays in force" if feed else "no default feed is in force"
        raise click.ClickException(
            f"cannot build the default feed from {src}: {result.error}; {kept}"
        )
    what = "built" if result.built else "up to date:"
    click.echo(
        f"default feed {feed.publisher_id} {what} version {feed.version} from {src}: {_n(len(feed.manifest.lists), 'list')}, {_n(feed.manifest.entries, 'name')}"
    )
    for path in result.left_out:
        click.echo(
            f"not in the feed: {path} (not a list name, or a category not in the table)", err=True
        )


@click.command()
@click.option(
    "--feed",
    "url",
    help="Sync only this feed: its https URL (its folder or its manifest.json). Needs --pubkey.",
)
@click.option(
    "--pubkey", type=click.Path(dir_okay=False), help="With --feed: the publisher's pinned KEY.pub."
)
@click.option(
    "--config",
    envvar="SAFENEST_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML settings file (`data`, `feeds`, `sources`, `feed_keys_dir`, `feed_allow_insecure`).",
)
@click.option(
    "--data",
    help="Data folder; feeds are kept in DATA/feeds/. Default: the `data` setting (./var).",
)
@click.option(
    "--allow-insecure",
    is_flag=True,
    help="Allow plain http and local folders (tests and local mirrors only). Default: the `feed_allow_insecure` setting.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    help="Seconds to connect and between two reads. Default: the `feed_timeout_seconds` setting (30).",
)
def sync(url, pubkey, config, data, allow_insecure, timeout) -> None:
    """Sync the configured feeds and sources (the `feeds` and `sources` settings), or one feed by
    hand with --feed and --pubkey.

    Each feed is checked against the key pinned in `feed_keys_dir` (default DATA/keys) whose key
    id its manifest names. Prints one line per feed and source: accepted, not modified, or
    rejected with the reason (what was in force then stays in force). Exit 0 when every feed was accepted or
    not modified, 1 when any was rejected, so that scripts notice. A running `safenest run`
    picks up what was accepted at its next scheduled sync, or at once on SIGHUP.
    """
    from agent.feed.extra import sync_sources
    from agent.feed.sync import sync_all, sync_feed
    from agent.lists import criteria_in_force, feeds_dir, keys_dir

    settings = settings_or_exit(config, data=data)
    store = feeds_dir(settings.data)
    insecure = allow_insecure or settings.feed_allow_insecure
    timeout = timeout or settings.feed_timeout_seconds
    if url is not None:
        if pubkey is None:
            raise click.UsageError("--feed needs --pubkey, the publisher's pinned KEY.pub")
        try:
            results = [sync_feed(url, pubkey, store, allow_insecure=insecure, timeout=timeout)]
        except FeedError as exc:  # the pinned key itself cannot be read
            raise click.ClickException(str(exc)) from None
    else:
        if pubkey is not None:
            raise click.UsageError(
                "--pubkey goes with --feed; configured feeds use the keys in feed_keys_dir"
            )
        if (
            not settings.feeds
            and not settings.sources
            and not (Path(settings.data) / "sources").is_dir()
        ):
            raise click.ClickException(
                "no feeds are configured, and no sources: set `feeds` (a list of https URLs) or "
                "`sources` (CATEGORY=URL) in the config file or SAFENEST_FEEDS / SAFENEST_SOURCES, "
                "or sync one feed with --feed URL --pubkey KEY.pub"
            )
        keys = keys_dir(settings.feed_keys_dir, settings.data)
        results = sync_all(
            list(settings.feeds), keys, store, allow_insecure=insecure, timeout=timeout
        )
        known = set(criteria_in_force(settings.data))
        results += sync_sources(
            list(settings.sources), settings.data, allow_insecure=insecure, timeout=timeout,
            known_categories=known,
        )  # fmt: skip
    for result in results:
        click.echo(result.line())
    if not all(r.ok for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    feed()
