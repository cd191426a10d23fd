"""The writer plugin base: where collected values go, and how a writer says they are stored."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self

from flowcollect._options import record_construction
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import CollectedVariable, Receipt, ValueBatch, VariableSpec

__all__ = ["DataWriter", "OnReceipt", "QueuePolicy", "Routing", "preflight_problems", "writer_problems"]

OnReceipt = Callable[[Receipt], None]
"""Where a writer's receipts go (set by the engine, or by a spool in front of the writer)."""

QueuePolicy = Literal["drop_oldest", "drop_newest"]
"""What a writer's queue does when a batch does not fit: drop the oldest queued batches to make
room (the default: the newest data is usually worth most), or drop the batch that came."""

QUEUE_POLICIES: tuple[QueuePolicy, ...] = ("drop_oldest", "drop_newest")

# Sub-batch index lists cached per shared ``variables`` sequence; bounded so ever new plans
# (contexts started and stopped for days) cannot grow memory.
_ROUTE_CACHE = 4096


class Routing:
    """Which values a writer receives (``DataWriter.receive``): immutable, checked per batch.

    ``contexts``: the context ids it receives (None: all). ``variables``: variable ids (int) or
    names (str) it receives, in every context it receives (None: all). A batch of a context not
    received is skipped as a whole, without looking at its values; the variables filter costs one
    lookup per value the first time a batch's variable list is seen, then one per batch.
    """

    __slots__ = ("_cache", "contexts", "variables")

    def __init__(self, contexts: frozenset[int] | None, variables: frozenset[int | str] | None) -> None:
        self.contexts = contexts
        self.variables = variables
        # id(variables) -> (the sequence itself, kept so its id is not reused; indices; sub-list)
        self._cache: dict[int, tuple[Sequence[VariableSpec], list[int], list[VariableSpec]]] = {}

    def wants_context(self, context_id: int | None) -> bool:
        return self.contexts is None or context_id in self.contexts

    def wants_variable(self, context_id: int, variable_id: int, name: str | None) -> bool:
        if self.contexts is not None and context_id not in self.contexts:
            return False
        wanted = self.variables
        return wanted is None or variable_id in wanted or (name is not None and name in wanted)

    def select(self, variables: Sequence[VariableSpec]) -> tuple[list[int], list[VariableSpec]]:
        """The indices (and the specs) of the received variables of a batch's variable list."""
        hit = self._cache.get(id(variables))
        if hit is not None and hit[0] is variables:
            return hit[1], hit[2]
        keep = [
            i for i, spec in enumerate(variables) if self.wants_variable(spec.context_id, spec.id, spec.name)
        ]
        picked = [variables[i] for i in keep]
        if len(self._cache) >= _ROUTE_CACHE:
            self._cache.clear()
        self._cache[id(variables)] = (variables, keep, picked)
        return keep, picked

    def __repr__(self) -> str:
        return f"Routing(contexts={self.contexts}, variables={self.variables})"


def _uses_batches(cls: type) -> bool:
    # The most derived of write and write_batch wins: a subclass that overrides write() of a
    # batch writer (a test double) is called through write().
    for klass in cls.__mro__:
        if klass is DataWriter:
            return False
        if "write_batch" in vars(klass):
            return True
        if "write" in vars(klass):
            return False
    return False


class DataWriter:
    """Takes batches of collected values to a destination.

    A writer implements ``write`` (a sequence of ``CollectedVariable``) or ``write_batch`` (a
    columnar ``ValueBatch``); when it defines ``write_batch`` the engine calls that instead (the
    most derived of the two wins, so a subclass overriding ``write`` is called through it).
    Batches are shared between writers: read them, never change them.

    Threading: ``write``/``write_batch``, ``flush`` and ``close`` run on the writer's own thread,
    one at a time, never two at once; ``preflight`` runs before that thread starts; ``stats``
    and the receipt callback may run on any thread.

    Acknowledgement: a writer whose ``acknowledges`` is False has stored a batch when its write
    returns (an exception: every value failed). A writer that stores later (its own buffer and
    sender, or a file it flushes later) sets ``acknowledges = True``, implements
    ``write_batch``, and calls ``self.acknowledge(batch, ...)`` with the very batch object it was
    given, for every value of every batch it took, once stored, refused or given up, from any
    thread, in one receipt or several. By the time ``close`` returns every value must be
    reported: what is not is counted as dropped at close. Only acknowledged values count as
    written, and a spool deletes only what was acknowledged.

    An acknowledging writer's batch object is its own (``batch.handle()``: the engine's lists,
    a private object). Once it has stored the values elsewhere it may ``batch.release()`` the
    object's columns (``values``, ``errors``, ``source_ns``, ``quality``) and keep the object only
    to acknowledge it: ``len(batch)`` (its ``variables``, the plan's shared tuple: keep it) still
    counts its values. Never change the lists themselves: other writers share them. A writer
    that hands batches on to another acknowledging writer gives it a ``handle()`` of its own.

    Queue: ``queue_policy`` (``"drop_oldest"``, the default, or ``"drop_newest"``) and
    ``queue_limit`` (values; None: the collector's ``queue_limit``) say what the engine's queue in
    front of this writer does when the writer cannot keep up; a reader is never blocked.

    Routing: ``receive(contexts=..., variables=...)`` limits what the writer is given.
    """

    acknowledges: ClassVar[bool] = False
    queue_policy: QueuePolicy = "drop_oldest"
    queue_limit: int | None = None
    flush_interval_s: float | None = None
    """When set, the engine calls ``flush`` on the writer's thread at least this often while it
    has written since the last flush (a file that ``tail -f`` shows, and a crash loses at most
    this much). None: only on ``DataCollector.flush`` and at close."""
    routing: Routing | None = None
    """What this writer receives (``receive``); None: every value of every context."""
    kept_by: str | None = None
    """Set by a ``SpooledWriter`` on the writer it wraps (to the spool's folder): what this
    writer gives up when it closes is not lost, the spool keeps it for the next run. For the
    wording of the writer's own logs; its counts stay what it did."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # The construction call is the writer's options, for a reload to compare (_options).
        instance = super().__new__(cls)
        record_construction(instance, args, kwargs)
        return instance

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        if cls.write is DataWriter.write and cls.write_batch is DataWriter.write_batch:
            raise TypeError(f"{cls.__name__} must implement write() or write_batch()")
        if cls.acknowledges and cls.write_batch is DataWriter.write_batch:
            # A receipt names its batch: a write(values) writer never sees one.
            raise TypeError(f"{cls.__name__} acknowledges, so it must implement write_batch()")

    @property
    def name(self) -> str:
        """A label for logs and metrics; unique among a collector's writers."""
        return type(self).__name__

    @property
    def uses_batches(self) -> bool:
        """True when the engine calls ``write_batch``, False when it calls ``write``."""
        return _uses_batches(type(self))

    def write(self, values: Sequence[CollectedVariable]) -> None:
        """Take a batch of values (with or without ``error``)."""
        raise NotImplementedError

    def write_batch(self, batch: ValueBatch) -> None:
        """Take a columnar batch; by default, its values through ``write`` (the batch is a
        ``Sequence[CollectedVariable]`` making each on demand, so a writer that lets each go
        leaves the garbage collector little to do)."""
        self.write(batch)

    def receive(
        self, contexts: Iterable[int] | None = None, variables: Iterable[int | str] | None = None
    ) -> Self:
        """Receive only these contexts (ids) and/or variables (ids, or names), and return the
        writer: ``CsvFileDataWriter("line1.csv").receive(contexts=[1])``. Both given: the
        variables of those contexts. Neither: every value (the default).

        Raises ``ConfigError`` naming the writer and the field for an empty or mistyped list.
        """
        problems: list[str] = []
        ctx: frozenset[int] | None = None
        var: frozenset[int | str] | None = None
        if contexts is not None:
            items: list[object] = list(contexts)
            bad = [c for c in items if isinstance(c, bool) or not isinstance(c, int)]
            if bad:
                problems.append(
                    f"writer {self.name}: receive(contexts=...) takes context ids (int), got {bad!r}"
                )
            elif not items:
                problems.append(
                    f"writer {self.name}: receive(contexts=[]) would receive nothing; "
                    "leave contexts out to receive every context"
                )
            ctx = frozenset(c for c in items if isinstance(c, int))
        if variables is not None:
            items_v: list[int | str] = [variables] if isinstance(variables, str) else list(variables)
            bad_v = [
                v
                for v in items_v
                if isinstance(v, bool)
                or not isinstance(v, (int, str))
                or (isinstance(v, str) and not v.strip())
            ]
            if bad_v:
                problems.append(
                    f"writer {self.name}: receive(variables=...) takes variable ids (int) or "
                    f"names (str), got {bad_v!r}"
                )
            elif not items_v:
                problems.append(
                    f"writer {self.name}: receive(variables=[]) would receive nothing; "
                    "leave variables out to receive every variable"
                )
            var = frozenset(items_v)
        if problems:
            raise ConfigError(problems)
        self.routing = None if ctx is None and var is None else Routing(ctx, var)
        return self

    def attach(self, on_receipt: OnReceipt) -> None:
        """Where ``acknowledge`` sends receipts; set by whoever hands this writer its batches,
        before the first write."""
        self._on_receipt = on_receipt

    def acknowledge(
        self, batch: ValueBatch, written: int, failed: int = 0, dropped: int = 0, error: str | None = None
    ) -> None:
        """Report (part of) ``batch`` as stored, refused or given up (for ``acknowledges`` writers)."""
        on_receipt: OnReceipt | None = getattr(self, "_on_receipt", None)
        if on_receipt is not None:
            on_receipt(Receipt(batch, written, failed, dropped, error))

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        """The problems this writer would have with these variables (a context's, compiled), one
        line each naming the writer and the variable; empty when it can take them all. Called by
        ``check`` and ``start`` before anything starts (a topic template that a variable cannot
        fill, say); pure, no I/O. The default finds none."""
        return []

    def preflight(self) -> None:
        """Check, before collection starts, that the destination can work (a path that can be
        created and written, a server that answers and accepts the credentials). Raise
        ``PreflightError`` with one line naming the problem; the writer's name is added by the
        caller. The default checks nothing.
        """

    def take_over(self, previous: DataWriter) -> None:
        """Called when this writer replaces ``previous`` (the running writer of the same name) in
        a running collector (``DataCollector.replace_writers``, a reload), on the caller's
        thread, before this writer gets any batch; ``previous`` may still be writing what it
        has queued. A writer whose first open would discard what ``previous`` stored (a file
        replaced at its first write) continues it instead. The default does nothing."""

    def flush(self) -> None:
        """Make everything written so far durable at the destination."""

    def close(self) -> None:
        """Flush and release resources; called once when the collector closes."""

    def stats(self) -> Mapping[str, float]:
        """The writer's own counters (buffered, retries...) for ``DataCollector.stats()``."""
        return {}


def preflight_problems(writers: Iterable[DataWriter]) -> list[str]:
    """Ask each writer whether its destination can work (``DataWriter.preflight``); one line per
    writer that cannot, naming it (a pipeline before it runs, a reload before it applies)."""
    problems = []
    for writer in writers:
        try:
            writer.preflight()
        except PreflightError as exc:
            problems.append(f"writer {writer.name}: {exc}")
        except Exception as exc:  # a plugin's bug: still one clear line, naming the writer
            problems.append(f"writer {writer.name}: preflight failed: {type(exc).__name__}: {exc}")
    return problems


def writer_problems(writers: Iterable[DataWriter], variables: Sequence[VariableSpec]) -> list[str]:
    """Every writer's ``check_variables`` for one context's variables; a writer whose check
    raises still gives one clear line naming it."""
    problems: list[str] = []
    for writer in writers:
        try:
            problems.extend(writer.check_variables(variables))
        except Exception as exc:  # a plugin's bug: still one line, naming the writer
            problems.append(
                f"writer {writer.name}: checking the variables failed: {type(exc).__name__}: {exc}"
            )
    return problems
