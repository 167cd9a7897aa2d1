"""The DNS process's collections run on the loop's clock (agent/gc_clock.py), on a real loop."""

from __future__ import annotations

import ast
import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from agent.dns import cache as cache_module
from agent.dns.cache import AnswerCache
from agent.dns.wire import RD, check_response
from agent.gc_clock import BURST_THRESHOLD, CollectorClock
from tests.test_replay import make_entry  # a real upstream answer: an A and an NS record


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def make_cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def collections():
    """The generation of every collection while the test runs."""
    seen: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)


def test_a_cycle_is_freed_by_the_next_tick_with_no_automatic_collection():
    async def main() -> tuple[bool, bool]:
        clock = CollectorClock(interval=0.05)
        clock.start(asyncio.get_running_loop())
        try:
            gc.collect()
            cycle = make_cycle()
            alive = cycle() is not None  # no await since the collection: no tick either
            ticks = clock.ticks
            for _ in range(200):
                await asyncio.sleep(0.01)
                if clock.ticks > ticks:
                    break
            return alive, cycle() is None
        finally:
            clock.stop()

    # Off for the whole process: another test's threads may still be allocating.
    gc.disable()
    try:
        alive, freed = asyncio.run(main())
    finally:
        gc.enable()
    assert alive
    assert freed


def test_young_collections_every_tick_a_middle_one_every_nth_and_a_full_one_rarer(collections):
    async def main() -> None:
        clock = CollectorClock(interval=0.005, middle_every=3, old_every=2)
        clock.start(asyncio.get_running_loop())
        try:
            while clock.ticks < 12:
                await asyncio.sleep(0.005)
        finally:
            clock.stop()

    gc.disable()  # only the clock's collections (another test's threads may be allocating)
    try:
        asyncio.run(main())
    finally:
        gc.enable()
    assert collections[:12] == [0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2]


def test_while_running_the_automatic_threshold_is_the_burst_one_and_stop_puts_the_old_back():
    before = gc.get_threshold()

    async def main() -> tuple[tuple[int, int, int], int]:
        clock = CollectorClock(interval=0.01, middle_every=7, old_every=5)
        clock.start(asyncio.get_running_loop())
        running = gc.get_threshold()
        await asyncio.sleep(0.05)
        clock.stop()
        ticks = clock.ticks
        await asyncio.sleep(0.05)
        assert clock.ticks == ticks, "a tick ran after stop()"
        return running, ticks

    running, ticks = asyncio.run(main())
    assert running == (BURST_THRESHOLD, 7, 5)
    assert ticks >= 2
    assert gc.get_threshold() == before


def test_a_kept_answer_is_left_out_of_every_collection_and_one_not_kept_is_not():
    """What survives young collections is what the middle ones scan (agent/gc_clock.py)."""
    cache = AnswerCache(100, 1 << 20, 86400, 3600, 0)
    data, query, entry = make_entry(300, 3600, 1000.0, lifetime=300)
    _, _, not_kept = make_entry(300, 3600, 1000.0, lifetime=300)
    info = check_response(
        entry.wire, int.from_bytes(data[:2], "big"), data[12 : query.question_end]
    )
    assert info is not None and cache.keep(query.key, entry, info)
    gc.collect(0)
    assert not gc.is_tracked(entry)
    assert gc.is_tracked(not_kept)  # only what the cache keeps


def test_an_entry_refers_only_to_bytes_numbers_and_tuples_of_them_so_it_is_in_no_cycle():
    """The condition for leaving kept entries out of the collector (dns/cache.py): an attribute
    that could refer back to its entry would leak the cycle."""
    data, query, entry = make_entry(300, 3600, 1000.0, lifetime=300)
    entry.serve_packet(data, query.question_end, RD, 1005.0, cap=60)  # fills every attribute
    entry.serve_packet(data, query.question_end, RD, 1006.0, stale=True)

    def atomic(value: object) -> bool:
        if isinstance(value, tuple):
            return all(atomic(v) for v in value)
        return value is None or type(value) in (bytes, int, float, bool)

    values = {name: getattr(entry, name) for name in entry_slots()}
    assert values["_capped"] is not None
    assert {name for name, value in values.items() if not atomic(value)} == set()


def entry_slots() -> list[str]:
    """Entry's __slots__ as written in its source (a compiled class has no __slots__)."""
    tree = ast.parse(Path(cache_module.__file__).with_suffix("").with_suffix(".py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Entry":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and stmt.targets[0].id == "__slots__":
                    return list(ast.literal_eval(stmt.value))
    raise AssertionError("Entry has no __slots__")


def test_an_entrys_ttls_are_no_longer_tracked_after_one_young_collection():
    """A list would be scanned by every collection for as long as its entry lives, and a tuple
    of pairs once more in the middle generation (it is looked at before its pairs)."""
    gc.collect()
    _, _, entry = make_entry(300, 3600, 1000.0, lifetime=300)
    assert gc.is_tracked(entry.ttls)
    gc.collect(0)
    assert not gc.is_tracked(entry.ttls)
