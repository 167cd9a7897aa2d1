"""MAC addresses: one normal form, and whether an address is randomized."""

from __future__ import annotations

import re

from agent.feed.format import Names

__all__ = ["RANDOMIZED_MAC_REASON", "is_randomized_mac", "normalize_mac"]

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
