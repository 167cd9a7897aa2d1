"""`safenest policy export` and `safenest policy import`: the whole policy as a TOML or JSON file.

Backups are one command, and a school can keep its policy in a file under version control.
Import checks the whole file first (docs/policy.md) and prints every bad field with its path;
on any error nothing is applied (exit 1). A good file replaces the stored policy in one
transaction, and the command prints what changed. A device assigned by a randomized MAC is a
warning, not an error: it is applied, and the line says why the entry may stop working.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import click

from ..cli_options import config_option, data_option, settings_or_exit
from .document import FORMATS, PolicyDocumentError, default_known_categories, dumps, loads
from .model import Policy

__all__ = [
    "policy",
    "known_categories",
    "known_services",
    "describe_changes",
    "randomized_mac_warnings",
]

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def known_categories(data_dir: str | os.PathLike) -> dict[str, str]:
    """Category id -> min_age: the bundled table plus every criteria feed in force."""
    try:
        from agent.lists import criteria_in_force
    except ImportError:
        return default_known_categories()
    return {cid: category.min_age for cid, category in criteria_in_force(data_dir).items()}


def known_services() -> frozenset[str] | None:
    """The bundled catalogue's service ids (None where no catalogue is installed: ids not checked)."""
    try:
        from .catalogue import load_catalogue
    except ImportError:
        return None
    return frozenset(load_catalogue().services)


def randomized_mac_warnings(policy: Policy) -> list[str]:
    """One line per device assigned by a randomized MAC (it may change: the entry would stop
    recognising the device), with the device's path in the document."""
    from agent.devices.mac import randomized_assignment_text, randomized_assignments

    flagged = {id(d) for d in randomized_assignments(policy.devices)}
    return [
        f"devices[{i}]: {randomized_assignment_text(d).en}"
        for i, d in enumerate(policy.devices)
        if id(d) in flagged
    ]


def describe_changes(old: Policy, new: Policy) -> list[str]:
    """One line per part of the policy that differs, naming what was added, changed and removed."""
    lines = []
    for option in ("default_profile", "timezone", "schedule_ttl_cap"):
        before, after = getattr(old, option), getattr(new, option)
        if before != after:
            lines.append(f"{option}: {before} -> {after}")
    sections: tuple[tuple[str, Callable], ...] = (
        ("profiles", lambda p: p.id),
        ("devices", lambda d: d.id),
        ("rules", lambda r: f"{r.domain} ({r.profile or 'everyone'})"),
        ("schedules", lambda s: s.id),
        ("overrides", lambda o: o.id),
    )
    for section, key in sections:
        line = _section_changes(
            section,
            {key(x): x for x in getattr(old, section)},
            {key(x): x for x in getattr(new, section)},
        )
        if line:
            lines.append(line)
    return lines


def _section_changes(section: str, old: Mapping, new: Mapping) -> str | None:
    added = [k for k in new if k not in old]
    removed = [k for k in old if k not in new]
    changed = [k for k in new if k in old and new[k] != old[k]]
    parts = [
        f"{len(keys)} {verb} ({_names(keys)})"
        for verb, keys in (("added", added), ("changed", changed), ("removed", removed))
        if keys
    ]
    return f"{section}: {', '.join(parts)}" if parts else None


def _names(keys: list[str], shown: int = 8) -> str:
    more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _format_of(path: str | None, given: str | None, default: str | None) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower().lstrip(".") if path and path != "-" else ""
    if suffix in FORMATS:
        return suffix
    if default:
        return default
    raise click.UsageError(
        f"cannot tell the format of {path!r} from its name: give --format toml or --format json"
    )


def _store(config: str | None, data: str | None):
    from agent.storage.policy_store import open_policy_store

    settings = settings_or_exit(config, data=data)
    return settings, open_policy_store(settings.data)


def _write_private(path: Path, text: str) -> None:
    """Atomically, readable by the owner only: the file names children and their birth months."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="toml or json. Default: from the file name, else toml.",
)


@click.group()
def policy() -> None:
    """Export the whole policy to a file, or import one (docs/policy.md)."""


@policy.command("export")
@_format_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to FILE instead of printing.",
)
@config_option
@data_option
def export_command(fmt, output, config, data) -> None:
    """Print the whole policy (profiles, devices, rules, schedules, overrides) as TOML or JSON."""
    _settings, store = _store(config, data)
    text = dumps(store.load(), _format_of(output, fmt, "toml"))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        _write_private(Path(output), text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"policy written to {output}", err=True)


@policy.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_format_option
@click.option(
    "--dry-run", is_flag=True, help="Check the file and show what would change; apply nothing."
)
@config_option
@data_option
def import_command(file, fmt, dry_run, config, data) -> None:
    """Check FILE completely and replace the stored policy with it in one step.

    Every bad field is listed with its path (for example `devices[3].profile: no profile "minh"`)
    and nothing is applied when there is any. Exit 0 when applied (or, with --dry-run, when
    valid), 1 otherwise.
    """
    fmt = _format_of(file, fmt, "toml" if file == "-" else None)
    text = _read_text(file)
    settings, store = _store(config, data)
    try:
        new = loads(text, fmt, known_categories(settings.data), known_services())
    except PolicyDocumentError as exc:
        count = len(exc.problems)
        problems = "\n".join(f"  {p}" for p in exc.problems)
        raise click.ClickException(
            f"{file}: {count} problem{'s' if count != 1 else ''}, nothing was applied:\n{problems}"
        ) from None
    for warning in randomized_mac_warnings(new):
        click.echo(f"warning: {warning}", err=True)
    old = store.load()
    changes = describe_changes(old, new)
    if dry_run:
        click.echo(f"{file} is valid; dry run, nothing applied.")
        click.echo("would change:" if changes else "no changes.")
    elif not changes:
        click.echo(f"{file} matches the stored policy: no changes.")
    else:
        revision = store.replace(new)
        click.echo(f"{file} applied (policy revision {revision}):")
    for line in changes:
        click.echo(f"  {line}")


def _read_text(file: str) -> str:
    try:
        if file == "-":
            raw = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(file, "rb") as f:
                raw = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise click.ClickException(
            f"{file} is larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB: not a policy"
        )
    try:
        return raw.decode("utf-8-sig")  # a BOM from Windows editors is fine
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{file} is not UTF-8 text (byte {exc.start})") from None
