"""Just enough DNS wire format to ask one question and read the answer's rcode and count."""

from __future__ import annotations

import os
import socket
import struct
import time

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def build_query(name: str, qtype: int = 1, qid: int | None = None) -> tuple[int, bytes]:
    qid = int.from_bytes(os.urandom(2), "big") if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD set
    labels = b"".join(
        bytes([len(p)]) + p for p in name.rstrip(".").encode("ascii").split(b".") if p
    )
    return qid, header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def a_records(data: bytes) -> list[str]:
    """The IPv4 addresses in the answer section of a response."""
    _qid, _flags, qd, an = struct.unpack("!HHHH", data[:8])
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    out = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return out


def resolve(name: str, port: int, ip: str = "127.0.0.1", timeout: float = 1.0) -> bytes | None:
    """The raw response to ``name`` A, or None."""
    qid, wire = build_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((ip, port))
        s.send(wire)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(4096)
            except (TimeoutError, ConnectionRefusedError):
                return None
            # A response (QR set): the kernel may give this socket the very port it sends to
            # while the server is not bound yet, and the query then comes back as itself.
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid and data[2] & 0x80:
                return data
    return None


def query(
    name: str, port: int, ip: str = "127.0.0.1", timeout: float = 1.0
) -> tuple[str, int] | None:
    """(rcode name, answer count) for ``name`` A, or None if nothing came back in time."""
    data = resolve(name, port, ip, timeout)
    if data is None:
        return None
    flags, _qd, an = struct.unpack("!HHH", data[2:8])
    return RCODES.get(flags & 0xF, str(flags & 0xF)), an


def wait_answer(name: str, port: int, timeout: float, alive=lambda: True) -> tuple[str, int] | None:
    """Ask repeatedly until an answer arrives, ``timeout`` passes or ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        got = query(name, port, timeout=min(0.5, max(0.05, deadline - time.monotonic())))
        if got is not None:
            return got
        time.sleep(0.05)
    return None
