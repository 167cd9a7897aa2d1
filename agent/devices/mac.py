"""MAC addresses: one normal form, whether an address is randomized, and the warnings for a
device assigned by a randomized MAC (logged once per MAC by the agent, printed by
`safenest policy import`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from agent.feed.format import Names

if TYPE_CHECKING:
    from agent.policy.model import Device

__all__ = [
    "RANDOMIZED_MAC_REASON",
    "RandomizedMacWarnings",
    "is_randomized_mac",
    "normalize_mac",
    "randomized_assignments",
    "randomized_assignment_text",
]

_SEPARATED = re.compile(r"^[0-9a-f]{1,2}([:-])[0-9a-f]{1,2}(\1[0-9a-f]{1,2}){4}$")
_BARE = re.compile(r"^[0-9a-f]{12}$")
_DOTTED = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")  # Cisco style

# Shown on the admin page next to a device whose MAC is randomized.
RANDOMIZED_MAC_REASON = Names(
    vi=(
        "Thiết bị này dùng địa chỉ Wi-Fi riêng tư (địa chỉ MAC ngẫu nhiên). Địa chỉ này có thể "
        "thay đổi, nên quy tắc theo MAC có thể không còn nhận ra thiết bị. Hãy tắt “Địa chỉ "
        "Wi-Fi riêng tư” (iPhone, iPad) hoặc chọn “Dùng MAC của thiết bị” (Android, Windows) "
        "cho mạng này, hoặc đặt IP cố định cho thiết bị trong router rồi gán theo IP."
    ),
    en=(
        "This device uses a private Wi-Fi address (a randomized MAC). The address can change, "
        "so a rule by MAC may stop recognising the device. Turn off “Private Wi-Fi Address” "
        "(iPhone, iPad) or choose “Use device MAC” (Android, Windows) for this network, or "
        "give the device a fixed IP in the router and assign it by IP."
    ),
)


def normalize_mac(text: str) -> str | None:
    """Lower-case, colon-separated, two digits per octet; None if `text` is not a MAC.

    >>> normalize_mac("AA-BB-CC-0-E-FF"), normalize_mac("aabb.cc00.0eff"), normalize_mac("x")
    ('aa:bb:cc:00:0e:ff', 'aa:bb:cc:00:0e:ff', None)
    """
    s = text.strip().lower()
    if _SEPARATED.match(s):
        octets = re.split("[:-]", s)
    elif _BARE.match(s) or _DOTTED.match(s):
        s = s.replace(".", "")
        octets = [s[i : i + 2] for i in range(0, 12, 2)]
    else:
        return None
    return ":".join(o.zfill(2) for o in octets)


def is_randomized_mac(mac: str) -> bool:
    """True when the locally administered bit (0x02 of the first octet) is set.

    Phones and laptops set it on the private, per-network addresses they make up; a
    manufacturer's burned-in address never has it. Raises ValueError for a non-MAC.
    """
    norm = normalize_mac(mac)
    if norm is None:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bool(int(norm[:2], 16) & 0x02)


def randomized_assignments(devices: Iterable[Device]) -> list[Device]:
    """The devices assigned by a MAC whose locally administered bit is set, in order."""
    out = []
    for d in devices:
        if d.match == "mac" and normalize_mac(d.value) is not None and is_randomized_mac(d.value):
            out.append(d)
    return out


def randomized_assignment_text(device: Device) -> Names:
    """One line, in Vietnamese and English, about a device assigned by a randomized MAC."""
    mac = normalize_mac(device.value) or device.value
    name = f"{device.id} ({device.name})" if device.name else device.id
    return Names(
        vi=(
            f"thiết bị {name} được gán theo MAC {mac}, một địa chỉ ngẫu nhiên (địa chỉ Wi-Fi "
            "riêng tư): khi địa chỉ đổi, mục này không còn nhận ra thiết bị. Tắt địa chỉ "
            "riêng tư cho mạng này, hoặc đặt IP cố định trong router rồi gán theo IP."
        ),
        en=(
            f"device {name} is assigned by MAC {mac}, a randomized (private Wi-Fi) address: "
            "when it changes, this entry no longer recognises the device. Turn the private "
            "address off for this network, or give it a fixed IP in the router and assign that."
        ),
    )


class RandomizedMacWarnings:
    """Which randomized MACs were already warned about: each is warned about once per run."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def new(self, devices: Iterable[Device]) -> list[Device]:
        """The devices assigned by a randomized MAC not warned about yet (now marked warned)."""
        out = []
        for d in randomized_assignments(devices):
            mac = normalize_mac(d.value)
            if mac not in self._warned:
                self._warned.add(mac)
                out.append(d)
        return out
