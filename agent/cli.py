"""The `safenest` command: run, explain."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import click

from .cli_options import config_option, data_option
from .cli_options import settings_or_exit as _settings

log = logging.getLogger("safenest")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )




@click.group()
@click.version_option(package_name="safenest")
def main() -> None:
    """SafeNest: a parental-control DNS filter for the home or classroom network."""


@main.command()
@config_option
@data_option
@click.option("--dns", multiple=True, help="Serve DNS on ADDR:PORT (repeatable). Default 0.0.0.0:53 and [::]:53.")
@click.option("--upstream", multiple=True, help="Forward to ADDR[:PORT] (repeatable). Default: /etc/resolv.conf.")
@click.option(
    "--admin",
    metavar="ADDR:PORT",
    help="Serve the admin page, /healthz and /metrics on ADDR:PORT ('off': not at all). Default 0.0.0.0:80.",
)
def run(config, data, dns, upstream, admin) -> None:
    """Run the filtering DNS resolver until SIGTERM or SIGINT."""
    from .app import serve
    from .dns.server import BindError

    settings = _settings(config, data=data, dns=list(dns), upstream=list(upstream), admin_listen=admin)
    _setup_logging(settings.log_level)
    log.info("SafeNest starting with these settings:")
    for line in settings.describe():
        log.info("  %s", line)
    try:
        code = asyncio.run(serve(settings))
    except (BindError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _parse_at(text: str | None, zone):
    """--at: ISO-8601 (without an offset: in the policy's zone) or HH:MM today in that zone."""
    from datetime import UTC, datetime

    now = datetime.now(UTC).astimezone(zone)
    if text is None:
        return now
    text = text.strip()
    clock = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", text)
    if clock:
        return now.replace(hour=int(clock[1]), minute=int(clock[2]), second=0, microsecond=0)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time: give HH:MM (today) or ISO-8601 like 2026-11-28T21:45", param_hint="--at"
        ) from None
    return when.replace(tzinfo=zone) if when.tzinfo is None else when.astimezone(zone)


def _parse_type(text: str) -> int:
    from dnslib import QTYPE

    text = text.strip().upper()
    if text.startswith("TYPE") and text[4:].isdigit() and int(text[4:]) < 65536:
        return int(text[4:])
    number = QTYPE.reverse.get(text)
    if number is None:
        raise click.BadParameter(f"{text!r} is not a DNS record type (A, AAAA, HTTPS, MX, ...)", param_hint="--type")
    return number


def _what_is_answered(decision, qtype: int, block_mode: str, cap: int | None) -> str:
    if decision.action == "allow":
        return "the upstream's answer" + (f", TTLs at most {cap} s (the profile has schedules)" if cap else "")
    if decision.action == "rewrite":
        return f"CNAME {decision.target} and its records"
    how = decision.answer or block_mode
    if how == "null" and qtype in (1, 28):
        return ("0.0.0.0" if qtype == 1 else "::") + " (blocked)"
    return {"nxdomain": "NXDOMAIN (no such name)"}.get(how, "no records (NODATA)")


_DEVICE_NAME = re.compile(r"[a-z0-9_-]{1,63}")


def _device_name(text: str) -> str | None:
    """A dotless name (`printer`, `localhost`), which the resolver keeps on the LAN; None when it
    is no such label (a bare number is an address, not a name)."""
    label = text.strip().lower().removesuffix(".")
    if _DEVICE_NAME.fullmatch(label) is None or label.isdigit():
        return None
    return label


def _local_answer(settings, wire_name: bytes, qtype: int) -> tuple[str, str] | None:
    """(reason, answer) for a name the LocalZones link keeps on the LAN; None for the others."""
    from .dns.steps.local_zones import REASONS, local_zone, private_upstreams
    from .upstreams import choose_upstreams

    zone = local_zone(wire_name, qtype)
    if zone is None:
        return None
    if zone == "localhost":
        return REASONS[zone], "127.0.0.1 / ::1 (answered here)"
    if zone == "private":
        try:
            upstreams = choose_upstreams(settings.upstream, settings.resolv_conf, [])
        except ValueError:
            upstreams = []
        private = private_upstreams(settings.private_upstream, upstreams)
        if private:
            where = ", ".join(map(str, private))
            return REASONS["asked"] + where, f"{where}'s answer (the LAN's own resolver)"
    return REASONS[zone], "NXDOMAIN (no such name), answered here"


@main.command()
@click.argument("domain")
@click.option(
    "--client",
    metavar="IP",
    help="The asking device's address; its profile is found as the resolver finds it (IP, MAC "
    "from this machine's neighbour table, subnet). Default: an unknown device (the default profile).",
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="When: HH:MM today, or ISO-8601 (2026-11-28T21:45; without an offset, in the policy's "
    "time zone). Default: now.",
)
@click.option("--type", "qtype", default="A", show_default=True, metavar="TYPE", help="The query type: A, AAAA, HTTPS, MX, ...")
@config_option
@data_option
def explain(domain, client, at, qtype, config, data) -> None:
    """Say what DOMAIN gets for a device at a time, and why: the profile, the decision, its reason
    (category and minimum age, rule, schedule, service or override) and the list."""
    import ipaddress

    from .app import policy_snapshot
    from .index import normalize_domain, to_wire
    from .lists import last_good, load_lists
    from .policy.decision import decide
    from .storage.policy_store import open_policy_store

    settings = _settings(config, data=data)
    name = normalize_domain(domain) or _device_name(domain)
    if name is None:
        raise click.ClickException(f"{domain!r} is not a domain name (give a name like www.example.com)")
    if client is not None:
        try:
            client = str(ipaddress.ip_address(client.strip()))
        except ValueError:
            raise click.BadParameter(f"{client!r} is not an IP address", param_hint="--client") from None
    rtype = _parse_type(qtype)
    _setup_logging("warning")
    lists = last_good(settings.data) or load_lists(settings.blocklists_dir, settings.data)
    if lists.label == "none":
        raise click.ClickException("no block lists could be compiled or loaded, so nothing can be explained")
    try:
        store = open_policy_store(settings.data)
        policy = store.load()
    except Exception as exc:
        raise click.ClickException(f"cannot read the policy in {settings.data}: {exc}") from None
    snapshot = policy_snapshot(policy, lists, settings.data)
    when = _parse_at(at, snapshot.zone)
    mac = None
    if client is not None:
        from .devices import NeighbourTable

        neighbours = NeighbourTable()
        neighbours.refresh()
        mac = neighbours.lookup(client)
    profile = snapshot.profile_for(client or "", mac)
    decision = decide(to_wire(name), rtype, profile, when, snapshot)
    answer = _what_is_answered(decision, rtype, settings.block_mode, snapshot.ttl_cap(profile.id, when))
    reason = decision.reason
    local = _local_answer(settings, to_wire(name), rtype) if decision.action == "allow" else None
    if local is not None:  # the policy lets it through; the LocalZones link answers it
        reason, answer = local
    click.echo(f"{name}: {decision.explain()}")
    click.echo(f"reason: {reason}")
    click.echo(f"answer: {answer}")
    device = f"client {client}" + (f" (MAC {mac})" if mac else "") if client else "an unknown device"
    click.echo(f"profile: {profile.id} ({profile.name}), for {device}")
    click.echo(f"at: {when.isoformat(timespec='minutes')} ({snapshot.policy.timezone})")
    click.echo(f"lists: {lists.label}")
    sys.exit(0)


from .feed.cli import feed, sync  # noqa: E402  (registered on `main`, defined above)

main.add_command(feed)
main.add_command(sync)
from .policy.cli import policy  # noqa: E402

main.add_command(policy)
from .querylog.cli import log_group  # noqa: E402  (`log` here is the logger)

main.add_command(log_group)


if __name__ == "__main__":
    main()
