"""/metrics for Prometheus: counters read from the running agent at scrape time.

A custom Collector reads what the resolver counts anyway (answers by kind, blocks by reason,
the latency histogram of forwarded answers, the upstreams' own counters, the query log's
counters), so a query costs nothing more for being measured. Every name starts with
``safenest_``. Only clients in ``metrics_clients`` (loopback by default) may read it: query
counts about children are the family's business. Answered by the admin server's threads.
"""

from __future__ import annotations

import ipaddress
import time

from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector

from . import readings

bp = Blueprint("metrics", __name__)


def init_app(app) -> None:
    """Parse METRICS_CLIENTS once (a bad network is an error at start, not at the first scrape)
    and make the app's own registry (not the global one: several apps may live in a process)."""
    app.extensions["safenest_metrics_clients"] = [
        ipaddress.ip_network(n, strict=False) for n in app.config["METRICS_CLIENTS"]
    ]
    registry = CollectorRegistry(auto_describe=False)
    agent = app.config["SAFENEST"]
    if agent is not None:
        registry.register(SafeNestCollector(agent))
    ProcessCollector(namespace="safenest", registry=registry)
    app.extensions["safenest_registry"] = registry


def allowed(remote: str | None, networks) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").partition("%")[0])
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address.version == n.version and address in n for n in networks)


@bp.get("/metrics")
def metrics():
    if not allowed(request.remote_addr, current_app.extensions["safenest_metrics_clients"]):
        abort(403, description="metrics are only for the addresses in the metrics_clients setting")
    body = generate_latest(current_app.extensions["safenest_registry"])
    return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)


class SafeNestCollector:
    """Reads the agent's counters when Prometheus scrapes (see readings.py for the rules)."""

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        agent = self.agent
        server = agent.server
        yield from self._answers(server)
        yield from self._upstreams(agent, server)
        yield from self._querylog(agent)
        yield from self._lists_and_policy(agent)

    def _answers(self, server):
        queries = CounterMetricFamily(
            "safenest_queries",
            "Queries answered, by answer kind (rate_limited: dropped on purpose).",
            labels=["kind"],
        )
        for kind, n in server.answers.items():
            queries.add_metric([kind.value], n)
        yield queries
        blocks: dict[tuple[str, str], int] = {}
        for reason, n in server.blocks().items():
            key = readings.block_category(reason)
            blocks[key] = blocks.get(key, 0) + n
        blocked = CounterMetricFamily(
            "safenest_blocked",
            "Blocked answers by category ('' when a rule, schedule, service or override decided) "
            "and by what decided (category, always, bypass, rule, schedule, service, override, "
            "allowlist-mode).",
            labels=["category", "by"],
        )
        for (category, by), n in sorted(blocks.items()):
            blocked.add_metric([category, by], n)
        yield blocked
        yield CounterMetricFamily(
            "safenest_cache_hits",
            "Answers served from the cache (repeats served by the replay memo included).",
            value=server.answers["cached"],
        )
        yield CounterMetricFamily(
            "safenest_internal_errors",
            "Queries answered SERVFAIL because of SafeNest's own error (each one is logged).",
            value=server.errors,
        )
        yield CounterMetricFamily(
            "safenest_send_failures", "Answers the OS would not send.", value=server.send_failures
        )
        yield GaugeMetricFamily(
            "safenest_tcp_connections", "DNS-over-TCP connections open.", value=server.tcp_open
        )

    def _upstreams(self, agent, server):
        latency = HistogramMetricFamily(
            "safenest_forwarded_latency_seconds",
            "Time from a query's arrival to its answer, for answers fetched from an upstream "
            "just now (the upstream's round trip and SafeNest's own work), by upstream.",
            labels=["upstream"],
        )
        bounds = server.latency.bounds
        for upstream, (counts, total) in sorted(server.latency.snapshot().items()):
            buckets, running = [], 0
            for bound, n in zip(bounds, counts, strict=False):
                running += n
                buckets.append((_le(bound), running))
            buckets.append(("+Inf", running + counts[-1]))
            latency.add_metric([upstream], buckets, total)
        yield latency
        answered = CounterMetricFamily(
            "safenest_upstream_answers", "Answers received from each upstream.", labels=["upstream"]
        )
        errors = CounterMetricFamily(
            "safenest_upstream_errors",
            "Queries to each upstream that timed out or failed.",
            labels=["upstream"],
        )
        rtt = GaugeMetricFamily(
            "safenest_upstream_rtt_seconds",
            "Each upstream's smoothed round-trip time.",
            labels=["upstream"],
        )
        down = GaugeMetricFamily(
            "safenest_upstream_down",
            "1 while an upstream is skipped after failures.",
            labels=["upstream"],
        )
        now = time.monotonic()
        for u in agent.forwarder.upstreams:
            answered.add_metric([u.name], u.answered)
            errors.add_metric([u.name], u.errors)
            rtt.add_metric([u.name], u.rtt)
            down.add_metric([u.name], 1 if u.down_until > now else 0)
        yield from (answered, errors, rtt, down)
        yield CounterMetricFamily(
            "safenest_upstream_ignored_responses",
            "Upstream responses ignored because their ID or question did not match.",
            value=agent.forwarder.ignored_responses,
        )
        cache = agent.cache
        yield GaugeMetricFamily("safenest_cache_entries", "Answers in the cache.", value=len(cache))
        yield GaugeMetricFamily(
            "safenest_cache_bytes", "Bytes of answers in the cache.", value=cache.bytes
        )

    def _querylog(self, agent):
        ql = agent.querylog
        if ql is None:
            return
        c = ql.counters()
        yield CounterMetricFamily(
            "safenest_querylog_dropped",
            "Query log entries dropped because the queue was full (DNS never waits for the disk)"
            " or the writer process died before writing them.",
            value=c["dropped"],
        )
        yield CounterMetricFamily(
            "safenest_querylog_writer_restarts",
            "Query log writer processes started again after one died.",
            value=c["restarts"],
        )
        yield GaugeMetricFamily(
            "safenest_querylog_queue_entries",
            "Query log entries waiting to be written.",
            value=c["queued"],
        )
        yield CounterMetricFamily(
            "safenest_querylog_written",
            "Query log entries stored (logged or counted).",
            value=c["written"],
        )
        yield CounterMetricFamily(
            "safenest_querylog_write_errors",
            "Query log writes that failed (kept and retried).",
            value=c["write_errors"],
        )
        yield CounterMetricFamily(
            "safenest_querylog_rejected",
            "Query log entries that could not be read.",
            value=c["rejected"],
        )

    def _lists_and_policy(self, agent):
        yield GaugeMetricFamily(
            "safenest_policy_revision",
            "Revision of the policy database in force (bumped by every change).",
            value=agent.policy_revision if agent.policy_revision is not None else -1,
        )
        lists = InfoMetricFamily("safenest_lists", "The compiled lists in force.")
        lists.add_metric([], {"source": agent.lists.label})
        yield lists
        yield GaugeMetricFamily(
            "safenest_lists_names",
            "Names in the compiled lists in force.",
            value=len(agent.lists.index),
        )
        version = GaugeMetricFamily(
            "safenest_feed_version",
            "Version of each publisher's feed in force.",
            labels=["publisher"],
        )
        age = GaugeMetricFamily(
            "safenest_feed_age_seconds",
            "Seconds since each feed in force was issued by its publisher.",
            labels=["publisher"],
        )
        expired = GaugeMetricFamily(
            "safenest_feed_expired",
            "1 when a feed in force has expired (it stays in force until a newer one is accepted).",
            labels=["publisher"],
        )
        entries = GaugeMetricFamily(
            "safenest_feed_list_entries",
            "Entries of each list of the feeds in force, by publisher and list.",
            labels=["publisher", "list"],
        )
        for f in readings.feeds(agent):
            version.add_metric([f.publisher], f.version)
            age.add_metric([f.publisher], f.age_seconds())
            expired.add_metric([f.publisher], 1 if f.expired else 0)
            for path, count in f.lists:
                entries.add_metric([f.publisher, path], count)
        yield from (version, age, expired, entries)


def _le(bound: float) -> str:
    return repr(float(bound))
