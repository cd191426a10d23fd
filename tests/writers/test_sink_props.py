"""Properties of the sink's accounting, under any sequence of puts, receipts (whole, partial, in
pieces, excessive, negative, for unknown batches), raising writes, routing and close.

The sink runs without a thread here (``threaded=False``: every put is handed over at once), so
each step's expected figures are exact; the threaded paths are in test_sink.py.
"""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from flowcollect._sink import WriterSink
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter

LOG = logging.getLogger("flowcollect.test.sink.props")
LOG.propagate = False  # the writer bugs this test makes on purpose are logged, not shown
LOG.addHandler(logging.NullHandler())


class Recorder(DataWriter):
    acknowledges = True

    def __init__(self) -> None:
        self.batches: list[ValueBatch] = []
        self.raise_next = False

    def write_batch(self, batch: ValueBatch) -> None:
        self.batches.append(batch)
        if self.raise_next:
            self.raise_next = False
            # Part of it reported before the error: the rest counts failed.
            self.acknowledge(batch, 1)
            raise OSError("broken")


def batch(cid: int, n: int, k: int) -> ValueBatch:
    specs = [VariableSpec(i, cid, f"a{i}", "float", "r", 100) for i in range(1, n + 1)]
    return ValueBatch(k, specs, [float(i) for i in range(n)], [None] * n, context_id=cid)


puts = st.tuples(st.just("put"), st.integers(1, 3), st.integers(1, 6))  # context, values
acks = st.tuples(
    st.just("ack"),
    st.integers(0, 30),  # which batch handed so far (modulo)
    st.integers(-1, 7),  # written
    st.integers(0, 3),  # failed
    st.integers(0, 3),  # dropped
)
raises = st.tuples(st.just("raise"))
stray = st.tuples(st.just("stray"), st.integers(1, 5))


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.one_of(puts, acks, raises, stray), max_size=40),
    contexts=st.none() | st.sets(st.integers(1, 3), min_size=1),
)
def test_every_value_is_in_exactly_one_figure_after_every_step(
    ops: list[tuple[object, ...]], contexts: set[int] | None
) -> None:
    writer = Recorder()
    if contexts is not None:
        writer.receive(contexts=contexts)
    sink = WriterSink(writer, LOG, threaded=False)
    left: dict[int, int] = {}  # id(batch) -> values not yet reported, as the model sees it
    expected = {"received": 0, "written": 0, "failed": 0, "dropped_writer": 0}
    for k, op in enumerate(ops):
        if op[0] == "put":
            cid, n = int(op[1]), int(op[2])
            b = batch(cid, n, k)
            handed = len(writer.batches)
            will_raise = writer.raise_next
            sink.put(b)
            if contexts is not None and cid not in contexts:
                assert len(writer.batches) == handed  # routed away: not the writer's at all
                continue
            expected["received"] += n
            if will_raise:
                expected["written"] += 1
                expected["failed"] += n - 1
            else:
                left[id(writer.batches[-1])] = n  # the writer's own object: receipts name it
        elif op[0] == "ack" and writer.batches:
            b = writer.batches[int(op[1]) % len(writer.batches)]
            w, f, d = (int(x) for x in op[2:])
            remaining = left.get(id(b), 0)
            taken = []
            for count in (w, f, d):
                take = min(max(count, 0), remaining)
                remaining -= take
                taken.append(take)
            if id(b) in left:
                left[id(b)] = remaining
            expected["written"] += taken[0]
            expected["failed"] += taken[1]
            expected["dropped_writer"] += taken[2]
            writer.acknowledge(b, w, failed=f, dropped=d)
        elif op[0] == "raise":
            writer.raise_next = True
        elif op[0] == "stray":
            writer.acknowledge(batch(1, int(op[1]), -1), int(op[1]))
        s = sink.snapshot()
        assert s.received == s.written + s.failed + s.dropped + s.queued + s.in_flight, s
        assert (s.received, s.written, s.failed, s.dropped_writer) == tuple(expected.values()), (op, s)
        assert s.in_flight == sum(left.values()), s
        assert s.queued == s.dropped_queue == s.dropped_close == 0, s
    assert sink.close()
    s = sink.snapshot()
    # What was never reported by the end of close counts dropped at close; nothing is in flight.
    assert (s.in_flight, s.dropped_close) == (0, sum(left.values())), s
    assert s.received == s.written + s.failed + s.dropped, s
