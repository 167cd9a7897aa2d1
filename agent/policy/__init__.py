"""Deciding what a query may see: a pure function over an immutable snapshot."""

from .decide import ALLOWED, Decision, Snapshot, decide

__all__ = ["ALLOWED", "Decision", "Snapshot", "decide"]
