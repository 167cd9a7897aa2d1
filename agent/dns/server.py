"""The sockets: DNS over UDP and TCP (RFC 7766) on IPv4 and IPv6.

UDP sockets are read directly from the event loop (`add_reader` plus a burst
of `recvfrom` calls), which costs about a third less CPU per query than
asyncio's datagram transport. With the compiled module agent/dns/_udpio.c (`make compile`),
a burst is one `recvmmsg` and its replayed answers one `sendmmsg`, with the clients' raw
addresses (`_on_udp_batch`); `_on_udp_readable` is the same loop over `recvfrom`/`sendto`.
Every query is answered: our own exception on one query becomes SERVFAIL and a log line,
never silence.

Every answer is counted (`counts`: by kind, blocks by reason) and handed to the query log
(`attach_log`), on both paths: a replayed packet appends one prebuilt entry to the log's
queue (see replay.py), any other answer calls `QueryLog.record` after it is sent, with the
client's profile and device as the Policy step placed it and the time since the packet
arrived. Rate-limited drops are logged at most once a second per client (a flood must not
crowd the log's queue); forwarded answers feed the latency histogram of their upstream.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..model import Answer, AnswerKind
from .pending import Pending
from .replay import ReplayMemo
from .steps.base import Step
from .steps.client_gate import ADMITTED, RATE_LIMITED
from .wire import BADVERS, SERVFAIL, U16, Malformed, Query, error_reply, reply, truncated_reply

try:  # built by `make compile`: one system call per burst, the client's address left raw
    from ._udpio import recv_batch, send_batch
except ImportError:  # plain Python: recvfrom and sendto per datagram
    recv_batch = send_batch = None

log = logging.getLogger(__name__)

READ_BURST = 64  # datagrams read per wake-up
MAX_QUERY = 4096  # no legitimate query is larger
MAX_CLIENT_TEXTS = 65_536  # raw client addresses -> their text, kept; a flood of sources is bounded
TCP_PIPELINE = 32  # queries in progress at once on one TCP connection
ERROR_LOG_LIMIT, ERROR_LOG_WINDOW = 10, 60.0  # tracebacks logged per window (seconds)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python does not export it
RATE_LIMIT_LOG_SECONDS = 1.0  # a rate-limited client gets at most one log entry per this time
MAX_LIMITED_CLIENTS = 65_536  # rate-limited clients remembered for that; spoofed floods are bounded
# Forwarded answers' latency (seconds), Prometheus-style cumulative buckets ("le").
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Seconds per label (an upstream) in fixed buckets: observe() is a bisect and two additions.

    Read from another thread (the metrics scrape) with `snapshot()`; a reading may be torn by
    one observation between a bucket and the sum, which a histogram tolerates."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self._series: dict[str, list] = {}  # label -> [count per bucket..., count above, sum]

    def observe(self, label: str, seconds: float) -> None:
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = [0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, seconds)] += 1
        series[-1] += seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """label -> (count per bucket, the last one above every bound; sum of seconds)."""
        out = {}
        for label, series in list(self._series.items()):
            copy = list(series)
            out[label] = (copy[:-1], copy[-1])
        return out


class BindError(Exception):
    """A listening address cannot be used; the message says why and what to do."""


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:5300', '[::1]:53', '0.0.0.0' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":") or "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, "53"
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r} (use ADDR:PORT, [ADDR]:PORT for IPv6)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad address in {text!r}: give an IP address, such as 0.0.0.0 or [::]") from None
    return host, int(port_text)


def _bind_message(host: str, port: int, exc: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: ports below 1024 need root or CAP_NET_BIND_SERVICE. "
            "Run SafeNest through its systemd unit (it grants that capability), "
            "or choose a high port for a trial: --dns 127.0.0.1:5300"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: another program already serves that port. On a Pi this is "
            "usually systemd-resolved (set DNSStubListener=no in /etc/systemd/resolved.conf), "
            "dnsmasq or Pi-hole; find it with `ss -lunp 'sport = :53'`, stop it, or pick another --dns address"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: this machine has no such address (check --dns)"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _no_ipv6(exc: BindError, host: str, listen: list[tuple[str, int]]) -> bool:
    """The IPv6 wildcard failed because the machine has no IPv6, and something else is listened on."""
    # __context__ too: compiled by mypyc, `raise ... from exc` sets only that (mypy 2.4.1).
    cause = exc.__cause__ or exc.__context__
    no_family = isinstance(cause, OSError) and cause.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)
    return no_family and host == "::" and any(h != "::" for h, _ in listen)


def batched_udp() -> bool:
    """Whether the UDP sockets are read and answered a burst at a time (agent/dns/_udpio.c)."""
    return recv_batch is not None


def address_text(key: bytes) -> str:
    """The address text of recv_batch's host key: what recvfrom gives as the host."""
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    if len(key) == 20:  # the address, then its scope id, which recvfrom's text leaves out
        return socket.inet_ntop(socket.AF_INET6, key[:16])
    return ""


class DnsServer:
    def __init__(self, resolver: Step, *, gate, udp_receive_buffer: int, tcp_idle_timeout: float, tcp_max_connections: int):
        self.resolver = resolver
        self.gate = gate  # decides whether a malformed packet from this source deserves an answer
        self.udp_receive_buffer = udp_receive_buffer
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_connections = tcp_max_connections
        # Answers by kind, and blocks by (BLOCKED, reason): the key a replayed answer carries
        # (replay.count_key). A defaultdict (as fast as a dict for keys it has, unlike a
        # Counter): a key first met on the replay path must not raise.
        self.counts: defaultdict = defaultdict(int, dict.fromkeys(AnswerKind, 0))
        self.errors = 0  # our own exceptions turned into SERVFAIL
        self._error_window_start = 0.0
        self._errors_logged = 0
        self._errors_unlogged = 0
        self.send_failures = 0
        self.tcp_open = 0
        self.addresses: list[tuple[str, str, int]] = []  # (proto, host, port) actually bound
        self.replay = ReplayMemo()
        self.querylog: Any = None  # a QueryLog (attach_log), or None: nothing is logged
        # client address -> device id, as the Policy step placed it (the query log's device).
        self.devices: dict[str, str] = {}
        self.latency = LatencyHistogram()  # forwarded answers, per upstream, since arrival
        self._limited_logged: dict[str, float] = {}  # client -> when its last drop was logged
        self._udp_socks: list[socket.socket] = []
        self._tcp_servers: list[asyncio.base_events.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._later = False  # delivering an answer that came later (from a Pending)
        self._replies: list[tuple] = []  # (socket, bytes, address or raw sockaddr): UDP answers to send together
        self._client_texts: dict[bytes, str] = {}  # recv_batch's host key -> the client's address

    # -- counts and the query log -------------------------------------------

    @property
    def answers(self) -> dict[AnswerKind, int]:
        """Answers by kind (blocks of every reason together)."""
        folded = dict.fromkeys(AnswerKind, 0)
        for key, n in self.counts.copy().items():  # copy(): atomic, the loop may add a key
            folded[key[0] if key.__class__ is tuple else key] += n
        return folded

    def blocks(self) -> dict[str, int]:
        """Blocked answers by reason (``category=gambling min_age=18+``, ``rule=...``)."""
        return {key[1]: n for key, n in self.counts.copy().items() if key.__class__ is tuple}

    def attach_log(self, querylog) -> None:
        """Log every answer to `querylog` (None: stop logging). Empties the replay memo, whose
        entries carry their prebuilt log entries; call it again after a privacy change."""
        self.querylog = querylog
        self.replay.logs = None if querylog is None else self._logs
        self.replay.clear()

    def _logs(self, profile: str) -> bool:
        return self.querylog.privacy(profile) != "off"

    def _log(self, client: str, query: Query | None, answer: Answer, arrived: float) -> None:
        """One answer of the slow path to the query log (after it was sent)."""
        ql = self.querylog
        tag = self.replay.tags.get(client)
        profile = tag[0] if tag is not None else ""
        if ql.privacy(profile) == "off":
            return
        kind = answer.kind
        if query is None:
            if answer.wire is None:
                return  # garbage dropped unanswered: counted, not logged
            name: str | bytes = ""
            qtype = 0
        else:
            name, qtype = query.qname_key, query.qtype
        if kind is AnswerKind.RATE_LIMITED:
            self._log_limited(client, (profile, name, qtype))
            return
        reason = answer.reason
        upstream = reason[9:] if kind is AnswerKind.FORWARDED and reason.startswith("upstream ") else ""
        latency_ms = (time.monotonic() - arrived) * 1000.0 if arrived else 0.0
        ql.record(client, name, qtype, kind, reason, profile, self.devices.get(client, ""), upstream, latency_ms)

    def _log_limited(self, client: str, logged: tuple) -> None:
        """A rate-limited drop: logged at most once a second per client, so a flood of drops
        cannot push other clients' entries out of the log's bounded queue."""
        now = time.monotonic()
        last = self._limited_logged.get(client)
        if last is not None and now - last < RATE_LIMIT_LOG_SECONDS:
            return
        if len(self._limited_logged) >= MAX_LIMITED_CLIENTS:
            self._limited_logged.clear()
        self._limited_logged[client] = now
        profile, name, qtype = logged[:3]
        self.querylog.record(
            client, name, qtype, AnswerKind.RATE_LIMITED, "rate limit", profile, self.devices.get(client, "")
        )

    def _log_replay(self, client: str, logged: tuple) -> None:
        """A replayed answer outside the inlined UDP path (TCP, a refreshed entry)."""
        ql = self.querylog
        queue = ql.queue
        if len(queue) >= ql.queue_entries:
            ql.dropped += 1
            return
        queue.append((time.time(), client, self.devices.get(client, ""), logged))

    # -- start and stop ---------------------------------------------------

    async def start(self, listen: list[tuple[str, int]]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        try:
            for host, port in listen:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                try:
                    udp, tcp = self._socket_pair(family, host, port)
                except BindError as exc:
                    if not _no_ipv6(exc, host, listen):
                        raise
                    log.warning("IPv6 is off on this machine: not serving DNS on [%s]:%d", host, port)
                    continue
                port = udp.getsockname()[1]
                self._udp_socks.append(udp)
                if recv_batch is not None:
                    # One buffer per socket, for a whole burst of datagrams.
                    buffer = bytearray(READ_BURST * MAX_QUERY)
                    loop.add_reader(udp.fileno(), self._on_udp_batch, udp, buffer)
                else:
                    loop.add_reader(udp.fileno(), self._on_udp_readable, udp)
                server = await asyncio.start_server(self._serve_tcp, sock=tcp)
                self._tcp_servers.append(server)
                self.addresses += [("udp", host, port), ("tcp", host, port)]
        except BaseException:
            self.close()
            raise

    def _socket_pair(self, family: int, host: str, port: int) -> tuple[socket.socket, socket.socket]:
        """The UDP and TCP sockets of one address. For port 0 the TCP side takes the port the OS
        gave the UDP side; if that port is taken for TCP (e.g. by an outgoing connection), another
        is tried."""
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            udp = self._udp_socket(family, host, port)
            try:
                return udp, self._tcp_socket(family, host, udp.getsockname()[1])
            except BindError:
                udp.close()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _udp_socket(self, family: int, host: str, port: int) -> socket.socket:
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise BindError(_bind_message(host, port, exc)) from exc
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                # Past net.core.rmem_max, which only root or CAP_NET_ADMIN may do.
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.udp_receive_buffer)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.udp_receive_buffer)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            if granted < self.udp_receive_buffer:
                log.info(
                    "UDP receive buffer is %d KiB, not %d KiB (raise net.core.rmem_max to allow more; "
                    "systemd/99-safenest.conf does)",
                    granted // 1024,
                    self.udp_receive_buffer // 1024,
                )
            sock.bind((host, port))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            raise BindError(_bind_message(host, port, exc)) from exc

    def _tcp_socket(self, family: int, host: str, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            raise BindError(_bind_message(host, port, exc)) from exc

    def close(self) -> None:
        for sock in self._udp_socks:
            try:
                self._loop.remove_reader(sock.fileno())  # type: ignore[union-attr]
            except (ValueError, OSError, RuntimeError):
                pass
            sock.close()
        self._udp_socks.clear()
        for server in self._tcp_servers:
            server.close()
        self._tcp_servers.clear()

    # -- answering one query ----------------------------------------------

    def answer(
        self,
        data: bytes,
        client: str,
        transport: str,
        send: Callable[[Query, Answer], None],
        arrived: float = 0.0,
    ) -> Pending | None:
        """Parse, resolve and hand the answer to `send`, now or (returning a Pending) later.
        `arrived`: time.monotonic() when the packet was read (the logged latency)."""
        hit = self.replay.lookup(client, data[2:])
        if hit is not None and hit[0] > time.monotonic():
            verdict = self.gate.admit(client)
            if verdict == ADMITTED:
                self.counts[hit[7]] += 1
                send(None, Answer(data[:2] + hit[1], hit[2], hit[3]))  # type: ignore[arg-type]
                if hit[8] is not None:
                    self._log_replay(client, hit[8])
                return None
            if verdict == RATE_LIMITED:
                self.counts[AnswerKind.RATE_LIMITED] += 1
                if hit[8] is not None:
                    self._log_limited(client, hit[8])
                return None
            # Not allowed: the chain refuses it, as it would any other packet.
        return self._resolve(data, client, transport, send, arrived)

    def _resolve(
        self, data: bytes, client: str, transport: str, send, arrived: float
    ) -> Pending | None:
        """`answer` after the replay memo had nothing (the UDP path looked it up itself)."""
        try:
            query = Query(data, client, transport)
        except Malformed as exc:
            wire = error_reply(data, exc.rcode) if exc.rcode is not None and self.gate.allowed(client) else None
            self._deliver(data, client, transport, Answer(wire, AnswerKind.MALFORMED, str(exc)), send, None, arrived)
            return None
        if query.edns_version > 0:
            answer = Answer(reply(query, BADVERS), AnswerKind.MALFORMED, "EDNS version not supported")
            self._deliver(data, client, transport, answer, send, query, arrived)
            return None
        try:
            result = self.resolver(query)
        except Exception as error:  # not `exc`: mypyc gives a name one type per function
            result = self._servfail(query, error)
        if result.__class__ is Answer:
            self._deliver(data, client, transport, result, send, query, arrived)
            return None
        return result.then(lambda answer: self._finish(query, answer, send, arrived))  # type: ignore[union-attr]

    def _finish(self, query: Query, answer, send, arrived: float = 0.0) -> None:
        if not isinstance(answer, Answer):
            answer = self._servfail(query, answer)
        self._later = True  # UDP answers are queued and sent together (see _send_udp)
        try:
            self._deliver(query.data, query.client, query.transport, answer, send, query, arrived)
        finally:
            self._later = False

    def _servfail(self, query: Query, exc: BaseException) -> Answer:
        self._internal_error("internal error answering %s type %d from %s", (query.name, query.qtype, query.client), exc)
        return Answer(error_reply(query.data, SERVFAIL, query), AnswerKind.SERVFAIL, "internal error")

    def _internal_error(self, message: str, args: tuple, exc: BaseException) -> None:
        """Count our own exception and log it, at most ERROR_LOG_LIMIT times a window."""
        self.errors += 1
        # A bug hit by every query must not write a traceback per query to the SD card.
        now = time.monotonic()
        if now - self._error_window_start >= ERROR_LOG_WINDOW:
            if self._errors_unlogged:
                log.error("%d more internal errors were not logged", self._errors_unlogged)
            self._error_window_start, self._errors_logged, self._errors_unlogged = now, 0, 0
        if self._errors_logged < ERROR_LOG_LIMIT:
            self._errors_logged += 1
            log.error(message, *args, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            self._errors_unlogged += 1

    def _deliver(
        self,
        data: bytes,
        client: str,
        transport: str,
        answer: Answer,
        send,
        query: Query | None = None,
        arrived: float = 0.0,
    ) -> None:
        kind = answer.kind
        # count_key(), inlined: this runs for every answer of the slow path.
        self.counts[kind if kind is not AnswerKind.BLOCKED else (kind, answer.reason)] += 1
        if query is not None and answer.reuse_until:
            self.replay.remember(query, answer)
        if answer.wire is not None:
            send(query, answer)
        if kind is AnswerKind.FORWARDED and arrived:
            reason = answer.reason
            self.latency.observe(reason[9:] if reason.startswith("upstream ") else reason, time.monotonic() - arrived)
        if self.querylog is not None:
            try:
                self._log(client, query, answer, arrived)
            except Exception:  # the log must never cost an answer (it was sent already)
                log.exception("cannot hand an answer to the query log")

    # -- UDP ----------------------------------------------------------------

    def _on_udp_readable(self, sock: socket.socket) -> None:
        # The replay memo's case is inlined here: it is most of the traffic, and each
        # call and object saved is a measurable share of its ~1 µs. The memo is the
        # one of the client's profile (see replay.py): one more dict lookup.
        # The query log's entry is prebuilt in the memo entry (hit[8], None when not logged):
        # one tuple and one deque append here; the log's writer process does the rest.
        get_for = self.replay.get_for
        admit = self.gate.admit
        counts = self.counts
        devices = self.devices.get
        now = time.monotonic()
        ql = self.querylog
        if ql is not None:
            queue = ql.queue
            log_append = queue.append
            # Checked once per burst: the bound is passed by at most one burst of entries.
            log_room = len(queue) < ql.queue_entries
            wall = time.time()
        for _ in range(READ_BURST):
            try:
                data, address = sock.recvfrom(MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. an ICMP error queued on the socket
            client = address[0]
            try:
                get = get_for(client)
                hit = get(data[2:]) if get is not None else None
                if hit is not None:
                    if hit[0] <= now:
                        hit = self.replay.refresh(client, data[2:], hit, data, now)
                    if hit is not None:
                        verdict = admit(client)
                        if verdict == ADMITTED:
                            counts[hit[7]] += 1
                            try:
                                sock.sendto(data[:2] + hit[1], address)
                            except OSError:
                                self.send_failures += 1
                            logged = hit[8]
                            if logged is not None:
                                if log_room:
                                    log_append((wall, client, devices(client, ""), logged))
                                else:
                                    ql.dropped += 1
                            continue
                        if verdict == RATE_LIMITED:
                            counts[AnswerKind.RATE_LIMITED] += 1
                            if hit[8] is not None:
                                self._log_limited(client, hit[8])
                            continue
                        # Not allowed: the chain refuses it, as it would any other packet.
            except Exception as replay_error:  # our bug: counted and logged, the chain answers
                self._internal_error("replaying an answer to %s failed", (client,), replay_error)
            self._resolve(data, client, "udp", lambda q, a, s=sock, to=address: self._send_udp(s, q, a, to), now)

    def _on_udp_batch(self, sock: socket.socket, buffer: bytearray) -> None:
        """_on_udp_readable with the compiled _udpio: the same decisions, but the burst is read
        with one recvmmsg and the replayed answers go out with one sendmmsg at its end; the
        client's address is the kernel's sockaddr, its text looked up by its host part."""
        fd = sock.fileno()
        try:
            items = recv_batch(fd, buffer, READ_BURST, MAX_QUERY)
        except OSError:
            return  # e.g. an ICMP error queued on the socket (this read clears it)
        if not items:
            return
        get_for = self.replay.get_for
        admit = self.gate.admit
        counts = self.counts
        devices = self.devices.get
        texts = self._client_texts
        now = time.monotonic()
        ql = self.querylog
        if ql is not None:
            queue = ql.queue
            log_append = queue.append
            log_room = len(queue) < ql.queue_entries
            wall = time.time()
        out: list = []
        for i in range(0, len(items), 3):
            data = items[i]
            address = items[i + 1]
            client = texts.get(items[i + 2])
            if client is None:
                client = self._client_text(items[i + 2])
            try:
                get = get_for(client)
                hit = get(data[2:]) if get is not None else None
                if hit is not None:
                    if hit[0] <= now:
                        hit = self.replay.refresh(client, data[2:], hit, data, now)
                    if hit is not None:
                        verdict = admit(client)
                        if verdict == ADMITTED:
                            counts[hit[7]] += 1
                            out.append(data[:2] + hit[1])
                            out.append(address)
                            logged = hit[8]
                            if logged is not None:
                                if log_room:
                                    log_append((wall, client, devices(client, ""), logged))
                                else:
                                    ql.dropped += 1
                            continue
                        if verdict == RATE_LIMITED:
                            counts[AnswerKind.RATE_LIMITED] += 1
                            if hit[8] is not None:
                                self._log_limited(client, hit[8])
                            continue
                        # Not allowed: the chain refuses it, as it would any other packet.
            except Exception as replay_error:  # our bug: counted and logged, the chain answers
                self._internal_error("replaying an answer to %s failed", (client,), replay_error)
            self._resolve(data, client, "udp", lambda q, a, s=sock, to=address: self._send_udp(s, q, a, to), now)
        if out:
            self.send_failures += send_batch(fd, out)

    def _client_text(self, key: bytes) -> str:
        text = address_text(key)
        if len(self._client_texts) >= MAX_CLIENT_TEXTS:
            self._client_texts.clear()
        self._client_texts[key] = text
        return text

    def _send_udp(self, sock: socket.socket, query: Query | None, answer: Answer, address) -> None:
        """`address`: a (host, port) tuple, or a raw sockaddr from recv_batch (bytes)."""
        wire = answer.wire
        if query is not None and len(wire) > query.udp_size:  # type: ignore[arg-type]
            wire = truncated_reply(query)
        if self._later:
            # An answer that came later (from an upstream): the answers of one batch of
            # upstream responses go out back to back, so the client is woken once for them
            # rather than once per answer (a wake-up costs the sender system time).
            if not self._replies:
                self._loop.call_soon(self._send_replies)  # type: ignore[union-attr]
            self._replies.append((sock, wire, address))
            return
        if address.__class__ is bytes:
            self._send_batch(sock, [wire, address])
            return
        try:
            sock.sendto(wire, address)  # type: ignore[arg-type]
        except OSError:
            self.send_failures += 1

    def _send_batch(self, sock: socket.socket, items: list) -> None:
        """send_batch on `sock`, kept as the socket rather than its descriptor: once closed,
        its number may be another file's."""
        fd = sock.fileno()  # -1 once closed (the server stopping)
        self.send_failures += send_batch(fd, items) if fd >= 0 else len(items) // 2

    def _send_replies(self) -> None:
        replies, self._replies = self._replies, []
        batches: dict[socket.socket, list] = {}  # raw addresses: one sendmmsg per socket
        for sock, wire, address in replies:
            if address.__class__ is bytes:
                batch = batches.get(sock)
                if batch is None:
                    batch = batches[sock] = []
                batch.append(wire)
                batch.append(address)
                continue
            try:
                sock.sendto(wire, address)
            except OSError:  # also a socket closed meanwhile (the server stopping)
                self.send_failures += 1
        for sock, batch in batches.items():
            self._send_batch(sock, batch)

    # -- TCP (RFC 7766) -------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_open >= self.tcp_max_connections:
            writer.close()
            return
        self.tcp_open += 1
        peer = writer.get_extra_info("peername") or ("", 0)
        client = peer[0]
        waiting = 0  # answers still to come on this connection
        room = asyncio.Event()  # set whenever an awaited answer has been written

        def send(query: Query | None, answer: Answer) -> None:
            if not writer.is_closing():
                writer.write(U16.pack(len(answer.wire)) + answer.wire)  # type: ignore[arg-type, operator]

        def written(_) -> None:
            nonlocal waiting
            waiting -= 1
            room.set()

        try:
            while True:
                try:
                    async with asyncio.timeout(self.tcp_idle_timeout):
                        (length,) = U16.unpack(await reader.readexactly(2))
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                pending = self.answer(data, client, "tcp", send, time.monotonic())
                if pending is not None:
                    waiting += 1
                    pending.then(written)
                # Pipelining: answers may go out in any order; cap how many are awaited at once.
                while waiting >= TCP_PIPELINE:
                    room.clear()
                    await room.wait()
                await writer.drain()
            async with asyncio.timeout(self.tcp_idle_timeout):
                while waiting:
                    room.clear()
                    await room.wait()
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.tcp_open -= 1
            writer.close()
