"""Benchmark of the policy decision (standalone; not part of the pytest run).

    .venv/bin/python bench/policy_bench.py [--domains 1000000] [--seed 1] [--runs 7]

Builds a realistic household/school policy: 5 profiles (ages 9, 14 and 16, an adult, the 12+
default), 50 devices (IPs, MACs and CIDRs), 10 schedules, 40 catalogue services with 3 domains
each, a few rules, a reward and SafeSearch engines, over a DomainIndex of N listed domains in
twelve categories (always, 18+, 16+, 12+, 00+, off, an ``id@18+`` list and an allow list).

Then measures, in µs per call (median of --runs runs, each over the same query set):

* ``decide`` for names that are listed nowhere (the common case), names listed in a category
  (padded with subdomain labels, as apps ask them), names under a service domain, SafeSearch
  hosts, and the mix of all of them, spread over the 5 profiles, at an instant inside a schedule
  window and one outside;
* ``decide_for_client`` (the device lookup by IP plus decide);
* ``build_snapshot`` (once: it runs off the hot path after every policy or list change).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.index_bench import _ALNUM, make_domain  # noqa: E402

QUERIES = 20_000
HCM = ZoneInfo("Asia/Ho_Chi_Minh")

# index label, kind, share of the listed domains
CATEGORIES = [
    ("gambling", "block", 0.25),
    ("adult", "block", 0.25),
    ("malware", "block", 0.15),
    ("phishing_scam", "block", 0.10),
    ("social_networks", "block", 0.05),
    ("online_games", "block", 0.05),
    ("online_games@18+", "block", 0.03),
    ("messaging", "block", 0.03),
    ("video_streaming", "block", 0.03),
    ("filter_bypass", "block", 0.02),
    ("ads_trackers", "block", 0.03),
    ("sex_education", "allow", 0.01),
]


class Service:
    def __init__(self, sid: str, domains: tuple[str, ...]) -> None:
        self.id = sid
        self.domains = domains


class Engine:
    def __init__(self, eid: str, hosts: tuple[str, ...], targets: dict[str, str]) -> None:
        self.id = eid
        self.hosts = hosts
        self.targets = targets

    def target(self, level: str) -> str:
        return self.targets[level]


class Catalogue:
    def __init__(self, services: dict, safesearch: dict) -> None:
        self.services = services
        self.safesearch = safesearch


def make_lists(directory: Path, n: int, rng: random.Random):
    """Write one list file per label; return (sources, sample of listed names per label)."""
    from agent.index import Source

    handles = {lab: open(directory / f"{i}.txt", "w") for i, (lab, _k, _s) in enumerate(CATEGORIES)}
    cum = []
    acc = 0.0
    for lab, _k, share in CATEGORIES:
        acc += share
        cum.append((acc, lab))
    listed: list[str] = []
    try:
        for i in range(n):
            d = make_domain(rng, i)
            r = rng.random()
            lab = next((c for limit, c in cum if r < limit), CATEGORIES[0][0])
            handles[lab].write(d + "\n")
            if i % (n // QUERIES or 1) == 0 and d.count(".") <= 3:
                listed.append(d)
    finally:
        for h in handles.values():
            h.close()
    sources = []
    for i, (lab, kind, _s) in enumerate(CATEGORIES):
        sources.append(Source(lab, kind, directory / f"{i}.txt", f"bench/{lab}.txt"))
    return sources, listed


def make_policy(rng: random.Random):
    from agent.policy.model import Device, Override, Policy, Profile, Rule, Schedule

    profiles = (
        Profile("lan", "Lan", birth=(2017, 3), services=frozenset({"tiktok", "roblox"})),
        Profile("minh", "Minh", birth=(2012, 5), categories={"video_streaming": "block"}),
        Profile(
            "linh", "Linh", band="16+", services=frozenset({f"svc{i:02d}" for i in range(0, 37, 3)})
        ),
        Profile("dad", "Dad", kind="adult"),
        Profile("default", "Default", band="12+", services=frozenset({"tiktok"})),
    )
    pids = [p.id for p in profiles]
    devices = []
    for i in range(30):
        devices.append(Device(f"ip{i}", f"ip{i}", "ip", f"192.168.1.{10 + i}", pids[i % 4]))
    for i in range(15):
        mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
        devices.append(Device(f"mac{i}", f"mac{i}", "mac", mac, pids[i % 4]))
    for i in range(5):
        devices.append(
            Device(f"net{i}", f"net{i}", "cidr", f"10.{i}.0.0/{16 + 4 * (i % 3)}", pids[i % 4])
        )
    days = frozenset(range(7))
    schedules = []
    for i in range(10):
        pid = pids[i % 3]
        if i % 2 == 0:
            schedules.append(
                Schedule(f"bed{i}", pid, "Bedtime", days, "21:30", "06:30", "internet_off")
            )
        else:
            schedules.append(
                Schedule(
                    f"hw{i}",
                    pid,
                    "Homework",
                    frozenset({0, 1, 2, 3, 4}),
                    f"{13 + i // 2}:00",
                    f"{14 + i // 2}:30",
                    "block",
                    categories=frozenset({"online_games", "video_streaming"}),
                    services=frozenset({"youtube", "svc05"}),
                )
            )
    rules = (
        Rule("school.edu.vn", "allow"),
        Rule("wiki.example", "allow", "lan"),
        Rule("news.example", "block", "minh"),
        Rule("shop.example", "block"),
    )
    start = datetime(2026, 11, 28, 0, 0, tzinfo=HCM)
    overrides = (
        Override(
            "r1",
            "lan",
            "reward",
            start + timedelta(hours=15),
            start + timedelta(hours=16),
            categories=frozenset({"online_games"}),
        ),
    )
    return Policy(
        profiles=profiles,
        devices=tuple(devices),
        rules=rules,
        schedules=tuple(schedules),
        overrides=overrides,
    )


def make_catalogue(rng: random.Random) -> Catalogue:
    services = {
        "tiktok": Service("tiktok", ("tiktok.com", "tiktokv.com", "tiktokcdn.com")),
        "youtube": Service("youtube", ("youtube.com", "ytimg.com", "googlevideo.com")),
        "roblox": Service("roblox", ("roblox.com", "rbxcdn.com", "roblox.qq.com")),
    }
    for i in range(37):
        sid = f"svc{i:02d}"
        services[sid] = Service(sid, tuple(f"{sid}-{k}.example.com" for k in ("app", "cdn", "api")))
    google_hosts = tuple(
        f"www.google.{tld}" for tld in ("com", "com.vn", "co.uk", "de", "fr", "co.jp")
    )
    safesearch = {
        "google": Engine("google", google_hosts, {"on": "forcesafesearch.google.com"}),
        "youtube": Engine(
            "youtube",
            ("www.youtube.com", "m.youtube.com", "youtubei.googleapis.com"),
            {"strict": "restrict.youtube.com", "moderate": "restrictmoderate.youtube.com"},
        ),
        "bing": Engine("bing", ("www.bing.com",), {"on": "strict.bing.com"}),
    }
    return Catalogue(services, safesearch)


def pad(rng: random.Random, name: str, labels: int = 4) -> str:
    parts = name.split(".")
    while len(parts) < labels:
        parts.insert(0, "".join(rng.choices(_ALNUM, k=rng.randint(2, 8))))
    return ".".join(parts)


def query_sets(
    rng: random.Random, listed: list[str], catalogue: Catalogue, n: int
) -> dict[str, list[str]]:
    misses = []
    j = 0
    while len(misses) < len(listed):
        d = make_domain(rng, 50 * n + j)  # tokens beyond the listed range: never listed
        j += 1
        if d.count(".") <= 3:
            misses.append(pad(rng, d))
    hits = [pad(rng, d) for d in listed]
    service_names = [pad(rng, d, 3) for s in catalogue.services.values() for d in s.domains] * 20
    safesearch = [h for e in catalogue.safesearch.values() for h in e.hosts] * 100
    mix = (
        misses[: int(0.8 * QUERIES)]
        + hits[: int(0.15 * QUERIES)]
        + service_names[: int(0.03 * QUERIES)]
    )
    mix += safesearch[: QUERIES - len(mix)]
    rng.shuffle(mix)
    return {
        "miss": misses,
        "hit": hits,
        "service": service_names,
        "safesearch": safesearch,
        "mix": mix,
    }


def median_us(fn, items, runs: int) -> float:
    fn(items)  # warm up: index pages faulted in, memos filled
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(items)
        out.append((time.perf_counter() - t) / len(items) * 1e6)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)

    from agent.feed.categories import DEFAULT_CATEGORIES
    from agent.index import DomainIndex, build_index, to_wire
    from agent.policy.decision import decide, decide_for_client
    from agent.policy.snapshot import build_snapshot

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="safenest-policy-bench-"))
    try:
        sources, listed = make_lists(work, args.domains, rng)
        t = time.perf_counter()
        build_index(sources, work / "lists.idx")
        compile_s = time.perf_counter() - t
        index = DomainIndex.open(work / "lists.idx")
        policy = make_policy(rng)
        catalogue = make_catalogue(rng)
        criteria = {c.id: c for c in DEFAULT_CATEGORIES}
        t = time.perf_counter()
        snapshot = build_snapshot(policy, criteria, index, catalogue, "bench")
        build_ms = (time.perf_counter() - t) * 1e3
        assert not snapshot.warnings, snapshot.warnings

        sets = query_sets(rng, listed, catalogue, args.domains)
        profiles = [p for p in policy.profiles]
        # Saturday 10:00 (no window active) and Monday 22:00 (bedtime and homework windows).
        # In UTC, as the resolver passes it (see PolicySnapshot.state_at).
        instants = {
            "outside": datetime(2026, 11, 28, 10, 0, tzinfo=HCM).astimezone(UTC),
            "in_window": datetime(2026, 11, 30, 22, 0, tzinfo=HCM).astimezone(UTC),
        }
        out: dict = {
            "domains": len(index),
            "profiles": len(policy.profiles),
            "devices": len(policy.devices),
            "schedules": len(policy.schedules),
            "services": len(catalogue.services),
            "index_compile_s": round(compile_s, 2),
            "build_snapshot_ms": round(build_ms, 2),
            "queries_per_set": {k: len(v) for k, v in sets.items()},
        }
        for when, now in instants.items():
            for label, names in sets.items():
                work_items = [
                    (to_wire(n), profiles[i % len(profiles)]) for i, n in enumerate(names)
                ]

                def run(items, now=now):
                    for key, profile in items:
                        decide(key, 1, profile, now, snapshot)

                out[f"decide_{label}_{when}_us"] = round(median_us(run, work_items, args.runs), 3)
        ips = [d.value for d in policy.devices if d.match == "ip"] + ["192.168.9.9", "10.1.2.3"]
        client_items = [(to_wire(n), ips[i % len(ips)]) for i, n in enumerate(sets["mix"])]
        now = instants["outside"]

        def run_client(items):
            for key, ip in items:
                decide_for_client(key, 1, ip, None, now, snapshot)

        out["decide_for_client_mix_us"] = round(median_us(run_client, client_items, args.runs), 3)

        # For scale: the bare index lookup of the same names (the floor of any decision).
        lookup = index.lookup

        def run_lookup(items):
            for key, _profile in items:
                lookup(key)

        for label in ("miss", "hit", "mix"):
            items = [(to_wire(n), None) for n in sets[label]]
            out[f"index_lookup_{label}_us"] = round(median_us(run_lookup, items, args.runs), 3)
        actions: dict[str, int] = {}
        for key, profile in [(to_wire(n), profiles[i % 5]) for i, n in enumerate(sets["mix"])]:
            a = decide(key, 1, profile, now, snapshot).action
            actions[a] = actions.get(a, 0) + 1
        out["mix_actions"] = actions
        index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
