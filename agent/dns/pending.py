"""An answer that comes later, without asyncio's Task and Future hops.

A cache miss waits for the upstream. With a Task and Futures each step of that
wait is a trip through the event loop's queue; here the steps registered with
`then` run at once, in order, when the outcome arrives. A failure travels as an
exception value: a step that cannot use it passes it on unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Pending:
    __slots__ = ("_steps", "settled", "value")

    def __init__(self) -> None:
        self._steps: list[Callable[[Any], Any]] = []
        self.settled = False
        self.value: Any = None

    def then(self, step: Callable[[Any], Any]) -> Pending:
        """Map the outcome through `step` when it comes (at once if it already has)."""
        if self.settled:
            self.value = _run(step, self.value)
        else:
            self._steps.append(step)
        return self

    def settle(self, value: Any) -> None:
        if self.settled:
            return
        self.settled = True
        for step in self._steps:
            value = _run(step, value)
        self._steps.clear()
        self.value = value


def _run(step: Callable[[Any], Any], value: Any) -> Any:
    try:
        return step(value)
    except Exception as exc:  # our bug: it travels on as a value, and the server answers SERVFAIL
        return exc
