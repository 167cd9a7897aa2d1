"""Run dnsperf 2.10 and parse its report.

dnsperf 2.10 has no latency-histogram option, so percentiles come from ``-v``: it prints
one line per query, ``> NOERROR name A 0.000123`` (latency in seconds, microsecond
resolution) or ``> T name A`` for a query that timed out. The lines go to a file in the
temp dir and are read after the run, so parsing costs nothing during the measurement;
writing them costs dnsperf (the client) about 10% of its top speed, the same for every
server.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .servers import which

_NUM = r"([0-9.]+)"
_PATTERNS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "run_time": re.compile(r"Run time \(s\):\s+" + _NUM),
    "qps": re.compile(r"Queries per second:\s+" + _NUM),
    "avg": re.compile(r"Average Latency \(s\):\s+" + _NUM),
    "min": re.compile(r"\(min " + _NUM),
    "max": re.compile(r"max " + _NUM + r"\)"),
    "stddev": re.compile(r"Latency StdDev \(s\):\s+" + _NUM),
}


@dataclass
class PerfResult:
    argv: list[str]
    sent: int = 0
    completed: int = 0
    lost: int = 0
    run_time: float = 0.0
    qps: float = 0.0
    avg_ms: float = math.nan
    min_ms: float = math.nan
    max_ms: float = math.nan
    stddev_ms: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies: Counter | None = None  # {seconds: count} from -v (pooled over rounds)
    timeouts: int = 0  # queries -v shows as timed out
    end_of_file: bool = False
    stderr_tail: str = ""


def percentile(hist: Counter, total: int, q: float) -> float:
    """Nearest-rank percentile (seconds) of a {latency: count} histogram with ``total``
    samples; samples beyond the histogram (timeouts) count as infinite latency."""
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return math.inf


def read_verbose(path: Path) -> tuple[Counter, int]:
    """Histogram of per-query latency (seconds) and the number of timeouts."""
    raw: Counter = Counter()
    timeouts = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(b"> "):
                continue
            if line.startswith(b"> T "):
                timeouts += 1
                continue
            raw[line[line.rfind(b" ") + 1 : -1]] += 1
    hist: Counter = Counter()
    for text, n in raw.items():
        try:
            hist[float(text)] += n
        except ValueError:
            continue
    return hist, timeouts


def parse_report(text: str, result: PerfResult) -> None:
    for key, pattern in _PATTERNS.items():
        m = pattern.search(text)
        if not m:
            continue
        value = m.group(1)
        if key in ("sent", "completed", "lost"):
            setattr(result, key, int(value))
        elif key in ("run_time", "qps"):
            setattr(result, key, float(value))
        else:
            setattr(result, f"{key}_ms", float(value) * 1000)
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        for name, count in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
            result.rcodes[name] = int(count)
    result.end_of_file = "end of file" in text


def run(
    port: int,
    datafile: Path,
    workdir: Path,
    *,
    seconds: float | None,
    clients: int,
    outstanding: int,
    max_qps: int | None = None,
    passes: int | None = None,
    verbose: bool = True,
    timeout: float = 5.0,
    buffer_kb: int = 4096,
    tag: str = "run",
    keep_output: bool = False,
) -> PerfResult:
    argv = [
        which("dnsperf") or "dnsperf",
        "-s", "127.0.0.1",
        "-p", str(port),
        "-d", str(datafile),
        "-c", str(clients),
        "-q", str(outstanding),
        "-t", str(timeout),
        "-b", str(buffer_kb),
    ]  # fmt: skip
    if seconds is not None:
        argv += ["-l", f"{seconds:g}"]
    if passes is not None:
        argv += ["-n", str(passes)]
    if max_qps:
        argv += ["-Q", str(max_qps)]
    if verbose:
        argv.append("-v")
    out_path = workdir / f"dnsperf-{tag}.out"
    limit = (seconds or 120) + timeout + 30
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=limit)
        except BaseException as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise RuntimeError(f"dnsperf ran past {limit:.0f} s: {' '.join(argv)}") from None
            raise
    result = PerfResult(argv=argv)
    result.stderr_tail = err.decode(errors="replace")[-2000:]
    # The statistics block is at the end of stdout; read only the tail of a verbose file.
    size = out_path.stat().st_size
    with open(out_path, "rb") as f:
        f.seek(max(0, size - 8192))
        tail = f.read().decode(errors="replace")
    parse_report(tail, result)
    if proc.returncode != 0 or result.sent == 0:
        raise RuntimeError(
            f"dnsperf failed (exit {proc.returncode}): {' '.join(argv)}\n"
            f"{result.stderr_tail}\n{tail[-1500:]}"
        )
    if verbose:
        hist, timeouts = read_verbose(out_path)
        result.latencies, result.timeouts = hist, timeouts
        total = sum(hist.values()) + timeouts
        result.p50_ms = percentile(hist, total, 0.50) * 1000
        result.p99_ms = percentile(hist, total, 0.99) * 1000
        result.p999_ms = percentile(hist, total, 0.999) * 1000
    if not keep_output:  # kept with --keep-tmp: one line per query, for a closer look
        out_path.unlink()
    return result
