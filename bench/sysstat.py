"""Readings from /proc: process CPU time, UDP receive-buffer drops, free ports."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (threads are already inside a pid's stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(root: int) -> float:
    """utime + stime, in seconds, of ``root`` and its descendants (all their threads)."""
    total = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return total / CLK_TCK


def udp_snmp() -> dict[str, int]:
    """The ``Udp:`` counters of /proc/net/snmp (RcvbufErrors, InErrors, ...)."""
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    names, values = lines[0][1:], lines[1][1:]
    return {k: int(v) for k, v in zip(names, values, strict=True)}


def udp_socket_drops(port: int, ip: str = "127.0.0.1") -> int:
    """Sum of the ``drops`` column of /proc/net/udp for sockets bound to ip:port."""
    a = socket.inet_aton(ip)
    local = f"{int.from_bytes(a, 'little'):08X}:{port:04X}"
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[1] == local:
                total += int(cols[-1])
    return total


def free_port(ip: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP on ``ip`` right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((ip, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((ip, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port found")


def udp_sockets() -> dict[int, tuple[int, int]]:
    """{socket inode: (local port, drops)} for every IPv4 UDP socket."""
    out = {}
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            out[int(cols[9])] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[-1]))
    return out


def socket_inodes(root: int) -> set[int]:
    """Inodes of the sockets that ``root`` and its descendants hold open."""
    inodes = set()
    for pid in descendants(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


@dataclass
class DropWatch:
    """Samples the per-socket ``drops`` of /proc/net/udp while a run goes on, so that
    receive-buffer drops can be put down to the server's sockets or to others (dnsperf's
    sockets, which are gone when the run ends). Costs about 0.1 ms of CPU per sample."""

    interval: float = 0.5
    base: dict[int, int] = field(default_factory=dict)
    seen: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self):
        self.base = {inode: drops for inode, (_, drops) in udp_sockets().items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for inode, (port, drops) in udp_sockets().items():
            self.seen[inode] = (port, drops)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self, server_pid: int, server_port: int) -> dict[str, int]:
        """Drops during the run: {"server": n, "other": n}."""
        self._stop.set()
        self._thread.join()
        self._sample()
        mine = socket_inodes(server_pid)
        out = {"server": 0, "other": 0}
        for inode, (port, drops) in self.seen.items():
            delta = drops - self.base.get(inode, 0)
            if delta > 0:
                key = "server" if inode in mine or port == server_port else "other"
                out[key] += delta
        return out


@dataclass
class Snapshot:
    cpu: float
    upstream_cpu: float
    rcvbuf_errors: int
    socket_drops: int
    in_errors: int


def snapshot(server_pid: int, upstream_pid: int, port: int) -> Snapshot:
    snmp = udp_snmp()
    return Snapshot(
        cpu=cpu_seconds(server_pid),
        upstream_cpu=cpu_seconds(upstream_pid),
        rcvbuf_errors=snmp.get("RcvbufErrors", 0),
        socket_drops=udp_socket_drops(port),
        in_errors=snmp.get("InErrors", 0),
    )
