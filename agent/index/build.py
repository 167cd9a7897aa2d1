"""Compile list files into the on-disk index read by :class:`agent.index.lookup.DomainIndex`.

Run it in a child process (``build_in_subprocess``) so that the serving process never holds
build-time memory; the child writes the file atomically and prints a JSON BuildReport::

    python -m agent.index.build --out FILE --source CATEGORY:KIND:PATH[:LABEL] ...
    python -m agent.index.build --out FILE --sources-json - < sources.json

(``--source`` splits on the first three colons: the path must not contain ':', the label may.
``--sources-json`` takes a JSON list of {"category", "kind", "path", "label"} objects, from a
file or from stdin with ``-``.)

Memory: the builder fills the final hash table directly (no dict of all names): about
10 bytes per slot, i.e. 20-40 bytes per domain, plus the interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import xxhash

from agent.index.domains import _wire_fast
from agent.index.lookup import (
    FLAG_SINGLE_LABEL,
    FORMAT_VERSION,
    HEADER_FORMAT,
    HEADER_SIZE,
    MAGIC,
    layout,
)
from agent.index.sources import ParseStats, Source, read_domains

__all__ = [
    "BuildReport",
    "ChildFailed",
    "IndexBuildError",
    "build_index",
    "build_in_subprocess",
    "main",
    "run_python_module",
]

MIN_SLOTS = 8
MAX_SETS = 1 << 16  # set ids are u16


class IndexBuildError(Exception):
    """Building the index failed; the previous index file (if any) is untouched."""


@dataclass
class BuildReport:
    domains: int  # distinct domains in the index
    per_source: dict[str, int]  # label -> distinct domains that list contributed
    skipped_lines: dict[str, int]  # label -> bad entries skipped (see ParseStats.bad)
    seconds: float  # wall time of the build itself
    slots: int = 0  # hash-table slots (a power of two, >= 2 x domains)
    file_bytes: int = 0  # size of the written file
    peak_rss_kib: int = 0  # peak RSS of the building process (set by the CLI / subprocess)
    examples: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # bad lines

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=True, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildReport:
        data = json.loads(text)
        data["examples"] = {
            k: [(int(n), str(t)) for n, t in v] for k, v in data.get("examples", {}).items()
        }
        return cls(**data)


def _pow2_at_least(n: int) -> int:
    p = MIN_SLOTS
    while p < n:
        p <<= 1
    return p


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n + 1


class _Table:
    """The open-addressing table being filled: keys (u64 hashes) and set ids (u16)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.keys = array("Q", bytes(8 * slots))
        self.sids = array("H", bytes(2 * slots))
        self.count = 0

    def resized(self, slots: int) -> _Table:
        new = _Table(slots)
        keys, sids, mask = new.keys, new.sids, slots - 1
        old_sids = self.sids
        for j, k in enumerate(self.keys):
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = k
                sids[i] = old_sids[j]
        new.count = self.count
        return new


class _Sets:
    """Interning of the source sets a domain can belong to (set id = index)."""

    def __init__(self) -> None:
        self.members: list[frozenset[int]] = []
        self._ids: dict[frozenset[int], int] = {}
        self._added: dict[tuple[int, int], int] = {}

    def intern(self, members: frozenset[int]) -> int:
        sid = self._ids.get(members)
        if sid is None:
            sid = len(self.members)
            if sid >= MAX_SETS:
                raise IndexBuildError(f"more than {MAX_SETS} distinct source combinations")
            self.members.append(members)
            self._ids[members] = sid
        return sid

    def add(self, sid: int, source: int) -> int:
        """The id of set ``sid`` plus ``source`` (memoised: called for every duplicate)."""
        key = (sid, source)
        out = self._added.get(key)
        if out is None:
            out = self.intern(self.members[sid] | {source})
            self._added[key] = out
        return out


def _describe(members: frozenset[int], sources: Sequence[Source]) -> dict:
    """The table entry of a set of sources: allow lists beat block lists.

    A domain on both kinds of list keeps its block lists too, under "blocks": an allow list
    may apply to some profiles only (sex_education from 12+), and below that age the block
    (adult) must still hold.
    """
    allow = sorted(j for j in members if sources[j].kind == "allow")
    block = sorted(j for j in members if sources[j].kind == "block")
    entry = _entry("allow" if allow else "block", allow or block, sources)
    if allow and block:
        entry["blocks"] = _entry("block", block, sources)
    return entry


def _entry(kind: str, chosen: list[int], sources: Sequence[Source]) -> dict:
    return {
        "kind": kind,
        "categories": sorted({sources[j].category for j in chosen}),
        "sources": sorted({sources[j].label for j in chosen}),
    }


def build_index(sources: Iterable[Source], out_path: Path) -> BuildReport:
    """Compile ``sources`` into ``out_path``, atomically (temp file, fsync, os.replace).

    Raises IndexBuildError (unreadable list, unwritable target, ...); the previous file, if
    any, is left untouched on failure and no temp file remains.
    """
    started = time.monotonic()
    srcs = list(sources)
    out_path = Path(out_path)
    if sys.byteorder != "little":
        raise IndexBuildError("index files are little-endian; this host is not")

    try:
        estimate = sum(_count_lines(s.path) for s in srcs)
    except OSError as e:
        raise IndexBuildError(f"cannot read list: {e}") from e
    table = _Table(_pow2_at_least(2 * estimate))
    sets = _Sets()
    per_source: dict[str, int] = {}
    skipped: dict[str, int] = {}
    examples: dict[str, list[tuple[int, str]]] = {}
    h = xxhash.xxh3_64_intdigest
    wire = _wire_fast
    flags = 0

    for j, src in enumerate(srcs):
        base = sets.intern(frozenset((j,)))
        stats = ParseStats()
        added = 0
        keys, sids, mask = table.keys, table.sids, table.slots - 1
        grow_at = table.slots * 7 // 10
        count = table.count
        try:
            for d in read_domains(src.path, stats):
                if "." not in d:  # a bare TLD: only if normalize_domain ever lets one through
                    flags |= FLAG_SINGLE_LABEL
                hv = h(wire(d)) or 1
                i = hv & mask
                while True:
                    k = keys[i]
                    if not k:
                        keys[i] = hv
                        sids[i] = base
                        count += 1
                        added += 1
                        if count > grow_at:
                            table.count = count
                            table = table.resized(table.slots * 2)
                            keys, sids, mask = table.keys, table.sids, table.slots - 1
                            grow_at = table.slots * 7 // 10
                        break
                    if k == hv:
                        s = sids[i]
                        if s != base:
                            t = sets.add(s, j)
                            if t != s:
                                sids[i] = t
                                added += 1
                        break
                    i = (i + 1) & mask
        except OSError as e:
            raise IndexBuildError(f"cannot read {src.label} ({src.path}): {e}") from e
        table.count = count
        per_source[src.label] = per_source.get(src.label, 0) + added
        skipped[src.label] = skipped.get(src.label, 0) + stats.bad
        if stats.examples:
            examples.setdefault(src.label, []).extend(stats.examples)

    want = _pow2_at_least(2 * table.count)
    if want != table.slots:
        table = table.resized(want)

    meta = {
        "format": FORMAT_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "domains": table.count,
        "categories": sorted({s.category for s in srcs}),
        "sources": [
            {"label": s.label, "category": s.category, "kind": s.kind, "path": str(s.path)}
            for s in srcs
        ],
        "sets": [_describe(m, srcs) for m in sets.members],
    }
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    try:
        size = _write_atomically(out_path, table, meta_bytes, flags)
    except OSError as e:
        raise IndexBuildError(f"cannot write {out_path}: {e}") from e
    return BuildReport(
        domains=table.count,
        per_source=per_source,
        skipped_lines=skipped,
        seconds=round(time.monotonic() - started, 4),
        slots=table.slots,
        file_bytes=size,
        examples=examples,
    )


def _write_atomically(out_path: Path, table: _Table, meta: bytes, flags: int) -> int:
    slots = table.slots
    _, sids_off, meta_off = layout(slots)
    pad = meta_off - (sids_off + 2 * slots)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{out_path.name}.{os.getpid()}.", suffix=".tmp", dir=out_path.parent
    )
    try:
        with os.fdopen(fd, "wb") as f:
            hasher = xxhash.xxh3_64()
            f.write(bytes(HEADER_SIZE))
            for part in (
                memoryview(table.keys).cast("B"),
                memoryview(table.sids).cast("B"),
                bytes(pad),
                meta,
            ):
                f.write(part)
                hasher.update(part)
            header = struct.pack(
                HEADER_FORMAT,
                MAGIC,
                FORMAT_VERSION,
                flags,
                slots,
                table.count,
                len(meta),
                hasher.intdigest(),
            )
            f.seek(0)
            f.write(header.ljust(HEADER_SIZE, b"\0"))
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp_name, out_path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(out_path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        pass
    else:
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
    return meta_off + len(meta)


# -- subprocess -----------------------------------------------------------------------------


def _repo_root() -> Path:
    import agent

    return Path(agent.__file__).resolve().parent.parent


class ChildFailed(Exception):
    """A ``python -m`` child failed, timed out or was killed; the message says which, with
    the child's stderr."""

    def __init__(self, message: str, pid: int, timed_out: bool = False) -> None:
        super().__init__(message)
        self.pid = pid
        self.timed_out = timed_out


def run_python_module(
    module: str, args: Sequence[str], stdin: str, timeout: float, what: str
) -> str:
    """Run ``python -m MODULE ARGS`` (argv list, no shell, this checkout first on its path),
    feed it ``stdin`` and return its stdout.

    The serving process uses it for work whose memory it must never hold (CPython keeps what
    a big build allocated). Raises :class:`ChildFailed` ("<what> timed out after ...",
    "<what> failed (exit status N): <stderr>"); the child is killed on timeout or on any
    exception in the caller.
    """
    cmd = [sys.executable, "-m", module, *args]
    env = dict(os.environ)
    root = str(_repo_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONIOENCODING", "utf-8")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        close_fds=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise ChildFailed(
            f"{what} timed out after {timeout}s\n{err}".rstrip(), proc.pid, timed_out=True
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        if proc.returncode < 0:
            try:
                why = f"killed by {signal.Signals(-proc.returncode).name}"
            except ValueError:
                why = f"killed by signal {-proc.returncode}"
        else:
            why = f"exit status {proc.returncode}"
        raise ChildFailed(f"{what} failed ({why}):\n{err.strip()}", proc.pid)
    return out


def build_in_subprocess(
    sources: Iterable[Source], out_path: Path, timeout: float = 120, *, nice: int = 10
) -> BuildReport:
    """build_index in a child ``python -m agent.index.build`` (:func:`run_python_module`).

    The child runs at lower CPU priority (``nice``) so that serving is not starved. On
    failure or timeout raises IndexBuildError carrying the child's stderr; the previous index
    file is untouched either way.
    """
    out_path = Path(out_path)
    payload = json.dumps(
        [
            {"category": s.category, "kind": s.kind, "path": str(s.path), "label": s.label}
            for s in sources
        ]
    )
    args = ["--out", str(out_path), "--sources-json", "-", "--nice", str(int(nice))]
    try:
        out = run_python_module("agent.index.build", args, payload, timeout, "index build")
    except ChildFailed as exc:
        if exc.timed_out:  # a killed child cannot remove its temporary file
            for stale in out_path.parent.glob(f".{out_path.name}.{exc.pid}.*.tmp"):
                stale.unlink(missing_ok=True)
        raise IndexBuildError(str(exc)) from None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        return BuildReport.from_json(lines[-1])
    except (IndexError, ValueError, TypeError) as e:
        raise IndexBuildError(f"index build printed no report ({e}):\n{out}") from None


# -- command line ---------------------------------------------------------------------------


def _parse_source(spec: str) -> Source:
    parts = spec.split(":", 3)
    if len(parts) < 3:
        raise argparse.ArgumentTypeError(f"expected CATEGORY:KIND:PATH[:LABEL], got {spec!r}")
    category, kind, path = parts[:3]
    label = parts[3] if len(parts) == 4 else ""
    try:
        return Source(category, kind, Path(path), label)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sources_from_json(text: str) -> list[Source]:
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("sources JSON must be a list")
    return [Source(i["category"], i["kind"], Path(i["path"]), i.get("label", "")) for i in items]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m agent.index.build", description="Compile block/allow lists into an index."
    )
    ap.add_argument("--out", required=True, type=Path, help="index file to write (atomically)")
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        type=_parse_source,
        metavar="CATEGORY:KIND:PATH[:LABEL]",
    )
    ap.add_argument("--sources-json", metavar="FILE", help="JSON list of sources ('-': stdin)")
    ap.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    args = ap.parse_args(argv)
    sources: list[Source] = list(args.source)
    if args.sources_json:
        try:
            text = (
                sys.stdin.read()
                if args.sources_json == "-"
                else Path(args.sources_json).read_text()
            )
            sources += _sources_from_json(text)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: bad --sources-json: {e!r}", file=sys.stderr)
            return 2
    if args.nice > 0:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    try:
        report = build_index(sources, args.out)
    except (IndexBuildError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(report.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
