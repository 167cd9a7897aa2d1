"""Memory of the real serving process (`safenest run`) with a large blocklist, end to end.

    .venv/bin/python -m bench.memory [--domains 1000000] [--queries 200000] [--repeat 2]

For each repeat, three fresh SafeNest processes are measured with the same query load:

* **empty**: a list of 1 domain;
* **sample**: only the listed names that the query file asks for (the same blocked names,
  so the same per-name state: blocked-decision memo, replayed answers);
* **full**: ``--domains`` random, distinct, realistic domains (the generator of
  ``bench/index_bench.py``) split over three list files (gambling, adult, malware).

Each run: start ``safenest run`` in its own session on a free loopback port, forwarding to
a trivial local upstream (answers every A query with 192.0.2.1, TTL 1 day); time the start
("SafeNest is running", first blocked answer, the compile time the log reports, the build
child's peak RSS); read /proc/PID/status and smaps_rollup after start and after each of two
bounded dnsperf passes over the query file (``-n 1 -l 60``). The file has ``--queries``
lines: half are distinct listed names spread evenly over the whole list (so every page of
the index is touched), half are cache hits on 1,000 unlisted names, shuffled together.
Per-domain cost, after the second pass: (Rss full - Rss sample) / (domains - sample) is the
headline (with the empty list, the listed half of the load is forwarded and cached instead of
blocked, so that baseline holds different per-name state); (Rss full - Rss empty) / domains
and the Rss of the lists.idx mapping alone are printed too.

The full run then reloads ``--reloads`` times: append 3 new names to gambling.txt, reset the
process's VmHWM (clear_refs 5), send SIGHUP, and every 20 ms sample VmRSS of the serving
process and of its children until the log says "lists in force", while a query loop keeps
asking (one query at a time, 1 s timeout) and counts timeouts. After each reload: a new name
must be blocked, RSS is read again, and one more load pass checks that RSS comes back to
the steady state (the old index unmapped).

Targets (for 1,000,000 domains): <= 32 B/domain resident, compile < 5 s, serving-process
reload peak <= 1.5x steady. Writes bench/results/memory.json. Exit status: 0 when the
measurement ran (targets PASS or FAIL), 1 when a correctness check failed (a listed or newly
added name not blocked, a query unanswered during a reload), 2 when the harness could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import dnsperf, dnswire
from .index_bench import make_domain
from .servers import Proc, version, which
from .sysstat import descendants, free_port

ROOT = Path(__file__).resolve().parent.parent
TARGET_BYTES_PER_DOMAIN = 32
TARGET_COMPILE_SECONDS = 5.0
TARGET_RELOAD_RATIO = 1.5
SAMPLE_INTERVAL = 0.02
HIT_NAMES = 1_000
NEW_NAMES_PER_RELOAD = 3
UPSTREAM_TTL = 86_400
# (category file, share of the domains)
LIST_FILES = (("gambling", 0.5), ("adult", 0.3), ("malware", 0.2))
# The three lists measured with the same query load: 1 domain, only the listed names that the
# query file asks for, and every generated domain.
KINDS = ("empty", "sample", "full")


# -- the trivial upstream (a separate process, its own session) --------------------------------


def serve_upstream(port: int, lifetime: float) -> int:
    """Answer every query: A -> 192.0.2.1, anything else NOERROR with no answer."""
    parent = os.getppid()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", port))
    s.settimeout(1.0)
    answer_a = (
        b"\xc0\x0c\x00\x01\x00\x01" + struct.pack("!IH", UPSTREAM_TTL, 4) + bytes([192, 0, 2, 1])
    )
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline and os.getppid() == parent:
        try:
            data, addr = s.recvfrom(4096)
        except TimeoutError:
            continue
        n = len(data)
        if n < 17 or data[2] & 0x80:
            continue
        pos = 12
        while pos < n and data[pos]:
            if data[pos] & 0xC0:
                break
            pos += 1 + data[pos]
        qend = pos + 5
        if pos >= n or data[pos] or qend > n:
            continue
        is_a = data[pos + 1 : pos + 3] == b"\x00\x01"
        header = (
            data[:2]
            + bytes([0x80 | (data[2] & 0x01), 0x80])
            + struct.pack("!HHHH", 1, 1 if is_a else 0, 0, 0)
        )
        try:
            s.sendto(header + data[12:qend] + (answer_a if is_a else b""), addr)
        except OSError:
            pass
    return 0


# -- /proc readings ---------------------------------------------------------------------------


def status_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile, ...); {} if gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("Vm", "Rss")):
                    key, _, rest = line.partition(":")
                    parts = rest.split()
                    if parts and parts[0].isdigit():
                        out[key] = int(parts[0])
    except OSError:
        return {}
    return out


def rollup_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0])
    except OSError:
        pass
    return out


def index_mappings(pid: int) -> list[dict]:
    """Every mapping of a lists.idx file in /proc/PID/smaps: path, size and Rss (kB)."""
    out = []
    current = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                    path = head[5].strip() if len(head) == 6 else ""
                    current = {"path": path, "size": 0, "rss": 0} if "lists.idx" in path else None
                    if current is not None:
                        out.append(current)
                elif current is not None and line.startswith(("Rss:", "Size:")):
                    current["rss" if line.startswith("Rss") else "size"] = int(line.split()[1])
    except OSError:
        pass
    return out


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory(pid: int) -> dict:
    st = status_kib(pid)
    ro = rollup_kib(pid)
    maps = index_mappings(pid)
    return {
        "vmrss_kib": st.get("VmRSS", 0),
        "vmhwm_kib": st.get("VmHWM", 0),
        "rss_anon_kib": st.get("RssAnon", 0),
        "rss_file_kib": st.get("RssFile", 0),
        "rss_kib": ro.get("Rss", 0),
        "pss_kib": ro.get("Pss", 0),
        "shared_kib": ro.get("Shared_Clean", 0) + ro.get("Shared_Dirty", 0),
        "private_kib": ro.get("Private_Clean", 0) + ro.get("Private_Dirty", 0),
        "anonymous_kib": ro.get("Anonymous", 0),
        "index_rss_kib": sum(m["rss"] for m in maps),
        "index_maps": [
            {"path": m["path"], "size_kib": m["size"], "rss_kib": m["rss"]} for m in maps
        ],
    }


class ChildWatch:
    """Peak VmHWM / VmRSS of the index builder children (after exec: before it, a forked
    child is a copy of the server and its figures are the server's)."""

    def __init__(self, root: int):
        self.root = root
        self.children: dict[int, dict] = {}

    def sample(self) -> None:
        for pid in descendants(self.root)[1:]:
            info = self.children.get(pid)
            if info is None:
                cmd = cmdline(pid)
                if "agent.index.build" not in cmd:
                    continue
                info = self.children[pid] = {
                    "pid": pid,
                    "cmd": cmd,
                    "hwm_kib": 0,
                    "rss_kib": 0,
                    "first_seen": time.monotonic(),
                    "samples": 0,
                }
            st = status_kib(pid)
            if st:
                info["hwm_kib"] = max(info["hwm_kib"], st.get("VmHWM", 0))
                info["rss_kib"] = max(info["rss_kib"], st.get("VmRSS", 0))
                info["samples"] += 1
                info["last_seen"] = time.monotonic()

    def peak_kib(self) -> int:
        return max((c["hwm_kib"] for c in self.children.values()), default=0)


class LogTail:
    """New lines of a log file, read on demand, each with the time it was first seen."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines: list[tuple[float, str]] = []

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        now = time.monotonic()
        new = [c.decode(errors="replace") for c in chunks]
        self.lines += [(now, line) for line in new]
        return new


_COMPILED = re.compile(r"compiled (\d+) names from (\d+) lists in .* in ([0-9.]+) s")
_IN_FORCE = re.compile(r"lists in force: (\d+) names")


# -- the data -----------------------------------------------------------------------------------


def generate(src: Path, n: int, listed_sample: int, seed: int) -> tuple[list[str], float]:
    """Write the list files into ``src``; return ``listed_sample`` listed names spread evenly
    over the list, and the mean domain length."""
    rng = random.Random(seed)
    src.mkdir(parents=True, exist_ok=True)
    handles = {cat: open(src / f"{cat}.txt", "w") for cat, _ in LIST_FILES}  # noqa: SIM115
    cum, acc = [], 0.0
    for cat, share in LIST_FILES:
        acc += share
        cum.append((acc, cat))
    step = max(1, n // max(1, listed_sample))
    sample: list[str] = []
    total = 0
    try:
        for h in handles.values():
            h.write("# generated by bench/memory.py\n")
        for i in range(n):
            d = make_domain(rng, i)
            total += len(d)
            r = rng.random()
            cat = next((c for limit, c in cum if r < limit), LIST_FILES[0][0])
            handles[cat].write(d + "\n")
            if i % step == 0 and len(sample) < listed_sample:
                sample.append(d)
    finally:
        for h in handles.values():
            h.close()
    return sample, total / max(1, n)


def write_empty_lists(dst: Path) -> str:
    dst.mkdir(parents=True, exist_ok=True)
    name = "the-only-listed.example"
    (dst / "gambling.txt").write_text(f"# baseline: one domain\n{name}\n")
    return name


def write_sample_lists(dst: Path, listed: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "gambling.txt").write_text(
        "# baseline: only the listed names of the query file\n" + "".join(n + "\n" for n in listed)
    )


def hit_names() -> list[str]:
    # TLD .test is never generated, so none of these is listed.
    return [f"h{i:05d}.safenest-bench.test" for i in range(HIT_NAMES)]


def write_query_file(path: Path, listed: list[str], queries: int, seed: int) -> None:
    rng = random.Random(seed + 7)
    hits = hit_names()
    n_listed = min(len(listed), queries // 2)
    lines = listed[:n_listed] + [hits[i % len(hits)] for i in range(queries - n_listed)]
    rng.shuffle(lines)
    path.write_text("".join(f"{name} A\n" for name in lines))


def is_blocked(name: str, port: int, timeout: float = 1.0) -> bool | None:
    """True if SafeNest answers 0.0.0.0, False for another answer, None for no answer."""
    data = dnswire.resolve(name, port, timeout=timeout)
    if data is None:
        return None
    return dnswire.a_records(data) == ["0.0.0.0"]


# -- one SafeNest run ---------------------------------------------------------------------------


class QueryLoop(threading.Thread):
    """One query at a time (1 s timeout) until stopped; counts answers and timeouts."""

    def __init__(self, port: int, listed: list[str], max_seconds: float):
        super().__init__(daemon=True)
        self.port = port
        self.listed = listed
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.sent = self.answered = self.timeouts = self.listed_not_blocked = 0
        self.max_latency = 0.0
        self.max_latency_at = 0.0
        self.timeout_at: list[float] = []

    def run(self) -> None:
        hits = hit_names()
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            listed = i % 2 == 0
            name = self.listed[(i // 2) % len(self.listed)] if listed else hits[i % len(hits)]
            i += 1
            t = time.monotonic()
            data = dnswire.resolve(name, self.port, timeout=1.0)
            dt = time.monotonic() - t
            self.sent += 1
            if data is None:
                self.timeouts += 1
                self.timeout_at.append(t)
                continue
            self.answered += 1
            if dt > self.max_latency:
                self.max_latency, self.max_latency_at = dt, t
            if listed and dnswire.a_records(data) != ["0.0.0.0"]:
                self.listed_not_blocked += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


class Run:
    def __init__(
        self,
        args,
        workdir: Path,
        kind: str,
        lists_src: Path | None,
        probe: str,
        listed: list[str],
        qfile: Path,
        upstream_port: int,
    ):
        self.args = args
        self.dir = workdir
        self.kind = kind
        self.probe = probe  # a listed name
        self.listed = listed
        self.qfile = qfile
        self.upstream_port = upstream_port
        self.lists = workdir / "lists"
        if kind == "empty":
            write_empty_lists(self.lists)
        elif kind == "sample":
            write_sample_lists(self.lists, listed)
        else:
            assert lists_src is not None
            shutil.copytree(lists_src, self.lists)
        self.port = free_port()
        self.proc: Proc | None = None
        self.out: dict = {"kind": kind}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv_env(self) -> tuple[list[str], dict]:
        argv = [
            self.args.safenest,
            "run",
            "--data",
            str(self.dir / "var"),
            "--dns",
            f"127.0.0.1:{self.port}",
            "--upstream",
            f"127.0.0.1:{self.upstream_port}",
        ]
        env = dict(os.environ)
        env.update(
            {
                "SAFENEST_BLOCKLISTS_DIR": str(self.lists),
                "SAFENEST_RATE_LIMIT_QUERIES": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return argv, env

    def start(self) -> None:
        argv, env = self.argv_env()
        self.out["command"] = argv
        t0 = time.monotonic()
        self.proc = Proc("safenest", argv, self.dir, env)
        self.log = LogTail(self.proc.log_path)
        children = ChildWatch(self.pid)
        t_running = t_blocked = None
        compile_s = compiled = None
        peak_rss = 0
        deadline = t0 + self.args.start_timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"safenest exited during start:\n{self.proc.tail()}")
            for line in self.log.poll():
                if t_running is None and "SafeNest is running" in line:
                    t_running = time.monotonic() - t0
                m = _COMPILED.search(line)
                if m and compile_s is None:
                    compiled, compile_s = int(m.group(1)), float(m.group(3))
            children.sample()
            peak_rss = max(peak_rss, status_kib(self.pid).get("VmRSS", 0))
            if t_blocked is None:
                got = is_blocked(self.probe, self.port, timeout=0.05)
                if got:
                    t_blocked = time.monotonic() - t0
                elif got is False:
                    raise RuntimeError(f"{self.probe} (listed) was answered but not blocked")
            if t_running is not None and t_blocked is not None:
                break
            time.sleep(SAMPLE_INTERVAL)
        else:
            raise RuntimeError(
                f"safenest not ready within {self.args.start_timeout:.0f} s "
                f"(running: {t_running}, first block: {t_blocked}):\n{self.proc.tail()}"
            )
        self.out.update(
            {
                "start_to_running_s": t_running,
                "start_to_first_block_s": t_blocked,
                "startup_compile_s": compile_s,
                "startup_compiled_names": compiled,
                "startup_build_child_peak_kib": children.peak_kib(),
                "startup_build_children": list(children.children.values()),
                "startup_peak_vmrss_kib": peak_rss,
            }
        )
        time.sleep(1.0)
        self.out["after_start"] = memory(self.pid)

    def load(self, tag: str) -> dict:
        res = dnsperf.run(
            self.port,
            self.qfile,
            self.dir,
            seconds=self.args.load_seconds,
            clients=10,
            outstanding=100,
            passes=1,
            verbose=False,
            tag=f"{self.kind}-{tag}",
        )
        time.sleep(1.0)  # let forwarded queries finish and the loop go idle
        return {
            "dnsperf": " ".join(res.argv),
            "sent": res.sent,
            "completed": res.completed,
            "lost": res.lost,
            "qps": res.qps,
            "rcodes": res.rcodes,
            "end_of_file": res.end_of_file,
            "memory": memory(self.pid),
        }

    def reload(self, r: int) -> dict:
        new = [f"reload{r}-{j}.safenest-new.test" for j in range(NEW_NAMES_PER_RELOAD)]
        before_unblocked = [is_blocked(n, self.port) for n in new]
        with open(self.lists / "gambling.txt", "a") as f:
            f.write("".join(n + "\n" for n in new))
        steady = memory(self.pid)
        self.log.poll()
        hwm_reset = reset_hwm(self.pid)
        children = ChildWatch(self.pid)
        loop = QueryLoop(self.port, self.listed, self.args.reload_timeout + 10)
        loop.start()
        time.sleep(0.2)  # the loop is running before the signal
        samples: list[tuple[float, int, int]] = []  # (t, server VmRSS, children VmRSS)
        t0 = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        in_force = compile_s = None
        deadline = t0 + self.args.reload_timeout
        names = None
        try:
            while time.monotonic() < deadline and self.proc.alive():
                children.sample()
                rss = status_kib(self.pid).get("VmRSS", 0)
                kids = sum(status_kib(c).get("VmRSS", 0) for c in children.children)
                samples.append((time.monotonic() - t0, rss, kids))
                for line in self.log.poll():
                    m = _COMPILED.search(line)
                    if m:
                        compile_s = float(m.group(3))
                    m = _IN_FORCE.search(line)
                    if m:
                        in_force = time.monotonic() - t0
                        names = int(m.group(1))
                if in_force is not None:
                    break
                time.sleep(SAMPLE_INTERVAL)
            hwm = status_kib(self.pid).get("VmHWM", 0)
            right_after = memory(self.pid)
            blocked_after = [is_blocked(n, self.port) for n in new]
            time.sleep(0.5)
        finally:
            loop.stop()
        after_load = self.load(f"after-reload-{r}")
        peak_sampled = max((s[1] for s in samples), default=0)
        peak = max(peak_sampled, hwm if hwm_reset else 0)
        return {
            "new_names": new,
            "new_names_blocked_before": before_unblocked,
            "new_names_blocked_after": blocked_after,
            "hwm_reset": hwm_reset,
            "wall_s": in_force,
            "compile_s": compile_s,
            "names_in_force": names,
            "steady": steady,
            "server_peak_sampled_kib": peak_sampled,
            "server_vmhwm_kib": hwm if hwm_reset else None,
            "server_peak_kib": peak,
            "ratio": peak / steady["vmrss_kib"] if steady["vmrss_kib"] else None,
            "children_peak_sum_sampled_kib": max((s[2] for s in samples), default=0),
            "child_peak_kib": children.peak_kib(),
            "children": list(children.children.values()),
            "samples": len(samples),
            "loop": {
                "sent": loop.sent,
                "answered": loop.answered,
                "timeouts": loop.timeouts,
                "listed_not_blocked": loop.listed_not_blocked,
                "max_latency_ms": loop.max_latency * 1000,
                "max_latency_at_s": round(loop.max_latency_at - t0, 3),
                "timeouts_at_s": [round(t - t0, 3) for t in loop.timeout_at],
            },
            "right_after": right_after,
            "after_load": after_load,
            "rss_timeline": [(round(t, 3), a, b) for t, a, b in samples],
        }

    def measure(self) -> dict:
        self.start()
        self.out["load1"] = self.load("load1")
        self.out["load2"] = self.load("load2")
        self.out["reloads"] = []
        if self.kind == "full":
            for r in range(1, self.args.reloads + 1):
                self.out["reloads"].append(self.reload(r))
        return self.out

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.out["log_tail"] = self.proc.tail(40)


# -- driver -------------------------------------------------------------------------------------


def wait_for_other_benchmarks(limit: float) -> float:
    """Wait (at most ``limit`` s) while bench.run / bench.index_bench runs; the time waited."""
    t = time.monotonic()
    me = os.getpid()
    while time.monotonic() - t < limit:
        out = subprocess.run(
            ["pgrep", "-f", r"bench[./](run|index_bench)"], capture_output=True, text=True
        )
        others = [p for p in out.stdout.split() if p.isdigit() and int(p) != me]
        if not others:
            return time.monotonic() - t
        print(f"waiting for other benchmarks to finish (pids {' '.join(others)}) ...", flush=True)
        time.sleep(10)
    print(f"other benchmarks still running after {limit:.0f} s: measuring anyway", flush=True)
    return time.monotonic() - t


def dnsperf_version() -> str:
    try:
        out = subprocess.run(
            [which("dnsperf") or "dnsperf", "-h"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "dnsperf unknown"
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("Version"):
            return "dnsperf " + line.split()[-1]
    return "dnsperf unknown"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def secs(s) -> str:
    return "-" if s is None else f"{s:.2f} s"


def summarize(runs: list[dict], n: int) -> dict:
    fulls = [r["full"] for r in runs]
    per = []
    for r in runs:
        e, s, f = (r[k]["load2"]["memory"] for k in KINDS)
        n_full = r["full"]["startup_compiled_names"] or n
        n_sample = r["sample"]["startup_compiled_names"] or 0
        extra = max(1, n_full - n_sample)
        per.append(
            {
                "domains": n_full,
                "sample_domains": n_sample,
                # Headline: the cost of the domains that the load does not ask for, with the same
                # per-name state (blocked-decision memo, replayed answers) on both sides.
                "marginal": (f["rss_kib"] - s["rss_kib"]) * 1024 / extra,
                "marginal_anon": (f["rss_anon_kib"] - s["rss_anon_kib"]) * 1024 / extra,
                "marginal_pss": (f["pss_kib"] - s["pss_kib"]) * 1024 / extra,
                "vs_empty": (f["rss_kib"] - e["rss_kib"]) * 1024 / n_full,
                "vs_empty_anon": (f["rss_anon_kib"] - e["rss_anon_kib"]) * 1024 / n_full,
                "index": f["index_rss_kib"] * 1024 / n_full,
                "after_start_vs_empty": (
                    r["full"]["after_start"]["rss_kib"] - r["empty"]["after_start"]["rss_kib"]
                )
                * 1024
                / n_full,
            }
        )
    reloads = [x for f in fulls for x in f["reloads"]]
    out = {
        key + "_bytes_per_domain": median([p[key] for p in per])
        for key in (
            "marginal",
            "marginal_anon",
            "marginal_pss",
            "vs_empty",
            "vs_empty_anon",
            "index",
            "after_start_vs_empty",
        )
    }
    out.update(
        {
            "per_run": per,
            "bytes_per_domain": out["marginal_bytes_per_domain"],
            "startup_compile_s": median([f["startup_compile_s"] for f in fulls]),
            "startup_compile_s_max": max(
                (f["startup_compile_s"] or 0 for f in fulls), default=None
            ),
            "reload_compile_s": median([x["compile_s"] for x in reloads]),
            "reload_compile_s_max": max((x["compile_s"] or 0 for x in reloads), default=None),
            "reload_wall_s": median([x["wall_s"] for x in reloads]),
            "reload_wall_s_max": max((x["wall_s"] or 0 for x in reloads), default=None),
            "reload_ratio": median([x["ratio"] for x in reloads]),
            "reload_ratio_max": max((x["ratio"] or 0 for x in reloads), default=None),
            "reload_ratio_runs": [x["ratio"] for x in reloads],
            "reload_timeouts": sum(x["loop"]["timeouts"] for x in reloads),
            "reload_listed_not_blocked": sum(x["loop"]["listed_not_blocked"] for x in reloads),
            "reload_queries": sum(x["loop"]["sent"] for x in reloads),
            "new_names_blocked": all(
                all(b is True for b in x["new_names_blocked_after"]) for x in reloads
            ),
            "reloads_completed": bool(reloads) and all(x["wall_s"] is not None for x in reloads),
        }
    )
    for kind in KINDS:
        out[f"{kind}_rss_kib"] = median([r[kind]["load2"]["memory"]["rss_kib"] for r in runs])
    return out


def print_tables(runs: list[dict], summary: dict, args, meta: dict) -> None:
    n = args.domains

    def fmt_runs(vals, f) -> str:
        med = median(vals)
        if med is None:
            return "-"
        each = " / ".join(f(v) if v is not None else "-" for v in vals)
        return f"{f(med)}" + (f" ({each})" if len(vals) > 1 else "")

    def col(kind: str, get, f) -> str:
        vals = []
        for r in runs:
            try:
                vals.append(get(r[kind]))
            except (KeyError, TypeError, IndexError):
                vals.append(None)
        return fmt_runs(vals, f)

    def count(v) -> str:
        return f"{v:,.0f}"

    rows = [
        ("names in the list (log)", lambda x: x["startup_compiled_names"], count),
        ('start -> "SafeNest is running"', lambda x: x["start_to_running_s"], secs),
        ("start -> first blocked answer", lambda x: x["start_to_first_block_s"], secs),
        ("compile at start (log)", lambda x: x["startup_compile_s"], secs),
        ("build child peak RSS (VmHWM)", lambda x: x["startup_build_child_peak_kib"] or None, mib),
        ("server VmRSS peak during start", lambda x: x["startup_peak_vmrss_kib"], mib),
        ("Rss after start", lambda x: x["after_start"]["rss_kib"], mib),
        ("Rss after load pass 1", lambda x: x["load1"]["memory"]["rss_kib"], mib),
        ("Rss after load pass 2 (steady)", lambda x: x["load2"]["memory"]["rss_kib"], mib),
        ("  lists.idx mapping", lambda x: x["load2"]["memory"]["index_rss_kib"], mib),
        ("  RssAnon", lambda x: x["load2"]["memory"]["rss_anon_kib"], mib),
        ("  RssFile", lambda x: x["load2"]["memory"]["rss_file_kib"], mib),
        ("  Pss", lambda x: x["load2"]["memory"]["pss_kib"], mib),
        ("  Shared (clean + dirty)", lambda x: x["load2"]["memory"]["shared_kib"], mib),
        ("load pass 2: QPS", lambda x: x["load2"]["qps"], count),
        ("load passes: lost queries", lambda x: x["load1"]["lost"] + x["load2"]["lost"], count),
    ]
    heads = {
        "empty": "empty list (1 domain)",
        "sample": "queried names only",
        "full": f"{n:,} domains",
    }
    cells = [[label] + [col(k, get, f) for k in KINDS] for label, get, f in rows]
    widths = [max(len(c[i]) for c in [["", *heads.values()], *cells]) + 2 for i in range(4)]
    print()
    print(
        f"SafeNest serving process: same load on three lists ({args.queries:,} queries a pass, "
        f"{len(runs)} repeat(s)); median (each run)"
    )
    print("  " + "".join(h.ljust(w) for h, w in zip(["", *heads.values()], widths, strict=True)))
    for c in cells:
        print("  " + "".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())

    reloads = [x for r in runs for x in r["full"]["reloads"]]

    def rl(get, f) -> str:
        vals = []
        for x in reloads:
            try:
                vals.append(get(x))
            except (KeyError, TypeError, ValueError):
                vals.append(None)
        return fmt_runs(vals, f)

    print()
    print(f"Reload (SIGHUP) with {n:,} domains: {len(reloads)} reloads; median (each reload)")
    rrows = [
        ('wall, SIGHUP -> "lists in force"', rl(lambda x: x["wall_s"], secs)),
        ("compile (log, child's timer)", rl(lambda x: x["compile_s"], secs)),
        ("server VmRSS before (steady)", rl(lambda x: x["steady"]["vmrss_kib"], mib)),
        ("server peak (VmHWM after reset, 20 ms samples)", rl(lambda x: x["server_peak_kib"], mib)),
        ("server peak / steady", rl(lambda x: x["ratio"], lambda v: f"{v:.2f}x")),
        ("server Rss right after", rl(lambda x: x["right_after"]["rss_kib"], mib)),
        (
            "server Rss after reload + load pass",
            rl(lambda x: x["after_load"]["memory"]["rss_kib"], mib),
        ),
        (
            "lists.idx mappings after reload + load",
            rl(lambda x: len(x["after_load"]["memory"]["index_maps"]), count),
        ),
        ("build child peak RSS (VmHWM)", rl(lambda x: x["child_peak_kib"] or None, mib)),
        (
            "server + child VmRSS peak (sampled)",
            rl(lambda x: max(a + b for _, a, b in x["rss_timeline"]), mib),
        ),
        ("queries during reload", rl(lambda x: x["loop"]["sent"], count)),
        ("  of which timed out", rl(lambda x: x["loop"]["timeouts"], count)),
        (
            "max query latency during reload",
            rl(lambda x: x["loop"]["max_latency_ms"], lambda v: f"{v:.1f} ms"),
        ),
        ("new names blocked after reload", "yes" if summary["new_names_blocked"] else "NO"),
    ]
    w2 = max(len(r[0]) for r in rrows) + 2
    for label, value in rrows:
        print(f"  {label:<{w2}}{value}")

    def b(key: str) -> str:
        v = summary[key + "_bytes_per_domain"]
        return "-" if v is None else f"{v:.1f} B"

    def each(key: str) -> str:
        return ", ".join(f"{p[key]:.1f}" for p in summary["per_run"])

    print()
    print("Resident bytes per domain (after load pass 2; median, [each run])")
    prow = [
        ("(full - queried names only) / extra domains", b("marginal"), each("marginal")),
        ("  of which RssAnon", b("marginal_anon"), each("marginal_anon")),
        ("  Pss, same difference", b("marginal_pss"), each("marginal_pss")),
        ("(full - empty) / domains", b("vs_empty"), each("vs_empty")),
        ("  of which RssAnon", b("vs_empty_anon"), each("vs_empty_anon")),
        ("lists.idx mapping alone / domains", b("index"), each("index")),
        (
            "(full - empty) / domains, right after start",
            b("after_start_vs_empty"),
            each("after_start_vs_empty"),
        ),
    ]
    w3 = max(len(r[0]) for r in prow) + 2
    for label, value, runs_ in prow:
        print(f"  {label:<{w3}}{value:>9}  [{runs_}]")
    print(
        f"  ({meta['python']}, {meta['cpus']} cpus, kernel {meta['kernel']}, "
        f"{meta['safenest']}, {meta['dnsperf']})"
    )


def targets(summary: dict) -> list[tuple[str, str, str]]:
    def status(ok) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    bpd = summary["bytes_per_domain"]
    vs_empty = summary["vs_empty_bytes_per_domain"]
    comp = summary["startup_compile_s_max"]
    rcomp = summary["reload_compile_s_max"]
    ratio = summary["reload_ratio_max"]
    return [
        (
            "resident bytes/domain <= 32 (serving process)",
            status(None if bpd is None else bpd <= TARGET_BYTES_PER_DOMAIN),
            "-"
            if bpd is None
            else f"{bpd:.1f} B/domain (median; against the empty list: {vs_empty:.1f} B/domain)",
        ),
        (
            "compile < 5 s (log: slowest at start and at a reload)",
            status(None if comp is None else max(comp, rcomp or 0) < TARGET_COMPILE_SECONDS),
            f"start {secs(comp)}, reload {secs(rcomp)}; SIGHUP -> in force: median "
            f"{secs(summary['reload_wall_s'])}, slowest {secs(summary['reload_wall_s_max'])}",
        ),
        (
            "serving-process reload peak <= 1.5x steady",
            status(None if ratio is None else ratio <= TARGET_RELOAD_RATIO),
            "-" if ratio is None else f"worst {ratio:.2f}x, median {summary['reload_ratio']:.2f}x",
        ),
        (
            "no query unanswered during a reload",
            status(summary["reload_queries"] > 0 and summary["reload_timeouts"] == 0),
            f"{summary['reload_timeouts']} timeouts in {summary['reload_queries']:,} queries, "
            f"{summary['reload_listed_not_blocked']} listed names not blocked",
        ),
        (
            "a name added to a list is blocked after SIGHUP",
            status(summary["new_names_blocked"] and summary["reloads_completed"]),
            "",
        ),
    ]


class Stop(Exception):
    """SIGTERM or SIGHUP to the harness: stop measuring, kill what it started."""


def _on_signal(signum, frame) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument(
        "--queries",
        type=int,
        default=200_000,
        help="queries per load pass (half listed names, half cache hits)",
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--reloads", type=int, default=2, help="SIGHUP reloads per full run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--safenest", default=str(ROOT / ".venv" / "bin" / "safenest"))
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--reload-timeout", type=float, default=120.0)
    ap.add_argument("--load-seconds", type=float, default=60.0, help="dnsperf -l bound")
    ap.add_argument(
        "--wait-others",
        type=float,
        default=1800.0,
        help="wait at most this long for bench.run / index_bench to finish",
    )
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_upstream:
        return serve_upstream(args.serve_upstream, 4 * 3600)

    if which("dnsperf") is None:
        print("dnsperf not found: apt-get install dnsperf", file=sys.stderr)
        return 2
    if not os.access(args.safenest, os.X_OK):
        print(f"{args.safenest} not found (run `make install` first)", file=sys.stderr)
        return 2
    command = " ".join(
        [".venv/bin/python -m bench.memory", *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"$ {command}", flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    try:
        waited = wait_for_other_benchmarks(args.wait_others)
    except (KeyboardInterrupt, Stop):
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="safenest-memory-"))
    upstream: Proc | None = None
    current: Run | None = None
    runs: list[dict] = []
    broke = None
    try:
        t = time.perf_counter()
        src = tmp / "lists-src"
        listed, mean_len = generate(src, args.domains, args.queries // 2, args.seed)
        gen_s = time.perf_counter() - t
        list_bytes = sum(p.stat().st_size for p in src.iterdir())
        qfile = tmp / "queries.txt"
        write_query_file(qfile, listed, args.queries, args.seed)
        print(
            f"generated {args.domains:,} domains (mean {mean_len:.1f} chars, "
            f"{list_bytes / 1e6:.1f} MB of lists) in {gen_s:.1f} s; "
            f"{len(listed):,} distinct listed names in the query file",
            flush=True,
        )

        up_port = free_port()
        (tmp / "upstream").mkdir()
        upstream = Proc(
            "upstream",
            [sys.executable, "-m", "bench.memory", "--serve-upstream", str(up_port)],
            tmp / "upstream",
            dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        if dnswire.wait_answer("ready.safenest-bench.test", up_port, 10, upstream.alive) != (
            "NOERROR",
            1,
        ):
            raise RuntimeError(f"the upstream did not answer:\n{upstream.tail()}")

        for rep in range(1, args.repeat + 1):
            result = {}
            for kind in KINDS:
                d = tmp / f"{kind}-{rep}"
                d.mkdir()
                probe = "www.the-only-listed.example" if kind == "empty" else listed[-1]
                current = Run(args, d, kind, src, probe, listed, qfile, up_port)
                print(f"repeat {rep}: {kind} list ...", flush=True)
                try:
                    result[kind] = current.measure()
                finally:
                    current.stop()
                    current = None
            runs.append(result)
    except (RuntimeError, OSError) as exc:
        broke = str(exc)
        print(f"ERROR: {exc}", file=sys.stderr)
    except (KeyboardInterrupt, Stop) as exc:
        broke = f"interrupted ({str(exc) or 'SIGINT'})"
        print(broke, file=sys.stderr)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # the cleanup itself must not be cut short
        if current is not None:
            current.stop()
        if upstream is not None:
            upstream.stop()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    meta = {
        "command": command,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "python": f"Python {sys.version.split()[0]}",
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "safenest": version([args.safenest, "--version"]),
        "dnsperf": dnsperf_version(),
        "waited_for_other_benchmarks_s": round(waited, 1),
        "domains": args.domains,
        "queries": args.queries,
        "repeat": args.repeat,
        "reloads": args.reloads,
        "hit_names": HIT_NAMES,
        "list_files": [f"{c}.txt ({s:.0%})" for c, s in LIST_FILES],
    }
    summary = summarize(runs, args.domains) if runs else None
    checks = targets(summary) if summary else []
    if runs:
        print_tables(runs, summary, args, meta)
        print()
        print("Targets")
        for label, status, detail in checks:
            print(f"  {status:<5} {label}: {detail}")
        if args.domains != 1_000_000:
            print("  (the targets are defined for 1,000,000 domains)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "targets": checks, "runs": runs, "error": broke},
            indent=1,
            default=str,
        )
    )
    print(f"wrote {args.json}")
    if broke or not runs or len(runs) < args.repeat:
        return 2
    correctness = [s for label, s, _ in checks if label.startswith(("no query", "a name"))]
    return 1 if any(s != "PASS" for s in correctness) else 0


if __name__ == "__main__":
    sys.exit(main())
