"""The replay memo keeps a child's capped answer as long as its bytes stay the same.

Real cache entries built from dnspython responses; what the memo reuses is compared with what
the cache entry really serves at each moment (a remembered copy must never be stale bytes)."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from agent.dns.cache import Entry
from agent.dns.replay import ReplayMemo, capped_until
from agent.dns.wire import RD, Query, check_response
from agent.model import Answer, AnswerKind

CLIENT = "127.0.0.2"


def make_entry(answer_ttl: int, authority_ttl: int, stored: float, lifetime: float):
    """(query packet, Query, Entry): an A answer plus an NS record in the authority section."""
    query = dns.message.make_query("www.example.test", "A", use_edns=0)
    response = dns.message.make_response(query)
    response.answer.append(
        dns.rrset.from_text("www.example.test.", answer_ttl, "IN", "A", "192.0.2.1")
    )
    response.authority.append(
        dns.rrset.from_text("example.test.", authority_ttl, "IN", "NS", "ns.example.test.")
    )
    data = query.to_wire()
    parsed = Query(data, CLIENT, "udp")
    info = check_response(response.to_wire(), query.id, data[12 : parsed.question_end])
    assert info is not None and len(info.ttls) == 2
    entry = Entry(response.to_wire(), info, RD, stored)
    entry.expires = stored + lifetime
    return data, parsed, entry


def served(entry: Entry, data: bytes, question_end: int, at: float, cap: int | None) -> bytes:
    return entry.serve_packet(data, question_end, data[2] << 8 | data[3], at, cap=cap)


def test_a_capped_copy_is_the_same_until_the_lowest_ttl_drops_below_the_cap():
    stored = 1000.0
    data, query, entry = make_entry(3600, 400, stored, lifetime=400)
    first = served(entry, data, query.question_end, stored, 300)
    until = capped_until(entry, 300, stored)
    assert until == stored + 101  # age 100: 400 - 100 = 300, still the cap; age 101: 299
    for at in (stored + 0.5, stored + 50, stored + 100.999):
        assert served(entry, data, query.question_end, at, 300) == first
    later = served(entry, data, query.question_end, until, 300)
    assert later != first
    answer = dns.message.from_wire(later)
    assert answer.answer[0].ttl == 300 and answer.authority[0].ttl == 299
    # From there on the copy ticks every second, as an uncapped one does.
    assert capped_until(entry, 300, until) == stored + 102


def test_a_capped_copy_is_not_reused_past_the_entry_expiry():
    stored = 50.0
    _, _, entry = make_entry(86400, 86400, stored, lifetime=3600)
    assert capped_until(entry, 300, stored + 1.5) == stored + 3600


@pytest.mark.parametrize("ttls", [(200, 3600), (3600, 300)])
def test_a_ttl_at_or_below_the_cap_ticks_every_second(ttls):
    stored = 10.0
    data, query, entry = make_entry(*ttls, stored, lifetime=min(ttls))
    at = stored + 1.2
    served(entry, data, query.question_end, at, 300)
    assert capped_until(entry, 300, at) == stored + 2
    assert served(entry, data, query.question_end, stored + 2, 300) != served(
        entry, data, query.question_end, at, 300
    )


@pytest.mark.parametrize("cap, expected_until", [(300, 101.0), (None, 2.0)])
def test_refresh_keeps_a_capped_answer_until_its_bytes_change(cap, expected_until):
    stored = 0.0
    data, query, entry = make_entry(3600, 400, stored, lifetime=400)
    memo = ReplayMemo(tags={CLIENT: ("lan", cap)})
    wire = served(entry, data, query.question_end, stored, cap)
    memo.remember(query, Answer(wire, AnswerKind.CACHED, "cache", entry.same_until(), entry))
    hit = memo.lookup(CLIENT, data[2:])
    assert hit is not None and hit[0] == stored + 1  # first kept until the next second
    fresh = memo.refresh(CLIENT, data[2:], hit, data, stored + 1.5)
    assert fresh is not None and fresh[0] == expected_until
    assert fresh[1] == served(entry, data, query.question_end, stored + 1.5, cap)[2:]
    assert memo.lookup(CLIENT, data[2:]) is fresh


def test_refresh_stops_at_the_policys_next_change():
    data, query, entry = make_entry(3600, 3600, 0.0, lifetime=3600)
    memo = ReplayMemo(tags={CLIENT: ("lan", 300)})
    memo.until = 40.0  # a schedule starts then
    memo.remember(
        query,
        Answer(
            served(entry, data, query.question_end, 0.0, 300),
            AnswerKind.CACHED,
            "cache",
            1.0,
            entry,
        ),
    )
    fresh = memo.refresh(CLIENT, data[2:], memo.lookup(CLIENT, data[2:]), data, 1.5)
    assert fresh is not None and fresh[0] == 40.0


# -- end to end: the same packet again and again from a child's device -------------------


@pytest.fixture
def child_server(tmp_path, fake_upstream):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from agent.policy.model import Device, Policy, Profile
    from agent.storage.policy_store import open_policy_store
    from tests.dnsfakes import RunningSafeNest

    up = fake_upstream()
    up.answer("www.example.test", "A", "192.0.2.10", ttl=8)  # 3 s above the cap, then below
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "gambling.txt").write_text("casino.test\n")
    year = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")).year
    policy = Policy(
        profiles=(
            Profile("default", "Default", band="12+"),
            Profile("lan", "Lan", birth=(year - 9, 1)),
        ),
        devices=(Device("lan-phone", "Lan's phone", "ip", CLIENT, "lan"),),
        schedule_ttl_cap=5,
    )
    store = open_policy_store(tmp_path / "var")
    store.replace(policy)
    store.database.close()
    settings = {"dns": ["127.0.0.1:0"], "upstream": [up.address], "blocklists_dir": str(lists)}
    server = RunningSafeNest(tmp_path / "var", settings)
    yield server
    server.stop()


def test_a_replayed_capped_answer_counts_down_once_its_ttl_is_below_the_cap(child_server):
    import time

    import dns.query

    query = dns.message.make_query("www.example.test", "A", use_edns=0)

    def ttl() -> int:
        answer = dns.query.udp(
            query, child_server.host, port=child_server.port, source=CLIENT, timeout=5
        )
        assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.10"]
        return answer.answer[0].ttl

    start = time.monotonic()
    assert ttl() == 5  # forwarded, capped
    time.sleep(1.3)
    assert ttl() == 5  # replayed (age 1: 8 - 1 = 7, still the cap)
    time.sleep(max(0.0, start + 4.3 - time.monotonic()))
    assert ttl() <= 4  # age 4 or more: 8 - 4 = 4, below the cap; the memo did not keep the cap
    blocked = dns.query.udp(
        dns.message.make_query("casino.test", "A", use_edns=0),
        child_server.host,
        port=child_server.port,
        source=CLIENT,
        timeout=5,
    )
    assert blocked.answer[0][0].to_text() == "0.0.0.0"


def test_a_packet_is_remembered_on_its_second_answer_not_its_first(child_server):
    """Admission on second use: a name asked once (most names: trackers, CDN hosts) takes no
    memo slot; asked again, the cache's answer is remembered and later repeats replay it."""
    import dns.query

    query = dns.message.make_query("www.example.test", "A", use_edns=0)
    replay = child_server.agent.server.replay
    cache = child_server.agent.cache

    def ask() -> None:
        answer = dns.query.udp(
            query, child_server.host, port=child_server.port, source=CLIENT, timeout=5
        )
        assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.10"]

    ask()  # forwarded: cached, not remembered
    assert child_server.call(len, replay) == 0
    assert child_server.call(len, cache) == 1
    hits = child_server.call(lambda: cache.hits)
    ask()  # from the cache: remembered now
    assert child_server.call(len, replay) == 1
    assert child_server.call(lambda: cache.hits) == hits + 1
    ask()  # replayed: the cache is not asked
    assert child_server.call(lambda: cache.hits) == hits + 1


@pytest.mark.parametrize("kind", [AnswerKind.CACHED, AnswerKind.FORWARDED, AnswerKind.BLOCKED])
def test_the_log_part_of_a_remembered_answer_holds_plain_types_only(kind):
    """The hand-off encodes a batch with marshal only when every entry is of plain types; an
    AnswerKind member (a str subclass) would send every batch of replayed answers by pickle."""
    import marshal

    data, query, entry = make_entry(3600, 3600, 0.0, lifetime=3600)
    memo = ReplayMemo(tags={CLIENT: ("kids", None)})
    memo.logs = lambda profile: True
    memo.remember(query, Answer(data, kind, "rule", entry.same_until(), entry))
    logged = memo.lookup(CLIENT, data[2:])[8]
    assert type(logged[3]) is str and logged[3] == (
        "cached" if kind is AnswerKind.FORWARDED else kind.value
    )
    assert marshal.loads(marshal.dumps(logged)) == logged
