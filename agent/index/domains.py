"""Domain-name text and wire-format helpers shared by the index builder and its readers.

``normalize_domain`` is deliberately lenient about what real block lists contain (``_`` and
leading/trailing ``-`` inside labels) and strict about what can never be a hostname (spaces,
wildcards, URLs, ports, IP addresses, single-label names such as ``localhost``).
"""

from __future__ import annotations

import re

__all__ = ["normalize_domain", "to_wire", "wire_to_text", "MAX_NAME_LENGTH", "MAX_LABEL_LENGTH"]

MAX_NAME_LENGTH = 253  # dotted text, without the trailing dot
MAX_LABEL_LENGTH = 63

# Two or more labels of [a-z0-9_-]{1,63}; the last one (the TLD) must not be all digits, which
# rejects IPv4 addresses (and other numeric junk) for free. Lengths are checked by the regex,
# the total length separately.
_HOSTNAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)+(?=[a-z0-9_-]{1,63}\Z)[0-9]*[a-z_-][a-z0-9_-]*")

# Printable ASCII except '.', i.e. a label that can be shown as is.
_PLAIN_LABEL = re.compile(rb"[!-\-/-~]+")

# One length byte per possible label length (wire labels are at most 63 bytes).
_LEN_BYTE = [bytes((i,)) for i in range(256)]


def _idna(text: str) -> str | None:
    """Punycode for a non-ASCII name, or None if it cannot be encoded."""
    try:
        import idna  # UTS #46 / IDNA 2008; installed wherever `requests` is

        return idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except Exception:  # ImportError, idna.IDNAError, UnicodeError: fall back to IDNA 2003
        pass
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def normalize_domain(text: str) -> str | None:
    """Canonical form of a hostname (lower case, no trailing dot, punycode), or None.

    >>> normalize_domain(" WWW.Example.COM. ")
    'www.example.com'
    >>> normalize_domain("bücher.de")
    'xn--bcher-kva.de'
    >>> normalize_domain("localhost") is None, normalize_domain("1.2.3.4") is None
    (True, True)
    """
    s = text.strip().lower()
    if s.endswith("."):
        s = s[:-1]
    if not s.isascii():
        if any(c.isspace() or c in "*/:" for c in s):
            return None
        s = _idna(s)
        if s is None:
            return None
        s = s.lower()
    if len(s) > MAX_NAME_LENGTH or _HOSTNAME.fullmatch(s) is None:
        return None
    return s


def to_wire(domain: str) -> bytes:
    """DNS wire format of a dotted name, lower-cased, with the root label.

    ``'www.Example.com'`` -> ``b'\\x03www\\x07example\\x03com\\x00'``; ``''`` and ``'.'`` -> ``b'\\x00'``.
    Non-ASCII names are converted to punycode. Raises ValueError for empty or over-long labels.
    """
    s = domain.lower()
    if s.endswith("."):
        s = s[:-1]
    if not s:
        return b"\x00"
    if not s.isascii():
        enc = _idna(s)
        if enc is None:
            raise ValueError(f"cannot encode {domain!r} as a DNS name")
        s = enc.lower()
    out = bytearray()
    for label in s.encode("ascii").split(b"."):
        n = len(label)
        if not 0 < n <= MAX_LABEL_LENGTH:
            raise ValueError(f"bad label length {n} in {domain!r}")
        out += _LEN_BYTE[n]
        out += label
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {domain!r}")
    return bytes(out)


def _wire_fast(domain: str) -> bytes:
    """to_wire for names already accepted by normalize_domain (no checks; build hot path)."""
    out = bytearray()
    for label in domain.encode("ascii").split(b"."):
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)


def wire_to_text(wire: bytes) -> str:
    """Dotted text of a wire-format name (no trailing dot; the root is ``''``).

    Bytes outside printable ASCII, and dots inside a label, are shown as ``\\xNN`` escapes.
    Raises ValueError if the labels run past the end or the root byte is missing.
    """
    labels: list[str] = []
    pos = 0
    n = len(wire)
    while True:
        if pos >= n:
            raise ValueError("wire name has no root label")
        length = wire[pos]
        if length == 0:
            break
        if length > MAX_LABEL_LENGTH or pos + 1 + length > n:
            raise ValueError(f"bad label length {length} at offset {pos}")
        raw = bytes(wire[pos + 1 : pos + 1 + length])
        if _PLAIN_LABEL.fullmatch(raw):
            labels.append(raw.decode("ascii"))
        else:
            labels.append("".join(chr(b) if 0x21 <= b < 0x7F and b != 0x2E else f"\\x{b:02x}" for b in raw))
        pos += 1 + length
    return ".".join(labels)
