"""An answer that comes later, without asyncio's Task and Future hops.

A cache miss waits for the upstream. With a Task and Futures each step of that
wait is a trip through the event loop's queue; here the steps registered with
`then` run at once, in order, when the outcome arrives. A failure travels as an
exception value: a step that cannot use it passes it on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Pending:
    __slots__ = ("_steps", "settled", "value")

    def __init__(self) -> None:
        self._steps: list[Callable[[Any], Any]] = []
        self.settled = False
        self.value: Any = None

    def then(self, step: Callable[[Any], Any]) -> Pending:
        """Map the outcome through `step` when it comes (at once if it already has)."""
        if not self.settled:
            self._steps.append(step)
            return self
        try:
            self.value = step(self.value)
        except (
            Exception
        ) as exc:  # our bug: it travels on as a value, and the server answers SERVFAIL
            self.value = exc
        return self

    def settle(self, value: Any) -> None:
        if self.settled:
            return
        self.settled = True
        # The try is inlined rather than a helper per step: this runs for every cache miss.
        for step in self._steps:
            try:
                value = step(value)
            except Exception as exc:  # our bug: as in `then`
                value = exc
        self._steps.clear()
        self.value = value
