"""Subscribed values against an in-process asyncua server: source times, deadband, plan changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from opcua_helpers import Pushed, wait_for

from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import OpcUaSimulator
from flowcollect.values import VariableSpec

MakeReader = Callable[..., OpcUaDataReader]


def spec(
    id_: int, address: str, value_type: str = "float", interval_ms: int = 100, **extra: object
) -> VariableSpec:
    return VariableSpec(id_, 1, address, value_type, "opc", interval_ms, **extra)  # type: ignore[arg-type]


def test_changes_arrive_with_the_source_times_they_were_written_at(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader(mode="subscribe", timestamps="source")
    pushed = Pushed()
    reader.plan_changed([spec(1, sim.node_id("Line1/Setpoint"))])
    reader.start_pushing(pushed)
    assert wait_for(lambda: pushed.values(1), 5)  # the initial value
    base = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
    written = [(base + dt.timedelta(seconds=k), 100.0 + k) for k in range(5)]
    for when, value in written:
        sim.set_value("Line1/Setpoint", value, source_time=when)
    assert wait_for(lambda: 104.0 in pushed.values(1), 5)
    # The shared server's Setpoint holds whatever an earlier test wrote: only ours count.
    ours = {value for _when, value in written}
    got = [(cv.time, cv.value) for cv in pushed.items(1) if cv.value in ours]
    assert got == written
    assert all(cv.quality is None and cv.error is None for cv in pushed.items(1))


def test_an_absolute_deadband_drops_the_small_changes(sim: OpcUaSimulator, make_reader: MakeReader) -> None:
    reader = make_reader(mode="subscribe")
    pushed = Pushed()
    reader.plan_changed([spec(1, sim.node_id("Line1/Setpoint"), deadband=1.0)])
    reader.start_pushing(pushed)
    sim.set_value("Line1/Setpoint", 0.0)
    assert wait_for(lambda: 0.0 in pushed.values(1), 5)
    # Steps either within 1.0 of both the previous value and the last delivered one, or beyond
    # both (servers compare with either).
    for value in (0.5, 2.0, 2.4, 5.0, 5.3, 10.0):
        sim.set_value("Line1/Setpoint", value)
    assert wait_for(lambda: 10.0 in pushed.values(1), 5)
    after = pushed.values(1)
    after = after[after.index(0.0, len(after) - after[::-1].index(0.0) - 1) :]
    assert after == [0.0, 2.0, 5.0, 10.0]


def test_items_follow_plan_changes_and_bad_gives_errors_not_stale_values(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader(mode="subscribe")
    pushed = Pushed()
    counter, flaky = spec(1, sim.node_id("Line1/Counter"), "int"), spec(2, sim.node_id("Line1/Flaky"))
    reader.start_pushing(pushed)
    reader.plan_changed([counter, flaky])
    assert wait_for(lambda: len(pushed.values(1)) >= 3 and len(pushed.values(2)) >= 2, 5)
    assert reader.stats()["monitored_items"] == 2
    sim.set_bad(True)
    try:
        assert wait_for(lambda: "BadSensorFailure" in pushed.errors(2), 5)
        bad = [cv for cv in pushed.items(2) if cv.error == "BadSensorFailure"]
        assert all(cv.value is None for cv in bad)
        seen = len(pushed.values(1))
        assert wait_for(lambda: len(pushed.values(1)) >= seen + 2, 5)  # the other one keeps flowing
    finally:
        sim.set_bad(False)
    # Remove the Counter's item, add Level's: only the served variables come afterwards.
    level = spec(3, sim.node_id("Line1/Level"), "int")
    reader.plan_changed([flaky, level])
    assert reader.stats()["monitored_items"] == 2
    mark = len(pushed.batches)

    def level_batches() -> list[int]:
        return [i for i, b in enumerate(pushed.batches) if i >= mark and any(cv.id == 3 for cv in b)]

    assert wait_for(lambda: len(level_batches()) >= 3, 5)
    # After Level's first notification (its item exists, so Counter's was deleted before),
    # no Counter value comes any more.
    later = [cv.id for b in pushed.batches[level_batches()[0] + 1 :] for cv in b]
    assert 1 not in later and 3 in later
    assert reader.stats()["items_deleted"] == 1


def test_an_unknown_node_is_an_error_and_the_others_are_served(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader(mode="subscribe")
    pushed = Pushed()
    reader.start_pushing(pushed)
    reader.plan_changed(
        [
            spec(1, f"ns={sim.namespace_index};i=424242"),
            spec(2, sim.browse_path("Line1/NoSuchNode")),
            spec(3, sim.browse_path("Line1/Temperature")),
        ]
    )
    assert wait_for(lambda: pushed.errors(1) and pushed.errors(2) and len(pushed.values(3)) >= 2, 5)
    assert pushed.errors(1)[0] == "cannot monitor: BadNodeIdUnknown"
    assert pushed.errors(2)[0] == "browse path not found on the server (BadNoMatch)"


def test_one_item_serves_every_variable_of_that_node_and_interval(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader(mode="subscribe")
    pushed = Pushed()
    reader.start_pushing(pushed)
    a = VariableSpec(1, 1, sim.node_id("Line1/Counter"), "int", "opc", 100)
    b = VariableSpec(1, 2, sim.node_id("Line1/Counter"), "float", "opc", 100)
    reader.plan_changed([a, b])
    assert wait_for(
        lambda: len([cv for batch in pushed.batches for cv in batch if cv.context_id == 2]) >= 2, 5
    )
    assert reader.stats()["monitored_items"] == 1
    both = [(cv.context_id, type(cv.value)) for batch in pushed.batches for cv in batch]
    assert (1, int) in both and (2, float) in both


def test_a_node_removed_mid_run_becomes_an_error_and_the_others_flow(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader(mode="subscribe")
    pushed = Pushed()
    reader.start_pushing(pushed)
    reader.plan_changed([spec(1, sim.node_id("Bulk/B37")), spec(2, sim.node_id("Line1/Counter"), "int")])
    assert wait_for(lambda: pushed.values(1) == [37.0] and len(pushed.values(2)) >= 2, 5)
    sim.delete_node("Bulk/B37")
    assert wait_for(lambda: "BadNodeIdUnknown" in pushed.errors(1), 5)
    seen = len(pushed.values(2))
    assert wait_for(lambda: len(pushed.values(2)) >= seen + 2, 5)
    assert pushed.values(1) == [37.0]  # nothing after the error: no stale value
