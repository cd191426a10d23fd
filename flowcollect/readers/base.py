"""The reader plugin base: what the engine asks of every protocol."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol, Self

from flowcollect._options import record_construction
from flowcollect.models import ValueType, Variable
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

__all__ = [
    "CLOSING_TASK_PREFIX",
    "DataReader",
    "Emit",
    "TickEstimate",
    "closing_task",
    "engine_loop",
    "mark_engine_loop",
]

Emit = Callable[[ValueBatch], None]
"""What a pushing reader calls with the values its source pushed (from any thread)."""


_ENGINE = threading.local()  # .loop: set on the engine's loop thread, by that loop, once


def engine_loop() -> asyncio.AbstractEventLoop | None:
    """The engine's event loop when called on its thread (an asynchronous reader's ``open``,
    ``plan_changed``, ``close``, or its reads there), else None: on any other thread or loop (a
    notebook's, a user's asyncio program, a test calling the reader directly) a reader whose
    client could live on the engine's loop keeps it on a thread of its own instead, so that its
    synchronous calls still work there."""
    loop: asyncio.AbstractEventLoop | None = getattr(_ENGINE, "loop", None)
    return loop


def mark_engine_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by the engine on its loop thread once, before that loop runs anything."""
    _ENGINE.loop = loop


CLOSING_TASK_PREFIX: Final = "flowcollect-closing: "
"""The name of every task ``closing_task`` starts: the engine's loop lets them end (each within
its own bound, and the collector's close deadline) before it stops."""


def closing_task(coro: Coroutine[Any, Any, None], what: str, timeout_s: float) -> asyncio.Task[None]:
    """For an asynchronous reader's ``close`` on the engine's loop, which must not wait: run
    ``coro`` (a goodbye to the device, then the socket closed) as a task of the running loop,
    cancelled after ``timeout_s``. The loop lets it end before it stops (at most until the
    collector's close deadline; cancelled past that): ``coro`` must close its socket when
    cancelled too (in a ``finally``)."""

    async def bounded() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await coro

    return asyncio.get_running_loop().create_task(bounded(), name=CLOSING_TASK_PREFIX + what)


class TickEstimate(Protocol):
    """What one tick of a lane costs at its source, as its readers estimate it (no I/O).

    ``str(estimate)`` is the line ``flowcollect plan`` prints for the lane.
    """

    @property
    def load(self) -> float | None:
        """The estimated time over the tick (above 1.0 the source cannot keep up); None: unknown."""
        ...

    @property
    def warning(self) -> str | None:
        """One line for ``check`` when the source cannot serve the tick in time, else None."""
        ...


class DataReader(ABC):
    """Reads the values of variables from one source (a device, a service, a generator).

    A reader is polled (the engine calls ``read_batch`` or ``read`` at due instants) or pushes
    (``pushes`` is True: the engine calls ``start_pushing`` once and the reader hands over values
    when its source says they changed). A reader implements ``read``, ``read_batch`` or
    ``start_pushing``.

    The engine calls ``open``, ``plan_changed``, ``read``/``read_batch``, ``start_pushing`` and
    ``close`` of one reader one call at a time, in order, for its whole lane (on a worker of the
    engine's bounded pool, which may be a different thread from call to call; an asynchronous
    reader's on the engine's loop thread), so they need no locking of their own. ``validate`` and
    ``natural_value_type`` run on the thread that starts a context and ``stats`` on the thread
    that asks for a snapshot: keep them free of the reader's I/O state (``stats`` may read
    counters without a lock).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # The construction call is the reader's options, for a reload to compare (_options).
        instance = super().__new__(cls)
        record_construction(instance, args, kwargs)
        return instance

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        if (
            cls.read is DataReader.read
            and cls.read_batch is DataReader.read_batch
            and cls.read_batch_async is DataReader.read_batch_async
            and cls.start_pushing is DataReader.start_pushing
        ):
            raise TypeError(
                f"{cls.__name__} must implement read(), read_batch(), read_batch_async() or start_pushing()"
            )

    @property
    @abstractmethod
    def type(self) -> str:
        """The name variables use in ``Variable.reader`` to pick this reader."""

    @property
    def min_interval_ms(self) -> int:
        """The shortest interval this reader serves (see ``IntervalLimitPolicy``)."""
        return 1

    @property
    def lane(self) -> str | None:
        """The resource this reader uses, as a stable text (``serial:///dev/ttyUSB0``).

        Readers with the same lane share one schedule: their reads never overlap and run in
        deadline order. ``None`` (the default): a lane of its own. The text also names the
        lane in plans, stats and collector groups, so it must be the same in every process.
        """
        return None

    @property
    def pushes(self) -> bool:
        """True for a reader whose source pushes values (a subscription) instead of being read."""
        return False

    @property
    def stale_after_ms(self) -> int | None:
        """For a pushing reader: how long the engine holds its values (sample and hold) without
        hearing from it. Any ``emit`` counts, an empty batch too (a keep-alive), so a value that
        does not change is not stale while the reader is alive; past this, every held value is
        delivered as an error until the reader is heard again. ``None``: never stale.
        """
        return 10_000

    def natural_value_type(self, address: str) -> ValueType | None:
        """The value type an address holds when a variable gives none (a coil is a bool).

        ``None``: no natural type; the variable is collected as ``float``.
        """
        return None

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        """Set ``value`` on each variable, or ``error`` (a short text, value left None).

        Called once per tick with the distinct variables due at that instant; a variable wanted
        by several contexts is in the list once. Leave ``time`` alone unless the source supplies
        its own timestamp. An exception raised here marks every variable of the call with its
        text; it never ends the collection.
        """
        raise NotImplementedError

    def read_batch(self, batch: ValueBatch) -> None:
        """The columnar form of ``read``: fill ``batch.values[i]`` or ``batch.errors[i]`` for each
        of ``batch.variables`` (and ``source_ns``/``quality`` when the source gives them).

        When a reader defines it, the engine calls it instead of ``read``.
        """
        raise NotImplementedError

    async def read_batch_async(self, batch: ValueBatch) -> None:
        """``read_batch`` for a source spoken to with asyncio: awaited on the engine's event loop.

        When a reader's class defines it, the engine awaits it instead of calling ``read`` or
        ``read_batch``, and such a reader is *asynchronous*: its ``open``, ``plan_changed``,
        ``start_pushing`` and ``close`` are called on the engine's loop thread too, so they must
        not block (connect lazily, from here; ``plan_changed`` may return an awaitable the lane
        awaits before the new plan's first tick; ``close`` may leave its goodbye to
        ``closing_task``). At each instant the engine starts every due lane's read before it
        handles any answer. Reads of one lane still never overlap, and a lane's readers are all
        asynchronous or none is. ``abort`` may come from any thread. Every wait inside must have
        a deadline: a read that never returns holds its lane until the collector's close
        deadline, when it is cancelled and ``abort`` is called. A pushing reader may define it
        too, so that its client lives on the loop: its due instants are still sampled from
        what it pushed.
        """
        raise NotImplementedError

    def send_batch(self, batch: ValueBatch) -> None:
        """Optional, for an asynchronous reader: write what ``batch`` asks of the device *now*,
        without waiting for anything, for the ``read_batch_async(batch)`` that follows (the same
        object) to take up.

        The engine calls it on its loop at each instant, for the first reader of every due lane,
        before it awaits any read: every due request of an instant then leaves in one pass, and
        a device samples as close to the instant as the process allows (a request written later
        than the answers of the first is sampled later). It must return at once and never
        raise for the device's sake: when it cannot send now (not connected, backing off, a
        request already in flight), it sends nothing and the read sends as usual. The default
        sends nothing. Only called when the class overrides it.
        """

    def start_pushing(self, emit: Emit) -> None:
        """For a pushing reader: keep ``emit`` and call it (from any thread) with batches of the
        values the source pushes, each with its source time and quality. Called once, on the
        lane's worker (the engine's loop, for an asynchronous reader), after ``open``; what to
        watch comes through ``plan_changed``.
        """
        raise NotImplementedError

    def plan_changed(self, variables: Sequence[VariableSpec]) -> Awaitable[None] | None:
        """The distinct variables this reader must serve now (contexts started, stopped, paused
        or resumed): prepare for them off the hot path (plan requests, register nodes, create or
        delete monitored items). Called (like ``open``) before the next tick that needs them.

        An asynchronous reader, called on the loop where it must not wait, may return an
        awaitable instead (a coroutine, a task): the lane awaits it before the new plan's first
        tick, as it waits for a synchronous reader's call to return (its reads and other jobs
        wait meanwhile, no other lane does). It must end within a bound of its own (a
        subscription's items created and their first values in, a connect tried).
        """
        return None

    def describe_requests(self, variables: Sequence[VariableSpec]) -> Sequence[str]:
        """What one tick due at ``variables`` costs at the source, one line each (Modbus requests,
        OPC UA Read calls or monitored items), for ``flowcollect plan``. No I/O. Empty: nothing
        worth saying beyond the variables themselves.
        """
        return ()

    def estimate_tick(
        self, due: Sequence[tuple[DataReader, Sequence[VariableSpec]]], tick_ms: float
    ) -> TickEstimate | None:
        """What one tick of this reader's lane costs, for ``flowcollect plan`` and ``check``.

        Called on the lane's first reader with every reader of the lane that has variables due
        at the instant, paired with them (readers on one lane share its source: a serial line's
        cost is that of all its units), and ``tick_ms``, the time until the lane's next due
        instant; once per due pattern, first at the hyperperiod's start, where every reader of
        the lane is due. No I/O. None (the default) from that first call: no estimate for the
        lane, which is not asked again.
        """
        return None

    def validate(self, variable: Variable) -> None:
        """Raise ``ValueError`` if this reader cannot read ``variable`` (bad address, type).

        Called for every variable before a context starts, never touching the source.
        """

    def validate_as(self, variable: Variable, value_type: ValueType) -> None:
        """``validate`` for ``variable`` collected as ``value_type``: the engine's call, which
        resolves a missing ``value_type`` first (``natural_value_type``, else ``"float"``).

        The default validates a copy of the variable carrying that type. A reader whose check
        needs nothing of the variable but its address and type may override this to skip the
        copy (a copy per variable was a third of compiling 40,000 variables); a subclass's own
        ``validate`` must still be called (the Modbus reader's override checks for one).
        """
        if variable.value_type != value_type:
            variable = variable.model_copy(update={"value_type": value_type})
        self.validate(variable)

    def open(self) -> None:
        """Acquire resources (connections); called before the reader's first read (on a worker; on
        the loop, for an asynchronous reader, where it must not block)."""

    def close(self) -> None:
        """Release resources; called once when the collector closes (on the engine's loop for an
        asynchronous reader, where it must return at once: see ``closing_task``)."""

    def abort(self) -> None:
        """Release the device connection now, from another thread, under a read still running.

        Called when the collector's close deadline passed with this reader's lane still inside a
        read (the lane is abandoned and ``close`` will not be called): a device that counts its
        connections (a PLC with a few slots) must see this one closed. Must return promptly and
        never wait for the read, which may then fail; nothing is read afterwards. Default:
        nothing (the connection stays until the read returns or the process ends).
        """

    def stats(self) -> Mapping[str, float]:
        """Counters of the reader's own (requests, reconnects...) for ``DataCollector.stats()``."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r})"
