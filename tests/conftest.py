from __future__ import annotations

import shutil

import pytest

from tests.dnsfakes import Dnsmasq, FakeUpstream, RunningSafeNest


@pytest.fixture
def fake_upstream():
    servers = []

    def make(host: str = "127.0.0.1") -> FakeUpstream:
        server = FakeUpstream(host)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def dnsmasq(tmp_path):
    if not shutil.which("dnsmasq") and not shutil.os.path.exists("/usr/sbin/dnsmasq"):
        pytest.fail("dnsmasq is not installed: .ci/run installs the Debian package dnsmasq-base")
    servers = []

    def make(lines: list[str], host: str = "127.0.0.1") -> Dnsmasq:
        server = Dnsmasq(tmp_path, lines, host)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def safenest(tmp_path):
    """Start SafeNest on 127.0.0.1 (port chosen by the OS) with setting overrides."""
    running = []

    def make(listen: str = "127.0.0.1:0", environ: dict | None = None, **overrides) -> RunningSafeNest:
        overrides.setdefault("dns", [listen])
        server = RunningSafeNest(tmp_path / f"var{len(running)}", overrides, environ)
        running.append(server)
        return server

    yield make
    for server in running:
        server.stop()
