"""Starting the DNS server on machines that differ from ours."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from agent.dns import server as server_module
from agent.dns.server import BindError, DnsServer
from agent.dns.steps.client_gate import ClientGate


def _server() -> DnsServer:
    gate = ClientGate(["127.0.0.0/8"], 0, 60)
    return DnsServer(gate, gate=gate, udp_receive_buffer=1 << 20, tcp_idle_timeout=1, tcp_max_connections=4)


class _NoIpv6Socket(socket.socket):
    def __init__(self, family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


def test_default_ipv6_wildcard_is_skipped_when_the_kernel_has_no_ipv6(monkeypatch, caplog):
    monkeypatch.setattr(server_module.socket, "socket", _NoIpv6Socket)

    async def start() -> list:
        server = _server()
        await server.start([("127.0.0.1", 0), ("::", 0)])
        try:
            return server.addresses
        finally:
            server.close()

    addresses = asyncio.run(start())
    assert [(proto, host) for proto, host, _ in addresses] == [("udp", "127.0.0.1"), ("tcp", "127.0.0.1")]
    assert "IPv6 is off on this machine" in caplog.text


def test_an_explicit_ipv6_address_that_cannot_be_used_is_an_error(monkeypatch):
    monkeypatch.setattr(server_module.socket, "socket", _NoIpv6Socket)

    async def start() -> None:
        server = _server()
        try:
            await server.start([("::1", 0)])
        finally:
            server.close()

    with pytest.raises(BindError, match=r"cannot listen on \[::1\]:0"):
        asyncio.run(start())
