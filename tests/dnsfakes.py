"""Real servers for tests: a scriptable fake upstream, dnsmasq, and SafeNest itself in a thread.

All of them bind 127.0.0.x on ports the OS picks and clean up after themselves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from agent.settings import load_settings

# ---------------------------------------------------------------- fake upstream


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it is true; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _socket_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP socket on a port the OS picks and a TCP socket on the same port. That port may
    be taken for TCP (another test's connection): then another is tried."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for attempt in range(20):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
            return udp, tcp
        except OSError:
            udp.close()
            tcp.close()
            if attempt == 19:
                raise
    raise AssertionError("unreachable")


class FakeUpstream:
    """A DNS server on UDP and TCP whose behaviour a test scripts.

    `handler(request: dns.message.Message, transport) -> Message | bytes | None | list`;
    a list sends each item (bytes or Message) in turn; None stays silent.
    Builders: `.answer(name, rdtype, *rdatas, ttl=)` adds canned records.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.records: dict[tuple[str, str], list[dns.rrset.RRset]] = {}
        self.nxdomain: set[str] = set()
        self.handler: Callable | None = None
        self.delay = 0.0
        self.silent = False
        self.truncate_udp = False
        self.queries: list[tuple[str, dns.message.Message]] = []
        self.udp, self.tcp = _socket_pair(host)
        self.port = self.udp.getsockname()[1]
        self.tcp.listen(16)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def answer(self, name: str, rdtype: str, *rdatas: str, ttl: int = 300) -> FakeUpstream:
        rrset = dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas)
        self.records.setdefault((name.lower().rstrip("."), rdtype.upper()), []).append(rrset)
        return self

    def count(self, name: str) -> int:
        name = name.lower().rstrip(".")
        return sum(1 for _, q in self.queries if q.question[0].name.to_text().lower().rstrip(".") == name)

    def respond(self, request: dns.message.Message, transport: str):
        if self.handler is not None:
            return self.handler(request, transport)
        if self.silent:
            return None
        response = dns.message.make_response(request)
        question = request.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if name in self.nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(
                dns.rrset.from_text("test.", 60, "IN", "SOA", "ns.test. host.test. 1 3600 600 86400 30")
            )
            return response
        for rrset in self.records.get((name, rdtype), []):
            copy = dns.rrset.RRset(question.name, rrset.rdclass, rrset.rdtype)
            copy.update(rrset)
            copy.ttl = rrset.ttl
            response.answer.append(copy)
        if not response.answer:
            response.authority.append(
                dns.rrset.from_text("test.", 60, "IN", "SOA", "ns.test. host.test. 1 3600 600 86400 30")
            )
        if transport == "udp" and self.truncate_udp:
            response.answer = []
            response.authority = []
            response.flags |= dns.flags.TC
        return response

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._reply_udp, args=(data, peer), daemon=True).start()

    def _reply_udp(self, data: bytes, peer) -> None:
        for wire in self._responses(data, "udp"):
            try:
                self.udp.sendto(wire, peer)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle_tcp, args=(conn,), daemon=True).start()

    def _handle_tcp(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if not head:
                        return
                    data = _recv_exact(conn, struct.unpack("!H", head)[0])
                    for wire in self._responses(data, "tcp"):
                        conn.sendall(struct.pack("!H", len(wire)) + wire)
            except OSError:
                return

    def _responses(self, data: bytes, transport: str) -> list[bytes]:
        try:
            request = dns.message.from_wire(data)
        except Exception:
            return []
        self.queries.append((transport, request))
        if self.delay:
            time.sleep(self.delay)
        result = self.respond(request, transport)
        if result is None:
            return []
        items = result if isinstance(result, list) else [result]
        return [item if isinstance(item, bytes) else _to_wire(item, transport) for item in items]

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self.udp.close()
        self.tcp.close()


def _to_wire(message: dns.message.Message, transport: str) -> bytes:
    """Like a real server: over UDP, an answer too big for the asker's buffer is sent truncated."""
    try:
        return message.to_wire(max_size=65535 if transport == "tcp" else 0)
    except dns.exception.TooBig:
        message.answer, message.authority, message.additional = [], [], []
        message.flags |= dns.flags.TC
        return message.to_wire()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


# ---------------------------------------------------------------- dnsmasq


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on both UDP and TCP (for programs that cannot be told to use port 0)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class Dnsmasq:
    """dnsmasq as an authoritative-ish upstream with the records a test gives it."""

    def __init__(self, tmp: Path, lines: list[str], host: str = "127.0.0.1"):
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not os.path.exists(binary):
            raise RuntimeError("dnsmasq is not installed (Debian package dnsmasq-base)")
        self.host = host
        self.port = free_port(host)
        conf = tmp / f"dnsmasq-{self.port}.conf"
        conf.write_text(
            "\n".join(
                [
                    "no-resolv",
                    "no-hosts",
                    "no-poll",
                    "bind-interfaces",
                    f"listen-address={host}",
                    f"port={self.port}",
                    "cache-size=0",
                    "local=/test/",
                    *lines,
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-k", f"--conf-file={conf}", "--pid-file=", "--user=root", "--log-facility=-"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.address = f"{host}:{self.port}"
        _wait_for_dns(host, self.port, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def _wait_for_dns(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    query = dns.message.make_query("probe.invalid.", "A").to_wire()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err}")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(query, (host, port))
                s.recvfrom(4096)
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"no DNS answer from {host}:{port} within {timeout} s")


# ---------------------------------------------------------------- SafeNest in a thread


class RunningSafeNest:
    """The real Agent with its real sockets, on its own event loop in a background thread.

    No admin server unless the test asks for one (``admin_listen="127.0.0.1:0"``): then
    `admin_url` is where it listens."""

    def __init__(self, data_dir: Path, overrides: dict, environ: dict | None = None):
        from agent.app import Agent

        overrides = {"data": str(data_dir), "admin_listen": "off", **overrides}
        settings = load_settings(None, environ=environ or {}, overrides=overrides)
        self.loop = asyncio.new_event_loop()
        self.agent = Agent(settings)
        self.loop.run_until_complete(self.agent.start())
        if self.agent._reloading is not None:
            self.loop.run_until_complete(self.agent._reloading)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        proto, self.host, self.port = self.agent.server.addresses[0]

    @property
    def admin_url(self) -> str:
        admin = self.agent.admin
        if admin is None:
            raise RuntimeError("this SafeNest has no admin server (pass admin_listen=)")
        return f"http://{admin.address}"

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop (for inspecting or changing state safely)."""

        async def wrapper():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
