"""Where domains come from: list files on disk, their naming convention and their formats.

File naming (``sources_in``): ``<category>.txt`` is a block list of that category and
``<category>.allow.txt`` an allow list; category ids are ``[a-z0-9_]+``. Other files are ignored.

A :class:`Source`'s ``category`` is the label the index carries: a category id, or
``id@band`` (``online_games@18+``) for a list whose own age differs from its category's, with a
band of ``00+``, ``12+``, ``16+``, ``18+``, ``always`` or ``off``.

Accepted line formats (``read_domains``), freely mixed in one file:

* plain: ``example.com`` (one domain a line)
* hosts file: ``0.0.0.0 example.com`` / ``127.0.0.1 a.com b.com`` (the address must be an IP;
  hosts boilerplate such as ``localhost`` or ``broadcasthost`` is ignored, not counted as bad)
* adblock / AdGuard DNS: ``||example.com^`` (optionally ``$important`` or ``$all``)
* comments: blank lines, lines starting with ``#``, ``!`` or ``[``, and `` # ...`` after an entry

A listed domain stands for itself and all its subdomains. Anything else (URLs, wildcards,
cosmetic filters, ``@@`` exceptions, IP addresses, single-label names) is a bad line: it is
skipped and counted in a :class:`ParseStats`.

Public lists fetched by URL are read with :func:`read_entries`, which also takes adblock
exceptions ``@@||domain^`` (allow entries) and wildcards ``*.domain`` / ``||*.domain^`` (read as
``domain``, which covers its subdomains anyway, and the domain itself too).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.index.domains import normalize_domain

__all__ = [
    "Source",
    "ParseStats",
    "bundled_dir",
    "sources_in",
    "read_domains",
    "read_entries",
    "KINDS",
    "CATEGORY_RE",
    "LABEL_RE",
]

KINDS = ("block", "allow")
CATEGORY_RE = re.compile(r"[a-z0-9_]+")
# A category label in the index: the id, or id@band when a list's own age differs from its category's.
LABEL_RE = re.compile(r"[a-z0-9_]+(?:@(?:00\+|12\+|16\+|18\+|always|off))?")
_BLOCK_FILE = re.compile(r"([a-z0-9_]+)\.txt")
_ALLOW_FILE = re.compile(r"([a-z0-9_]+)\.allow\.txt")

# Names that hosts files map for the machine itself: not something a list means to block.
_HOSTS_BOILERPLATE = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)
_COMMON_IPS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0", "::0"})
_ADBLOCK_OPTIONS = frozenset({"important", "all"})
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Source:
    """One list file. ``label`` is what explanations show, e.g. ``blocklists/gambling.txt``."""

    category: str
    kind: str  # "block" | "allow"
    path: Path
    label: str = ""  # "" -> the file name

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not LABEL_RE.fullmatch(self.category):
            raise ValueError(
                f"bad category id {self.category!r}: use [a-z0-9_]+, optionally with "
                "@00+, @12+, @16+, @18+, @always or @off"
            )
        if self.kind not in KINDS:
            raise ValueError(f"bad list kind {self.kind!r}: use 'block' or 'allow'")
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        if not self.label:
            object.__setattr__(self, "label", self.path.name)


@dataclass
class ParseStats:
    """Counts filled in by :func:`read_domains` while it is being consumed.

    ``bad`` counts skipped entries: whole lines, or single names on a hosts line.
    ``examples`` keeps the first few of them as ``(line number, line text)``.
    """

    lines: int = 0
    domains: int = 0
    comments: int = 0
    ignored: int = 0
    bad: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def _bad(self, lineno: int, text: str) -> None:
        self.bad += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append((lineno, text.rstrip("\r\n")[:200]))


def bundled_dir() -> Path:
    """The repository's ``blocklists/`` folder (next to the ``agent`` package)."""
    import agent

    return Path(agent.__file__).resolve().parent.parent / "blocklists"


def sources_in(directory: Path) -> list[Source]:
    """The list files of a folder, sorted by file name; [] if the folder does not exist.

    Labels are ``<folder name>/<file name>``, e.g. ``blocklists/gambling.txt``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out: list[Source] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if not path.is_file():
            continue
        label = f"{directory.name}/{path.name}"
        m = _ALLOW_FILE.fullmatch(path.name)
        if m:
            out.append(Source(m.group(1), "allow", path, label))
            continue
        m = _BLOCK_FILE.fullmatch(path.name)
        if m:
            out.append(Source(m.group(1), "block", path, label))
    return out


def _is_ip(token: str) -> bool:
    if token in _COMMON_IPS:
        return True
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


def _content_lines(path: Path, st: ParseStats) -> Iterator[tuple[int, str, str]]:
    """``(line number, raw line, content)`` of every line that is not a comment; comments
    (``#``, ``!``, ``[...]``, and a trailing ``# ...``) are counted in ``st``. A ``#`` glued to
    text (``a.com##.ad``, a cosmetic filter) makes the line bad. Sets ``st.lines`` at the end."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lineno = 0
        for raw in f:
            lineno += 1
            line = raw.strip()
            if not line or line[0] in "#![":
                st.comments += 1
                continue
            if "#" in line:
                cut = line.index("#")
                if not line[cut - 1].isspace():
                    st._bad(lineno, raw)
                    continue
                line = line[:cut].rstrip()
            yield lineno, raw, line
        st.lines = lineno


def _hosts_names(line: str, st: ParseStats) -> list[str] | None:
    """The names of a hosts-file line (``0.0.0.0 a.example b.example``), or None if the first
    token is not an address; ``localhost`` and its kin are counted as ignored."""
    tokens = line.split()
    if not _is_ip(tokens[0]):
        return None
    names = []
    for name in tokens[1:]:
        if name in _HOSTS_BOILERPLATE:
            st.ignored += 1
        else:
            names.append(name)
    return names


def read_domains(path: Path, stats: ParseStats | None = None) -> Iterator[str]:
    """Yield the normalized domains of a list file (see the module docstring for formats).

    Pass a :class:`ParseStats` to learn how many lines were comments, ignored or bad; it is
    updated as the generator is consumed, so read it after the loop. Duplicates are yielded as
    often as they appear. Undecodable bytes make their line bad (never an exception).
    """
    st = stats if stats is not None else ParseStats()
    norm = normalize_domain
    for lineno, raw, line in _content_lines(path, st):
        if line[0] == "|":
            body = _adblock_body(line[2:]) if line.startswith("||") else None
            names = [body]
        elif " " in line or "\t" in line:
            names = _hosts_names(line, st)
            if names is None:
                st._bad(lineno, raw)
                continue
        else:  # the common case of a plain list: one name, no list built
            d = norm(line)
            if d is None:
                st._bad(lineno, raw)
            else:
                st.domains += 1
                yield d
            continue
        for name in names:
            d = None if name is None else norm(name)
            if d is None:
                st._bad(lineno, raw)
            else:
                st.domains += 1
                yield d


def _adblock_body(rest: str) -> str | None:
    """The domain part of ``||domain^[options]`` (``rest`` is what follows ``||``), or None."""
    body, caret, options = rest.partition("^")
    if not caret:
        return None
    if (
        options
        and options != "|"
        and not (options[0] == "$" and set(options[1:].split(",")) <= _ADBLOCK_OPTIONS)
    ):
        return None
    return body


def read_entries(path: Path, stats: ParseStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, domain)`` for a public list: what :func:`read_domains` reads as
    ``("block", domain)``, plus ``@@||domain^`` as ``("allow", domain)`` and the wildcards
    ``*.domain`` and ``||*.domain^`` as ``("block", domain)``. ``stats`` as for read_domains.
    """
    st = stats if stats is not None else ParseStats()
    norm = normalize_domain
    for lineno, raw, line in _content_lines(path, st):
        kind = "block"
        if line.startswith("@@"):
            kind, line = "allow", line[2:]
            if not line.startswith("||"):  # only whole-domain exceptions mean "allow"
                st._bad(lineno, raw)
                continue
        if line.startswith("||"):
            body = _adblock_body(line[2:])
            if body is not None and body.startswith("*."):
                body = body[2:]
            names = [body]
        elif line.startswith("*."):
            names = [line[2:]]
        elif " " in line or "\t" in line:
            names = _hosts_names(line, st)
            if names is None:
                st._bad(lineno, raw)
                continue
        else:
            names = [line]
        for name in names:
            d = None if name is None else norm(name)
            if d is None:
                st._bad(lineno, raw)
            else:
                st.domains += 1
                yield kind, d
