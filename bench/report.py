"""Markdown tables from a results file: ``python -m bench.report [bench/results/latest.json]``.

This prints the "Results" section of docs/performance.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .run import REPO, SCENARIOS, TITLES


def _num(value, spec: str) -> str:
    if value is None:
        return "-"
    if value == "timeout":
        return "timeout"
    return format(value, spec)


def render(doc: dict) -> str:
    cfg = doc["config"]
    v = doc["versions"]
    out = [
        f"Measured on {doc['started'][:10]} (UTC {doc['started'][11:16]}) with "
        f"`{doc['command']}`. Medians of {cfg['repeat']} runs of {cfg['seconds']:g} s each; "
        f"{cfg['names']:,} cached names, {cfg['blocked_names']:,} blocked names, caches of "
        f"{cfg['cache_entries']:,} entries; {doc['machine']['cpus']} CPUs, kernel "
        f"{doc['machine']['kernel']}; {v.get('dnsperf')}, {v.get('dnsmasq', '').split('  ')[0]}, "
        f"{v.get('unbound')}, {v.get('nsd')}, Python {v.get('python')}"
        + (f", {v['safenest']}" if "safenest" in v else "")
        + (f" at commit {v['safenest_git']}" if v.get("safenest_git") else "")
        + ".",
        "",
    ]
    for name, why in doc.get("skipped", {}).items():
        out += [f"**{name} was skipped:** {why}", ""]
    for name, why in doc.get("failures", {}).items():
        out += [f"**{name} stopped being measured:** {why}", ""]
    for scen in SCENARIOS:
        per = doc["scenarios"].get(scen)
        if not per:
            continue
        title = TITLES[scen]
        if scen == "latency":
            title += f" ({cfg['latency_qps']:,} QPS)"
        out += [
            f"### {title}",
            "",
            "| server | QPS | completed | lost | avg ms | p50 ms | p99 ms | p99.9 ms "
            "| CPU µs/query | upstream µs/query | RcvbufErrors Σ (system) | server drops Σ |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, data in per.items():
            if not isinstance(data, dict) or "median" not in data:
                continue  # "ratios", the logging scenario's "full_over_off"
            m = data["median"]
            out.append(
                f"| {name} | {_num(m['qps'], ',.0f')} | {_num(m['completed'], ',.0f')} "
                f"| {_num(m['lost_total'], 'd')} | {_num(m['avg_ms'], '.3f')} "
                f"| {_num(m['p50_ms'], '.3f')} | {_num(m['p99_ms'], '.3f')} "
                f"| {_num(m['p999_ms'], '.3f')} | **{_num(m['cpu_us_per_query'], '.2f')}** "
                f"| {_num(m['upstream_cpu_us_per_query'], '.2f')} "
                f"| {_num(m['rcvbuf_errors_total'], 'd')} "
                f"| {_num(m['server_socket_drops_total'], 'd')} |"
            )
        out.append("")
        for peer, r in per.get("ratios", {}).items():
            out.append(
                f"- {peer if '/' in peer else 'SafeNest/' + peer}: QPS ×{_num(r['qps'], '.2f')}, CPU per query "
                f"×{_num(r['cpu_us_per_query'], '.2f')}, p50 ×{_num(r['p50_ms'], '.2f')}, "
                f"p99 ×{_num(r['p99_ms'], '.2f')}"
            )
        if "full_over_off" in per:
            r = per["full_over_off"]
            out.append(
                "- query log full/off: "
                + ", ".join(f"{k.removesuffix('_ms')} ×{_num(v, '.2f')}" for k, v in r.items())
            )
        out.append("")
    if doc.get("targets"):
        out += ["### Targets", "", "| target | status | detail |", "|---|---|---|"]
        for t in doc["targets"]:
            out.append(f"| {t['target']} | **{t['status']}** | {t['detail']} |")
        out.append("")
    out.append("Lost is the total over the repeats, and so are both drop columns.")
    out += ["", "Exact commands of this run (first repeat; ports and temp dir vary):", "", "```"]
    out.append(f"$ {doc['command']}")
    for scen in SCENARIOS:
        # The same for every server but the port (and, for misses, the file of fresh names).
        for name, data in doc["scenarios"].get(scen, {}).items():
            if isinstance(data, dict) and data.get("runs"):
                differ = "-p and -d (their own fresh names)" if scen == "misses" else "-p"
                out.append(f"# {scen} ({name}; the others differ only in {differ}):")
                out.append(data["runs"][0]["dnsperf"])
                break
    for key, cmd in doc.get("server_commands", {}).items():
        if not key.endswith(".conf"):
            # Paths relative to the repository, as a reader would type them.
            out.append(f"# {key}:\n{cmd.replace(str(REPO) + '/', '')}")
    out.append("```")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else REPO / "bench" / "results" / "latest.json"
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
