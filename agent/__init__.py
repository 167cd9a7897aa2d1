"""SafeNest: a parental-control DNS filtering agent for a Raspberry Pi."""

__version__ = "0.1.0"

from pathlib import Path as _Path

from . import compiled_guard

# The compiled modules (make compile) count only while they match their sources.
compiled_guard.install(_Path(__file__).parent)
