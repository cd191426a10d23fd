"""The reader plugin base: what the engine asks of every protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from flowcollect.models import Variable
from flowcollect.values import CollectedVariable

__all__ = ["DataReader"]


class DataReader(ABC):
    """Reads the values of variables from one source (a device, a service, a generator).

    The engine calls ``open``, ``read`` and ``close`` of one reader from that reader's own
    thread, one call at a time, so they need no locking of their own. ``validate`` runs on the
    thread that starts a context and ``stats`` on the thread that asks for a snapshot: keep
    them free of the reader's I/O state (``stats`` may read counters without a lock).

    ``read`` is called once per tick with the distinct variables due at that instant; a variable
    wanted by several contexts is in the list once.
    """

    @property
    @abstractmethod
    def type(self) -> str:
        """The name variables use in ``Variable.reader`` to pick this reader."""

    @property
    def min_interval_ms(self) -> int:
        """The shortest interval this reader serves (see ``IntervalLimitPolicy``)."""
        return 1

    @abstractmethod
    def read(self, variables: Sequence[CollectedVariable]) -> None:
        """Set ``value`` on each variable, or ``error`` (a short text, value left None).

        Leave ``time`` alone unless the source supplies its own timestamp. An exception raised
        here marks every variable of the call with its text; it never ends the collection.
        """

    def validate(self, variable: Variable) -> None:
        """Raise ``ValueError`` if this reader cannot read ``variable`` (bad address, type).

        Called for every variable before a context starts, never touching the source.
        """

    def open(self) -> None:
        """Acquire resources (connections); called on the reader's thread before its first read."""

    def close(self) -> None:
        """Release resources; called once when the collector closes."""

    def stats(self) -> Mapping[str, float]:
        """Counters of the reader's own (requests, reconnects...) for ``DataCollector.stats()``."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r})"
