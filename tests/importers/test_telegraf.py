"""``flowcollect import telegraf``: Telegraf configurations, written the way Telegraf's own
documentation shows each option, become pipelines that ``check`` accepts, keep Telegraf's
measurement, field and tag names, and collect from the simulators into a real InfluxDB."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowcollect import ConfigError, Pipeline
from flowcollect.importers import import_telegraf
from flowcollect.pipeline import load_pipeline
from flowcollect.simulator import Simulator
from tests.support.influxdb1 import InfluxFactory

HOST = socket.gethostname()

REGISTER_STYLE = """
[agent]
  interval = "2s"
  round_interval = true
  metric_batch_size = 1000
  metric_buffer_limit = 10000
  flush_interval = "10s"
  hostname = ""
  omit_hostname = false

[global_tags]
  site = "north"

# Retrieve data from MODBUS slave devices
[[inputs.modbus]]
  name = "Meter"
  slave_id = 1
  timeout = "1s"
  # busy_retries = 0
  busy_retries = 2
  controller = "tcp://127.0.0.1:{port}"
  configuration_type = "register"

  discrete_inputs = [
    { name = "door_closed",  address = [0]},
  ]
  coils = [
    { name = "pump_running", address = [0]},
  ]
  holding_registers = [
    { name = "temperature",  byte_order = "ABCD", data_type = "FLOAT32-IEEE", scale=1.0,  address = [0, 1]},
    { name = "counter",      byte_order = "ABCD", data_type = "UINT32",       scale=1.0,  address = [4, 5]},
    { name = "pump_speed",   byte_order = "AB",   data_type = "UFIXED",       scale=0.1,  address = [6]},
    { name = "level",        byte_order = "AB",   data_type = "INT16",        scale=1.0,  address = [7]},
    { name = "level_scaled", byte_order = "AB",   data_type = "INT16",        scale=0.5,  address = [7]},
    { name = "mixed_up", byte_order = "CDAB", data_type = "FLOAT32-IEEE", scale=1.0, address = [200, 201]},
    { name = "gap",          byte_order = "ABCD", data_type = "INT32",        scale=1.0,  address = [1, 3]},
  ]
  input_registers = [
    { name = "fixed_i32", byte_order = "ABCD", data_type = "INT32", scale=1.0, address = [132, 133]},
    { name = "i64", byte_order = "ABCDEFGH", data_type = "INT64", scale=1.0, address = [164,165,166,167]},
  ]

[[outputs.influxdb]]
  urls = ["{influx}"]
  database = "telegraf"
  timeout = "5s"
  skip_database_creation = true
"""


def imported(tmp_path: Path, text: str, name: str = "telegraf.conf") -> tuple[Pipeline, list[str], str]:
    conf = tmp_path / name
    conf.write_text(text)
    result = import_telegraf(conf)
    pipeline_file = tmp_path / (conf.stem + "_pipeline.py")
    pipeline_file.write_text(result.source)
    return load_pipeline(pipeline_file), result.notes, result.source


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with Simulator() as sim:
        yield sim


def variables_of(pipeline: Pipeline) -> dict[str, Any]:
    return {v.name: v for context in pipeline.contexts for v in context.variables}


def test_register_style_becomes_variables_with_telegrafs_names_and_types(tmp_path: Path) -> None:
    pipeline, notes, source = imported(
        tmp_path, REGISTER_STYLE.replace("{port}", "5020").replace("{influx}", "http://127.0.0.1:8086")
    )
    assert pipeline.check() == []
    [context] = pipeline.contexts
    assert (context.interval_ms, context.duration_s) == (2000, None)
    [reader] = pipeline.readers
    assert reader.type == "meter"
    got = {
        name: (v.address, v.value_type, v.scale, v.tags.get("type"))
        for name, v in variables_of(pipeline).items()
    }
    assert got == {
        "door_closed": ("discrete:0", "int", None, "discrete_input"),
        "pump_running": ("coil:0", "int", None, "coil"),
        "temperature": ("holding:0:float32:ABCD", "float", None, "holding_register"),
        "counter": ("holding:4:uint32:ABCD", "int", None, "holding_register"),
        "pump_speed": ("holding:6:uint16:ABCD", "float", 0.1, "holding_register"),
        "level": ("holding:7:int16:ABCD", "int", None, "holding_register"),
        "level_scaled": ("holding:7:int16:ABCD", "float", 0.5, "holding_register"),
        "mixed_up": ("holding:200:float32:CDAB", "float", None, "holding_register"),
        "fixed_i32": ("input:132:int32:ABCD", "int", None, "input_register"),
        "i64": ("input:164:int64:ABCD", "int", None, "input_register"),
    }
    tags = variables_of(pipeline)["temperature"].tags
    assert tags == {
        "host": HOST, "site": "north", "name": "Meter", "slave_id": "1", "type": "holding_register",
        "measurement": "modbus",
    }  # fmt: skip
    [writer] = pipeline.writers
    assert (writer.api, writer.database, writer.schema, writer.sender.batch_size) == (
        "v1",
        "telegraf",
        "fields",
        1000,
    )
    assert notes == [
        "agent round_interval: flowcollect always collects on the interval's grid",
        "agent flush_interval: writers send within flush_interval_ms (1 s) of a value",
        "inputs.modbus[0] busy_retries: flowcollect retries a failed read at the next instant; "
        "a busy device is not waited for",
        "inputs.modbus[0] holding_registers[4] scale: Telegraf truncates a scaled INT16 to an integer field; "
        "flowcollect writes the exact float, so the field's type changes (InfluxDB refuses it in a shard "
        "that holds integers)",
        "inputs.modbus[0] holding_registers[6]: addresses [1, 3] are not consecutive; left out",
        "outputs.influxdb[0] skip_database_creation: not carried over (set it on InfluxDBDataWriter where it "
        "has an equivalent)",
    ]
    # Every note is in the file's header too, and no secret or host name is written into it.
    assert all(f"# - {note}" in source for note in notes)
    assert "HOST = socket.gethostname()" in source


REQUEST_STYLE = """
[agent]
  interval = "10s"
  omit_hostname = true

[[inputs.modbus]]
  name = "Gateway"
  timeout = "500ms"
  controller = "tcp://10.0.0.5:502"
  transmission_mode = "RTUoverTCP"
  configuration_type = "request"
  interval = "1s"
  name_prefix = "plant_"

  [[inputs.modbus.request]]
    slave_id = 1
    byte_order = "ABCD"
    register = "coil"
    measurement = "motors"
    fields = [
      { address=0, name="motor1_run"},
      { address=1, name="jog", measurement="motor"},
      { address=2, name="motor1_stop", omit=true},
    ]
    [inputs.modbus.request.tags]
      machine = "impresser"
      location = "main building"

  [[inputs.modbus.request]]
    slave_id = 2
    byte_order = "DCBA"
    register = "holding"
    optimization = "shrink"
    fields = [
      { address=0, name="voltage",      type="INT16",   scale=0.1   },
      { address=1, name="current",      type="INT32",   scale=0.001 },
      { address=3, name="power",        type="UINT32",  omit=true   },
      { address=5, name="energy",       type="FLOAT32", scale=0.001, measurement="W" },
      { address=8, name="power_factor", type="INT32",   scale=0.01, output="INT64" },
      { address=10, name="total",       type="INT64",   scale=0.01 },
      { address=12, name="rpm",         type="INT16"                 },
      { address=13, name="force",       type="INT32",   output="FLOAT64" },
      { address=15, name="state",       type="BIT"                   },
    ]

[[inputs.modbus]]
  name = "Panel"
  slave_id = 7
  controller = "file:///dev/ttyIMPORTED0"
  baud_rate = 9600
  data_bits = 8
  parity = "E"
  stop_bits = 1
  transmission_mode = "RTU"
  holding_registers = [
    { name = "setpoint", byte_order = "AB", data_type = "INT16", scale=1.0, address = [0]},
  ]
  [inputs.modbus.workarounds]
    pause_between_requests = "20ms"
    close_connection_after_gather = true

[[outputs.influxdb_v2]]
  urls = ["http://influx-a:8086", "http://influx-b:8086"]
  token = "$MY_TOKEN"
  organization = "plant"
  bucket = "modbus"
"""


def test_request_style_gateways_serial_lines_and_v2_outputs(tmp_path: Path) -> None:
    pipeline, notes, source = imported(tmp_path, REQUEST_STYLE)
    assert pipeline.check() == []
    readers = {r.type: r for r in pipeline.readers}
    assert sorted(readers) == ["gateway", "gateway-2", "panel"]
    # Two units of one RTU-over-TCP gateway share its line; the serial panel has its own.
    assert readers["gateway"].lane == readers["gateway-2"].lane == "modbus+rtu-tcp://10.0.0.5:502"
    assert readers["panel"].lane == "modbus+rtu:///dev/ttyIMPORTED0"
    assert "ModbusLine(\"/dev/ttyIMPORTED0\", baudrate=9600, bytesize=8, parity=\"E\", stopbits=1, " \
        "pause_between_requests_ms=20.0)" in source  # fmt: skip
    assert [c.interval_ms for c in pipeline.contexts] == [1000, 10000]
    got = {
        (v.reader, v.name): (v.address, v.value_type, v.scale, v.tags)
        for context in pipeline.contexts
        for v in context.variables
    }
    request_tags = {"machine": "impresser", "location": "main building"}
    assert got == {
        ("gateway", "motor1_run"): ("coil:0", "int", None, {
            "name": "Gateway", "slave_id": "1", "type": "coil", **request_tags,
            "measurement": "plant_motors"}),
        ("gateway", "jog"): ("coil:1", "int", None, {
            "name": "Gateway", "slave_id": "1", "type": "coil", **request_tags,
            "measurement": "plant_motor"}),
        ("gateway-2", "voltage"): ("holding:0:int16:DCBA", "float", 0.1, {
            "name": "Gateway", "slave_id": "2", "type": "holding_register", "measurement": "plant_modbus"}),
        ("gateway-2", "current"): ("holding:1:int32:DCBA", "float", 0.001, {
            "name": "Gateway", "slave_id": "2", "type": "holding_register", "measurement": "plant_modbus"}),
        ("gateway-2", "energy"): ("holding:5:float32:DCBA", "float", 0.001, {
            "name": "Gateway", "slave_id": "2", "type": "holding_register", "measurement": "plant_W"}),
        ("gateway-2", "power_factor"): ("holding:8:int32:DCBA", "float", 0.01, {
            "name": "Gateway", "slave_id": "2", "type": "holding_register", "measurement": "plant_modbus"}),
        ("gateway-2", "rpm"): ("holding:12:int16:DCBA", "int", None, {
            "name": "Gateway", "slave_id": "2", "type": "holding_register", "measurement": "plant_modbus"}),
        ("gateway-2", "force"): ("holding:13:int32:DCBA", "float", None, {
            "name": "Gateway", "slave_id": "2", "type": "holding_register", "measurement": "plant_modbus"}),
        ("panel", "setpoint"): ("holding:0:int16:ABCD", "int", None, {
            "name": "Panel", "slave_id": "7", "type": "holding_register", "measurement": "modbus"}),
    }  # fmt: skip
    [writer] = pipeline.writers
    assert (writer.api, writer.org, writer.bucket, writer.url) == (
        "v2",
        "plant",
        "modbus",
        "http://influx-a:8086",
    )
    assert 'token=os.environ.get("MY_TOKEN")' in source
    assert notes == [
        "inputs.modbus[0] request[1] optimization: flowcollect packs registers into the fewest requests "
        "itself (max_gap)",
        "inputs.modbus[0] request[1] fields[4] output: Telegraf truncates the value to an integer; "
        "flowcollect writes the exact float",
        "inputs.modbus[0] request[1] fields[5]: a int64 read as a float (scaled) is refused by flowcollect, "
        "which keeps 64-bit integers exact (int or str): collect it unscaled as int and scale downstream; "
        "left out",
        "inputs.modbus[0] request[1] fields[8]: type 'BIT' is not carried over; left out",
        "inputs.modbus[1] workarounds close_connection_after_gather: not carried over (no flowcollect "
        "equivalent)",
        "outputs.influxdb_v2[0] urls: only the first of 2 is written to (http://influx-a:8086)",
    ]


OPCUA = """
[[inputs.opcua]]
  name = "opcua"
  endpoint = "{endpoint}"
  connect_timeout = "10s"
  request_timeout = "5s"
  security_policy = "None"
  security_mode = "None"
  auth_method = "Anonymous"
  timestamp = "gather"
  nodes = [
    {name="double", namespace="2", identifier_type="s", identifier="Types.Double", tags=[["unit", "degC"]]},
  ]
  [[inputs.opcua.group]]
    name = "types"
    namespace = "2"
    identifier_type = "s"
    default_tags = { folder = "Types" }
    [[inputs.opcua.group.nodes]]
      name = "float"
      identifier = "Types.Float"
      default_tags = { precision = "single" }
    [[inputs.opcua.group.nodes]]
      name = "int32"
      identifier = "Types.Int32"

[[inputs.opcua_listener]]
  name = "live"
  endpoint = "{endpoint}"
  subscription_interval = "100ms"
  timestamp = "source"
  auth_method = "UserName"
  username = "operator"
  password = "not-in-the-file"
  nodes = [
    {name="temperature", namespace="2", identifier_type="i", identifier="1001"},
  ]

[[inputs.cpu]]
  percpu = true

[[processors.rename]]
"""


def test_opcua_polled_and_subscribed_with_groups_and_no_secret_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSWORD", "from the environment")
    pipeline, notes, source = imported(
        tmp_path, OPCUA.replace("{endpoint}", "opc.tcp://127.0.0.1:4840/flowcollect")
    )
    assert pipeline.check() == []
    readers = {r.type: r for r in pipeline.readers}
    assert (readers["opcua"].mode, readers["opcua"].timestamps) == ("poll", "instant")
    assert (readers["live"].mode, readers["live"].timestamps) == ("subscribe", "source")
    got = {v.name: (v.reader, v.address, v.tags) for v in pipeline.contexts[0].variables}
    assert got == {
        "double": ("opcua", "ns=2;s=Types.Double", {"host": HOST, "id": "ns=2;s=Types.Double", "unit": "degC",
                                                    "measurement": "opcua"}),
        "float": ("opcua", "ns=2;s=Types.Float", {"host": HOST, "id": "ns=2;s=Types.Float", "folder": "Types",
                                                  "precision": "single", "measurement": "types"}),
        "int32": ("opcua", "ns=2;s=Types.Int32", {"host": HOST, "id": "ns=2;s=Types.Int32", "folder": "Types",
                                                  "measurement": "types"}),
        "temperature": ("live", "ns=2;i=1001", {"host": HOST, "id": "ns=2;i=1001", "measurement": "live"}),
    }  # fmt: skip
    assert "not-in-the-file" not in source
    assert 'password=os.environ.get("PASSWORD")' in source
    assert [w.name for w in pipeline.writers] == ["csv:out/telegraf.csv"]
    assert notes == [
        "[processors]: not carried over (processors, aggregators and secret stores have no equivalent)",
        "inputs.opcua[0] connect_timeout: flowcollect bounds connecting by timeout_s (request_timeout)",
        "inputs.opcua_listener[0] password: a literal secret is not copied into the pipeline file; set the "
        "environment variable PASSWORD",
        "inputs.opcua_listener[0] subscription_interval: the publishing interval follows each variable's "
        "interval",
        "inputs.cpu[0]: not a plugin the importer translates (modbus, opcua, opcua_listener)",
        "outputs: no [[outputs.influxdb]] or [[outputs.influxdb_v2]]: the values go to out/telegraf.csv",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[inputs.modbus]\nname = 1", "not a TOML file Telegraf could read: "),
        (
            "[[inputs.cpu]]\n",
            "no [[inputs.modbus]], [[inputs.opcua]] or [[inputs.opcua_listener]] with a field",
        ),
        (
            '[[inputs.modbus]]\ncontroller = "tcp://h:502"\ntransmission_mode = "ASCIIoverTCP"\n'
            'coils = [{ name = "a", address = [0]}]\n',
            "inputs.modbus[0] transmission_mode: ASCIIOVERTCP is not supported",
        ),
        (
            '[[inputs.modbus]]\ncontroller = "tcp://h:502"\nconfiguration_type = "metric"\n',
            "inputs.modbus[0] configuration_type: 'metric' is not carried over",
        ),
    ],
)
def test_nothing_to_translate_is_an_error_naming_why(tmp_path: Path, text: str, problem: str) -> None:
    conf = tmp_path / "telegraf.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as caught:
        import_telegraf(conf)
    assert problem in str(caught.value)


def test_the_imported_pipeline_collects_from_the_simulator_into_influxdb(
    tmp_path: Path, simulator: Simulator, influxdb1_factory: InfluxFactory
) -> None:
    """What Telegraf would have stored, stored by flowcollect: the same measurement, fields, tags."""
    server = influxdb1_factory()
    server.query("CREATE DATABASE telegraf")
    text = REGISTER_STYLE.replace("{port}", str(simulator.port)).replace("{influx}", server.url)
    pipeline, _, _ = imported(tmp_path, text)
    summary = pipeline.run(duration_s=4.5)
    assert not summary.problems() and summary.failed == 0 and summary.dropped == 0, summary.verdict()
    rows = server.select('SELECT * FROM "modbus" GROUP BY *', "telegraf")
    assert len({r["time"] for r in rows}) >= 2
    for row in rows:
        assert (row["host"], row["site"], row["name"], row["slave_id"]) == (HOST, "north", "Meter", "1")
    by_type: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_type.setdefault(row["type"], {}).update({k: v for k, v in row.items() if v is not None})
    assert by_type["input_register"]["fixed_i32"] == -123456789
    assert by_type["input_register"]["i64"] == -1234567890123456789
    assert by_type["holding_register"]["mixed_up"] == pytest.approx(1234.5677490234375)
    assert by_type["coil"]["pump_running"] in (0, 1)
    assert by_type["discrete_input"]["door_closed"] == 1
    fields = server.query('SHOW FIELD KEYS FROM "modbus"', "telegraf")[0]["series"][0]["values"]
    assert dict(map(tuple, fields)) == {
        "counter": "integer", "door_closed": "integer", "fixed_i32": "integer", "i64": "integer",
        "level": "integer", "level_scaled": "float", "mixed_up": "float", "pump_running": "integer",
        "pump_speed": "float", "temperature": "float",
    }  # fmt: skip


def test_the_command_prints_the_pipeline_and_names_what_it_left(tmp_path: Path) -> None:
    conf = tmp_path / "telegraf.conf"
    conf.write_text(REQUEST_STYLE)
    done = subprocess.run(
        [sys.executable, "-m", "flowcollect", "import", "telegraf", str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('"""Imported from telegraf.conf by `flowcollect import telegraf`.')
    assert "not carried over: outputs.influxdb_v2[0] urls: only the first of 2" in done.stderr
    assert done.stderr.rstrip().endswith(
        "imported telegraf.conf to stdout: 9 variables, 6 option(s) not carried over; "
        "check it with `flowcollect check`"
    )
    out = tmp_path / "pipeline.py"
    written = subprocess.run(
        [sys.executable, "-m", "flowcollect", "import", "telegraf", str(conf), "--output", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert written.returncode == 0 and written.stdout == "" and out.read_text() == done.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text("[[inputs.cpu]]\n")
    failed = subprocess.run(
        [sys.executable, "-m", "flowcollect", "import", "telegraf", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ")


def test_the_imported_opcua_pipeline_reads_the_opcua_simulator(tmp_path: Path) -> None:
    from flowcollect.simulator.opcua import OpcUaSimulator

    with OpcUaSimulator(period_s=0.2) as sim:
        text = OPCUA.replace("{endpoint}", sim.endpoint).replace(
            'auth_method = "UserName"\n  username = "operator"\n  password = "not-in-the-file"\n', ""
        )
        pipeline, _, _ = imported(tmp_path, text)
        values = {row.name: row.value for row in pipeline.read_once(timeout_s=20).rows}
    assert values["double"] == 2.25
    assert values["float"] == 1.5
    assert values["int32"] == -123456
    assert isinstance(values["temperature"], float)
