"""What every link of the resolver chain is: answer the query, or pass it on."""

from __future__ import annotations

from ...model import Answer
from ..pending import Pending
from ..wire import Query

# A link answers at once (an Answer) or later (a Pending that settles with one).
Result = Answer | Pending


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
