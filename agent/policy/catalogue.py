"""The bundled catalogue: blocked services and SafeSearch hosts, as immutable values.

The data lives in ``agent/policy/data/services.toml`` and ``safesearch.toml`` (package data);
their headers say how they were curated. `load_catalogue()` reads and checks both once per
process. A bundled file that fails a check is a bug in SafeNest, not bad user input, so it
raises `CatalogueError` naming the file, the entry and the field.

Services: ``Service.domains`` each cover their subdomains, like a block-list entry.
SafeSearch: ``SafeSearchEngine.hosts`` are exact names (never their subdomains), each answered
with a CNAME to ``target(level)``.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

from agent.feed.categories import DEFAULT_CATEGORY_IDS
from agent.feed.format import Names
from agent.index import normalize_domain

__all__ = [
    "Catalogue",
    "CatalogueError",
    "SafeSearchEngine",
    "Service",
    "load_catalogue",
    "parse_catalogue",
]

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")  # same slugs as agent.policy.model ids
SERVICES_FILE = "services.toml"
SAFESEARCH_FILE = "safesearch.toml"


class CatalogueError(ValueError):
    """A bundled catalogue file is malformed: the message names file, entry and field."""


@dataclass(frozen=True, slots=True)
class Service:
    """A service a parent can block by name: its domains each cover their subdomains."""

    id: str
    names: Names
    category: str  # a category id of agent.feed.categories
    domains: tuple[str, ...]
    shared: tuple[str, ...] = ()  # those of `domains` another service needs as well
    note: Names | None = None  # what blocking it does and does not stop


@dataclass(frozen=True, slots=True, eq=False)
class SafeSearchEngine:
    """A search engine whose exact `hosts` are answered with a CNAME to its safe host."""

    id: str
    name: str
    hosts: tuple[str, ...]
    targets: MappingProxyType[str, str]  # level ("on", "strict", "moderate") -> host

    def target(self, level: str) -> str:
        """The safe host for `level`; KeyError names the levels this engine has."""
        try:
            return self.targets[level]
        except KeyError:
            raise KeyError(
                f"SafeSearch engine {self.id!r} has no level {level!r} "
                f"(levels: {', '.join(self.targets)})"
            ) from None


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Read-only mappings: the cached catalogue is shared by the whole process."""

    services: MappingProxyType[str, Service]  # id -> service, in file order
    safesearch: MappingProxyType[str, SafeSearchEngine]  # id -> engine, in file order
    _by_host: dict[str, SafeSearchEngine] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index = {h: e for e in self.safesearch.values() for h in e.hosts}
        object.__setattr__(self, "_by_host", index)

    def safesearch_host(self, host: str) -> SafeSearchEngine | None:
        """The engine that rewrites exactly `host` (normalized), if any."""
        return self._by_host.get(host)


@functools.cache
def load_catalogue() -> Catalogue:
    """The bundled catalogue, read and checked once per process."""
    data = resources.files("agent.policy") / "data"
    return parse_catalogue(
        (data / SERVICES_FILE).read_text(encoding="utf-8"),
        (data / SAFESEARCH_FILE).read_text(encoding="utf-8"),
    )


def parse_catalogue(services_toml: str, safesearch_toml: str) -> Catalogue:
    """Parse and check both files' text; raises CatalogueError on the first problem."""
    services = _parse_services(_toml(services_toml, SERVICES_FILE))
    engines = _parse_engines(_toml(safesearch_toml, SAFESEARCH_FILE))
    return Catalogue(MappingProxyType(services), MappingProxyType(engines))


def _toml(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CatalogueError(f"{file}: not valid TOML: {e}") from None


def _entries(doc: dict[str, Any], key: str, file: str) -> list[dict[str, Any]]:
    entries = doc.get(key)
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(f"{file}: expected one or more [[{key}]] tables")
    return entries


class _Entry:
    """Typed field access for one [[table]], with errors that say where."""

    def __init__(self, file: str, key: str, index: int, raw: dict[str, Any], allowed: set[str]):
        self.raw = raw
        self.where = f"{file}: {key}[{index}]"
        if isinstance(raw.get("id"), str):
            self.where += f" ({raw['id']})"
        unknown = sorted(set(raw) - allowed)
        if unknown:
            self.fail(unknown[0], "unknown field")

    def fail(self, field: str, problem: str) -> None:
        raise CatalogueError(f"{self.where}.{field}: {problem}")

    def text(self, field: str, *, optional: bool = False) -> str | None:
        value = self.raw.get(field)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(field, f"expected a non-empty string (got {value!r})")
        return value

    def ident(self) -> str:
        value = self.text("id")
        if not _ID.fullmatch(value):
            self.fail("id", f"expected a slug [a-z0-9][a-z0-9_-]{{0,39}} (got {value!r})")
        return value

    def domains(self, field: str, *, optional: bool = False) -> tuple[str, ...]:
        values = self.raw.get(field, [] if optional else None)
        if not isinstance(values, list) or not (values or optional):
            self.fail(field, "expected a non-empty list of domain names")
        out: list[str] = []
        for v in values:
            d = normalize_domain(v) if isinstance(v, str) else None
            if d is None or d != v:
                self.fail(
                    field, f"{v!r} is not a normalized domain name (lower case, no dot at the end)"
                )
            if d in out:
                self.fail(field, f"{d!r} is listed twice")
            out.append(d)
        return tuple(out)


def _parse_services(doc: dict[str, Any]) -> dict[str, Service]:
    allowed = {"id", "vi", "en", "category", "domains", "shared", "note_vi", "note_en"}
    services: dict[str, Service] = {}
    owner: dict[str, str] = {}  # domain -> the first service that lists it
    for i, raw in enumerate(_entries(doc, "service", SERVICES_FILE)):
        e = _Entry(SERVICES_FILE, "service", i, raw, allowed)
        sid = e.ident()
        if sid in services:
            e.fail("id", f"duplicate service id {sid!r}")
        category = e.text("category")
        if category not in DEFAULT_CATEGORY_IDS:
            e.fail("category", f"unknown category id {category!r}")
        domains = e.domains("domains")
        shared = e.domains("shared", optional=True)
        for d in shared:
            if d not in domains:
                e.fail("shared", f"{d!r} is not one of this service's domains")
        for d in domains:
            other = owner.setdefault(d, sid)
            if other != sid and not (d in shared and d in services[other].shared):
                e.fail("domains", f"{d!r} is also in service {other!r}; declare it shared in both")
        note_vi, note_en = e.text("note_vi", optional=True), e.text("note_en", optional=True)
        if (note_vi is None) != (note_en is None):
            e.fail("note_vi" if note_vi is None else "note_en", "a note needs both vi and en")
        note = Names(vi=note_vi, en=note_en) if note_vi is not None else None
        services[sid] = Service(
            sid, Names(vi=e.text("vi"), en=e.text("en")), category, domains, shared, note
        )
    return services


def _parse_engines(doc: dict[str, Any]) -> dict[str, SafeSearchEngine]:
    allowed = {"id", "name", "hosts", "prefixes", "domains", "targets"}
    engines: dict[str, SafeSearchEngine] = {}
    rewriter: dict[str, str] = {}  # host -> engine id
    for i, raw in enumerate(_entries(doc, "engine", SAFESEARCH_FILE)):
        e = _Entry(SAFESEARCH_FILE, "engine", i, raw, allowed)
        eid = e.ident()
        if eid in engines:
            e.fail("id", f"duplicate engine id {eid!r}")
        hosts = list(e.domains("hosts", optional=True))
        prefixes = raw.get("prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            e.fail("prefixes", "expected a list of strings")
        for d in e.domains("domains", optional=True):
            if not prefixes:
                e.fail("prefixes", '`domains` needs `prefixes` (use [""] for the bare names)')
            for p in prefixes:
                host = p + d
                if normalize_domain(host) != host:
                    e.fail("prefixes", f"{p!r} + {d!r} is not a normalized host name")
                hosts.append(host)
        if not hosts:
            e.fail("hosts", "expected at least one host (in `hosts` or `prefixes` x `domains`)")
        for h in hosts:
            if h in rewriter:
                e.fail("hosts", f"{h!r} is listed twice (first by engine {rewriter[h]!r})")
            rewriter[h] = eid
        targets = raw.get("targets")
        if not isinstance(targets, dict) or not targets:
            e.fail("targets", "expected a table of level = host")
        for level, target in targets.items():
            if level not in ("on", "strict", "moderate"):
                e.fail("targets", f"unknown level {level!r} (on, strict, moderate)")
            if not isinstance(target, str) or normalize_domain(target) != target:
                e.fail("targets", f"{level} = {target!r} is not a normalized host name")
            if target in hosts:
                e.fail("targets", f"{target!r} would rewrite to itself")
        engines[eid] = SafeSearchEngine(
            eid, e.text("name"), tuple(hosts), MappingProxyType(dict(targets))
        )
    return engines
