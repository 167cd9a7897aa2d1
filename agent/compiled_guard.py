"""Use the mypyc-compiled modules (`make compile`) only while they match their sources.

Python imports a module's .so before its .py when both sit side by side, so a .so built from
older sources would silently run old code after an edit or a `git pull`. `setup_mypyc.py`
records, after a successful build, which modules it compiled and a digest of their sources
(agent/mypyc-build.json). At `import agent` this module compares that record with the .so
files present and the sources as they are now; when anything differs, a finder placed first
on sys.meta_path loads those modules from their .py files instead, and `STATE` says why, for
the start-up log. Reading and hashing the two dozen sources takes about a millisecond.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path

RECORD = "mypyc-build.json"  # in the agent package, written by setup_mypyc.py
GROUP_LIBRARY = "compiled__mypyc"  # mypyc's shared library: not a module of ours

STATE = "plain"  # "compiled", "plain" (no .so) or "stale: <why>" (the .py files are used)


def module_names(package_dir: Path) -> list[str]:
    """The dotted names of the compiled modules present under `package_dir`."""
    root = package_dir.parent
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    names = set()
    for path in package_dir.rglob("*.so"):
        suffix = next((x for x in suffixes if path.name.endswith(x)), None)
        if suffix is None:
            continue
        dotted = ".".join(path.relative_to(root).parts)[: -len(suffix)]
        if not dotted.endswith(GROUP_LIBRARY):
            names.add(dotted)
    return sorted(names)


def source_path(root: Path, name: str) -> Path:
    """A compiled module's source: its .py, or the .c of a hand-written extension (_udpio)."""
    base = root / name.replace(".", "/")
    py = base.with_name(base.name + ".py")
    c_source = base.with_name(base.name + ".c")
    return c_source if not py.exists() and c_source.exists() else py


def sources_digest(root: Path, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        try:
            digest.update(source_path(root, name).read_bytes())
        except OSError:
            digest.update(b"\0missing")
        digest.update(b"\0")
    return digest.hexdigest()


def check(package_dir: Path) -> tuple[str, list[str]]:
    """(state, the modules to load from their .py files)."""
    names = module_names(package_dir)
    if not names:
        return "plain", []
    try:
        record = json.loads((package_dir / RECORD).read_text())
        recorded, digest = sorted(record["modules"]), record["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"stale: no readable {RECORD} beside the compiled modules", names
    if recorded != names:
        return "stale: the compiled modules are not those of the last build", names
    if digest != sources_digest(package_dir.parent, names):
        return "stale: sources changed since the last build", names
    return "compiled", []


class PlainSources(importlib.abc.MetaPathFinder):
    """Loads the given modules from their .py files, whatever .so sits beside them."""

    def __init__(self, root: Path, names: list[str]):
        self.root = root
        self.names = frozenset(names)

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        source = source_path(self.root, name)
        if source.suffix != ".py":  # a stale C extension has no Python twin: not importable
            raise ModuleNotFoundError(f"{name} is stale (see agent.compiled_guard.STATE)", name=name)
        return importlib.util.spec_from_file_location(name, source)


def install(package_dir: Path) -> str:
    """Check the build and, when it is stale, put the .py files first. Returns the state."""
    global STATE
    STATE, stale = check(package_dir)
    if stale and not any(isinstance(f, PlainSources) for f in sys.meta_path):
        sys.meta_path.insert(0, PlainSources(package_dir.parent, stale))
    return STATE


def record_build(package_dir: Path) -> dict:
    """What setup_mypyc.py writes after a successful build."""
    names = module_names(package_dir)
    record = {"modules": names, "sources": sources_digest(package_dir.parent, names)}
    (package_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record
