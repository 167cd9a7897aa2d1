"""What every link of the resolver chain is: answer the query, or pass it on."""

from __future__ import annotations

from collections.abc import Awaitable

from ...model import Answer
from ..wire import Query

# A link answers at once (an Answer) or later (an awaitable that yields one):
# cached and blocked answers never touch the event loop's task machinery.
Result = Answer | Awaitable[Answer]


class Step:
    """A link: `__call__` returns an Answer or `self.next(query)`; nothing else."""

    next: Step

    def __call__(self, query: Query) -> Result:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the start-up log: what this link does with its settings."""
        return type(self).__name__


def is_answer(result: Result) -> bool:
    return result.__class__ is Answer
