"""The policy a family or a small school runs, written into the benchmarked SafeNest's data.

``bench.run`` calls :func:`write_policy` before it starts each SafeNest (unless ``--no-policy``),
so the figures are those of a SafeNest with profiles in force, not of the out-of-the-box default:

* 5 profiles: Lan (9, band 00+), Minh (14, band 12+), class 7A (12+), Dad (adult) and the 12+
  default profile;
* 50 devices: the bench client's address (127.0.0.1, where dnsperf sends from) is Minh's phone,
  40 more IPs, 5 MACs and 4 CIDRs (a classroom, the staff subnet, the kids' Wi-Fi, a guest net);
* 10 schedules: ONE is active during the run, a "block" window on Minh (homework: online games,
  social networks, YouTube and Roblox off) from 1 h before the start to 3 h after it; the other
  9 (bedtimes and homework on the other profiles and on Minh) start 5 h to 6 h 20 min after the
  start and last 1 h, so none is active and no window opens or closes during the run;
* 40 distinct catalogue services blocked across the profiles (12 of them Minh's);
* 4 rules and a parent's category choice.

So every query from dnsperf goes through the device lookup, Minh's per-profile decision with an
active schedule, TTLs capped to ``schedule_ttl_cap`` (300 s) and the per-profile replay memo.
The policy is built as a document (docs/policy.md), checked by ``agent.policy.document``
against the bundled categories and the service catalogue, and stored through
``agent.storage.policy_store``, the way ``safenest policy import`` does it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.policy.model import DEFAULT_TIMEZONE, WEEKDAYS

CLIENT_IP = "127.0.0.1"  # dnsperf -s 127.0.0.1 sends from 127.0.0.1
CLIENT_PROFILE = "minh"
# A name only Minh's profile blocks (service tiktok): the harness asks it to check the policy
# is in force; the answer is synthesized, so nothing goes to the upstream.
SERVICE_PROBE = "www.tiktok.com"


def _services() -> list[str]:
    from agent.policy.catalogue import load_catalogue

    ids = sorted(load_catalogue().services)
    # Minh's list names the services a parent picks first; the rest fill the other profiles.
    minh = ["tiktok", "douyin", "free_fire", "garena", "lien_quan", "pubg", "mobile_legends"]
    minh += ["tinder", "azar", "random_chat", "bigo_live", "kick"]
    rest = [s for s in ids if s not in minh]
    if len(rest) < 28 or any(s not in ids for s in minh):
        raise RuntimeError("the service catalogue no longer has the services this policy blocks")
    return minh + rest[:28]


def document(now: datetime | None = None) -> dict[str, Any]:
    """The policy document for a run starting at ``now`` (default: the current time)."""
    zone = ZoneInfo(DEFAULT_TIMEZONE)
    now = (now or datetime.now(zone)).astimezone(zone)
    services = _services()  # 40: minh 0-11, lan 12-26, class 27-36, default 37-39
    age14 = (now.year - 14, 1) if now.month > 1 else (now.year - 15, 12)
    age9 = (now.year - 9, 1) if now.month > 1 else (now.year - 10, 12)
    profiles = [
        {"id": "default", "name": "Default", "band": "12+", "services": services[37:40]},
        {
            "id": "lan",
            "name": "Lan",
            "birth": {"year": age9[0], "month": age9[1]},
            "services": services[12:27],
        },
        {
            "id": "minh",
            "name": "Minh",
            "birth": {"year": age14[0], "month": age14[1]},
            "services": services[0:12],
            "categories": {"ai_chat": "allow"},
        },
        {"id": "class7a", "name": "Lớp 7A", "kind": "class", "band": "12+"}
        | {"services": services[27:37]},
        {"id": "dad", "name": "Dad", "kind": "adult"},
    ]
    owners = ["lan", "minh", "class7a", "dad", "default"]
    devices: list[dict[str, Any]] = [
        {"id": "minh-phone", "name": "Minh's phone", "match": "ip", "value": CLIENT_IP}
        | {"profile": "minh"}
    ]
    for i in range(40):
        devices.append(
            {"id": f"ip{i:02d}", "match": "ip", "value": f"192.168.1.{10 + i}"}
            | {"profile": owners[i % 5]}
        )
    for i in range(5):
        # Universally administered MACs (second hex digit 0): no randomized-MAC warning.
        mac = f"00:1a:2b:3c:4d:{0x50 + i:02x}"
        devices.append({"id": f"mac{i}", "match": "mac", "value": mac, "profile": owners[i]})
    for i, (net, owner) in enumerate(
        [
            ("10.0.7.0/24", "class7a"),
            ("10.0.8.0/24", "dad"),
            ("192.168.2.0/24", "lan"),
            ("172.16.0.0/16", "default"),
        ]
    ):
        devices.append({"id": f"net{i}", "match": "cidr", "value": net, "profile": owner})

    def hhmm(t: datetime) -> str:
        return t.strftime("%H:%M")

    start = now - timedelta(hours=1)
    schedules = [
        {
            "id": "minh-homework",
            "profile": "minh",
            "name": "Homework (active during the run)",
            "days": [WEEKDAYS[start.weekday()]],
            "start": hhmm(start),
            "end": hhmm(now + timedelta(hours=3)),
            "mode": "block",
            "categories": ["online_games", "social_networks"],
            "services": ["youtube", "roblox"],
        }
    ]
    for k in range(9):
        begin = now + timedelta(hours=5, minutes=10 * k)
        window = {
            "id": f"later{k}",
            "profile": ["lan", "minh", "class7a", "default"][k % 4],
            "days": list(WEEKDAYS),
            "start": hhmm(begin),
            "end": hhmm(begin + timedelta(hours=1)),
        }
        if k % 2 == 0:
            window |= {"name": "Bedtime", "mode": "internet_off"}
        else:
            window |= {
                "name": "Homework",
                "mode": "block",
                "categories": ["online_games", "video_streaming"],
                "services": ["youtube"],
            }
        schedules.append(window)
    rules = [
        {"domain": "school.edu.vn", "action": "allow"},
        {"domain": "wikipedia.org", "action": "allow", "profile": "lan"},
        {"domain": "news.example", "action": "block", "profile": "minh"},
        {"domain": "shop.example", "action": "block"},
    ]
    return {
        "format": 1,
        "default_profile": "default",
        "timezone": DEFAULT_TIMEZONE,
        "profiles": profiles,
        "devices": devices,
        "rules": rules,
        "schedules": schedules,
    }


def write_policy(data_dir: Path, now: datetime | None = None) -> str:
    """Check the document and store it in DATA/safenest.db; returns a one-line summary."""
    from agent.policy.catalogue import load_catalogue
    from agent.policy.document import default_known_categories, from_document
    from agent.storage.policy_store import open_policy_store

    policy = from_document(
        document(now), default_known_categories(), set(load_catalogue().services)
    )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    open_policy_store(data_dir).replace(policy)
    blocked = set().union(*(p.services for p in policy.profiles))
    active = policy.schedules[0]
    return (
        f"{len(policy.profiles)} profiles, {len(policy.devices)} devices, "
        f"{len(policy.schedules)} schedules, {len(blocked)} services blocked, "
        f"{len(policy.rules)} rules; {CLIENT_IP} is {CLIENT_PROFILE} (14, 12+); active window: "
        f"{active.name} {active.start}-{active.end}"
    )
