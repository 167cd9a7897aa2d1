"""The serving side of the compiled domain index: mmap a file, answer "is this name listed?".

File format (version 1, little-endian, written by :mod:`agent.index.build`)::

    offset 0   header, 64 bytes: struct HEADER_FORMAT =
               magic b"SNDOMIDX", version u32, flags u32, slots u64 (a power of two),
               domains u64, meta_len u64, body_xxh3 u64 (xxh3_64 of every byte after the header),
               zero padding
    offset 64  keys: `slots` x u64, the xxh3_64 of each listed domain's lower-case wire form
               (root byte included); 0 marks an empty slot (a real hash of 0 is stored as 1)
    then       set ids: `slots` x u16, parallel to the keys, index into meta["sets"]
    then       zero padding to a multiple of 8
    then       meta: UTF-8 JSON {"sets": [{"kind", "categories", "sources"}, ...],
               "categories": [...], "sources": [...], "built_at": ...}

The table uses linear probing; the builder keeps the load factor at or below 1/2. A lookup
hashes each suffix of the query's wire name (a slice at every label boundary) and probes it,
so no strings are stored: the listed domain of a match is rebuilt from the query itself.
Two different names colliding on all 64 bits is possible in theory (~n/2^64 per probe) and
ignored.

Opening maps the file read-only and touches no table pages (it verifies the checksum by
streaming the file through a small buffer, which does not count towards this process's RSS),
so opening a new index while the old one is still serving costs almost nothing until lookups
fault its pages in.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from agent.index.domains import normalize_domain, to_wire

__all__ = [
    "Match",
    "DomainIndex",
    "IndexFormatError",
    "MAGIC",
    "FORMAT_VERSION",
    "HEADER_FORMAT",
    "HEADER_SIZE",
    "FLAG_SINGLE_LABEL",
    "layout",
]

MAGIC = b"SNDOMIDX"
FORMAT_VERSION = 1
HEADER_FORMAT = "<8sIIQQQQ"
HEADER_SIZE = 64
FLAG_SINGLE_LABEL = 1  # some entry is a single label (a TLD): probe the last label too
_KNOWN_FLAGS = FLAG_SINGLE_LABEL
_CHUNK = 1 << 16  # small: a big buffer would stay in the malloc heap after open()


class IndexFormatError(Exception):
    """The file is not a complete, intact index of a version this code reads."""


@dataclass(frozen=True, slots=True)
class Match:
    listed: str  # the listed domain that matched, dotted (a suffix of the query)
    kind: str  # "block" or "allow"
    categories: tuple[str, ...]  # sorted category ids
    sources: tuple[str, ...]  # labels of the lists that listed it, sorted


def layout(slots: int) -> tuple[int, int, int]:
    """(keys offset, set-ids offset, meta offset) for a table of ``slots`` slots."""
    keys_off = HEADER_SIZE
    sids_off = keys_off + 8 * slots
    meta_off = (sids_off + 2 * slots + 7) & ~7
    return keys_off, sids_off, meta_off


def _proto(entry: dict) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(kind, categories, sources) of a set-table entry, as a Match takes them."""
    kind = entry["kind"]
    if kind not in ("block", "allow"):
        raise IndexFormatError(f"bad kind {kind!r} in set table")
    return (kind, tuple(sorted(entry["categories"])), tuple(sorted(entry["sources"])))


def _closed_lookup(wire_name: bytes) -> Match | None:
    raise ValueError("lookup on a closed DomainIndex")


def _suffix_text(wire: bytes, pos: int, end: int) -> str:
    """Dotted text of ``wire[pos:]`` (``end`` = offset of the root byte); no validation.

    Only used on names that matched, i.e. equal a normalized listed domain: plain ASCII labels.
    """
    buf = bytearray(wire[pos + 1 : end])
    p = wire[pos]
    n = len(buf)
    while p < n:
        q = buf[p]
        buf[p] = 46  # "."
        p += q + 1
    return buf.decode("ascii", "backslashreplace")


def _make_lookup(
    keys, sids, mask: int, allow: bytes, protos: tuple, single_label: bool
) -> Callable[[bytes], Match | None]:
    """The hot path, as a closure so that everything it needs is a fast cell/local variable.

    An in-flight call keeps ``keys``/``sids`` (and so the mapping) alive even if the index is
    closed meanwhile by another thread: the pages are unmapped when the last reference goes.
    """
    h = xxhash.xxh3_64_intdigest
    extra = 1 if single_label else 0
    has_allow = any(allow)
    text = _suffix_text
    make = Match

    def lookup(name: bytes | memoryview) -> Match | None:
        # Any buffer is accepted; compiled (mypyc), the loop below is fast only on bytes.
        wire_name = name if isinstance(name, bytes) else bytes(name)
        end = len(wire_name) - 1  # offset of the root byte
        if end < 1 or wire_name[end]:
            return None  # the root name, or not a wire name
        limit = end + extra  # a suffix whose label ends at `limit` is the TLD: not probed
        pos = 0
        hit = -1
        hit_sid = 0
        while True:
            nxt = pos + 1 + wire_name[pos]
            if nxt >= limit:
                break
            hv = h(wire_name[pos:]) or 1
            i = hv & mask
            k = keys[i]
            while k:
                if k == hv:
                    sid = sids[i]
                    if allow[sid]:  # the most specific allowed suffix wins outright
                        return make(text(wire_name, pos, end), *protos[sid])
                    if hit < 0:  # the most specific blocked suffix; an allow may still follow
                        if not has_allow:
                            return make(text(wire_name, pos, end), *protos[sid])
                        hit = pos
                        hit_sid = sid
                    break
                i = (i + 1) & mask
                k = keys[i]
            pos = nxt
        if hit < 0:
            return None
        return make(text(wire_name, hit, end), *protos[hit_sid])

    return lookup


class DomainIndex:
    """A read-only, memory-mapped set of listed domains with their kind, categories, sources.

    ``lookup`` is assigned per instance (a closure, see ``_make_lookup``); after ``close()``
    it raises ValueError. ``lookup`` wants the lower-cased wire form including the root byte;
    anything that does not end in a root byte returns None.
    """

    categories: frozenset[str]
    path: Path | None
    meta: dict

    def __init__(self, *, keys, sids, slots: int, domains: int, meta: dict, flags: int,
                 path: Path | None, owner: object = None) -> None:
        sets = meta.get("sets", [])
        protos = []
        also_blocked: dict[int, tuple] = {}  # set id -> the block lists of a domain also allowed
        allow = bytearray()
        for sid, entry in enumerate(sets):
            protos.append(_proto(entry))
            allow.append(entry["kind"] == "allow")
            if "blocks" in entry:
                also_blocked[sid] = _proto(entry["blocks"])
        self._keys = keys
        self._sids = sids
        self._owner = owner  # the mmap (or arrays) behind keys/sids
        self._slots = slots
        self._domains = domains
        self.meta = meta
        self.path = path
        self.categories = frozenset(meta.get("categories", ()))
        self._protos = tuple(protos)
        self._also_blocked = also_blocked
        self._extra = 1 if flags & FLAG_SINGLE_LABEL else 0
        self.lookup = _make_lookup(
            keys, sids, slots - 1, bytes(allow), self._protos, bool(self._extra)
        )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, verify: bool = True) -> DomainIndex:
        """Map an index file read-only. Raises IndexFormatError if it is bad or truncated.

        ``verify`` checks the body checksum by streaming the file (cheap, and it does not
        make the table resident in this process).
        """
        path = Path(path)
        if sys.byteorder != "little":
            raise IndexFormatError("index files are little-endian; this host is not")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                raise IndexFormatError(f"{path}: {size} bytes, too short for an index header")
            magic, version, flags, slots, domains, meta_len, body_hash = struct.unpack_from(
                HEADER_FORMAT, head
            )
            if magic != MAGIC:
                raise IndexFormatError(f"{path}: not a SafeNest domain index (bad magic)")
            if version != FORMAT_VERSION:
                raise IndexFormatError(f"{path}: format version {version}, expected {FORMAT_VERSION}")
            if flags & ~_KNOWN_FLAGS:
                raise IndexFormatError(f"{path}: unknown flags {flags:#x}")
            if slots < 1 or slots & (slots - 1) or slots > 1 << 40 or domains >= slots:
                raise IndexFormatError(f"{path}: bad table size {slots} for {domains} domains")
            keys_off, sids_off, meta_off = layout(slots)
            if size != meta_off + meta_len:
                raise IndexFormatError(
                    f"{path}: {size} bytes, expected {meta_off + meta_len} (truncated or padded?)"
                )
            if verify:
                hasher = xxhash.xxh3_64()
                buf = bytearray(_CHUNK)
                view = memoryview(buf)
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    hasher.update(view[:n])
                view.release()
                if hasher.intdigest() != body_hash:
                    raise IndexFormatError(f"{path}: checksum mismatch (corrupt file)")
            f.seek(meta_off)
            try:
                meta = json.loads(f.read(meta_len).decode("utf-8"))
                if not isinstance(meta, dict) or not isinstance(meta.get("sets"), list):
                    raise ValueError("meta is not an object with a 'sets' list")
            except ValueError as e:
                raise IndexFormatError(f"{path}: bad metadata: {e}") from None
            mm = mmap.mmap(f.fileno(), meta_off, access=mmap.ACCESS_READ)
        # The mapping keeps its own duplicate of the descriptor; the file object is closed.
        base = memoryview(mm)
        keys = base[keys_off:sids_off].cast("Q")
        sids = base[sids_off : sids_off + 2 * slots].cast("H")
        base.release()
        try:
            return cls(keys=keys, sids=sids, slots=slots, domains=domains, meta=meta,
                       flags=flags, path=path, owner=mm)
        except (IndexFormatError, KeyError, TypeError, AttributeError) as error:
            # Not `e` (a ValueError above): mypyc gives a name one type per function.
            keys.release()
            sids.release()
            mm.close()
            if isinstance(error, IndexFormatError):
                raise
            raise IndexFormatError(f"{path}: bad set table: {error!r}") from None

    @classmethod
    def empty(cls) -> DomainIndex:
        """An index with nothing listed (every lookup returns None)."""
        slots = 8
        keys = array("Q", bytes(8 * slots))
        sids = array("H", bytes(2 * slots))
        meta: dict = {"sets": [], "categories": [], "sources": []}
        return cls(keys=keys, sids=sids, slots=slots, domains=0, meta=meta, flags=0, path=None)

    # -- queries ------------------------------------------------------------------------

    # lookup(wire_name): the Match for a lower-cased wire-format name (root byte included),
    # or None. Allow beats block: the most specific allowed suffix of the name wins; otherwise
    # the most specific blocked suffix; otherwise None. An attribute, not a method: set per
    # instance in __init__ (a closure), so that mypyc allows assigning it.
    lookup: Callable[[bytes], Match | None]

    def lookup_text(self, name: str) -> Match | None:
        """lookup() for a dotted name in any case; None for names that are not hostnames."""
        d = normalize_domain(name)
        if d is None:
            return None
        return self.lookup(to_wire(d))

    def matches(self, wire_name: bytes) -> list[Match]:
        """Every listed suffix of the name, most specific first, allow and block alike.

        No precedence is applied: this is for explanations, and for callers that filter
        block categories per profile (the most specific blocked suffix may be in a category
        that is not blocked while a parent is listed in one that is). A suffix listed on both
        an allow and a block list gives two matches, the allow one first.
        """
        keys, sids = self._keys, self._sids
        if keys is None:
            raise ValueError("lookup on a closed DomainIndex")
        end = len(wire_name) - 1
        if end < 1 or wire_name[end]:
            return []
        mask = self._slots - 1
        limit = end + self._extra
        h = xxhash.xxh3_64_intdigest
        out: list[Match] = []
        pos = 0
        while True:
            nxt = pos + 1 + wire_name[pos]
            if nxt >= limit:
                return out
            hv = h(wire_name[pos:]) or 1
            i = hv & mask
            while k := keys[i]:
                if k == hv:
                    listed = _suffix_text(wire_name, pos, end)
                    sid = sids[i]
                    out.append(Match(listed, *self._protos[sid]))
                    blocked = self._also_blocked.get(sid)
                    if blocked is not None:  # listed on both kinds: the allow first, then the block
                        out.append(Match(listed, *blocked))
                    break
                i = (i + 1) & mask
            pos = nxt

    def __len__(self) -> int:
        return self._domains

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.lookup_text(name) is not None

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "empty"
        return f"<DomainIndex {where}: {self._domains} domains, {self._slots} slots>"

    @property
    def slots(self) -> int:
        return self._slots

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Drop the mapping. Later lookups raise ValueError; calls already running finish
        normally, and the pages are unmapped as soon as the last of them returns."""
        self.lookup = _closed_lookup
        self._keys = self._sids = self._owner = None

    def __enter__(self) -> DomainIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
