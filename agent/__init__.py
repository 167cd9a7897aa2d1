"""SafeNest: a parental-control DNS filtering agent for a Raspberry Pi."""

__version__ = "0.1.0"
