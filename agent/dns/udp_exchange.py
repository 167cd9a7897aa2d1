"""UDP questions to upstreams, each on its own socket, watched through one shared epoll set.

Every upstream query gets a new socket (so a new random source port) that is
connected (so only the upstream's address can answer). Registering each socket
with the event loop (`add_reader`/`remove_reader`) costs about 15 µs of Python
per query; instead the sockets join one epoll set whose single descriptor the
loop watches, and one sweep timer handles every timeout. The queries of one
burst of client packets are sent together at its end, so the upstream is woken
once per burst rather than once per query.

A response counts only once `check_udp_response` has accepted it.
"""

from __future__ import annotations

import _socket  # the C socket type: the Python wrapper adds about 0.6 µs per query
import asyncio
import select
import struct
import time

from .pending import Pending
from .wire import RR_FIXED, U32, ResponseInfo

SWEEP_SECONDS = 0.05  # how often timeouts are checked
# Created non-blocking: one system call (fcntl/ioctl) less than setblocking(False).
_UDP = _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK
_COUNTS = struct.Struct("!HHHH")  # qdcount, ancount, nscount, arcount
_POINTER_RR = struct.Struct("!HHHIH")  # a 2-byte name (pointer), type, class, ttl, rdlength
_NO_TTL = 0x80000000  # above every TTL kept (larger ones count as 0)


class Flight(Pending):
    """What UdpExchanges needs of one question in flight; upstream._Exchange is one.

    A Pending itself, so that _Exchange has a single base (mypyc compiles no multiple
    inheritance of classes)."""

    __slots__ = ("sock", "ident", "question", "deadline")
    sock: _socket.socket | None
    ident: bytes  # the query ID as sent, two bytes
    question: bytes
    deadline: float

    def on_udp(self, data: bytes, info: ResponseInfo, now: float) -> None:
        """A response that passed `check_udp_response`."""
        raise NotImplementedError

    def on_udp_error(self, exc: BaseException) -> None:
        """A timeout or a socket error: no response will come."""
        raise NotImplementedError


class UdpExchanges:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.ignored_responses = 0  # wrong ID, question or garbage
        self._epoll = select.epoll()
        self._poll = self._epoll.poll
        self._register = self._epoll.register
        self._flights: dict[int, Flight] = {}
        self._outbox: list[tuple[Flight, _socket.socket, bytes]] = []  # connected, not sent yet
        self._sweeper: asyncio.TimerHandle | None = None
        loop.add_reader(self._epoll.fileno(), self._ready)

    def send(
        self, flight: Flight, family: int, address: tuple[str, int], packet: bytes, deadline: float
    ) -> None:
        """Send `packet` for `flight`; later call flight.on_udp for the first response that passes
        `check_udp_response`, or flight.on_udp_error on a socket error or once `deadline`
        (time.monotonic) has passed."""
        try:
            sock = _socket.socket(family, _UDP)
        except OSError as exc:
            flight.on_udp_error(exc)
            return
        fd = sock.fileno()
        try:
            sock.connect(address)
            self._register(fd, select.EPOLLIN)
            flight.sock = sock
            flight.deadline = deadline
            self._flights[fd] = flight
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
        except OSError as exc:
            self._flights.pop(fd, None)
            flight.sock = None
            sock.close()  # also leaves the epoll set
            flight.on_udp_error(exc)
            return
        # Sent together once the current burst of client queries is handled: back to back,
        # they wake the upstream once rather than once per query (a wake-up costs the sender
        # several µs of system time, more than the send itself).
        if not self._outbox:
            self.loop.call_soon(self._flush)
        self._outbox.append((flight, sock, packet))

    def _flush(self) -> None:
        outbox = self._outbox
        while outbox:
            self._outbox = []
            for flight, sock, packet in outbox:
                if flight.sock is not sock:
                    continue  # landed meanwhile (timed out, or closed)
                try:
                    sock.send(packet)
                except OSError as exc:
                    del self._flights[sock.fileno()]
                    flight.sock = None
                    sock.close()
                    flight.on_udp_error(exc)  # may queue a query to the next upstream
            outbox = self._outbox

    def _ready(self) -> None:
        flights = self._flights
        now = time.monotonic()
        # One datagram per ready socket and wake-up: the set is level-triggered, so a
        # socket that still holds data (a spoofed packet before the real one) comes back.
        for fd, _ in self._poll(0):
            flight = flights.get(fd)
            if flight is None:
                continue  # landed already (e.g. timed out in a sweep)
            sock = flight.sock
            try:
                data = sock.recv(65535)  # type: ignore[union-attr]  # set while in _flights
            except BlockingIOError:
                continue
            except OSError as exc:  # ICMP port unreachable and the like
                del flights[fd]
                flight.sock = None
                sock.close()  # type: ignore[union-attr]
                flight.on_udp_error(exc)
                continue
            info = check_udp_response(data, flight.ident, flight.question)
            if info is None:
                self.ignored_responses += 1
                continue
            del flights[fd]
            flight.sock = None
            sock.close()  # type: ignore[union-attr]  # also leaves the epoll set
            flight.on_udp(data, info, now)

    def _sweep(self) -> None:
        now = time.monotonic()
        flights = self._flights
        for fd, flight in [(fd, f) for fd, f in flights.items() if f.deadline <= now]:
            if flights.get(fd) is flight:
                del flights[fd]
                flight.sock.close()  # type: ignore[union-attr]
                flight.sock = None
                flight.on_udp_error(TimeoutError())
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep) if flights else None

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for flight in self._flights.values():
            flight.sock.close()  # type: ignore[union-attr]
            flight.sock = None
        self._flights.clear()
        self._outbox.clear()
        try:
            self.loop.remove_reader(self._epoll.fileno())
        except (ValueError, RuntimeError):
            pass
        self._epoll.close()


def check_udp_response(data: bytes, ident: bytes, question: bytes) -> ResponseInfo | None:
    """Validate an upstream response against the query we sent (`ident`: its two ID bytes).

    The same rules as `wire.check_response`, in fewer steps for the common shape (names
    compressed to a pointer): None unless the ID matches, it is a standard response to
    exactly our question (name case-insensitive, type and class exact), and every record
    lies within the message with its compression pointers pointing backwards.
    """
    if data[:2] != ident or len(data) < 12:
        return None
    flags = data[2]
    if flags & 0xF8 != 0x80:  # QR set, opcode QUERY
        return None
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(data, 4)
    info = ResponseInfo()
    info.rcode = data[3] & 0xF
    info.truncated = truncated = bool(flags & 0x02)
    info.ancount = ancount
    ttls = info.ttls
    qend = 12 + len(question)
    echoed = data[12:qend]
    if qdcount != 1 or (echoed != question and not _same_question(echoed, question)):
        # A truncated response may legally omit the question; only TC lets that pass.
        return info if truncated and qdcount == 0 else None
    n = len(data)
    pos = qend
    min_ttl = _NO_TTL
    opt_offset = -1
    authority_end = ancount + nscount
    keep_ttl = ttls.append
    try:
        for i in range(authority_end + arcount):
            if data[pos] >= 0xC0:
                # The usual case: the whole name is a pointer, read with the record's fields.
                pointer, rtype, _, ttl, rdlen = _POINTER_RR.unpack_from(data, pos)
                if pointer & 0x3FFF >= pos:
                    return None  # compression pointers must point backwards
                pos += 2
            else:
                if data[pos]:
                    pos = _skip_labels(data, pos, n)
                    if pos < 0:
                        return None
                else:
                    pos += 1  # the root name
                rtype, _, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
            end = pos + 10 + rdlen
            if end > n:
                return None
            if rtype == 41:  # OPT: once, in the additional section
                if i < authority_end or opt_offset >= 0:
                    return None
                opt_offset = pos + 2
            else:
                if ttl > 0x7FFFFFFF:  # RFC 2181: treat as zero
                    ttl = 0
                keep_ttl((pos + 4, ttl))
                if ttl < min_ttl:
                    min_ttl = ttl
                if rtype == 6 and ancount <= i < authority_end and rdlen >= 20:  # SOA in authority
                    soa_min = U32.unpack_from(data, end - 4)[0]
                    info.negative_ttl = ttl if ttl < soa_min else soa_min
            pos = end
    except (IndexError, struct.error):  # cut short
        return None
    info.opt_offset = opt_offset
    info.min_ttl = None if min_ttl == _NO_TTL else min_ttl
    return info


def _same_question(echoed: bytes, question: bytes) -> bool:
    """The upstream changed the name's letter case (0x20 randomisation): the name compared
    case-insensitively, its type and class exactly."""
    return (
        len(echoed) == len(question)
        and echoed[:-4].lower() == question[:-4].lower()
        and echoed[-4:] == question[-4:]
    )


def _skip_labels(data: bytes, pos: int, n: int) -> int:
    """The offset past the name at `pos` (labels, maybe ending in a backward pointer); -1 if bad."""
    while True:
        if pos >= n:
            return -1
        length = data[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            if pos + 2 > n or ((length & 0x3F) << 8 | data[pos + 1]) >= pos:
                return -1
            return pos + 2
        if length > 63:
            return -1
        pos += length + 1
