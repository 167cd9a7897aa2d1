"""The query log's hand-off (agent/querylog/handoff.py) on a real event loop and a real pipe.

The reader side is multiprocessing.connection, as in the writer process: every frame must
arrive whole and in order, also when the pipe was full and the rest waited for the loop to
say it has room, and also when the sender is detached in the middle of a frame and the
stream is finished by blocking writes (QueryLog.stop's path).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections import deque
from multiprocessing.connection import Connection

import pytest

from agent.querylog import handoff
from agent.querylog.handoff import LoopSender
from agent.querylog.writer import decode, encode

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class FakeChild:
    """What LoopSender uses of a writer: the pipe it writes, the pipe of its answers and the
    count of items sent. `answers` is the writer's end of the second pipe."""

    def __init__(self, fd: int):
        self.inbox = Connection(fd, readable=False)
        r, w = os.pipe()
        self.acks = Connection(r, writable=False)
        self.answers = Connection(w, readable=False)
        self.sent = 0
        self.heard: list = []
        self.gone = threading.Event()

    def attach_to(self, sender: LoopSender) -> None:
        sender.attach(self, self.heard.append, self.gone.set)

    def close(self) -> None:
        for end in (self.inbox, self.acks, self.answers):
            end.close()


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def on_loop(loop, fn):
    done = threading.Event()
    box = []

    def run():
        box.append(fn())
        done.set()

    loop.call_soon_threadsafe(run)
    assert done.wait(5)
    return box[0]


def wait_for(test, seconds: float = 5.0) -> bool:
    pause = threading.Event()
    for _ in range(int(seconds / 0.02)):
        if test():
            return True
        pause.wait(0.02)
    return test()


def read_entries(reader: Connection, count: int) -> list:
    got = []
    while len(got) < count:
        assert reader.poll(10), f"only {len(got)} of {count} entries arrived"
        _now, items = decode(reader.recv_bytes())
        got += items
    return got


def entry(i: int) -> tuple:
    return (1_700_000_000.0 + i, "192.168.1.7", "", "kid", f"q{i}.example", 1, "forwarded", "")


@pytest.fixture
def pipe():
    r, w = os.pipe()
    reader = Connection(r, writable=False)
    child = FakeChild(w)
    yield reader, child
    reader.close()
    child.close()


def test_every_entry_arrives_in_order_in_chunks(loop, pipe):
    reader, child = pipe
    queue = deque(entry(i) for i in range(1_000))
    sender = LoopSender(loop, queue, lambda: 1.0)
    on_loop(loop, lambda: child.attach_to(sender))
    assert read_entries(reader, 1_000) == [entry(i) for i in range(1_000)]
    assert child.sent == 1_000 and not queue
    on_loop(loop, sender.detach)


def test_a_full_pipe_keeps_the_rest_until_there_is_room(loop, pipe):
    reader, child = pipe
    room = fcntl.fcntl(child.inbox.fileno(), F_GETPIPE_SZ)
    n = 4 * room // 60  # several pipes' worth: the writes must wait for the reader
    queue = deque(entry(i) for i in range(n))
    sender = LoopSender(loop, queue, lambda: 1.0)
    on_loop(loop, lambda: child.attach_to(sender))
    # Nobody reads yet: the loop must not block, and what has no room waits in `out`.
    assert wait_for(lambda: on_loop(loop, lambda: not queue))
    assert on_loop(loop, lambda: len(sender.out)) > room
    assert read_entries(reader, n) == [entry(i) for i in range(n)]
    assert on_loop(loop, lambda: len(sender.out)) == 0


def test_a_stuck_reader_fills_out_to_its_limit_then_the_queue_keeps_the_rest(
    loop, pipe, monkeypatch
):
    reader, child = pipe
    monkeypatch.setattr(handoff, "OUT_LIMIT", 64 * 1024)
    queue = deque(entry(i) for i in range(20_000))
    sender = LoopSender(loop, queue, lambda: 1.0)
    on_loop(loop, lambda: child.attach_to(sender))
    # Several looks while nobody reads.
    threading.Event().wait(3 * handoff.POLL)
    waiting = on_loop(loop, lambda: len(sender.out))
    assert 0 < waiting < handoff.OUT_LIMIT + 64 * 200  # the limit, plus one chunk at most
    assert len(queue) > 10_000  # the rest stayed queued, where the bound applies
    assert read_entries(reader, 20_000) == [entry(i) for i in range(20_000)]


def test_detached_mid_frame_the_stream_goes_on_whole(loop, pipe):
    reader, child = pipe
    room = fcntl.fcntl(child.inbox.fileno(), F_GETPIPE_SZ)
    n = 2 * room // 60
    queue = deque(entry(i) for i in range(n))
    sender = LoopSender(loop, queue, lambda: 1.0)
    on_loop(loop, lambda: child.attach_to(sender))
    assert wait_for(lambda: on_loop(loop, lambda: not queue))
    begun, _ = on_loop(loop, sender.detach)
    assert begun  # the pipe was full: part of a frame had not been written
    assert os.get_blocking(child.inbox.fileno())  # blocking again, for the stop path
    # QueryLog.stop's path: the begun frame first, then the rest by blocking sends.
    got: list = []
    drain = threading.Thread(target=lambda: got.extend(read_entries(reader, n)))
    drain.start()
    view = memoryview(begun)
    while view:
        view = view[os.write(child.inbox.fileno(), view) :]
    rest = list(queue)
    queue.clear()
    child.inbox.send_bytes(encode((1.0, rest)))
    drain.join(20)
    assert got == [entry(i) for i in range(n)]


def test_a_broken_pipe_stops_sending_and_the_end_of_the_answers_says_gone(loop, pipe):
    reader, child = pipe
    reader.close()  # the writer died
    queue = deque(entry(i) for i in range(100))
    sender = LoopSender(loop, queue, lambda: 1.0)
    on_loop(loop, lambda: child.attach_to(sender))
    assert wait_for(lambda: child.sent > 0)
    threading.Event().wait(3 * handoff.POLL)  # more looks: nothing more is taken
    # The chunk that met the broken pipe is counted as sent (the supervisor counts it as
    # lost); the rest stays queued for the next writer.
    assert child.sent == handoff.CHUNK
    assert list(queue) == [entry(i) for i in range(handoff.CHUNK, 100)]
    assert not child.gone.is_set()
    child.answers.close()  # its process ended: the end of its answers
    assert child.gone.wait(5)


def test_answers_are_read_on_the_loop_also_when_a_frame_comes_in_pieces(loop, pipe):
    _reader, child = pipe
    sender = LoopSender(loop, deque(), lambda: 1.0)
    on_loop(loop, lambda: child.attach_to(sender))
    child.answers.send_bytes(encode(("counts", 1, 2, 3, 4, 5)))
    assert wait_for(lambda: child.heard == [("counts", 1, 2, 3, 4, 5)])
    first = handoff.frame(("done", 7, None))
    whole = first + handoff.frame(("counts", 9, 9, 0, 1, 0))
    fd = child.answers.fileno()
    os.write(fd, whole[:3])  # not even a whole length
    threading.Event().wait(0.1)
    os.write(fd, whole[3 : len(first) - 1])  # all but the first frame's last byte
    threading.Event().wait(0.1)
    assert len(child.heard) == 1
    os.write(fd, whole[len(first) - 1 :])
    assert wait_for(lambda: len(child.heard) == 3)
    assert child.heard[1:] == [("done", 7, None), ("counts", 9, 9, 0, 1, 0)]
    # Detached, the bytes of a frame begun are handed back with the frames begun for writing.
    os.write(fd, whole[: len(first) - 1])
    threading.Event().wait(0.1)
    _begun, acks = on_loop(loop, sender.detach)
    assert bytes(acks) == whole[: len(first) - 1]
    assert os.get_blocking(child.acks.fileno())


def test_a_batch_of_plain_entries_goes_by_marshal_and_anything_else_by_pickle():
    from agent.model import AnswerKind
    from agent.querylog.writer import Command

    entries = [
        (1.5, "192.168.1.20", "tablet", ("kids", b"\x07example\x03com\x00", 1, "blocked", "rule")),
        (2.0, "::1", "", "kids", "example.org", 28, "forwarded", "", "127.0.0.1:53", 1.25),
    ]
    plain = encode((3.0, entries))
    assert plain[:1] == b"M" and decode(plain) == (3.0, entries)
    command = Command(7, "delete", "kids")
    mixed = decode(encode((3.0, [entries[0], command])))
    assert mixed[1][0] == entries[0] and mixed[1][1].__class__ is Command
    member = encode((3.0, [(1.0, "::1", "", "kids", "a.test", 1, AnswerKind.BLOCKED, "", "", 0.0)]))
    assert member[:1] == b"P" and decode(member)[1][0][6] == "blocked"
    # The same framing in pieces: a frame cut short waits for its end.
    stream = bytearray(handoff.frame(("counts", 1)) + handoff.frame((3.0, entries)))
    tail = stream[-5:]
    del stream[-5:]
    assert handoff.unframe(stream) == [("counts", 1)]
    stream += tail
    assert handoff.unframe(stream) == [(3.0, entries)]
