"""The admin server: /metrics and /healthz from a real SafeNest over real HTTP (waitress on
127.0.0.1), and the Flask app factory with Flask's test client."""

from __future__ import annotations

import http.client
import json
import socket

import dns.message
import dns.query
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dnsfakes import RunningSafeNest
from webui import create_app
from webui.server import parse_admin_listen

ADMIN = "127.0.0.1:0"


@pytest.fixture
def lists(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("casino.test\n")
    (folder / "malware.txt").write_text("malware.test\n")
    return folder


@pytest.fixture
def upstream(fake_upstream):
    up = fake_upstream()
    up.answer("www.example.test", "A", "192.0.2.10", ttl=3600)
    return up


@pytest.fixture
def running(safenest, upstream, lists):
    def make(**overrides):
        settings = {
            "upstream": [upstream.address],
            "blocklists_dir": str(lists),
            "admin_listen": ADMIN,
        }
        return safenest(**{**settings, **overrides})

    return make


def ask(server, name, times=1):
    query = dns.message.make_query(name, "A", use_edns=0)
    for _ in range(times):
        query.id = (query.id + 1) % 65536
        dns.query.udp(query, server.host, port=server.port, timeout=5)


def get(server, path, source="127.0.0.1"):
    admin = server.agent.admin
    conn = http.client.HTTPConnection(
        admin.host, admin.port, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        conn.close()


def samples(text):
    """{(name, sorted label items): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_show_the_counts_of_the_queries_answered(running, upstream):
    server = running()
    ask(server, "casino.test", 3)  # blocked, then replayed twice
    ask(server, "malware.test")
    ask(server, "www.example.test", 2)  # forwarded, then cached
    status, ctype, text = get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    m = samples(text)
    assert m[("safenest_queries_total", (("kind", "blocked"),))] == 4
    assert m[("safenest_queries_total", (("kind", "forwarded"),))] == 1
    assert m[("safenest_queries_total", (("kind", "cached"),))] == 1
    assert m[("safenest_blocked_total", (("by", "category"), ("category", "gambling")))] == 3
    assert m[("safenest_blocked_total", (("by", "always"), ("category", "malware")))] == 1
    assert m[("safenest_cache_hits_total", ())] == 1
    up = upstream.address
    assert m[("safenest_forwarded_latency_seconds_count", (("upstream", up),))] == 1
    assert m[("safenest_forwarded_latency_seconds_bucket", (("le", "+Inf"), ("upstream", up)))] == 1
    assert m[("safenest_forwarded_latency_seconds_sum", (("upstream", up),))] > 0
    assert m[("safenest_upstream_answers_total", (("upstream", up),))] == 1
    assert m[("safenest_upstream_errors_total", (("upstream", up),))] == 0
    assert m[("safenest_querylog_dropped_total", ())] == 0
    assert ("safenest_querylog_queue_entries", ()) in m
    assert m[("safenest_feed_version", (("publisher", "safenest-default"),))] >= 1
    assert m[("safenest_feed_age_seconds", (("publisher", "safenest-default"),))] >= 0
    assert m[("safenest_lists_names", ())] == 2
    assert m[("safenest_policy_revision", ())] == server.agent.policy_revision
    assert any(name == "safenest_lists_info" for name, _ in m)
    assert all(name.startswith("safenest_") for name, _ in m)


def test_metrics_are_refused_to_clients_outside_metrics_clients(running):
    server = running(metrics_clients=["127.0.0.1/32"])
    status, _, text = get(server, "/metrics", source="127.0.0.2")
    assert status == 403 and "safenest_queries_total" not in text
    assert get(server, "/metrics", source="127.0.0.1")[0] == 200
    # /healthz says nothing about the children's queries: any LAN client may read it.
    assert get(server, "/healthz", source="127.0.0.2")[0] == 200


def test_healthz_says_dns_is_up_and_what_is_in_force(running):
    server = running()
    status, ctype, text = get(server, "/healthz")
    body = json.loads(text)
    assert status == 200 and ctype == "application/json"
    assert body["status"] == "ok" and body["dns"]["up"] is True
    assert f"udp 127.0.0.1:{server.port}" in body["dns"]["listening"]
    assert body["lists"]["names"] == 2
    assert [f["publisher"] for f in body["feeds"]] == ["safenest-default"]
    assert body["policy"]["revision"] == server.agent.policy_revision
    assert body["querylog"]["privacy"] == "full"


def test_the_admin_server_stops_with_the_agent(tmp_path, upstream, lists):
    server = RunningSafeNest(
        tmp_path / "var",
        {
            "dns": ["127.0.0.1:0"],
            "upstream": [upstream.address],
            "blocklists_dir": str(lists),
            "admin_listen": ADMIN,
        },
    )
    admin = server.agent.admin
    assert get(server, "/healthz")[0] == 200
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection((admin.host, admin.port), timeout=2).close()


def test_a_port_that_cannot_be_had_leaves_dns_running(safenest, upstream, lists, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = safenest(
            upstream=[upstream.address], blocklists_dir=str(lists), admin_listen=f"127.0.0.1:{port}"
        )
        assert server.agent.admin is None
        assert "cannot serve the admin page on 127.0.0.1:" in caplog.text
        ask(server, "www.example.test")  # DNS answers
        assert server.agent.server.answers["forwarded"] == 1


def test_create_app_with_flasks_test_client(running):
    server = running(admin_listen="off")
    assert server.agent.admin is None
    app = create_app(
        {"TESTING": True, "SAFENEST": server.agent, "METRICS_CLIENTS": ["192.168.1.0/24"]}
    )
    client = app.test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.0.0.5"}).status_code == 403
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403
    ok = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.168.1.20"})
    assert ok.status_code == 200 and "safenest_queries_total" in ok.get_data(as_text=True)
    # IPv4-mapped IPv6 is the same client.
    mapped = client.get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:192.168.1.20"})
    assert mapped.status_code == 200
    assert client.get("/healthz").get_json()["dns"]["up"] is True


def test_create_app_without_an_agent_says_dns_is_down():
    client = create_app({"TESTING": True}).test_client()
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["status"] == "down"
    metrics = client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert metrics.status_code == 200 and "safenest_queries_total" not in metrics.get_data(
        as_text=True
    )
    with pytest.raises(ValueError):
        create_app({"TESTING": True, "METRICS_CLIENTS": ["not a network"]})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::]:8080", ("::", 8080)),
        ("192.168.1.2", ("192.168.1.2", 80)),
        ("off", None),
        ("", None),
    ],
)
def test_admin_listen_is_parsed(text, expected):
    assert parse_admin_listen(text) == expected


@pytest.mark.parametrize("text", ["safenest.lan:80", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_bad_admin_listen_is_a_clear_error(text):
    with pytest.raises(ValueError, match="admin_listen"):
        parse_admin_listen(text)
