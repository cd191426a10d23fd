"""The edge node's session under any order of events: every value accounted for exactly once,
``seq`` and births as the specification wants. Virtual time, no broker; payloads decoded by the
protobuf library."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowcollect.sparkplug._schema import Payload
from flowcollect.sparkplug._session import EdgeNode, Publish, Reconnect, Settle
from flowcollect.values import ValueBatch, VariableSpec

T0 = 1_765_102_500_000
PLANS = [
    (VariableSpec(1, 1, "a", "float", "plc1", 100, name="A"), VariableSpec(2, 1, "b", "bool", "plc2", 100)),
    (VariableSpec(3, 2, "holding:1:int16", "int", "plc1", 100, name="C"),),
    (VariableSpec(4, 3, "d", "str", "plc3", 100), VariableSpec(5, 3, "e", "float", "plc1", 100, name="A")),
]

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.integers(0, len(PLANS) - 1)),
        st.tuples(st.just("connect"), st.just(0)),
        st.tuples(st.just("lose"), st.integers(0, 3)),  # how many of the last messages were not sent
        st.tuples(st.just("rebirth"), st.just(0)),
        st.tuples(st.just("state"), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, primary=st.booleans(), hold_limit=st.integers(2, 12))
def test_any_order_of_events(events: list[tuple[str, Any]], primary: bool, hold_limit: int) -> None:
    node = EdgeNode(
        "G",
        "E",
        device_of=lambda s: s.reader,
        primary_host_id="host" if primary else None,
        hold_limit=hold_limit,
    )
    given_values = 0
    accounted = 0
    connected = False
    now = T0
    stamp = 0
    in_flight: list[Publish] = []  # published since the last loss: a loss may catch some
    wire: list[Publish] = []  # what reached the broker, in order
    batches: list[ValueBatch] = []

    def carry_out(actions: list[Any]) -> None:
        nonlocal accounted, connected
        for action in actions:
            if isinstance(action, Publish):
                assert connected, "nothing is published without a connection"
                in_flight.append(action)
                wire.append(action)
            elif isinstance(action, Settle):
                accounted += action.failed + action.dropped
            elif isinstance(action, Reconnect):
                settle_in_flight()
                node.connection_lost()
                connected = False

    def settle_in_flight(lost: int = 0) -> None:
        nonlocal accounted
        keep = in_flight[: len(in_flight) - lost] if lost else in_flight
        gone = in_flight[len(keep) :]
        for message in keep:
            accounted += sum(c.count for c in message.carries)
        for message in gone:
            wire.remove(message)
        node.requeue([c for message in gone for c in message.carries])
        in_flight.clear()

    for kind, arg in events:
        now += 100
        if kind == "data":
            plan = PLANS[arg]
            batch = ValueBatch(now, plan, _values(plan), context_id=1)
            batches.append(batch)
            given_values += len(batch)
            carry_out(node.data(batch, now))
        elif kind == "connect" and not connected:
            node.will(now)
            connected = True
            carry_out(node.connected(now))
        elif kind == "lose" and connected:
            settle_in_flight(min(arg, len(in_flight)))
            node.connection_lost()
            connected = False
        elif kind == "rebirth" and connected:
            command = Payload(timestamp=now)
            command.metrics.add(name="Node Control/Rebirth", datatype=11, boolean_value=True)
            carry_out(node.received("spBv1.0/G/NCMD/E", command.SerializeToString(), now))
        elif kind == "state" and connected and primary:
            stamp += 1
            payload = json.dumps({"online": arg, "timestamp": stamp}).encode()
            carry_out(node.received("spBv1.0/STATE/host", payload, now))
    settle_in_flight()
    held = sum(n for _b, n in node.take_held())
    assert accounted + held == given_values

    # The wire, per connection: an NBIRTH before anything else, seq 0 at each NBIRTH and +1 mod
    # 256 after it, a device's DDATA only after its DBIRTH in the same session, aliases named.
    seq = None
    born: set[str] = set()
    aliases: set[int] = set()
    for message in wire:
        payload = Payload.FromString(message.payload)
        if message.kind == "NDEATH":
            seq, born = None, set()
            continue
        if message.kind == "NBIRTH":
            assert payload.seq == 0
            seq, born = 0, set()
            continue
        assert seq is not None, f"{message.kind} before an NBIRTH"
        assert payload.seq == (seq + 1) % 256
        seq = payload.seq
        device = message.topic.rsplit("/", 1)[1]
        if message.kind == "DBIRTH":
            born.add(device)
            aliases |= {m.alias for m in payload.metrics}
        elif message.kind == "DDATA":
            assert device in born
            assert all(m.alias in aliases and not m.name for m in payload.metrics)


def _values(plan: tuple[VariableSpec, ...]) -> list[Any]:
    return [{"float": 2.5, "bool": False, "int": -7, "str": "x"}[s.value_type] for s in plan]
