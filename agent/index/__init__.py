"""The compiled, memory-lean domain index: list files in, an mmap'd hash table out.

Build with :func:`build_in_subprocess` (or :func:`build_index` in-process), serve with
:meth:`DomainIndex.open` and :meth:`DomainIndex.lookup`. See ``lookup.py`` for the file format.

The build names are imported lazily, so that ``python -m agent.index.build`` does not import
its own module twice and the serving process does not load the builder until it needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.index.domains import normalize_domain, to_wire, wire_to_text
from agent.index.lookup import DomainIndex, IndexFormatError, Match
from agent.index.sources import ParseStats, Source, bundled_dir, read_domains, sources_in

if TYPE_CHECKING:
    from agent.index.build import BuildReport, IndexBuildError, build_in_subprocess, build_index

_LAZY = {"BuildReport", "IndexBuildError", "build_in_subprocess", "build_index"}

__all__ = [
    "BuildReport",
    "DomainIndex",
    "IndexBuildError",
    "IndexFormatError",
    "Match",
    "ParseStats",
    "Source",
    "build_in_subprocess",
    "build_index",
    "bundled_dir",
    "normalize_domain",
    "read_domains",
    "sources_in",
    "to_wire",
    "wire_to_text",
]


def __getattr__(name: str):
    if name in _LAZY:
        from agent.index import build

        value = getattr(build, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agent.index' has no attribute {name!r}")
