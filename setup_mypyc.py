"""Optional: compile the DNS miss path to C extensions with mypyc (same source, no hand C).

    .venv/bin/python setup_mypyc.py build_ext --inplace     # writes agent/**/*.so
    .venv/bin/python setup_mypyc.py clean_mypyc             # removes them: plain Python again

The .py files stay the source of truth and the fallback: Python imports a module's .so when
it sits next to the .py, else the .py. SAFENEST_MYPYC_MODULES (space-separated paths)
overrides the list, for measuring one group at a time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Command, setup

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


class CleanMypyc(Command):
    """Delete the compiled modules and mypyc's build directory."""

    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        root = Path(__file__).parent
        for so in [*root.glob("agent/**/*.so"), *root.glob("*__mypyc*.so")]:
            so.unlink()
            print("removed", so)


def modules() -> list[str]:
    chosen = os.environ.get("SAFENEST_MYPYC_MODULES")
    return chosen.split() if chosen else MODULES


if __name__ == "__main__":
    if sys.argv[1:2] == ["clean_mypyc"]:
        setup(name="safenest-mypyc", cmdclass={"clean_mypyc": CleanMypyc}, py_modules=[])
    else:
        from mypyc.build import mypycify

        setup(
            name="safenest-mypyc",
            py_modules=[],
            ext_modules=mypycify(
                ["--ignore-missing-imports", "--follow-imports=silent", *modules()],
                opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"),
                # The shared library goes inside the package (agent/compiled__mypyc*.so), so
                # it is found wherever `agent` is (an editable install maps only packages).
                group_name="agent.compiled",
            ),
        )
