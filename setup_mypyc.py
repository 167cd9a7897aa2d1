"""Optional: compile the DNS path to C extensions with mypyc, and build agent/dns/_udpio.c.

    .venv/bin/python setup_mypyc.py build_ext --inplace     # writes agent/**/*.so
    make uncompile                                           # removes them: plain Python again

The one hand-written module, _udpio.c, does the UDP system calls in batches and reads no DNS
(server.py uses recvfrom and sendto without it). The .py files stay the source of truth and
the fallback: Python imports a module's .so when it sits next to the .py, else the .py. After
a successful build, agent/mypyc-build.json records the modules and a digest of their sources
(.py, or .c); agent/compiled_guard.py loads the .py files instead when they no longer match (an
edit or a pull since the build), and leaves a stale _udpio unimported. MYPYC_MODULES
(space-separated paths) overrides the list, for measuring one group at a time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup

# The modules a forwarded miss runs through, in the order the measurements added them.
MODULES = [
    "agent/model.py",
    "agent/dns/wire.py",
    "agent/dns/pending.py",
    "agent/dns/udp_exchange.py",
    "agent/dns/upstream.py",
    "agent/dns/cache.py",
    "agent/dns/release.py",
    "agent/dns/replay.py",
    "agent/dns/server.py",
    "agent/dns/pipeline.py",
    "agent/dns/steps/base.py",
    "agent/dns/steps/caching.py",
    "agent/dns/steps/client_gate.py",
    "agent/dns/steps/forwarding.py",
    "agent/dns/steps/local_names.py",
    "agent/dns/steps/local_zones.py",
    "agent/dns/steps/policy.py",
    "agent/dns/steps/safesearch.py",
    "agent/dns/steps/special_queries.py",
    "agent/index/lookup.py",
    "agent/policy/decision.py",
    "agent/policy/snapshot.py",
    "agent/devices/seen.py",
]


def modules() -> list[str]:
    chosen = os.environ.get("MYPYC_MODULES")
    return chosen.split() if chosen else MODULES


if __name__ == "__main__":
    from mypyc.build import mypycify

    setup(
        name="safenest-mypyc",
        py_modules=[],
        ext_modules=[
            # Not mypyc: batched UDP system calls for the DNS sockets (agent/dns/_udpio.c).
            Extension("agent.dns._udpio", ["agent/dns/_udpio.c"], extra_compile_args=["-O2"]),
        ]
        + mypycify(
            ["--ignore-missing-imports", "--follow-imports=silent", *modules()],
            opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"),
            # The shared library goes inside the package (agent/compiled__mypyc*.so), so it
            # is found wherever `agent` is (an editable install maps only packages).
            group_name="agent.compiled",
        ),
    )
    # Only now (a failed build exits above): the record that makes the .so files count.
    sys.path.insert(0, str(Path(__file__).parent))
    from agent.compiled_guard import record_build

    print("recorded", len(record_build(Path(__file__).parent / "agent")["modules"]), "modules")
