"""``make bench``: SafeNest against dnsmasq and unbound, same upstream, same run.

    python -m bench.run [--quick] [--seconds N] [--repeat N] [--servers a,b] ...

Everything runs on 127.0.0.1 on ports chosen at run time, in a temp dir; every process
the harness starts is killed at the end (also on Ctrl-C or SIGTERM). See
docs/performance.md for the method and the results.

SafeNest runs with a household's policy in force (bench/household.py; ``--no-policy`` for the
out-of-the-box default, or the extra server ``safenest-nopolicy`` to compare in one run) and
``--admin off``, twice: ``safenest`` with the query log off, like the peers, which log nothing
(the targets judge it), and ``safenest-log`` with it full, the default configuration. The
``logging`` scenario starts its own SafeNests with the query log ``full`` and ``off`` (admin
server on a loopback port, for /metrics) and sends each the same household mix at
``--logging-qps`` for ``--logging-seconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from . import dnsperf, dnswire
from .dataset import Dataset, blocked_name
from .household import SERVICE_PROBE
from .servers import (
    PACKAGES,
    Dnsmasq,
    Nsd,
    Peer,
    SafeNest,
    Unbound,
    check_binaries,
    version,
    which,
)
from .sysstat import DropWatch, descendants, snapshot

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("hits", "blocked", "latency", "misses", "logging")
# safenest: like for like with the peers, which log nothing: the query log off; the targets
# judge it. safenest-log: the default configuration, the query log full (its writer process's
# CPU counted), shown beside it; the log's own target is the logging scenario's.
SERVERS = ("safenest", "safenest-log", "dnsmasq", "unbound")
# safenest-nopolicy: a SafeNest without the household policy, to compare in one run.
KNOWN_SERVERS = (*SERVERS, "safenest-nopolicy")
QUERYLOG_OF = {"safenest": "off", "safenest-log": "full"}  # SAFENEST_QUERYLOG_PRIVACY
# The logging scenario's SafeNests: (name suffix, querylog_privacy). With --logging-control a
# third, the log off again: off-again ÷ off is the band two like SafeNests differ by.
LOG_ARMS = (("full", "full"), ("off", "off"))
LOG_CONTROL = ("off-again", "off")
TITLES = {
    "hits": "Cache hits (every name answered from the cache)",
    "blocked": "Blocked mix (20% of queries on SafeNest's blocklist, 80% cache hits)",
    "latency": "Latency at a fixed rate on cache hits",
    "misses": "Cache misses (fresh names, every query forwarded to the upstream)",
    "logging": "SafeNest with the query log full and off, a household mix at a fixed rate",
}


class Interrupted(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark SafeNest, dnsmasq and unbound with dnsperf (loopback only).",
    )
    p.add_argument("--quick", action="store_true", help="3 s per measurement, 1 repeat")
    p.add_argument("--seconds", type=float, help="dnsperf -l per measurement (default 10)")
    p.add_argument("--repeat", type=int, help="measurements per server and scenario (default 3)")
    p.add_argument("--names", type=int, default=20_000, help="cached names (default 20000)")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated subset of " + ",".join(KNOWN_SERVERS) + " (default: the first 4)",
    )
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="subset of " + ",".join(SCENARIOS)
    )
    p.add_argument("--clients", type=int, default=10, help="dnsperf -c (default 10)")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q on hits (100)")
    p.add_argument("--miss-outstanding", type=int, default=100, help="dnsperf -q on misses (100)")
    p.add_argument("--latency-qps", type=int, default=2000, help="dnsperf -Q (2000)")
    p.add_argument(
        "--no-policy",
        action="store_true",
        help="SafeNest without the household policy (bench/household.py): the default profile",
    )
    p.add_argument("--logging-qps", type=int, default=5000, help="logging: dnsperf -Q (5000)")
    p.add_argument(
        "--logging-seconds",
        type=float,
        help="logging: seconds per run (default 60; 10 with --quick)",
    )
    p.add_argument(
        "--logging-repeat",
        type=int,
        help="logging: rounds of full and off (default 3; 1 with --quick): one round's p99 "
        "moves by more than the 5%% judged",
    )
    p.add_argument(
        "--logging-cores",
        choices=("split", "shared"),
        default="split",
        help="logging: split: dnsperf and nsd on the first CPU, SafeNest on the others "
        "(default); shared: every process on every CPU",
    )
    p.add_argument(
        "--logging-writer",
        choices=("with-dns", "apart"),
        default="with-dns",
        help="logging, split cores: with-dns: the log's writer process on SafeNest's one core, "
        "shared with the DNS thread (default: the worst case for DNS); apart: on the clients' "
        "CPU (querylog_writer_cpus), where it shares dnsperf's core instead",
    )
    p.add_argument(
        "--logging-control",
        action=argparse.BooleanOptionalAction,
        help="logging: a third SafeNest in each round, the log off again, whose ratio to the "
        "first is the A/A band (default: on; off with --quick)",
    )
    p.add_argument(
        "--miss-qps-ceiling",
        type=int,
        default=100_000,
        help="fresh names written per second of a miss run (default 100000)",
    )
    p.add_argument(
        "--cache-entries",
        type=int,
        help="cache entries for every server (default 2x the names of the largest run, "
        "misses included)",
    )
    p.add_argument(
        "--no-percentiles",
        action="store_true",
        help="no dnsperf -v on the throughput runs (percentiles only for the latency run)",
    )
    p.add_argument(
        "--safenest",
        default=str(REPO / ".venv" / "bin" / "safenest"),
        help="the safenest executable (default .venv/bin/safenest)",
    )
    p.add_argument(
        "--safenest-wait",
        type=float,
        default=10.0,
        help="seconds SafeNest has to answer before it is skipped (10)",
    )
    p.add_argument(
        "--json", default=str(REPO / "bench" / "results" / "latest.json"), help="JSON output"
    )
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temp dir (logs, configs, dnsperf's line per query)",
    )
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.logging_seconds is None:
        args.logging_seconds = 10.0 if args.quick else 60.0
    if args.logging_repeat is None:
        args.logging_repeat = 1 if args.quick else 3
    if args.logging_control is None:
        args.logging_control = not args.quick
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.server_list:
        if s not in KNOWN_SERVERS:
            p.error(f"unknown server {s!r}")
    for s in args.scenario_list:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if args.seconds <= 0 or args.repeat < 1 or args.names < 10:
        p.error("--seconds, --repeat and --names must be positive")
    if args.logging_seconds <= 0 or args.logging_qps < 1 or args.logging_repeat < 1:
        p.error("--logging-seconds, --logging-qps and --logging-repeat must be positive")
    return args


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else "python"
    return shlex.join([exe, "-m", "bench.run", *args])


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def fmt(value, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "timeout"
    return format(value, spec)


def median(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else math.nan


class Bench:
    def __init__(self, args: argparse.Namespace, cmd: str):
        self.args = args
        self.cmd = cmd
        self.tmp = Path(tempfile.mkdtemp(prefix="safenest-bench-"))
        self.dataset = Dataset(self.tmp / "data", args.names)
        # dnsmasq slows down sharply once its cache is full (performance-notes.md): every
        # server gets room for twice the names of the largest run, the misses included.
        self.miss_names = math.ceil(args.miss_qps_ceiling * args.seconds)
        self.cache_entries = args.cache_entries or 2 * max(
            self.dataset.total_names, self.miss_names
        )
        self.nsd: Nsd | None = None
        self.servers: list[Peer] = []  # still being measured
        self.started: list[Peer] = []  # every server started, to stop at the end
        self.failures: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.blocking: dict[str, str] = {}
        self.results: dict[str, dict[str, list[dict]]] = {}
        # {server: (latency histogram, timeouts)} of the logging scenario, all rounds together
        self.logging_latencies: dict[str, tuple[Counter, int]] = {}
        self.logging_layout = ""  # where the logging scenario's processes ran, in words
        self.nonce = os.urandom(3).hex()

    # -- setup -------------------------------------------------------------------------
    def make_servers(self) -> None:
        common = dict(
            workdir=self.tmp,
            dataset=self.dataset,
            upstream_port=self.nsd.port,
            cache_entries=self.cache_entries,
        )
        for name in self.args.server_list:
            if name.startswith("safenest"):
                peer: Peer = SafeNest(
                    **common,
                    executable=self.args.safenest,
                    wait=self.args.safenest_wait,
                    name=name,
                    policy=name in QUERYLOG_OF and not self.args.no_policy,
                    env={"SAFENEST_QUERYLOG_PRIVACY": QUERYLOG_OF[name]}
                    if name in QUERYLOG_OF
                    else None,
                )
            elif name == "dnsmasq":
                peer = Dnsmasq(**common, forward_max=max(1000, 2 * self.args.miss_outstanding))
            else:
                peer = Unbound(**common)
            why = peer.available()
            if why:
                self.skip(name, why)
                continue
            try:
                peer.start()
            except RuntimeError as e:
                self.skip(name, str(e))
                continue
            self.servers.append(peer)
            self.started.append(peer)
            log(f"started {name} on 127.0.0.1:{peer.port} (pid {peer.pid})")
            self.describe_policy(peer)
            log(f"  {name} answers {blocked_name(1)} with {self.describe_answer(peer)}")

    def describe_answer(self, peer: Peer) -> str:
        """What ``peer`` answers for a name on the blocklist (a check that SafeNest blocks)."""
        data = dnswire.resolve(blocked_name(1), peer.port, timeout=2.0)
        if data is None:
            return "nothing (timeout)"
        rcode = dnswire.RCODES.get(data[3] & 0xF, str(data[3] & 0xF))
        text = f"{rcode} {', '.join(dnswire.a_records(data)) or '(no A)'}"
        blocked = rcode == "NXDOMAIN" or dnswire.a_records(data) in ([], ["0.0.0.0"])
        self.blocking[peer.name] = text
        if peer.name in QUERYLOG_OF and not blocked:
            log("  warning: SafeNest does not block the names on its list")
        return text + (" (blocked)" if blocked else "")

    def describe_policy(self, peer: Peer) -> None:
        """Say which policy a SafeNest runs, and check that it is in force."""
        if not isinstance(peer, SafeNest):
            return
        if not peer.policy:
            log(f"  {peer.name}: no policy (every device gets the default 12+ profile)")
            return
        log(f"  {peer.name} policy: {peer.policy_summary}")
        # Only the household policy blocks this name (service tiktok); the answer is
        # synthesized, so it never reaches nsd.
        data = dnswire.resolve(SERVICE_PROBE, peer.port, timeout=2.0)
        if data is None or dnswire.a_records(data) != ["0.0.0.0"]:
            raise RuntimeError(f"{peer.name}: the household policy is not in force")
        log(f"  {peer.name} answers {SERVICE_PROBE} with 0.0.0.0 (blocked by the policy)")

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        log(f"SKIPPING {name}: {why}")

    def warm(self, server: Peer) -> None:
        # Two passes: the first fills the caches; SafeNest's replay memo takes a packet on its
        # second answer (agent/dns/steps/caching.py), so the second brings it to steady state.
        for attempt in range(1, 4):
            res = dnsperf.run(
                server.port,
                self.dataset.warm_file,
                self.tmp,
                seconds=120,
                passes=2,
                clients=self.args.clients,
                outstanding=50,
                verbose=False,
                tag=f"warm-{server.name}",
            )
            log(
                f"warmed {server.name}: {res.completed:,} of {res.sent:,} names "
                f"answered, {res.lost} lost (pass {attempt})"
            )
            if res.lost == 0 and res.completed >= 2 * self.dataset.total_names:
                return
        log(f"warning: {server.name} still lost queries while warming")

    # -- measuring ---------------------------------------------------------------------
    def perf_options(self, scenario: str) -> dict:
        a = self.args
        opts = dict(
            seconds=a.seconds,
            clients=a.clients,
            outstanding=a.outstanding,
            verbose=not a.no_percentiles,
        )
        if scenario == "latency":
            opts.update(max_qps=a.latency_qps, verbose=True)
        elif scenario == "misses":
            opts.update(outstanding=a.miss_outstanding, passes=1)
        elif scenario == "logging":
            # Bounded by count (-n 1 over qps x seconds lines) and by time (-l).
            opts.update(seconds=a.logging_seconds, max_qps=a.logging_qps, passes=1, verbose=True)
        return opts

    def measure(self, server: Peer, scenario: str, rep: int) -> dict:
        if scenario == "hits" or scenario == "latency":
            datafile = self.dataset.hits_file
        elif scenario == "blocked":
            datafile = self.dataset.mix_file
        elif scenario == "logging":
            datafile = self.dataset.write_household_file(
                self.tmp / f"q-logging-{server.name}-{rep}.txt",
                f"l{self.nonce}-{server.name}-r{rep}",
                math.ceil(self.args.logging_qps * self.args.logging_seconds),
            )
        else:
            datafile = self.dataset.write_miss_file(
                self.tmp / f"q-miss-{server.name}-{rep}.txt",
                f"m{self.nonce}-{server.name}-r{rep}",
                self.miss_names,
            )
        opts = self.perf_options(scenario)
        watch = DropWatch()
        before = snapshot(server.pid, self.nsd.proc.pid, server.port)
        try:
            res = dnsperf.run(
                server.port,
                datafile,
                self.tmp,
                tag=f"{scenario}-{server.name}-{rep}",
                keep_output=self.args.keep_tmp,
                **opts,
            )
        finally:
            after = snapshot(server.pid, self.nsd.proc.pid, server.port)
            drops = watch.stop(server.pid, server.port)
        if scenario in ("misses", "logging"):
            datafile.unlink()
        if scenario == "logging" and res.latencies is not None:
            hist, timeouts = self.logging_latencies.get(server.name, (Counter(), 0))
            hist.update(res.latencies)
            self.logging_latencies[server.name] = (hist, timeouts + res.timeouts)
        done = max(res.completed, 1)
        row = {
            "rep": rep,
            "qps": res.qps,
            "sent": res.sent,
            "completed": res.completed,
            "lost": res.lost,
            "run_time_s": res.run_time,
            "avg_ms": res.avg_ms,
            "p50_ms": res.p50_ms,
            "p99_ms": res.p99_ms,
            "p999_ms": res.p999_ms,
            "min_ms": res.min_ms,
            "max_ms": res.max_ms,
            "cpu_us_per_query": (after.cpu - before.cpu) / done * 1e6,
            "server_cpu_s": after.cpu - before.cpu,
            "upstream_cpu_us_per_query": (after.upstream_cpu - before.upstream_cpu) / done * 1e6,
            "rcvbuf_errors": after.rcvbuf_errors - before.rcvbuf_errors,
            "server_socket_drops": max(after.socket_drops - before.socket_drops, drops["server"]),
            "other_socket_drops": drops["other"],
            "udp_in_errors": after.in_errors - before.in_errors,
            "rcodes": res.rcodes,
            "end_of_file": res.end_of_file,
            "dnsperf": shlex.join(res.argv),
        }
        log(
            f"  {scenario:8} {rep}/{rounds(self.args, scenario)} {server.name:9} "
            f"{res.qps:>10,.0f} QPS  {row['cpu_us_per_query']:6.2f} us/q  "
            f"p99 {fmt(res.p99_ms, '.3f')} ms  lost {res.lost}  "
            f"rcvbuf +{row['rcvbuf_errors']} (server {row['server_socket_drops']})  "
            f"{rcode_text(res.rcodes)}"
            + ("  (query file exhausted)" if res.end_of_file and scenario == "misses" else "")
        )
        if res.lost and res.stderr_tail.strip():
            log("    dnsperf: " + res.stderr_tail.strip().splitlines()[-1])
        return row

    def run(self) -> None:
        a = self.args
        log(f"temp dir {self.tmp}; writing zone and query files for {a.names:,} names")
        self.dataset.write()
        self.nsd = Nsd(self.tmp, self.dataset)
        self.nsd.start()
        log(f"started nsd (upstream) on 127.0.0.1:{self.nsd.port} (pid {self.nsd.proc.pid})")
        if any(s != "logging" for s in a.scenario_list):
            self.make_servers()
            if not self.servers:
                raise RuntimeError("no server to measure")
        cached = [s for s in a.scenario_list if s not in ("misses", "logging")]
        if cached:
            for server in self.servers:
                self.warm(server)
        for scenario in cached:
            log(f"{scenario}: {TITLES[scenario]}")
            for rep in range(1, a.repeat + 1):
                for server in list(self.servers):
                    self.record(server, scenario, rep)
        if "misses" in a.scenario_list:
            log(f"misses: {TITLES['misses']}")
            for rep in range(1, a.repeat + 1):
                for server in list(self.servers):
                    # A fresh process (empty cache) for every miss run.
                    server.stop()
                    try:
                        server.start()
                    except RuntimeError as e:
                        self.drop(server, f"did not restart for the miss runs: {e}")
                        continue
                    self.record(server, "misses", rep)
        for server in self.servers:
            server.stop()  # idle servers would only share the CPU with the logging runs
        if "logging" in a.scenario_list:
            self.run_logging()

    def run_logging(self) -> None:
        """The query log's cost to DNS: the same household mix at a fixed rate to a fresh
        SafeNest with ``querylog_privacy`` full, then to one with it off; /metrics after each.

        With --logging-cores split (the default), dnsperf, nsd and this process run on the
        first CPU and SafeNest, its writer process included, on the others: on a LAN the
        clients are other machines, and a client that shares a core with the writer measures
        its own waits for that core (docs/performance.md, "Where the log's tail came from")."""
        a = self.args
        log(f"logging: {TITLES['logging']} ({a.logging_qps:,} q/s for {a.logging_seconds:g} s)")
        mask = os.sched_getaffinity(0)
        cpus = sorted(mask)
        split = a.logging_cores == "split" and len(cpus) >= 2
        client, server = ({cpus[0]}, set(cpus[1:])) if split else (mask, mask)
        # --logging-writer apart: the writer on the clients' core. Not the default: there it
        # delays dnsperf, and the log-full SafeNest's measured p99 was x1.2-1.3 that of the
        # log-off ones, against x1.00 with the writer on SafeNest's core (docs/performance.md).
        writer = client if split and a.logging_writer == "apart" else set()  # empty: SafeNest's
        self.logging_layout = (
            f"clients and upstream on CPU {cpu_list(client)}, SafeNest on {cpu_list(server)}, "
            f"its log's writer on {cpu_list(writer or server)}"
            if split
            else f"every process on every CPU ({len(cpus)})"
        )
        log(f"  cores: {self.logging_layout}")
        if split and self.nsd is not None:
            pin_tree(self.nsd.proc.pid, client)
        try:
            self._logging_rounds(client, server, writer)
        finally:
            os.sched_setaffinity(0, mask)
            if split and self.nsd is not None and self.nsd.proc.alive():
                pin_tree(self.nsd.proc.pid, mask)

    def _logging_rounds(self, client: set[int], server: set[int], writer: set[int]) -> None:
        a = self.args
        arms = (*LOG_ARMS, LOG_CONTROL) if a.logging_control else LOG_ARMS
        for rep in range(1, a.logging_repeat + 1):
            # Each round starts with the next arm (full, off, off-again, full, ...), and odd
            # rounds go the other way round: a drift hits every arm alike.
            turn = (rep - 1) % len(arms)
            order = arms[turn:] + arms[:turn]
            for suffix, level in order if rep % 2 else order[::-1]:
                if (suffix, level) not in arms:
                    continue  # the control, dropped in an earlier round of this loop
                peer = SafeNest(
                    workdir=self.tmp,
                    dataset=self.dataset,
                    upstream_port=self.nsd.port,
                    cache_entries=self.cache_entries,
                    executable=a.safenest,
                    wait=a.safenest_wait,
                    name=f"safenest-log-{suffix}",
                    policy=not a.no_policy,
                    env={"SAFENEST_QUERYLOG_PRIVACY": level}
                    | ({"SAFENEST_QUERYLOG_WRITER_CPUS": cpu_list(writer)} if writer else {}),
                    metrics=True,
                )
                why = peer.available()
                if not why:
                    try:
                        os.sched_setaffinity(0, server)  # inherited by SafeNest and its writer
                        peer.start()
                    except RuntimeError as e:
                        why = str(e)
                    finally:
                        os.sched_setaffinity(0, client)  # and by dnsperf
                if why:
                    self.skip(peer.name, why)
                    if (suffix, level) == LOG_CONTROL:
                        arms = LOG_ARMS  # the target does not need it: go on without it
                        continue
                    return
                self.started.append(peer)
                log(
                    f"started {peer.name} on 127.0.0.1:{peer.port}, admin 127.0.0.1:{peer.admin_port}"
                )
                self.describe_policy(peer)
                self.warm(peer)
                try:
                    # The warm-up asks every name at full speed, more than the log's queue
                    # holds: what it drops is not the measured rate's, so it is subtracted.
                    warm = self.querylog_counters(peer, level)
                    self.record(peer, "logging", rep)
                    row = self.results["logging"][peer.name][-1]
                    row.update(self.querylog_counters(peer, level))
                    row["querylog_dropped_warmup"] = warm["querylog_dropped"]
                    row["querylog_dropped"] -= warm["querylog_dropped"]
                    log(
                        f"    log entries dropped {row['querylog_dropped']} (and "
                        f"{row['querylog_dropped_warmup']} in the warm-up), written "
                        f"{row['querylog_written']}, queries {row['metrics_queries']}"
                    )
                finally:
                    peer.stop()

    def querylog_counters(self, peer: SafeNest, level: str) -> dict:
        """Dropped and written log entries and answered queries, from /metrics. With the log
        on, wait (up to 15 s) for the writer's last batch so that `written` is complete."""
        deadline = time.monotonic() + 15
        while True:
            m = parse_metrics(peer.metrics_text())
            queued = m.get("safenest_querylog_queue_entries", 0)
            if level == "off" or queued == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {
            "querylog_dropped": int(m.get("safenest_querylog_dropped_total", 0)),
            "querylog_written": int(m.get("safenest_querylog_written_total", 0)),
            "querylog_queued": int(queued),
            "metrics_queries": int(
                sum(v for k, v in m.items() if k.startswith("safenest_queries_total{"))
            ),
        }

    def record(self, server: Peer, scenario: str, rep: int) -> None:
        row = self.measure(server, scenario, rep)
        self.results.setdefault(scenario, {}).setdefault(server.name, []).append(row)
        if not server.proc or not server.proc.alive():
            tail = server.proc.tail() if server.proc else ""
            self.drop(server, f"exited during the {scenario} run:\n{tail}")

    def drop(self, server: Peer, why: str) -> None:
        """Measure ``server`` no further (what was measured stays in the results)."""
        log(f"{server.name} {why}")
        self.failures[server.name] = why
        self.servers.remove(server)
        server.stop()

    def close(self) -> None:
        for server in self.started:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stopping {server.name}: {e}")
        if self.nsd:
            self.nsd.stop()
        if self.args.keep_tmp:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def commands(self) -> dict[str, str]:
        """How each process was started (the last instance), with its config file's text."""
        out = {}
        if self.nsd and self.nsd.proc:
            out["nsd"] = shlex.join(self.nsd.proc.argv)
            out["nsd.conf"] = self.nsd.config()
        for server in self.started:
            argv = getattr(server, "command", None)
            if argv:
                out[server.name] = shlex.join(argv)
            if isinstance(server, Unbound) and server.port:
                out["unbound.conf"] = server.config(Path("RUNDIR"))
            if isinstance(server, SafeNest):
                out[f"{server.name} environment"] = " ".join(
                    f"{k}={v}" for k, v in server.extra_env().items()
                )
        return out

    def versions(self) -> dict:
        out = {
            "dnsperf": _version_line(["dnsperf", "-h"], "Version", "dnsperf "),
            "dnsmasq": version([which("dnsmasq") or "dnsmasq", "--version"]),
            "unbound": _version_line(["unbound", "-V"], "Version", "unbound "),
            "nsd": version([which("nsd") or "nsd", "-v"]),
            "python": platform.python_version(),
            "safenest_git": _git_state(),
        }
        for server in self.started:
            if isinstance(server, SafeNest):
                out["safenest"] = server.version()
        return out


def _git_state() -> str:
    """The commit SafeNest's code was measured at, with "+dirty" if agent/ had edits."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "agent"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _version_line(argv: list[str], prefix: str, label: str) -> str:
    try:
        out = subprocess.run(
            [which(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith(prefix):
            return label + line.split()[-1]
    return "unknown"


def rounds(args: argparse.Namespace, scenario: str) -> int:
    return args.logging_repeat if scenario == "logging" else args.repeat


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format: {"name{labels}": value} for every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def cpu_list(cpus: set[int]) -> str:
    """`cpus` as querylog_writer_cpus takes them ("0", "1,2")."""
    return ",".join(map(str, sorted(cpus)))


def pin_tree(root: int, cpus: set[int]) -> None:
    """`root` and the processes below it (nsd and its workers) onto `cpus`."""
    for pid in descendants(root):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            continue  # gone meanwhile


def rcode_text(rcodes: dict[str, int]) -> str:
    total = sum(rcodes.values()) or 1
    return " ".join(f"{k} {v / total:.0%}" for k, v in sorted(rcodes.items()))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- summarising -----------------------------------------------------------------------
MEDIAN_KEYS = (
    "qps",
    "completed",
    "lost",
    "avg_ms",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "cpu_us_per_query",
    "upstream_cpu_us_per_query",
)
SUM_KEYS = ("rcvbuf_errors", "server_socket_drops", "other_socket_drops", "lost")


def summarise(rows: list[dict]) -> dict:
    out = {k: median([r[k] for r in rows]) for k in MEDIAN_KEYS}
    for k in SUM_KEYS:
        out[f"{k}_total"] = sum(r[k] for r in rows)
    out["runs"] = len(rows)
    for k in ("querylog_dropped", "querylog_written", "metrics_queries"):
        if any(k in r for r in rows):
            out[f"{k}_total"] = sum(r.get(k, 0) for r in rows)
    return out


POOLED = {"p50_pooled_ms": 0.50, "p99_pooled_ms": 0.99, "p999_pooled_ms": 0.999}
LOG_RATIO_KEYS = ("p50_ms", "p99_ms", "p999_ms", "avg_ms", "cpu_us_per_query", *POOLED)


def pooled(hist: Counter, timeouts: int) -> dict[str, float]:
    """Percentiles of every query of every round together. A round's own p99 moves with
    whatever else the machine did in its seconds; pooled, each round weighs as its queries."""
    total = sum(hist.values()) + timeouts
    return {k: dnsperf.percentile(hist, total, q) * 1000 for k, q in POOLED.items()}


# The reference the log-full SafeNest is judged against: both log-off SafeNests' queries
# pooled. One alone differs from the other by as much as the 5% judged (the A/A band); pooled,
# one arm's luck weighs half.
OFF_ARMS = ("safenest-log-off", "safenest-log-off-again")


def off_reference(latencies: dict[str, tuple[Counter, int]]) -> dict[str, float]:
    """Pooled percentiles of every query of every log-off SafeNest (see OFF_ARMS)."""
    arms = [latencies[name] for name in OFF_ARMS if name in latencies]
    if not arms:
        return {}
    hist: Counter = Counter()
    for h, _ in arms:
        hist.update(h)
    return pooled(hist, sum(t for _, t in arms))


def histograms_json(latencies: dict[str, tuple[Counter, int]]) -> dict[str, dict]:
    """Each arm's pooled latency histogram, to judge a run again another way later."""
    return {
        name: {"timeouts": t, "ms_count": [[v * 1000, n] for v, n in sorted(h.items())]}
        for name, (h, t) in latencies.items()
    }


def logging_ratios(summary: dict[str, dict], arm: str = "full") -> dict[str, float]:
    """SafeNest ``arm`` (full, or off-again: the A/A control) ÷ the one with the log off, for
    the latency figures and CPU per query."""
    full, off = summary.get(f"safenest-log-{arm}"), summary.get("safenest-log-off")
    if not full or not off:
        return {}
    return {
        k: (full[k] / off[k] if off[k] else math.nan)
        for k in LOG_RATIO_KEYS
        if k in full and k in off
    }


def ratios(summary: dict[str, dict]) -> dict[str, dict[str, float]]:
    """SafeNest ÷ each peer, keyed "dnsmasq" (like for like: the query log off) or
    "SafeNest (query log full)/dnsmasq" (the default configuration)."""
    out: dict[str, dict[str, float]] = {}
    for name, label in (("safenest", ""), ("safenest-log", "SafeNest (query log full)/")):
        sn = summary.get(name)
        if not sn:
            continue
        for peer in ("dnsmasq", "unbound"):
            other = summary.get(peer)
            if not other:
                continue
            out[label + peer] = {
                k: (sn[k] / other[k] if other[k] else math.nan)
                for k in ("qps", "cpu_us_per_query", "p50_ms", "p99_ms")
            }
    return out


def table(scenario: str, summary: dict[str, dict], repeat: int) -> list[str]:
    head = [
        "server",
        "QPS",
        "completed",
        "lost",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU us/q",
        "upstream us/q",
        "RcvbufErr Σ (system)",
        "server drops Σ",
    ]
    rows = []
    for name, s in summary.items():
        rows.append(
            [
                name,
                fmt(s["qps"]),
                fmt(s["completed"]),
                fmt(s["lost"]),
                fmt(s["avg_ms"], ".3f"),
                fmt(s["p50_ms"], ".3f"),
                fmt(s["p99_ms"], ".3f"),
                fmt(s["p999_ms"], ".3f"),
                fmt(s["cpu_us_per_query"], ".2f"),
                fmt(s["upstream_cpu_us_per_query"], ".2f"),
                fmt(s["rcvbuf_errors_total"], "d"),
                fmt(s["server_socket_drops_total"], "d"),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [f"== {TITLES[scenario]} — median of {repeat} ==".replace("— median of 1 ", "")]

    def line(cells):
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines.append(line(head))
    lines.append(line(["-" * w for w in widths]))
    lines.extend(line(r) for r in rows)
    if scenario == "logging":
        for arm, label in (("full", "query log full/off"), ("off-again", "A/A, off again/off")):
            r = logging_ratios(summary, arm)
            if r:
                lines.append(
                    f"{label}: "
                    + ", ".join(f"{k.removesuffix('_ms')} x{fmt(v, '.3f')}" for k, v in r.items())
                )
        for name, s in summary.items():
            lines.append(
                f"{name}: all rounds' queries pooled: p50 {fmt(s.get('p50_pooled_ms'), '.3f')}, "
                f"p99 {fmt(s.get('p99_pooled_ms'), '.3f')}, "
                f"p99.9 {fmt(s.get('p999_pooled_ms'), '.3f')} ms; "
                f"log entries dropped {fmt(s.get('querylog_dropped_total'), ',')}, "
                f"written {fmt(s.get('querylog_written_total'), ',')}; queries answered "
                f"(/metrics) {fmt(s.get('metrics_queries_total'), ',')}"
            )
    for peer, r in ratios(summary).items():
        lines.append(
            f"{peer if '/' in peer else 'SafeNest/' + peer}: QPS x{fmt(r['qps'], '.2f')}, "
            f"CPU per query x{fmt(r['cpu_us_per_query'], '.2f')}, "
            f"p50 x{fmt(r['p50_ms'], '.2f')}, p99 x{fmt(r['p99_ms'], '.2f')}"
        )
    return lines


def targets(
    summaries: dict[str, dict[str, dict]],
    off_both: dict[str, float] | None = None,
    logging_layout: str = "",
) -> list[dict]:
    """The issue's targets, each PASS / FAIL / n/a (no SafeNest or no peer)."""
    out = []

    def add(name, ok, detail):
        out.append({"target": name, "status": ok, "detail": detail})

    for scen in ("hits", "blocked"):
        s = summaries.get(scen, {})
        sn, dm = s.get("safenest"), s.get("dnsmasq")
        if sn and dm:
            # Drops on SafeNest's own sockets, and queries dnsperf lost. The system-wide
            # RcvbufErrors also counts other programs on the machine, so it is only shown.
            ok = (
                sn["cpu_us_per_query"] <= dm["cpu_us_per_query"]
                and sn["server_socket_drops_total"] == 0
                and sn["lost_total"] == 0
            )
            add(
                f"{scen}: CPU/query <= dnsmasq, no receive-buffer drop",
                "PASS" if ok else "FAIL",
                f"SafeNest {sn['cpu_us_per_query']:.2f} us vs dnsmasq "
                f"{dm['cpu_us_per_query']:.2f} us; drops on SafeNest's sockets "
                f"{sn['server_socket_drops_total']}, queries lost {sn['lost_total']} "
                f"(system-wide RcvbufErrors {sn['rcvbuf_errors_total']})",
            )
        elif scen in summaries:
            add(f"{scen}: CPU/query <= dnsmasq", "n/a", "SafeNest or dnsmasq not measured")
        logged = s.get("safenest-log")
        if logged and dm:
            add(
                f"{scen}, default configuration (query log full): CPU/query vs dnsmasq",
                "shown",
                f"SafeNest {logged['cpu_us_per_query']:.2f} us (its log writer's CPU included) "
                f"vs dnsmasq {dm['cpu_us_per_query']:.2f} us "
                f"(x{logged['cpu_us_per_query'] / dm['cpu_us_per_query']:.2f}); not judged: "
                "the peers log nothing, and the log's cost has its own target (logging)",
            )
    s = summaries.get("misses", {})
    if s.get("safenest") and s.get("unbound"):
        sn, ub = s["safenest"], s["unbound"]
        add(
            "misses: QPS >= unbound (1 thread)",
            "PASS" if sn["qps"] >= ub["qps"] else "FAIL",
            f"SafeNest {sn['qps']:,.0f} vs unbound {ub['qps']:,.0f} QPS",
        )
    elif "misses" in summaries:
        add("misses: QPS >= unbound", "n/a", "SafeNest or unbound not measured")
    s = summaries.get("latency", {})
    if s.get("safenest"):
        p99 = s["safenest"]["p99_ms"]
        add(
            "latency: p99 < 0.5 ms at the fixed rate",
            "PASS" if p99 < 0.5 else "FAIL",
            f"SafeNest p99 {p99:.3f} ms",
        )
    elif "latency" in summaries:
        add("latency: p99 < 0.5 ms", "n/a", "SafeNest not measured")
    s = summaries.get("logging", {})
    r = logging_ratios(s)
    if r:
        full = s["safenest-log-full"]
        lost = full["lost_total"] + s["safenest-log-off"]["lost_total"]
        control = logging_ratios(s, "off-again")
        if off_both and control and all(k in full for k in POOLED):
            # Against both log-off SafeNests pooled (OFF_ARMS), every round's queries pooled.
            r = {k: full[k] / off_both[k] if off_both[k] else math.nan for k in POOLED}
            lost += s["safenest-log-off-again"]["lost_total"]
            against = "both log-off SafeNests"
        else:
            against = "the log-off SafeNest"
        p50, p99, p999 = (r.get(f"{k}_pooled_ms") or r[f"{k}_ms"] for k in ("p50", "p99", "p999"))
        ok = p50 <= 1.05 and p99 <= 1.05 and lost == 0
        band = (
            f"; A/A off again ÷ off: p99 x{control.get('p99_pooled_ms', math.nan):.3f}, "
            f"p99.9 x{control.get('p999_pooled_ms', math.nan):.3f}"
            if control
            else ""
        )
        add(
            "logging: query log full vs off, p50 and p99 within 5%, nothing lost",
            "PASS" if ok else "FAIL",
            f"p50 x{p50:.3f}, p99 x{p99:.3f}, p99.9 x{p999:.3f} (full ÷ {against}, all "
            f"rounds' queries pooled); queries lost {lost}; log entries dropped "
            f"{full.get('querylog_dropped_total', 0)}{band}"
            + (f"; {logging_layout}" if logging_layout else ""),
        )
    elif "logging" in summaries:
        add("logging: full vs off", "n/a", "a logging run is missing")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = command_line(argv)
    print(f"command: {cmd}")
    started = datetime.now(UTC)
    needed = ["dnsperf", "nsd"] + [s for s in args.server_list if not s.startswith("safenest")]
    missing = check_binaries(needed)
    if missing:
        for m in missing:
            print(f"error: {m}", file=sys.stderr)
        print(
            "install them with: apt-get install "
            + " ".join(sorted({PACKAGES[b] for b in needed if which(b) is None})),
            file=sys.stderr,
        )
        return 2
    # Ctrl-C, SIGTERM and SIGHUP all end in the finally below, which kills every process.
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args, cmd)
    print(
        f"{args.seconds:g} s per measurement, {args.repeat} repeat(s), {args.names:,} cached "
        f"names + {args.names // 4:,} blocked names, up to {bench.miss_names:,} fresh names "
        f"per miss run, caches of {bench.cache_entries:,} entries, dnsperf -c {args.clients} "
        f"-q {args.outstanding} (misses: -q {args.miss_outstanding}; latency: "
        f"-Q {args.latency_qps}), {os.cpu_count()} CPUs"
    )
    error = None
    try:
        bench.run()
    except (KeyboardInterrupt, Interrupted) as e:
        error = f"interrupted ({str(e) or 'Ctrl-C'})"
    except RuntimeError as e:
        error = str(e)
    finally:
        bench.close()
        for s, h in old.items():
            signal.signal(s, h)

    summaries = {
        scen: {name: summarise(rows) for name, rows in per.items()}
        for scen, per in bench.results.items()
    }
    for name, (hist, timeouts) in bench.logging_latencies.items():
        if name in summaries["logging"]:
            summaries["logging"][name].update(pooled(hist, timeouts))
    print()
    print(f"command: {cmd}")
    for name, why in bench.skipped.items():
        print(f"skipped {name}: {why}")
    for name, why in bench.failures.items():
        print(f"stopped measuring {name}: {why}")
    for scen in SCENARIOS:
        if scen in summaries:
            print()
            print("\n".join(table(scen, summaries[scen], rounds(args, scen))))
    off_both = off_reference(bench.logging_latencies)
    verdicts = targets(summaries, off_both, bench.logging_layout)
    if verdicts:
        print()
        print("Targets:")
        for v in verdicts:
            print(f"  [{v['status']}] {v['target']}: {v['detail']}")
    doc = {
        "command": cmd,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "versions": bench.versions(),
        "config": {k: v for k, v in vars(args).items() if not k.endswith("_list")}
        | {"cache_entries": bench.cache_entries, "blocked_names": args.names // 4},
        "server_commands": bench.commands(),
        "skipped": bench.skipped,
        "failures": bench.failures,
        "blocked_name_answers": bench.blocking,
        "error": error,
        "scenarios": {
            scen: {
                name: {"median": summaries[scen][name], "runs": rows} for name, rows in per.items()
            }
            | {"ratios": ratios(summaries[scen])}
            | (
                {
                    "full_over_off": logging_ratios(summaries[scen]),
                    "off_again_over_off": logging_ratios(summaries[scen], "off-again"),
                    "off_both_pooled": off_both,
                    "histograms": histograms_json(bench.logging_latencies),
                }
                if scen == "logging"
                else {}
            )
            for scen, per in bench.results.items()
        },
        "targets": verdicts,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(doc), indent=2, default=_json_default) + "\n")
    print(f"\nwrote {out}")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # A missed target is a failed benchmark, as in the other modules `make bench` runs.
    return 1 if any(v["status"] == "FAIL" for v in verdicts) else 0


def _json_default(o):
    return str(o)


def _clean(o):
    """JSON has no NaN or infinity: write null (not measured) and "timeout"."""
    if isinstance(o, float):
        if math.isnan(o):
            return None
        if math.isinf(o):
            return "timeout"
        return round(o, 6)
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


if __name__ == "__main__":
    sys.exit(main())
