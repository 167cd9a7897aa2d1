"""The query log's hand-off to the writer process, done by the DNS thread's own event loop.

Why on the DNS loop and not in a thread: a thread of the DNS process that encodes entries
needs the GIL while the DNS thread answers, and every trip of the GIL between two threads
costs the DNS thread a wait of its own, longest when the cores are busy (docs/performance.md,
"the query log's p99"). On the loop the same work is done between two packets, in slices of
CHUNK entries (each one `marshal.dumps` and one write), each slice a callback of its own so
that the packets that arrived meanwhile are read before the next one.

The pipe is non-blocking: a frame the pipe has no room for waits in `out` (written when the
loop says the pipe is writable), and while `out` holds OUT_LIMIT bytes no more entries are
taken, so the queue fills and drops (counted) instead of anything waiting. Frames use the
framing of multiprocessing.connection (a 4-byte big-endian length, then the message as
writer.encode makes it), which the writer reads with Connection.recv_bytes.

The writer's acknowledgements (its counters, the commands done) are read here too, when the
loop sees them arrive, for the same reason: a thread of the DNS process that waits for them
wakes up after every write of the writer and asks for the GIL. The end of them (EOF) means
the writer is gone: `on_gone` tells QueryLog's supervisor.

Everything here runs on the loop's thread; QueryLog's supervising thread attaches a writer
and detaches it through `call_soon_threadsafe` (see QueryLog._on_loop).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap

from .writer import decode, encode

POLL = 0.1  # seconds between two looks at the queue
CHUNK = 64  # entries per frame: the loop answers no packet while one is made
# (256 gave the DNS thread a p99 about 30% longer at 5,000 q/s; 16 woke the writer too often)
OUT_LIMIT = 1 << 20  # bytes waiting for room in the pipe before entries stay in the queue
_HEADER = struct.Struct("!i")  # multiprocessing.connection's length prefix


def frame(message) -> bytes:
    """`message` as one frame of the stream."""
    payload = encode(message)
    return _HEADER.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list:
    """The whole frames at the start of `buffer`, decoded and removed from it (a frame cut
    short stays for the next read)."""
    messages = []
    while len(buffer) >= 4:
        size = _HEADER.unpack_from(buffer)[0]
        if len(buffer) < 4 + size:
            break
        messages.append(decode(buffer[4 : 4 + size]))
        del buffer[: 4 + size]
    return messages


class LoopSender:
    """Sends a QueryLog's queue to one writer at a time, from `loop`'s callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: deque, clock: Callable[[], float]):
        self.loop = loop
        self.queue = queue
        self.clock = clock
        self.child = None  # the writer attached (a querylog.log._Child), or None
        self.out = bytearray()  # frame bytes the pipe had no room for
        self.acks = bytearray()  # acknowledgement bytes read, not a whole frame yet
        self._fd = -1
        self._acks_fd = -1
        self._on_message: Callable[[object], None] | None = None
        self._on_gone: Callable[[], None] | None = None
        self._left = 0  # items still to send in this look
        self._next: asyncio.Handle | asyncio.TimerHandle | None = None
        self._waiting_for_room = False

    def attach(
        self, child, on_message: Callable[[object], None], on_gone: Callable[[], None]
    ) -> None:
        """Hand the queue to `child` from now on (its config and resent commands are sent);
        its acknowledgements go to `on_message`, and `on_gone` is called when they end."""
        self.detach()
        self.child = child
        self._on_message, self._on_gone = on_message, on_gone
        self._fd = child.inbox.fileno()
        os.set_blocking(self._fd, False)
        self._acks_fd = child.acks.fileno()
        os.set_blocking(self._acks_fd, False)
        self.loop.add_reader(self._acks_fd, self._read_acks)
        self._next = self.loop.call_soon(self._look)

    def detach(self) -> tuple[bytes, bytearray]:
        """Stop sending and reading. Returns the bytes of frames begun but not written, which
        must go first if the stream goes on, and the acknowledgement bytes read but not yet a
        whole frame (QueryLog.stop goes on with both, from its own thread)."""
        rest, acks = bytes(self.out), bytearray(self.acks)
        self._stop_sending()
        if self._acks_fd >= 0:
            self.loop.remove_reader(self._acks_fd)
        self.acks.clear()
        if self.child is not None:
            for fd in (self._fd, self._acks_fd):
                try:
                    if fd >= 0:
                        os.set_blocking(fd, True)
                except OSError:
                    pass  # closed: the writer is gone
        self.child = None
        self._fd = self._acks_fd = -1
        self._on_message = self._on_gone = None
        return rest, acks

    def _look(self) -> None:
        """What is queued now is sent, a slice at a time; later arrivals wait for the next
        look (sending until the queue is empty made slices of one entry at high rates)."""
        self._left = len(self.queue)
        self._slice()

    def _slice(self) -> None:
        self._next = None
        child = self.child
        if child is None or self._fd < 0:
            return
        queue = self.queue
        if self._left > 0 and queue and len(self.out) < OUT_LIMIT:
            # popleft() called from C, not a Python loop; other threads may append meanwhile.
            chunk = list(starmap(queue.popleft, repeat((), min(len(queue), CHUNK))))
            self._left -= len(chunk)
            child.sent += len(chunk)  # from here on lost with the writer if it dies
            self._write(frame((self.clock(), chunk)))
            if self.child is child and self._left > 0:
                self._next = self.loop.call_soon(self._slice)
                return
        if self.child is child:
            self._next = self.loop.call_later(POLL, self._look)

    def _write(self, data: bytes) -> None:
        if self.out:
            self.out += data  # behind what waits already
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._broken()
            return
        if written < len(data):
            self.out += data[written:]
            self.loop.add_writer(self._fd, self._room)
            self._waiting_for_room = True

    def _room(self) -> None:
        """The pipe has room again: write what waits."""
        try:
            written = os.write(self._fd, self.out)
        except BlockingIOError:
            return
        except OSError:
            self._broken()
            return
        del self.out[:written]
        if not self.out:
            self.loop.remove_writer(self._fd)
            self._waiting_for_room = False

    def _read_acks(self) -> None:
        try:
            data = os.read(self._acks_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the writer closed them: it exited
            self.loop.remove_reader(self._acks_fd)
            self._acks_fd = -1
            if self._on_gone is not None:
                self._on_gone()
            return
        self.acks += data
        for message in unframe(self.acks):
            if self._on_message is not None:
                self._on_message(message)

    def _broken(self) -> None:
        """The writer's pipe broke (it died): stop sending. The end of its acknowledgements
        follows, and its supervisor counts what it held as lost and starts another."""
        self._stop_sending()
        self._fd = -1  # _slice sends no more

    def _stop_sending(self) -> None:
        """No more slices, and no more waiting for room; the unwritten bytes are dropped."""
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._waiting_for_room:
            self.loop.remove_writer(self._fd)
            self._waiting_for_room = False
        self.out.clear()
