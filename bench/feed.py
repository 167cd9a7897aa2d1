"""Feed sync figures (issue 3): sync and compile a large feed, and publish-to-in-force time.

    .venv/bin/python -m bench.feed [--domains 1000000]

1. **Publisher**: ``--domains`` random, distinct domains (the generator of bench/index_bench.py)
   go into one 18+ list (``gambling.txt``, enforced today) of a publisher source folder;
   ``build_feed`` signs version 1 (and version 2 = version 1 plus ``NEW_NAMES`` names) in a
   child process, whose wall time and peak RSS (wait4's ru_maxrss) are recorded. An HTTP server
   thread on 127.0.0.1 (port chosen by the OS) serves the feed; SafeNest is told to allow plain
   http (``--allow-insecure`` / ``SAFENEST_FEED_ALLOW_INSECURE``), as a local mirror would be.
2. **Sync and compile by hand**: ``safenest sync --feed URL --pubkey KEY.pub --data DIR
   --allow-insecure`` as a child: wall time and peak RSS. Then the compile of the bundled lists
   plus that feed (``agent.lists.compile_lists``, which builds the index in a child
   ``python -m agent.index.build``) in a helper child: the compile time and the peak RSS of the
   helper and of the build child.
3. **In force in a running server**: ``safenest run`` (its own session, killed in finally) starts
   from the data of step 2 (version 1 in force), configured with the feed URL and the pinned
   key, forwarding only to a trivial upstream on 127.0.0.1. Once it serves, version 2 is
   published (an atomic symlink swap on the server). The scheduler's first run (about a minute
   after start) syncs it; the time from "v2 published" to "a v2-only name answers 0.0.0.0" is
   measured, and split at the feed server's first request for the manifest (sync start). Two
   query loops (one query at a time, 1 s timeout, listed and cached names) run throughout and
   count unanswered queries, which must be 0.
4. **Publish-to-in-force with the default schedule** (computed from the settings plus the
   measurement): worst = interval + jitter + measured sync-to-in-force; average = interval/2 +
   jitter/2 + measured.

Writes bench/results/feed.json. Exit status: 0 when measured and correct, 1 when a correctness
check failed (sync not accepted, a name not blocked, a query unanswered), 2 when the harness
could not run.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import dnswire
from .index_bench import make_domain
from .memory import ChildWatch, LogTail, QueryLoop, is_blocked, status_kib
from .servers import Proc
from .sysstat import free_port

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = "bench.safenest.test"
NEW_NAMES = 100
FIRST_SYNC_WAIT = 150.0  # the first scheduled run is ~60 s after start; bound the wait
STEP_TIMEOUT = 600.0
SAMPLE_INTERVAL = 0.02


def safenest_argv() -> list[str]:
    script = Path(sys.executable).with_name("safenest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFENEST_")}
    env.update({k if k.isupper() else f"SAFENEST_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_measured(argv: list[str], env: dict | None = None, cwd: Path | None = None,
                 timeout: float = STEP_TIMEOUT) -> dict:
    """Run a child to completion (bounded): wall time, exit code, peak RSS (wait4), output."""
    out_f = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=subprocess.STDOUT,
                            env=env, cwd=cwd, start_new_session=True)
    status = usage = None
    try:
        while time.monotonic() - t0 < timeout:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01)
        wall = time.monotonic() - t0
    finally:
        if usage is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.wait4(proc.pid, 0)
            proc.returncode = -9
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -9
    out_f.seek(0)
    text = out_f.read().decode(errors="replace")
    out_f.close()
    return {
        "argv": argv,
        "returncode": proc.returncode,
        "wall_s": wall,
        "peak_rss_kib": usage.ru_maxrss if usage is not None else None,
        "output": text[-4000:],
    }


# -- helper modes, run as children so that each has its own rusage --------------------------


def helper_build(src: str, out: str, key: str, version: int) -> int:
    from agent.feed.build import build_feed

    t = time.monotonic()
    report = build_feed(src, out, key, version=version)
    print(json.dumps({"seconds": time.monotonic() - t, "version": report.manifest.version,
                      "bad_lines": report.bad_lines}))
    return 0


def helper_compile(data: str) -> int:
    import logging

    from agent.lists import compile_lists

    logging.basicConfig(level=logging.WARNING)
    t = time.monotonic()
    snap = compile_lists("", data)  # "": the bundled lists
    seconds = time.monotonic() - t
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "names": len(snap.index), "build_child_peak_kib": child}))
    return 0


def last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return {}


# -- the feed server ------------------------------------------------------------------------


class FeedServer:
    """Serves ``root`` on 127.0.0.1:<OS port> in a thread; remembers when each path was asked."""

    def __init__(self, root: Path):
        hits = self.hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                hits.append((time.monotonic(), self.path))
                super().do_GET()

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}/"

    def first_hit_after(self, t: float, suffix: str) -> float | None:
        return next((at for at, p in list(self.hits) if at >= t and p.endswith(suffix)), None)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the steps ------------------------------------------------------------------------------


def generate(path: Path, n: int, seed: int) -> list[str]:
    """Write n domains to path; return 200 of them spread over the list."""
    rng = random.Random(seed)
    step = max(1, n // 200)
    sample = []
    with open(path, "w") as f:
        f.write("# generated by bench/feed.py\n")
        for i in range(n):
            d = make_domain(rng, i)
            f.write(d + "\n")
            if i % step == 0:
                sample.append(d)
    return sample


def mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def secs(s) -> str:
    return "-" if s is None else f"{s:.2f} s"


def in_force_run(args, tmp: Path, server: FeedServer, url: str, keys: Path, data: Path,
                 www: Path, sample: list[str], new_names: list[str], out: dict) -> None:
    """Step 3: the scheduled sync in a running server, with query loops."""
    up_port = free_port()
    dns_port = free_port()
    procs: list[Proc] = []
    loops: list[QueryLoop] = []
    try:
        upstream = Proc("upstream", [sys.executable, "-m", "bench.memory", "--serve-upstream",
                                     str(up_port)], tmp, clean_env(PYTHONPATH=str(ROOT)))
        procs.append(upstream)
        t_up = time.monotonic()
        while dnswire.resolve("ready.safenest-feed-bench.test", up_port, timeout=0.2) is None:
            if time.monotonic() - t_up > 30 or not upstream.alive():
                raise RuntimeError(f"the local upstream did not answer:\n{upstream.tail()}")
        env = clean_env(feeds=url, feed_keys_dir=str(keys), feed_allow_insecure="true",
                        rate_limit_queries="0")
        argv = [*safenest_argv(), "run", "--data", str(data), "--dns", f"127.0.0.1:{dns_port}",
                "--upstream", f"127.0.0.1:{up_port}"]
        out["command"] = argv
        t_start = time.monotonic()
        sn = Proc("safenest", argv, tmp, env)
        procs.append(sn)
        log = LogTail(sn.log_path)
        ready = None
        while time.monotonic() - t_start < args.start_timeout:
            if not sn.alive():
                raise RuntimeError(f"safenest exited during start:\n{sn.tail()}")
            log.poll()
            if is_blocked(sample[0], dns_port, timeout=0.2):
                ready = time.monotonic() - t_start
                break
            time.sleep(0.1)
        if ready is None:
            raise RuntimeError(f"safenest did not block a v1 name within {args.start_timeout} s:\n"
                               f"{sn.tail()}")
        out["start_to_v1_blocked_s"] = ready
        # The start serves the last good index, then recompiles: let that finish first.
        while not any("lists in force" in line for _, line in log.lines):
            if time.monotonic() - t_start > args.start_timeout or not sn.alive():
                raise RuntimeError(f"no 'lists in force' at start:\n{sn.tail()}")
            log.poll()
            time.sleep(0.05)
        out["start_to_lists_in_force_s"] = time.monotonic() - t_start
        time.sleep(1.0)
        out["v2_blocked_before_publish"] = [is_blocked(n, dns_port) for n in new_names[:3]]

        for _ in range(2):
            loop = QueryLoop(dns_port, sample, FIRST_SYNC_WAIT + 60)
            loop.start()
            loops.append(loop)
        steady = status_kib(sn.pid)
        # Publish version 2: swap the served folder in one step.
        link_tmp = www / "feed.new"
        link_tmp.unlink(missing_ok=True)
        os.symlink("v2", link_tmp)
        t_pub = time.monotonic()
        os.replace(link_tmp, www / "feed")
        out["published_after_start_s"] = t_pub - t_start

        children = ChildWatch(sn.pid)
        peak_rss = 0
        t_blocked = None
        deadline = t_start + FIRST_SYNC_WAIT
        probe = new_names[-1]
        while time.monotonic() < deadline and sn.alive():
            children.sample()
            peak_rss = max(peak_rss, status_kib(sn.pid).get("VmRSS", 0))
            log.poll()
            if server.first_hit_after(t_pub, "manifest.json") is not None:
                got = dnswire.resolve(probe, dns_port, timeout=0.2)
                if got is not None and dnswire.a_records(got) == ["0.0.0.0"]:
                    t_blocked = time.monotonic()
                    break
            time.sleep(SAMPLE_INTERVAL)
        time.sleep(1.0)  # queries keep going a little after the swap
        for loop in loops:
            loop.stop()
        after = status_kib(sn.pid)
        log.poll()
        t_sync = server.first_hit_after(t_pub, "manifest.json")
        out.update({
            "first_scheduled_sync_after_start_s": None if t_sync is None else t_sync - t_start,
            "publish_to_in_force_s": None if t_blocked is None else t_blocked - t_pub,
            "sync_start_to_in_force_s": None if (t_blocked is None or t_sync is None)
            else t_blocked - t_sync,
            "all_v2_names_blocked": all(is_blocked(n, dns_port) for n in new_names),
            "v1_sample_blocked": all(is_blocked(n, dns_port) for n in sample[:50]),
            "server_steady_vmrss_kib": steady.get("VmRSS"),
            "server_peak_vmrss_sampled_kib": peak_rss,
            "server_after_vmrss_kib": after.get("VmRSS"),
            "build_child_peak_kib": children.peak_kib(),
            "loop": {
                "sent": sum(lp.sent for lp in loops),
                "answered": sum(lp.answered for lp in loops),
                "timeouts": sum(lp.timeouts for lp in loops),
                "listed_not_blocked": sum(lp.listed_not_blocked for lp in loops),
                "max_latency_ms": max(lp.max_latency for lp in loops) * 1000,
                "timeouts_after_publish_s": sorted(
                    round(t - t_pub, 3) for lp in loops for t in lp.timeout_at
                )[:50],
            },
            "log": [line for _, line in log.lines if "feed" in line or "in force" in line
                    or "compiled" in line][-20:],
        })
    finally:
        for loop in loops:
            loop.stop_event.set()
        for p in reversed(procs):
            p.stop()
        out["log_tail"] = procs[-1].tail(30) if procs else ""


def measure(args, tmp: Path) -> tuple[dict, list[str]]:
    from agent.feed.sign import generate_key, write_keypair

    res: dict = {"domains": args.domains}
    failures: list[str] = []
    key = generate_key(PUBLISHER, "SafeNest bench")
    (tmp / "secret").mkdir()
    secret, public = write_keypair(tmp / "secret" / "bench.key", key)
    keys = tmp / "keys"
    keys.mkdir()
    shutil.copy(public, keys / public.name)

    # 1. the publisher
    src1, src2 = tmp / "src1", tmp / "src2"
    src1.mkdir()
    src2.mkdir()
    t = time.monotonic()
    sample = generate(src1 / "gambling.txt", args.domains, args.seed)
    res["generate_s"] = time.monotonic() - t
    new_names = [f"v2-{i}.safenest-feed-bench.test" for i in range(NEW_NAMES)]
    shutil.copy(src1 / "gambling.txt", src2 / "gambling.txt")
    with open(src2 / "gambling.txt", "a") as f:
        f.write("".join(n + "\n" for n in new_names))
    www = tmp / "www"
    www.mkdir()
    builds = {}
    for v, src in ((1, src1), (2, src2)):
        r = run_measured([sys.executable, "-m", "bench.feed", "--helper-build", str(src),
                          str(www / f"v{v}"), str(secret), str(v)], cwd=ROOT)
        if r["returncode"] != 0:
            raise RuntimeError(f"build_feed v{v} failed:\n{r['output']}")
        builds[v] = {"wall_s": r["wall_s"], "peak_rss_kib": r["peak_rss_kib"],
                     **last_json(r["output"])}
    res["publisher_build"] = builds
    # The local server's Last-Modified has 1 s granularity: date v1 an hour back, so that the
    # conditional GET of the sync sees v2 as modified even when both were built in one second.
    old = time.time() - 3600
    for path in (www / "v1").rglob("*"):
        os.utime(path, (old, old))
    os.symlink("v1", www / "feed")
    server = FeedServer(www)
    try:
        url = server.url("feed")
        res["feed_url"] = url

        # 2. sync by hand, then compile
        data = tmp / "var"
        sync_argv = [*safenest_argv(), "sync", "--feed", url, "--pubkey", str(keys / public.name),
                     "--data", str(data), "--allow-insecure"]
        r = run_measured(sync_argv, env=clean_env(), cwd=tmp)
        res["sync"] = {k: r[k] for k in ("argv", "returncode", "wall_s", "peak_rss_kib")}
        res["sync"]["output"] = r["output"].strip()
        if r["returncode"] != 0 or "accepted v1" not in r["output"]:
            failures.append(f"safenest sync did not accept v1: {r['output'].strip()[-300:]}")
        comp = run_measured([sys.executable, "-m", "bench.feed", "--helper-compile", str(data)],
                            env=clean_env(), cwd=ROOT)
        info = last_json(comp["output"])
        res["compile"] = {"wall_s": comp["wall_s"], "helper_peak_rss_kib": comp["peak_rss_kib"],
                          "returncode": comp["returncode"], **info}
        if comp["returncode"] != 0 or not info:
            failures.append(f"compile failed: {comp['output'][-300:]}")
        elif info["names"] < args.domains:
            failures.append(f"compiled {info['names']} names, fewer than {args.domains} domains")

        # 3. the scheduled sync in a running server
        live: dict = {}
        res["in_force"] = live
        in_force_run(args, tmp, server, url, keys, data, www, sample, new_names, live)
        if live.get("publish_to_in_force_s") is None:
            failures.append("version 2 was not in force within the bounded wait")
        if not live.get("all_v2_names_blocked"):
            failures.append("a name of version 2 is not blocked")
        if not live.get("v1_sample_blocked"):
            failures.append("a name of version 1 is not blocked")
        if any(live.get("v2_blocked_before_publish", [])):
            failures.append("a v2-only name was blocked before v2 was published")
        loop = live.get("loop", {})
        if loop.get("timeouts", 1) or loop.get("listed_not_blocked", 1):
            failures.append(f"query loop during the sync: {loop}")
    finally:
        server.close()
    return res, failures


def schedule_figures(measured: float | None) -> dict:
    from agent.settings import SETTINGS

    defaults = {s.name: s.default for s in SETTINGS}
    interval_s = float(defaults["sync_interval_hours"]) * 3600
    jitter_s = float(defaults["sync_jitter_minutes"]) * 60
    m = measured or 0.0
    return {
        "interval_s": interval_s,
        "jitter_s": jitter_s,
        "measured_sync_to_in_force_s": measured,
        "worst_s": interval_s + jitter_s + m,
        "average_s": interval_s / 2 + jitter_s / 2 + m,
    }


def table(res: dict) -> list[tuple[str, str]]:
    b1 = res["publisher_build"][1]
    sync, comp, live, sch = res["sync"], res["compile"], res["in_force"], res["schedule"]
    loop = live.get("loop", {})
    return [
        ("domains in the feed", f"{res['domains']:,}"),
        ("publisher build_feed v1 (child): time", secs(b1.get("wall_s"))),
        ("publisher build_feed v1: peak RSS", mib(b1.get("peak_rss_kib"))),
        ("`safenest sync` (local http): time", secs(sync["wall_s"])),
        ("`safenest sync`: peak RSS", mib(sync["peak_rss_kib"])),
        ("compile bundled + feed: time", secs(comp.get("seconds"))),
        ("compile: names", f"{comp.get('names', 0):,}"),
        ("compile: build child peak RSS", mib(comp.get("build_child_peak_kib"))),
        ("sync + compile (by hand): time",
         secs((sync["wall_s"] or 0) + (comp.get("seconds") or 0))),
        ("run: start to v1 blocked", secs(live.get("start_to_v1_blocked_s"))),
        ("run: start to startup compile in force", secs(live.get("start_to_lists_in_force_s"))),
        ("run: first scheduled sync after start", secs(live.get("first_scheduled_sync_after_start_s"))),
        ("run: scheduled sync start -> v2 in force (sync+compile+swap)",
         secs(live.get("sync_start_to_in_force_s"))),
        ("run: v2 published -> v2 in force (first run)", secs(live.get("publish_to_in_force_s"))),
        ("run: server VmRSS steady / peak during sync / 1 s after",
         f"{mib(live.get('server_steady_vmrss_kib'))} / {mib(live.get('server_peak_vmrss_sampled_kib'))}"
         f" / {mib(live.get('server_after_vmrss_kib'))}"),
        ("run: build child peak (VmHWM)", mib(live.get("build_child_peak_kib"))),
        ("queries during the sync: sent / answered / timeouts",
         f"{loop.get('sent')} / {loop.get('answered')} / {loop.get('timeouts')}"),
        ("queries: listed names not blocked / max latency",
         f"{loop.get('listed_not_blocked')} / {loop.get('max_latency_ms', 0):.0f} ms"),
        ("default schedule: worst publish -> in force (computed)",
         f"{sch['worst_s'] / 3600:.2f} h ({sch['worst_s']:.0f} s)"),
        ("default schedule: average publish -> in force (computed)",
         f"{sch['average_s'] / 3600:.2f} h ({sch['average_s']:.0f} s)"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "feed.json")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--helper-build", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--helper-compile", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.helper_build:
        src, out, key, version = args.helper_build
        return helper_build(src, out, key, int(version))
    if args.helper_compile:
        return helper_compile(args.helper_compile)

    print(f"$ .venv/bin/python -m bench.feed {' '.join(argv if argv is not None else sys.argv[1:])}",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="safenest-feed-"))
    res: dict = {}
    failures: list[str] = []
    broke = None
    try:
        res, failures = measure(args, tmp)
    except (Exception, KeyboardInterrupt) as exc:
        broke = f"{type(exc).__name__}: {exc}"
        print(f"harness error: {broke}", file=sys.stderr)
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if res.get("in_force"):
        res["schedule"] = schedule_figures(res["in_force"].get("sync_start_to_in_force_s"))
        rows = table(res)
        width = max(len(k) for k, _ in rows)
        print()
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        sch = res["schedule"]
        print(
            f"\nThe default-schedule rows are computed: interval ({sch['interval_s'] / 3600:.0f} h)"
            f" + jitter ({sch['jitter_s'] / 60:.0f} min) + the measured sync-to-in-force time"
            " (worst); half the interval + half the jitter + the measured time (average)."
        )
    for f in failures:
        print(f"FAIL: {f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": res, "failures": failures, "error": broke},
                                    indent=1, default=str))
    print(f"wrote {args.json}")
    if broke:
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
