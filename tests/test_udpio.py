"""agent/dns/_udpio.c (built by `make compile`): batched UDP reads and writes with raw
addresses, on real sockets over IPv4 and IPv6 loopback.

Without the build these tests skip; the server then uses recvfrom and sendto, and
tests/test_resolver_e2e.py runs against whichever of the two is in place (CI runs both)."""

from __future__ import annotations

import socket

import pytest

udpio = pytest.importorskip("agent.dns._udpio", reason="not built: make compile")

from agent.dns.server import address_text  # noqa: E402

SIZE = 512


def _pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    try:
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((host, 0))
    except OSError:
        pytest.skip(f"{host} is not configured here")
    server.setblocking(False)
    client = socket.socket(family, socket.SOCK_DGRAM)
    client.bind((host, 0))
    client.settimeout(5)
    return server, client


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["ipv4", "ipv6"])
def pair(request):
    server, client = _pair(*request.param)
    yield server, client
    server.close()
    client.close()


def _wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], 5)[0], "nothing arrived"


def test_nothing_waiting_gives_an_empty_list(pair):
    server, _ = pair
    assert udpio.recv_batch(server.fileno(), bytearray(4 * SIZE), 4, SIZE) == []


def test_a_burst_is_read_in_order_with_the_senders_address(pair):
    server, client = pair
    for i in range(5):
        client.sendto(b"query %d" % i, server.getsockname())
    _wait_readable(server)
    items: list = []
    while len(items) < 15:  # loopback delivers them at once, but do not rely on it
        items += udpio.recv_batch(server.fileno(), bytearray(8 * SIZE), 8, SIZE)
    assert items[0::3] == [b"query %d" % i for i in range(5)]
    # The host key turns into the text recvfrom gives.
    texts = {address_text(key) for key in items[2::3]}
    assert texts == {client.getsockname()[0]}
    # The raw address answers the sender, on its port.
    assert udpio.send_batch(server.fileno(), [b"reply 0", items[1], b"reply 4", items[13]]) == 0
    assert client.recvfrom(100) == (b"reply 0", server.getsockname())
    assert client.recvfrom(100)[0] == b"reply 4"


def test_count_bounds_one_read_and_the_rest_waits(pair):
    server, client = pair
    for i in range(3):
        client.sendto(b"q%d" % i, server.getsockname())
    _wait_readable(server)
    first = udpio.recv_batch(server.fileno(), bytearray(2 * SIZE), 2, SIZE)
    assert first[0::3] == [b"q0", b"q1"]
    assert udpio.recv_batch(server.fileno(), bytearray(2 * SIZE), 2, SIZE)[0::3] == [b"q2"]


def test_a_datagram_longer_than_size_is_cut_to_size(pair):
    server, client = pair
    client.sendto(b"x" * 1000 + b"tail", server.getsockname())
    _wait_readable(server)
    (data, _, _) = udpio.recv_batch(server.fileno(), bytearray(SIZE), 1, SIZE)
    assert data == b"x" * SIZE


def test_send_batch_counts_what_the_kernel_refuses(pair):
    server, client = pair
    good = _raw_address(client)
    # A sockaddr of a family this socket cannot send to: refused, the next one still goes.
    bad = b"\x01\x00" + bytes(14)  # AF_UNIX, nonsense
    assert udpio.send_batch(server.fileno(), [b"one", bad, b"two", good]) == 1
    assert client.recvfrom(100)[0] == b"two"


def test_bad_arguments_raise_and_send_nothing(pair):
    server, client = pair
    fd = server.fileno()
    with pytest.raises(ValueError):
        udpio.recv_batch(fd, bytearray(SIZE), 2, SIZE)  # buffer too small for 2
    with pytest.raises(ValueError):
        udpio.recv_batch(fd, bytearray(SIZE), 0, SIZE)
    with pytest.raises(ValueError):
        udpio.recv_batch(fd, bytearray(100 * SIZE), udpio.MAX_BATCH + 1, SIZE)
    with pytest.raises(TypeError):
        udpio.recv_batch(fd, bytes(SIZE), 1, SIZE)  # not writable
    with pytest.raises(ValueError):
        udpio.send_batch(fd, [b"lonely"])
    with pytest.raises(TypeError):
        udpio.send_batch(fd, [b"data", "not bytes"])
    with pytest.raises(TypeError):
        udpio.send_batch(fd, [b"data", b"\x02" * 200])  # longer than any sockaddr
    with pytest.raises(TypeError):
        udpio.send_batch(fd, (b"data", _raw_address(client)))  # a tuple, not a list
    client.settimeout(0.2)
    with pytest.raises(socket.timeout):
        client.recvfrom(100)


def test_a_closed_descriptor_is_an_oserror_for_reading_and_a_refusal_for_sending():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()
    with pytest.raises(OSError):
        udpio.recv_batch(fd, bytearray(SIZE), 1, SIZE)
    assert udpio.send_batch(fd, [b"a", b"\x02\x00" + bytes(14), b"b", b"\x02\x00" + bytes(14)]) == 2


def test_many_replies_go_out_in_chunks_of_max_batch(pair):
    server, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    address = _raw_address(client)
    count = udpio.MAX_BATCH * 2 + 3
    items: list = []
    for i in range(count):
        items += [b"r%d" % i, address]
    assert udpio.send_batch(server.fileno(), items) == 0
    assert [client.recvfrom(100)[0] for _ in range(count)] == [b"r%d" % i for i in range(count)]


def _raw_address(sock: socket.socket) -> bytes:
    """The raw sockaddr of `sock`, as recv_batch reports a sender: ask it to send one."""
    probe = socket.socket(sock.family, socket.SOCK_DGRAM)
    probe.bind((sock.getsockname()[0], 0))
    probe.setblocking(False)
    try:
        sock.sendto(b"?", probe.getsockname())
        _wait_readable(probe)
        return udpio.recv_batch(probe.fileno(), bytearray(SIZE), 1, SIZE)[1]
    finally:
        probe.close()
