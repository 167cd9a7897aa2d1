"""DNS messages as bytes: the hot path's reading, checking and patching.

Parsing a query with dnslib, parsing a cached answer and packing a reply costs
about 40 µs in Python; reading the question straight from the bytes and patching
a cached answer costs about 1 µs. So the hot path works on bytes here, and
dnslib is kept for the rare synthesized messages (see `messages.py`).
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
TYPE_CLASS = struct.Struct("!HH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

# Header flag bits.
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010

# Response codes (RFC 1035, 6891).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Record types used by name.
T_A, T_SOA, T_AAAA, T_OPT, T_ANY = 1, 6, 28, 41, 255
C_IN = 1

# What we advertise to clients and upstreams: the DNS Flag Day 2020 size.
EDNS_UDP_SIZE = 1232
DO_BIT = 0x8000
EDE_OPTION = 15  # Extended DNS Errors, RFC 8914

# Extended DNS Error info codes we send.
EDE_BLOCKED = 15
EDE_NETWORK_ERROR = 23


class Malformed(Exception):
    """A query we cannot use. `rcode` is the answer to give, or None to drop it silently."""

    def __init__(self, rcode: int | None, why: str):
        super().__init__(why)
        self.rcode = rcode


class Query:
    """One client question, read from the wire without building an object tree.

    `key` identifies answers that may be shared between clients: the lower-cased
    name, type, class and the client's EDNS shape (none, EDNS, EDNS with DO), since
    an answer to a non-EDNS client must carry no OPT record.

    `ttl_cap` (seconds, None: none) is the asker's profile's TTL cap, set by the Policy
    link on its way down, so the links below serve capped TTLs in their first copy.
    """

    __slots__ = (
        "data",
        "id",
        "flags",
        "qname",
        "qname_key",
        "qtype",
        "qclass",
        "question_end",
        "edns_version",
        "udp_size",
        "do",
        "key",
        "client",
        "transport",
        "ttl_cap",
    )

    def __init__(self, data: bytes, client: str = "", transport: str = "udp"):
        n = len(data)
        if n < 12:
            raise Malformed(None, "shorter than a DNS header")
        ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
        self.data = data
        self.id = ident
        self.flags = flags
        self.client = client
        self.transport = transport
        # Set by the Policy link: no TTL in the answer above it (seconds).
        self.ttl_cap: int | None = None
        self.edns_version = -1
        self.udp_size = 512
        self.do = False
        if flags & QR:
            # A response sent to us: answering it could start a loop between servers.
            raise Malformed(None, "a response, not a query")
        if flags & 0x7800:
            raise Malformed(NOTIMP, f"opcode {(flags >> 11) & 0xF} is not supported")
        if qdcount != 1:
            raise Malformed(FORMERR, f"{qdcount} questions")
        pos = 12
        try:  # the end of the packet found by IndexError: fewer steps per label than a test
            length = data[pos]
            while length:
                if length > 63:
                    raise Malformed(FORMERR, "compressed or invalid label in the question")
                pos += length + 1
                length = data[pos]
        except IndexError:
            raise Malformed(FORMERR, "question name runs past the end") from None
        pos += 1
        if pos - 12 > 255:
            raise Malformed(FORMERR, "question name longer than 255 bytes")
        if pos + 4 > n:
            raise Malformed(FORMERR, "question is cut short")
        self.qname = qname = data[12:pos]
        self.qname_key = qname_key = qname.lower()
        self.qtype, self.qclass = qtype, qclass = TYPE_CLASS.unpack_from(data, pos)
        self.question_end = pos + 4
        if arcount or ancount or nscount:
            self._read_edns(pos + 4, ancount + nscount, arcount)
            shape = 0 if self.edns_version < 0 else (2 if self.do else 1)
        else:
            shape = 0
        self.key = (qname_key, qtype, qclass, shape)

    def _read_edns(self, pos: int, skip: int, arcount: int) -> None:
        data = self.data
        try:
            for _ in range(skip):
                pos = skip_name(data, pos)
                _, _, _, rdlen = RR_FIXED.unpack_from(data, pos)
                pos += 10 + rdlen
            for _ in range(arcount):
                name_start = pos
                pos = skip_name(data, pos)
                rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
                pos += 10 + rdlen
                if pos > len(data):
                    raise Malformed(FORMERR, "record data runs past the end")
                if rtype == T_OPT:
                    if self.edns_version >= 0:
                        raise Malformed(FORMERR, "more than one OPT record")
                    if pos - rdlen - 10 - name_start != 1:
                        raise Malformed(FORMERR, "OPT record with a name")
                    self.edns_version = (ttl >> 16) & 0xFF
                    self.udp_size = max(512, rclass)
                    self.do = bool(ttl & DO_BIT)
        except struct.error:
            raise Malformed(FORMERR, "additional section is cut short") from None

    @property
    def question(self) -> bytes:
        """The question section exactly as the client sent it (name case kept)."""
        return self.data[12 : self.question_end]

    @property
    def name(self) -> str:
        return name_to_text(self.qname_key)


def skip_name(data: bytes, pos: int) -> int:
    """Return the offset just past the (possibly compressed) name at `pos`."""
    n = len(data)
    while True:
        if pos >= n:
            raise Malformed(FORMERR, "name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise Malformed(FORMERR, "pointer runs past the end")
            return pos + 2
        if length > 63:
            raise Malformed(FORMERR, "invalid label type")
        pos += length + 1


def name_to_text(wire: bytes) -> str:
    """b'\\x03www\\x07example\\x03com\\x00' -> 'www.example.com' (unprintable bytes escaped)."""
    labels = []
    pos = 0
    while pos < len(wire) and wire[pos]:
        length = wire[pos]
        label = wire[pos + 1 : pos + 1 + length]
        labels.append(
            "".join(chr(b) if 0x21 <= b < 0x7F and b not in b".\\" else f"\\{b:03d}" for b in label)
        )
        pos += length + 1
    return ".".join(labels) or "."


def name_to_wire(name: str) -> bytes:
    """'www.example.com' -> wire format with the root label; raises ValueError on a bad name."""
    name = name.strip().rstrip(".")
    out = bytearray()
    if name:
        for label in name.split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


class ResponseInfo:
    """What checking an upstream response found: enough to cache and serve it."""

    __slots__ = ("rcode", "truncated", "ancount", "ttls", "min_ttl", "negative_ttl", "opt_offset")
    rcode: int  # set by the checker that made it
    truncated: bool
    ancount: int

    def __init__(self) -> None:
        self.ttls: list[tuple[int, int]] = []  # (offset of the TTL field, TTL)
        self.min_ttl: int | None = None
        self.negative_ttl: int | None = None
        self.opt_offset = -1  # offset of the OPT record's class (UDP size) field


def check_response(data: bytes, ident: int, question: bytes) -> ResponseInfo | None:
    """Validate an upstream response against the query we sent.

    Returns None unless the ID matches, it is a standard response to exactly our
    question (name compared case-insensitively, type and class exactly), and every record
    lies within the message. A response that fails here is ignored, as a spoofing attempt or noise.
    """
    n = len(data)
    if n < 12:
        return None
    rid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if rid != ident or not flags & QR or flags & 0x7800:
        return None
    info = ResponseInfo()
    info.rcode = flags & 0xF
    info.truncated = bool(flags & TC)
    info.ancount = ancount
    qend = 12 + len(question)
    echoed = data[12:qend]
    # The name case-insensitively (0x20 randomisation), the type and class byte for byte
    # (lower-casing them would let a response for type 97 pass a check for type 65).
    if qdcount != 1 or (
        echoed != question
        and (
            len(echoed) != len(question)
            or echoed[:-4].lower() != question[:-4].lower()
            or echoed[-4:] != question[-4:]
        )
    ):
        # A truncated response may legally omit the question; only TC lets that pass.
        if not (info.truncated and qdcount == 0):
            return None
        return info
    pos = qend
    ttls = info.ttls
    min_ttl = None
    try:
        for section, count in ((1, ancount), (2, nscount), (3, arcount)):
            for _ in range(count):
                pos = _skip_name_checked(data, pos)
                rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
                end = pos + 10 + rdlen
                if end > n:
                    return None
                if rtype == T_OPT:
                    if section != 3 or info.opt_offset >= 0:
                        return None
                    info.opt_offset = pos + 2
                else:
                    if ttl > 0x7FFFFFFF:  # RFC 2181: treat as zero
                        ttl = 0
                    ttls.append((pos + 4, ttl))
                    if min_ttl is None or ttl < min_ttl:
                        min_ttl = ttl
                    if rtype == T_SOA and section == 2 and rdlen >= 20:
                        soa_min = U32.unpack_from(data, end - 4)[0]
                        info.negative_ttl = min(ttl, soa_min)
                pos = end
    except (struct.error, Malformed):
        return None
    info.min_ttl = min_ttl
    return info


def _skip_name_checked(data: bytes, pos: int) -> int:
    """skip_name, plus: a compression pointer must point backwards into the message."""
    n = len(data)
    while True:
        if pos >= n:
            raise Malformed(FORMERR, "name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > n or ((length & 0x3F) << 8 | data[pos + 1]) >= pos:
                raise Malformed(FORMERR, "bad compression pointer")
            return pos + 2
        if length > 63:
            raise Malformed(FORMERR, "invalid label type")
        pos += length + 1


def make_query(ident: int, question: bytes, *, edns: bool, do: bool, cd: bool) -> bytes:
    """Our query to an upstream: recursion desired, and EDNS only if the client used it."""
    flags = RD | (CD if cd else 0)
    head = HEADER.pack(ident, flags, 1, 0, 0, 1 if edns else 0)
    if not edns:
        return head + question
    return head + question + opt_record(0, do)


def opt_record(ext_rcode: int, do: bool, options: bytes = b"") -> bytes:
    ttl = (ext_rcode >> 4) << 24 | (DO_BIT if do else 0)
    return b"\x00" + RR_FIXED.pack(T_OPT, EDNS_UDP_SIZE, ttl, len(options)) + options


def ede_option(info_code: int, text: str = "") -> bytes:
    raw = text.encode("utf-8")
    return U16.pack(EDE_OPTION) + U16.pack(2 + len(raw)) + U16.pack(info_code) + raw


def reply(
    query: Query,
    rcode: int,
    answers: bytes = b"",
    ancount: int = 0,
    authority: bytes = b"",
    nscount: int = 0,
    *,
    ede: bytes = b"",
    aa: bool = False,
) -> bytes:
    """Build a response to `query` from ready-made record bytes (names may point at offset 12)."""
    flags = QR | RA | (query.flags & (RD | CD)) | (rcode & 0xF) | (AA if aa else 0)
    edns = query.edns_version >= 0
    head = HEADER.pack(query.id, flags, 1, ancount, nscount, 1 if edns else 0)
    tail = opt_record(rcode, query.do, ede) if edns else b""
    return head + query.question + answers + authority + tail


def error_reply(data: bytes, rcode: int, query: Query | None = None) -> bytes | None:
    """FORMERR/NOTIMP/SERVFAIL/REFUSED for `data`; keeps the question when it could be read."""
    if query is not None and query.question_end > 12:
        return reply(query, rcode)
    if len(data) < 12:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    flags = QR | (flags & (0x7800 | RD | CD)) | (rcode & 0xF)
    return HEADER.pack(ident, flags, 0, 0, 0, 0)


def truncated_reply(query: Query) -> bytes:
    """A TC answer for a UDP client whose buffer is too small: it should retry over TCP."""
    flags = QR | RA | TC | (query.flags & (RD | CD))
    edns = query.edns_version >= 0
    head = HEADER.pack(query.id, flags, 1, 0, 0, 1 if edns else 0)
    return head + query.question + (opt_record(0, query.do) if edns else b"")


def record(rtype: int, ttl: int, rdata: bytes) -> bytes:
    """A record owned by the question name (a pointer to offset 12)."""
    return b"\xc0\x0c" + RR_FIXED.pack(rtype, C_IN, ttl, len(rdata)) + rdata


def soa_record(ttl: int, mailbox: str) -> bytes:
    """An SOA of ours owned by the question name, its TTL and minimum both `ttl`: with it,
    resolvers cache a negative answer we give for `ttl` seconds (RFC 2308)."""
    rdata = name_to_wire("safenest.home.arpa") + name_to_wire(mailbox)
    rdata += U32.pack(1) + U32.pack(3600) + U32.pack(600) + U32.pack(86400) + U32.pack(ttl)
    return record(T_SOA, ttl, rdata)
