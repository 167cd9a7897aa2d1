"""The generated zone, blocklist and dnsperf query files."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

ZONE = "bench.test."
MISS_ZONE = "miss.bench.test."


def hit_name(i: int) -> str:
    return f"h{i:06d}.bench.test"


def blocked_name(i: int) -> str:
    return f"b{i:06d}.bench.test"


@dataclass
class Dataset:
    """``names`` cached names and ``names // 4`` blocked names (20% of the blocked mix)."""

    root: Path
    names: int

    @property
    def blocked(self) -> int:
        return self.names // 4

    @property
    def total_names(self) -> int:
        return self.names + self.blocked

    @property
    def zone_file(self) -> Path:
        return self.root / "bench.test.zone"

    @property
    def hits_file(self) -> Path:
        return self.root / "q-hits.txt"

    @property
    def mix_file(self) -> Path:
        return self.root / "q-blocked-mix.txt"

    @property
    def warm_file(self) -> Path:
        return self.root / "q-warm.txt"

    @property
    def lists_dir(self) -> Path:
        return self.root / "lists"

    @property
    def blocklist_file(self) -> Path:
        return self.lists_dir / "gambling.txt"

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        rng = random.Random(20261128)
        lines = [
            f"$ORIGIN {ZONE}",
            "$TTL 86400",
            f"@ IN SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 864000 86400",
            f"@ IN NS ns.{ZONE}",
            "ns IN A 127.0.0.1",
        ]
        # Two A records per name, so that every answer has something to validate.
        for i in range(1, self.names + 1):
            a, b = divmod(i, 250)
            lines.append(f"h{i:06d} IN A 10.{a % 250}.{b}.1")
            lines.append(f"h{i:06d} IN A 10.{a % 250}.{b}.2")
        for i in range(1, self.blocked + 1):
            a, b = divmod(i, 250)
            lines.append(f"b{i:06d} IN A 10.251.{a % 250}.{b}")
            lines.append(f"b{i:06d} IN A 10.252.{a % 250}.{b}")
        lines.append("*.miss IN A 10.253.0.1")
        lines.append("*.miss IN A 10.253.0.2")
        self.zone_file.write_text("\n".join(lines) + "\n")

        hits = [hit_name(i) for i in range(1, self.names + 1)]
        blocked = [blocked_name(i) for i in range(1, self.blocked + 1)]
        rng.shuffle(hits)
        self.hits_file.write_text("".join(f"{n} A\n" for n in hits))
        mix = hits + blocked
        rng.shuffle(mix)
        self.mix_file.write_text("".join(f"{n} A\n" for n in mix))
        self.warm_file.write_text("".join(f"{n} A\n" for n in hits + blocked))

        self.lists_dir.mkdir(exist_ok=True)
        self.blocklist_file.write_text("".join(f"{n}\n" for n in blocked))

    def write_miss_file(self, path: Path, tag: str, count: int) -> Path:
        """``count`` names never asked before: ``<tag>-<i>.miss.bench.test``."""
        with open(path, "w") as f:
            for start in range(0, count, 50_000):
                stop = min(count, start + 50_000)
                f.write("".join(f"{tag}-{i:07d}.miss.bench.test A\n" for i in range(start, stop)))
        return path

    def write_household_file(self, path: Path, tag: str, count: int) -> Path:
        """``count`` queries as a household asks them: 85% cached names (the popular ones
        more often), 10% names never asked before (``<tag>-<i>.miss.bench.test``: cache
        misses) and 5% names on the blocklist, shuffled."""
        rng = random.Random(tag)
        hits = [hit_name(i) for i in range(1, self.names + 1)]
        weights = [1 / i for i in range(1, self.names + 1)]  # Zipf, like real browsing
        blocked = [blocked_name(i) for i in range(1, self.blocked + 1)]
        n_miss, n_blocked = count // 10, count // 20
        names = rng.choices(hits, weights, k=count - n_miss - n_blocked)
        names += [f"{tag}-{i:07d}.miss.bench.test" for i in range(n_miss)]
        names += rng.choices(blocked, k=n_blocked)
        rng.shuffle(names)
        with open(path, "w") as f:
            f.write("".join(f"{n} A\n" for n in names))
        return path
