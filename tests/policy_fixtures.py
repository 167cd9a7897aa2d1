"""Small, real inputs for the policy tests: list files compiled into a DomainIndex, the default
criteria table, a tiny catalogue of the same shape as agent/policy/catalogue.py's, a family, and
`decide_as` to ask the real policy engine about compiled lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.feed.categories import DEFAULT_CATEGORIES
from agent.index import DomainIndex, Source, build_index, to_wire
from agent.policy.model import Device, Policy, Profile

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")

CRITERIA = {c.id: c for c in DEFAULT_CATEGORIES}

# index label -> (kind, domains). Labels are category ids, or id@band for a list with its own age.
LISTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "malware": ("block", ("evil.example", "bad.play.game.example", "bad.tiktokcdn.com")),
    "adult": ("block", ("adultsite.example", "tube.example", "sexed.example")),
    "sex_education": ("allow", ("health.adultsite.example", "sexed.example")),
    "gambling": ("block", ("casino.example",)),
    "social_networks": ("block", ("social.example", "tiktok.com")),
    "online_games": ("block", ("game.example", "play.social.example", "roblox.com")),
    "online_games@18+": ("block", ("battle.example",)),
    "video_streaming": ("block", ("video.example", "youtube.com")),
    "filter_bypass": ("block", ("vpn.example", "proxy.evil.example")),
    "messaging": ("block", ("chat.example",)),
    "ads_trackers": ("block", ("ads.example",)),
    "mystery": ("block", ("mystery.example",)),  # a category the criteria do not know
}


def build_test_index(tmp_path: Path, lists: dict = LISTS) -> DomainIndex:
    """Compile `lists` with the real builder into tmp_path and open the result."""
    directory = tmp_path / "lists"
    directory.mkdir(exist_ok=True)
    sources = []
    for n, (label, (kind, domains)) in enumerate(sorted(lists.items())):
        path = directory / f"list{n}.txt"
        path.write_text("".join(f"{d}\n" for d in domains))
        sources.append(Source(label, kind, path, f"test/{label}.{kind}.txt"))
    out = tmp_path / "lists.idx"
    build_index(sources, out)
    return DomainIndex.open(out)


@dataclass(frozen=True)
class Service:
    id: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class SafeSearchEngine:
    id: str
    hosts: tuple[str, ...]
    targets: dict[str, str] = field(default_factory=dict)

    def target(self, level: str) -> str:
        return self.targets[level]


@dataclass(frozen=True)
class Catalogue:
    services: dict[str, Service]
    safesearch: dict[str, SafeSearchEngine]


CATALOGUE = Catalogue(
    services={
        "tiktok": Service("tiktok", ("tiktok.com", "tiktokcdn.com")),
        "youtube": Service("youtube", ("youtube.com", "ytimg.com", "googlevideo.com")),
        "roblox": Service("roblox", ("roblox.com", "rbxcdn.com")),
    },
    safesearch={
        "google": SafeSearchEngine(
            "google",
            ("www.google.com", "google.com", "www.google.com.vn"),
            {"on": "forcesafesearch.google.com"},
        ),
        "youtube": SafeSearchEngine(
            "youtube",
            ("www.youtube.com", "m.youtube.com"),
            {"strict": "restrict.youtube.com", "moderate": "restrictmoderate.youtube.com"},
        ),
        "bing": SafeSearchEngine("bing", ("www.bing.com",), {"on": "strict.bing.com"}),
    },
)

# A Saturday morning in Vietnam.
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=HCM)

LAN = Profile("lan", "Lan", birth=(2017, 3))  # 9
MINH = Profile("minh", "Minh", birth=(2012, 5))  # 14
LINH = Profile("linh", "Linh", band="16+")
DAD = Profile("dad", "Dad", kind="adult")  # no birth, no band: 18+
DEFAULT = Profile("default", "Default", band="12+")
FAMILY = (LAN, MINH, LINH, DAD, DEFAULT)

DEVICES = (
    Device("lan-phone", "Lan's phone", "ip", "127.0.0.2", "lan"),
    Device("minh-phone", "Minh's phone", "ip", "127.0.0.3", "minh"),
    Device("tablet", "Tablet", "mac", "aa:bb:cc:dd:ee:01", "lan"),
    Device("class7a", "7A", "cidr", "10.7.0.0/16", "minh"),
    Device("class7a-front", "7A front row", "cidr", "10.7.1.0/24", "linh"),
    Device("staff", "Staff", "cidr", "10.0.0.0/8", "dad"),
)


def family_policy(**changes) -> Policy:
    base = {"profiles": FAMILY, "devices": DEVICES, "timezone": "Asia/Ho_Chi_Minh"}
    base.update(changes)
    return Policy(**base)


def q(name: str) -> bytes:
    return to_wire(name)


def decide_as(lists, data_dir, name: str, band: str = "16+", qtype: int = 1) -> tuple[bool, str]:
    """(blocked, reason) for `name` asked by a child of `band`, decided by the real policy engine
    over `lists` (agent.lists.CompiledLists) and the criteria in force under `data_dir`, exactly
    as the resolver builds it (agent.app.policy_snapshot, the real services catalogue)."""
    from agent.app import policy_snapshot
    from agent.policy import decide

    child = Profile("child", "Child", band=band)
    snapshot = policy_snapshot(Policy(profiles=(child,), default_profile=child.id), lists, data_dir)
    d = decide(to_wire(name), qtype, child, NOW, snapshot)
    return d.blocked, d.reason
