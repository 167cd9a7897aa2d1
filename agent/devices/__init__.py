"""Which device is asking: the Pi's neighbour table, the clients seen, the router check.

This is the I/O side of device identity (reading /proc, running `ip`); agent/policy stays pure
and receives the results as values. Nothing here runs on the hot path except
`NeighbourTable.lookup` and `SeenClients.note`, each a dict operation.
"""

from agent.devices.mac import (
    RANDOMIZED_MAC_REASON,
    RandomizedMacWarnings,
    is_randomized_mac,
    normalize_mac,
    randomized_assignment_text,
    randomized_assignments,
)
from agent.devices.neighbours import NeighbourTable, parse_ip_neigh_json, parse_proc_arp
from agent.devices.router import (
    ROUTER_FORWARDING_TEXT,
    RouterForwarding,
    check_router_forwarding,
    default_gateways,
)
from agent.devices.seen import SeenClient, SeenClients

__all__ = [
    "NeighbourTable",
    "RANDOMIZED_MAC_REASON",
    "RandomizedMacWarnings",
    "ROUTER_FORWARDING_TEXT",
    "RouterForwarding",
    "SeenClient",
    "SeenClients",
    "check_router_forwarding",
    "default_gateways",
    "is_randomized_mac",
    "normalize_mac",
    "parse_ip_neigh_json",
    "parse_proc_arp",
    "randomized_assignment_text",
    "randomized_assignments",
]
