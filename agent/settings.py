"""The settings registry: every setting has a name, a default and help text.

Values come from, lowest to highest precedence: the defaults here, a TOML file
(`--config`), SAFENEST_<NAME> environment variables, then command-line flags.
docs/settings.md documents each one; tests/test_settings.py fails when one is
missing there.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "SAFENEST_"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the setting and the source."""


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _as_text(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        # Environment variables carry lists as comma- or space-separated text.
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValueError(f"expected a list of text, got {value!r}")


def _as_listen(value: Any) -> list[str]:
    items = _as_list(value)
    if not items:
        raise ValueError("give at least one ADDR:PORT to serve DNS on")
    return items


def _as_networks(value: Any) -> list[str]:
    items = _as_list(value)
    for item in items:
        ipaddress.ip_network(item, strict=False)
    return items


def _as_positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a whole number, got {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _as_positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"must be a finite number greater than zero, got {value!r}")
    return number


def _as_non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"must be a finite number, zero or more, got {value!r}")
    return number


_CPU_RANGE = re.compile(r"(\d{1,4})(?:-(\d{1,4}))?", re.ASCII)


def _as_cpus(value: Any) -> list[int]:
    """CPU numbers as Linux lists them ("3", "0,2", "1-3", or a TOML list of numbers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        parts = [str(v) for v in value]
    else:
        parts = _as_list(value)
    cpus: set[int] = set()
    for part in parts:
        match = _CPU_RANGE.fullmatch(part)
        if match is None:
            raise ValueError(f"bad CPU {part!r}: expected a number or a range like 2-3")
        low = int(match[1])
        high = int(match[2]) if match[2] else low
        if low > high:
            raise ValueError(f"bad CPU range {part!r}: the first CPU must come first")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def _as_feed_urls(value: Any) -> list[str]:
    items = _as_list(value)
    for item in items:
        if any(c.isspace() for c in item):
            raise ValueError(f"bad feed URL {item!r}")
    return items


def _as_private_upstream(value: Any) -> list[str]:
    items = _as_list(value)
    if not items:
        raise ValueError("give 'auto', 'none' or ADDR[:PORT] resolvers")
    if any(i.lower() in ("auto", "none") for i in items):
        if len(items) > 1:
            raise ValueError("'auto' and 'none' stand alone, not in a list of resolvers")
        return [items[0].lower()]
    from .dns.upstream import parse_upstream  # here: the settings module stays light

    for item in items:
        try:
            parse_upstream(item)
        except ValueError as exc:
            raise ValueError(f"bad resolver {item!r}: {exc}") from None
    return items


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _as_text(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = _as_text
    secret: bool = False


LAN_RANGES = [
    "127.0.0.0/8",  # loopback
    "10.0.0.0/8",  # RFC 1918
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
    "169.254.0.0/16",  # link-local
    "::1/128",
    "fc00::/7",  # unique local (ULA)
    "fe80::/10",  # link-local
]

SETTINGS: tuple[Setting, ...] = (
    Setting("data", "var", "Folder for SafeNest's databases and compiled lists.", _as_text),
    Setting(
        "dns",
        ["0.0.0.0:53", "[::]:53"],
        "Addresses to serve DNS on, UDP and TCP, as ADDR:PORT ([ADDR]:PORT for IPv6).",
        _as_listen,
    ),
    Setting(
        "upstream",
        [],
        "Upstream resolvers as ADDR[:PORT]. Empty: the nameservers in /etc/resolv.conf, never SafeNest itself.",
        _as_list,
    ),
    Setting("resolv_conf", "/etc/resolv.conf", "Where to read the system's resolvers from.", _as_text),
    Setting(
        "private_upstream",
        ["auto"],
        "Where reverse lookups of private addresses, dotless names and home.arpa/lan/internal/local "
        "go instead of the upstreams: 'auto' (the upstreams on the LAN, such as the router, which "
        "knows its devices' names), 'none' (NXDOMAIN answered here), or resolvers as ADDR[:PORT].",
        _as_private_upstream,
    ),
    Setting(
        "blocklists_dir",
        "",
        "Folder of <category>.txt block lists and <category>.allow.txt allow lists. Empty: the bundled blocklists/.",
        _as_text,
    ),
    Setting(
        "block_mode",
        "null",
        "Answer to a blocked name: 'null' (0.0.0.0 / :: for A/AAAA, empty answer otherwise) or 'nxdomain'.",
        _one_of("null", "nxdomain"),
    ),
    Setting("block_ttl", 10, "TTL in seconds of blocked answers (short, so unblocking acts fast).", _as_positive_int),
    Setting("cache_max_entries", 50_000, "Most answers the cache holds.", _as_positive_int),
    Setting("cache_max_bytes", 16 * 1024 * 1024, "Most bytes of answers the cache holds.", _as_positive_int),
    Setting("cache_max_ttl", 86_400, "Longest time in seconds an answer is cached.", _as_positive_int),
    Setting(
        "negative_max_ttl",
        3_600,
        "Longest time in seconds a negative answer (NXDOMAIN, NODATA) is cached (RFC 2308).",
        _as_positive_int,
    ),
    Setting(
        "serve_stale_seconds",
        86_400,
        "How long after expiry a cached answer may still be served when every upstream fails (RFC 8767). 0 turns it off.",
        _as_positive_int,
    ),
    Setting(
        "upstream_timeout",
        1.5,
        "Seconds to wait for one upstream before trying the next.",
        _as_positive_float,
    ),
    Setting(
        "query_timeout",
        4.0,
        "Seconds a client query may take in all before it is answered SERVFAIL or stale.",
        _as_positive_float,
    ),
    Setting(
        "upstream_recheck_seconds",
        15.0,
        "How long an upstream that failed is skipped before it is tried again.",
        _as_positive_float,
    ),
    Setting(
        "allowed_clients",
        LAN_RANGES,
        "Networks whose clients are answered; others get REFUSED (SafeNest is never an open resolver).",
        _as_networks,
    ),
    Setting(
        "rate_limit_queries",
        1_000,
        "Queries one client may send per rate_limit_seconds; the excess is dropped and counted. 0 turns it off.",
        _as_positive_int,
    ),
    Setting("rate_limit_seconds", 60.0, "The window of the per-client rate limit.", _as_positive_float),
    Setting("tcp_idle_timeout", 10.0, "Seconds an idle DNS-over-TCP connection is kept open.", _as_positive_float),
    Setting("tcp_max_connections", 128, "Most DNS-over-TCP connections open at once.", _as_positive_int),
    Setting(
        "udp_receive_buffer",
        4 * 1024 * 1024,
        "Receive buffer asked for each UDP socket, so bursts are not dropped by the kernel.",
        _as_positive_int,
    ),
    Setting(
        "local_names",
        ["safenest.home.arpa", "safenest.lan"],
        "Names SafeNest answers with its own LAN addresses, so a parent can reach the admin page by name.",
        _as_list,
    ),
    Setting(
        "local_addresses",
        [],
        "Addresses given for local_names. Empty: found from the network interfaces.",
        _as_list,
    ),
    Setting(
        "feeds",
        [],
        "Criteria feeds to sync, as https URLs (the feed's folder or its manifest.json); each needs its publisher's key in feed_keys_dir.",
        _as_feed_urls,
    ),
    Setting(
        "sources",
        [],
        'Public lists to sync with the feeds, each mapped to a category: "CATEGORY=URL" (https; hosts files, plain domains or adblock lines), e.g. "gambling=https://example.org/hosts.txt".',
        _as_feed_urls,
    ),
    Setting(
        "feed_keys_dir",
        "",
        "Folder of pinned publisher public keys (*.pub); a feed is checked against the one with its manifest's key id. Empty: DATA/keys.",
        _as_text,
    ),
    Setting(
        "sync_interval_hours",
        6.0,
        "Hours between two scheduled syncs of the feeds in `safenest run` (the first runs about a minute after start).",
        _as_positive_float,
    ),
    Setting(
        "sync_jitter_minutes",
        30.0,
        "Up to this many minutes are added at random to each scheduled sync, so that devices do not all ask at once. 0: none.",
        _as_non_negative_float,
    ),
    Setting(
        "feed_allow_insecure",
        False,
        "Allow feeds over plain http and from local folders. For tests and local mirrors only: never on a real network.",
        _as_bool,
    ),
    Setting(
        "feed_timeout_seconds",
        30.0,
        "Seconds a feed or source download waits to connect and between two reads before it gives up (the last good copy stays in force); a whole file may take at most 300 s.",
        _as_positive_float,
    ),
    Setting(
        "querylog_privacy",
        "full",
        "What the query log keeps (a profile's own level wins): 'full'; 'hide_allowed' (only blocks and rewrites); 'counts_only' (hourly counts, no names); 'off'. A stricter level purges what it would not keep.",
        _one_of("full", "hide_allowed", "counts_only", "off"),
    ),
    Setting("querylog_raw_days", 7, "Days the query log keeps each answered query.", _as_positive_int),
    Setting("querylog_rollup_days", 90, "Days the query log keeps its hourly counts and top names.", _as_positive_int),
    Setting("querylog_flush_seconds", 10.0, "Most seconds a logged query waits in memory before it is written.", _as_positive_float),
    Setting("querylog_flush_entries", 1_000, "A write starts as soon as this many logged queries wait.", _as_positive_int),
    Setting(
        "querylog_queue_entries",
        20_000,
        "Most logged queries waiting in memory; beyond that they are dropped and counted, so DNS never waits for the disk.",
        _as_positive_int,
    ),
    Setting(
        "querylog_writer_cpus",
        [],
        "CPUs the query log's writer process runs on ('3', '2-3'); empty: the same as SafeNest's. Where SafeNest is pinned to one core (systemd CPUAffinity=, taskset), give the writer another, so that its writes never share the DNS thread's core. CPUs this machine does not have are ignored, with a warning.",
        _as_cpus,
    ),
    Setting(
        "admin_listen",
        "0.0.0.0:80",
        "Where the admin server listens (ADDR:PORT, [ADDR]:PORT for IPv6): http://safenest.home.arpa/ for the parents, /healthz and /metrics. 'off': no admin server. A port that cannot be had is logged and DNS goes on.",
        _as_text,
    ),
    Setting(
        "metrics_clients",
        ["127.0.0.0/8", "::1/128"],
        "Networks allowed to read /metrics (query counts about the children); others get 403. Add your Prometheus server's address.",
        _as_networks,
    ),
    Setting("log_level", "info", "Logging level: debug, info, warning or error.", _one_of("debug", "info", "warning", "error")),
)

REGISTRY: dict[str, Setting] = {s.name: s for s in SETTINGS}


class Settings(Mapping[str, Any]):
    """An immutable mapping of every setting to its effective value; also readable as attributes."""

    def __init__(self, values: Mapping[str, Any], origins: Mapping[str, str]):
        self._values = dict(values)
        self._origins = dict(origins)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def origin(self, name: str) -> str:
        return self._origins[name]

    def describe(self) -> list[str]:
        """Lines for the start-up log: every setting, its value and where it came from."""
        lines = []
        for setting in SETTINGS:
            value = "***" if setting.secret else self._values[setting.name]
            lines.append(f"{setting.name} = {value!r} ({self._origins[setting.name]})")
        return lines


def load_settings(
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, SAFENEST_* variables and explicit overrides."""
    environ = os.environ if environ is None else environ
    values = {s.name: s.default for s in SETTINGS}
    origins = dict.fromkeys(values, "default")

    def apply(name: str, raw: Any, origin: str) -> None:
        setting = REGISTRY.get(name)
        if setting is None:
            raise SettingsError(f"{origin}: unknown setting {name!r}")
        try:
            values[name] = setting.parse(raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{origin}: {name}: {exc}") from None
        origins[name] = origin

    if config_file:
        path = Path(config_file)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
        for name, raw in document.items():
            apply(name, raw, f"config file {path}")
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            apply(key[len(ENV_PREFIX) :].lower(), raw, f"environment {key}")
    for name, raw in (overrides or {}).items():
        if raw is not None and raw != () and raw != []:
            apply(name, raw, "command line")
    return Settings(values, origins)
