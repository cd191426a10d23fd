"""A lane taken away while its reader is in a read: ``lanes_stopped`` says when it has ended.

Real threads (the in-flight read is a real blocked call): a group gives a lane's key back only
once this says so, so no two collectors ever read one device at the same moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from flowcollect import CollectedVariable, DataCollectionContext, DataCollector, Variable
from flowcollect.testing import MemoryDataWriter, StaticDataReader
from tests.support.waiting import wait_until

LANE = "tcp://10.0.0.9:502"

pytestmark = pytest.mark.realtime


class GatedReader(StaticDataReader):
    """Reads block on ``gate`` (once it is closed), after saying so through ``entered``."""

    def __init__(self) -> None:
        super().__init__({"a": 1.5}, type="gated")
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0

    @property
    def lane(self) -> str:
        return LANE

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.calls += 1
        self.entered.set()
        self.gate.wait(10)
        super().read(variables)


def test_a_lane_taken_away_mid_read_stops_only_once_that_read_has_ended() -> None:
    reader = GatedReader()
    writer = MemoryDataWriter()
    collector = DataCollector(readers=[reader], writers=[writer], close_timeout_s=5)
    try:
        variables = [Variable(id=1, address="a", reader="gated")]
        collector.start(DataCollectionContext(id=1, variables=variables, interval_ms=100))
        assert collector.lanes_stopped({LANE}) == frozenset()  # assigned: reading
        wait_until(lambda: reader.calls >= 2, 5, "the lane reads")
        reader.gate.clear()
        reader.entered.clear()
        assert reader.entered.wait(5), "a read began"
        collector.assign_lanes(["another-members-lane"])  # returns at once, the read still blocked
        assert collector.lanes_stopped({LANE, "another-members-lane"}) == {"another-members-lane"}
        time.sleep(0.2)
        assert collector.lanes_stopped({LANE}) == frozenset(), "stopped while its read is in flight"
        reads = reader.calls
        reader.gate.set()
        wait_until(lambda: collector.lanes_stopped({LANE}) == {LANE}, 5, "the lane stopped")
        time.sleep(0.3)
        assert reader.calls == reads, "the lane read again after it was taken away"
        # The read that was in flight still reached the writer.
        wait_until(lambda: len(writer.values) >= reads, 5, "the last read's value written")
        collector.assign_lanes(None)
        assert collector.lanes_stopped({LANE}) == frozenset()
        wait_until(lambda: reader.calls > reads, 5, "the lane reads again once assigned")
    finally:
        reader.gate.set()
        collector.close()
    # Closed: every lane has stopped, assigned or not.
    assert collector.lanes_stopped({LANE}) == {LANE}
