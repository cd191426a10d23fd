"""Device profiles: one list of variables for identical devices, instantiated per device with its
own reader, prefixed names, merged tags and stable ids; collected from two simulated devices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from flowcollect import ConfigError, DataCollectionContext, Pipeline, Variable
from flowcollect.readers import ModbusDataReader
from flowcollect.simulator import Simulator
from flowcollect.tags import DeviceProfile, stable_id
from flowcollect.writers import MemoryDataWriter

PUMP = DeviceProfile(
    name="pump",
    variables=[
        Variable(id=1, name="flow", address="holding:0:float32", reader="any", tags={"unit": "m3/h"}),
        Variable(id=2, address="holding:6:uint16", reader="any", interval_ms=500),
    ],
)


def test_an_instance_has_its_reader_prefixed_names_merged_tags_and_stable_ids() -> None:
    flow, speed = PUMP.instantiate(device="pump-3", reader="pump3", tags={"line": "A", "unit": "l/s"})
    assert flow == Variable(
        id=stable_id("pump-3", "1"), name="pump-3/flow", address="holding:0:float32", reader="pump3",
        tags={"profile": "pump", "device": "pump-3", "unit": "l/s", "line": "A"},
    )  # fmt: skip
    assert (speed.name, speed.reader, speed.interval_ms) == ("pump-3/holding:6:uint16", "pump3", 500)
    assert speed.tags == {"profile": "pump", "device": "pump-3", "line": "A", "unit": "l/s"}
    # The same device gets the same ids on every call; another device gets others.
    assert [v.id for v in PUMP.instantiate("pump-3", "pump3")] == [flow.id, speed.id]
    other = PUMP.instantiate("pump-4", "pump4")
    assert not {v.id for v in other} & {flow.id, speed.id}
    # The profile's own variables are untouched.
    assert PUMP.variables[0].reader == "any" and PUMP.variables[0].name == "flow"


def test_readable_ids_from_a_base() -> None:
    assert [v.id for v in PUMP.instantiate("pump-3", "pump3", id_base=3000)] == [3001, 3002]


def test_bad_instances_and_profiles_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        PUMP.instantiate(" ", "", tags={"": "x"}, id_base=-1)
    assert caught.value.problems == [
        "profile 'pump' instantiate device: must be a non-empty str, got ' '",
        "profile 'pump' instantiate reader: must be a reader type or a DataReader, got ''",
        "profile 'pump' instantiate tags: must map non-blank str names to str values, got {'': 'x'}",
        "profile 'pump' instantiate id_base: must be an int >= 0, got -1",
    ]
    with pytest.raises(ValidationError, match="names \\(else addresses\\) must be unique in a profile"):
        DeviceProfile(
            name="twice",
            variables=[
                Variable(id=1, name="x", address="holding:0", reader="r"),
                Variable(id=2, name="x", address="holding:1", reader="r"),
            ],
        )
    with pytest.raises(ValidationError, match="extra"):
        DeviceProfile(name="p", variables=PUMP.variables, colour="red")  # type: ignore[call-arg]


def test_given_the_reader_each_address_is_checked() -> None:
    profile = DeviceProfile(
        name="bad", variables=[Variable(id=1, address="holding:1:int64", reader="r", value_type="float")]
    )
    with pytest.raises(ConfigError) as caught:
        profile.instantiate("d1", ModbusDataReader("d1", host="127.0.0.1", port=1502))
    assert caught.value.problems == [
        "profile 'bad' device 'd1' variable 'd1/holding:1:int64': value_type 'float' cannot hold a int64 "
        "value from holding:1; use one of int, str"
    ]


def test_a_profile_from_a_tag_list(tmp_path: Path) -> None:
    path = tmp_path / "meter.csv"
    path.write_text("id,name,address\n1,energy,holding:4:uint32\n2,power,holding:0:float32\n")
    meter = DeviceProfile.from_csv(path, interval_ms=5000)
    assert meter.name == "meter"
    assert [(v.id, v.name, v.interval_ms) for v in meter.variables] == [
        (1, "energy", 5000),
        (2, "power", 5000),
    ]
    assert [v.name for v in meter.instantiate("m7", "m7")] == ["m7/energy", "m7/power"]


@pytest.fixture
def two_devices() -> Iterator[tuple[Simulator, Simulator]]:
    with Simulator() as a, Simulator() as b:
        yield a, b


def test_identical_devices_from_one_profile_are_collected(two_devices: tuple[Simulator, Simulator]) -> None:
    readers = [
        ModbusDataReader(f"pump{i}", host="127.0.0.1", port=sim.port) for i, sim in enumerate(two_devices)
    ]
    profile = DeviceProfile(
        name="pump",
        variables=[
            Variable(id=1, name="int32", address="holding:132:int32", reader="x"),
            Variable(id=2, name="text", address="holding:300:string6", reader="x"),
        ],
    )
    variables = [v for i, r in enumerate(readers) for v in profile.instantiate(f"pump-{i}", r)]
    result = Pipeline(
        name="profiles", readers=readers, writers=[MemoryDataWriter()],
        contexts=[DataCollectionContext(id=1, variables=variables)],
    ).read_once(timeout_s=10)  # fmt: skip
    assert {(row.reader, row.name): row.value for row in result.rows} == {
        ("pump0", "pump-0/int32"): -123456789,
        ("pump0", "pump-0/text"): "flowcollect",
        ("pump1", "pump-1/int32"): -123456789,
        ("pump1", "pump-1/text"): "flowcollect",
    }
    assert all(sim.requests > 0 for sim in two_devices)
