"""Tag lists: CSV files of variables, every mistake reported with its row and column, Kepware
exports translated, and the variables collected from the Modbus simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowcollect import ConfigError, DataCollectionContext, Pipeline, Variable
from flowcollect.readers import ModbusDataReader
from flowcollect.simulator import Simulator
from flowcollect.tags import read_csv, stable_id
from flowcollect.writers import MemoryDataWriter


def write(tmp_path: Path, text: str, name: str = "tags.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def problems_of(path: Path, **options: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read_csv(path, **options)  # type: ignore[arg-type]
    return caught.value.problems


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with Simulator() as sim:
        yield sim


def test_every_column_becomes_a_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,name,address,value_type,interval_ms,scale,offset,report,deadband,heartbeat_ms,tag:line,tag:unit\n"
        "1,temperature,holding:0:float32,float,500,,,change,0.5,10000,A,degC\n"
        "2,speed,holding:6:uint16,int,,0.1,-5,,,,A,\n",
    )
    assert read_csv(path, reader="plc", interval_ms=1000, tags={"site": "north"}) == [
        Variable(
            id=1, name="temperature", address="holding:0:float32", value_type="float", reader="plc",
            interval_ms=500, report="change", deadband=0.5, heartbeat_ms=10_000,
            tags={"site": "north", "line": "A", "unit": "degC"},
        ),
        Variable(
            id=2, name="speed", address="holding:6:uint16", value_type="int", reader="plc",
            interval_ms=1000, scale=0.1, offset=-5.0, tags={"site": "north", "line": "A"},
        ),
    ]  # fmt: skip


def test_every_mistake_is_reported_at_once_with_row_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,name,address,value_type,interval_ms,report,deadband\n"
        "1,a,holding:0,float,1000,,\n"  # row 2: fine
        "2,b,holding:1,flaot,1000,,\n"  # row 3
        "3,c,holding:2,int,fast,,\n"  # row 4
        "4,d,holding:3,int,-5,,\n"  # row 5
        "5,e,holding:4,int,1000,sometimes,\n"  # row 6
        "6,f,holding:5,int,1000,every,0.5\n"  # row 7: deadband without report=change
        "1,g,holding:6,int,1000,,\n"  # row 8: id of row 2
        "8,a,holding:7,int,1000,,\n"  # row 9: name of row 2
        "9,h,,int,1000,,\n"  # row 10: no address
        "0,i,holding:9,int,1000,,\n"  # row 11
        "10.5,j,holding:10,int,1000,,\n",  # row 12
    )
    assert problems_of(path, reader="plc") == [
        "tags.csv row 3, column value_type: 'flaot' is not one of float, int, bool, str",
        "tags.csv row 4, column interval_ms: 'fast' is not a whole number",
        "tags.csv row 5, column interval_ms: Input should be greater than 0",
        "tags.csv row 6, column report: 'sometimes' is not one of every, change",
        "tags.csv row 7, column deadband: deadband applies only with report='change'",
        "tags.csv row 8, column id: id 1 is already used by row 2",
        "tags.csv row 9, column name: name 'a' is already used by row 2",
        "tags.csv row 10, column address: Field required",
        "tags.csv row 11, column id: Input should be greater than 0",
        "tags.csv row 12, column id: '10.5' is not a whole number",
    ]


def test_header_mistakes_name_the_column(tmp_path: Path) -> None:
    path = write(tmp_path, "id,nmae,address,tag:\n1,x,holding:0,\n")
    assert problems_of(path, reader="plc") == [
        "tags.csv row 1: column 'nmae' is not known; the columns are id, name, address, value_type, "
        "interval_ms, scale, offset, report, deadband, heartbeat_ms and tag:KEY",
        "tags.csv row 1: column 4: a tag column needs a name after 'tag:'",
    ]
    assert problems_of(write(tmp_path, "id,name\n1,x\n", "noaddr.csv"), reader="plc") == [
        "noaddr.csv row 1: no 'address' column"
    ]
    assert problems_of(write(tmp_path, "\n\n", "empty.csv"), reader="plc") == [
        "empty.csv: has no header row (expected columns such as id, name, address)"
    ]


def test_bad_defaults_and_reader_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    assert problems_of(path, reader="plc", interval=5, interval_ms=0) == [
        "read_csv default 'interval': not a field a tag list fills; use one of deadband, heartbeat_ms, "
        "interval_ms, offset, report, scale, tags, value_type"
    ]
    assert problems_of(path, reader="plc", interval_ms=0) == [
        "read_csv default 'interval_ms': Input should be greater than 0"
    ]
    assert problems_of(path, reader=" ") == [
        "read_csv reader: must be a reader type or a DataReader, got ' '"
    ]
    assert problems_of(path, reader="plc")[0].startswith("missing.csv: cannot be read:")


def test_spreadsheet_exports_semicolons_and_a_bom(tmp_path: Path) -> None:
    path = write(
        tmp_path, "name;address;scale\nlevel;holding:7:int16;0,5\nflow;holding:8;2\n", encoding="utf-8-sig"
    )
    assert problems_of(path, reader="plc") == ["tags.csv row 2, column scale: '0,5' is not a number"]
    path = write(tmp_path, "name;address;scale\nlevel;holding:7:int16;0.5\n", encoding="utf-8-sig")
    [level] = read_csv(path, reader="plc")
    assert (level.name, level.address, level.scale) == ("level", "holding:7:int16", 0.5)


def test_rows_without_ids_get_stable_ids_from_name_else_address(tmp_path: Path) -> None:
    path = write(tmp_path, "name,address\ntemperature,holding:0:float32\n,holding:6\n")
    first = read_csv(path, reader="plc")
    # The same file, its rows reordered: every variable keeps its id.
    again = read_csv(
        write(tmp_path, "name,address\n,holding:6\ntemperature,holding:0:float32\n"), reader="plc"
    )
    assert [v.id for v in first] == [stable_id("plc", "temperature"), stable_id("plc", "holding:6")]
    assert sorted(v.id for v in again) == sorted(v.id for v in first)
    assert all(1 <= v.id <= 2**53 for v in first)
    # Another reader, another id: the reader is part of what identifies a variable.
    assert read_csv(path, reader="plc2")[0].id != first[0].id
    # Two rows deriving one id are named, with what to do.
    same = write(tmp_path, "address\nholding:1\nholding:1\n", "same.csv")
    assert problems_of(same, reader="plc") == [
        f"same.csv row 3, column id: id {stable_id('plc', 'holding:1')} is already used by row 2 "
        "(derived from the name or address: give the rows ids)"
    ]


def test_stable_id_separates_its_parts() -> None:
    assert stable_id("a", "bc") != stable_id("ab", "c")
    assert stable_id("x") == stable_id("x")


def test_given_the_reader_addresses_are_checked_against_its_grammar(tmp_path: Path) -> None:
    plc = ModbusDataReader("plc", host="127.0.0.1", port=1502)
    path = write(
        tmp_path,
        "id,address,value_type\n1,holding:0:float32,\n2,holding:x,\n3,coil:1,int\n4,holding:1:int64,float\n",
    )
    problems = problems_of(path, reader=plc)
    assert problems == [
        "tags.csv row 3, column address: modbus address 'holding:x': offset 'x' must be a decimal "
        "number 0..65535",
        "tags.csv row 5, column address: value_type 'float' cannot hold a int64 value from holding:1; "
        "use one of int, str",
    ]


def test_a_tag_list_is_collected_from_the_simulator(tmp_path: Path, simulator: Simulator) -> None:
    plc = ModbusDataReader("plc", host="127.0.0.1", port=simulator.port)
    path = write(
        tmp_path,
        "name,address,tag:unit\n"
        "int32,holding:132:int32,\n"
        "float32 word swapped,holding:200:float32:CDAB,\n"
        "text,holding:300:string6,\n"
        "bit,coil:100,\n",
    )
    variables = read_csv(path, reader=plc)
    pipeline = Pipeline(
        name="tags", readers=[plc], writers=[MemoryDataWriter()],
        contexts=[DataCollectionContext(id=1, variables=variables)],
    )  # fmt: skip
    result = pipeline.read_once(timeout_s=10)
    assert {row.name: row.value for row in result.rows} == {
        "int32": -123456789,
        "float32 word swapped": 1234.5677490234375,
        "text": "flowcollect",
        "bit": True,
    }


KEPWARE = (
    '"Tag Name","Address","Data Type","Respect Data Type","Client Access","Scan Rate","Scaling",'
    '"Raw Low","Raw High","Scaled Low","Scaled High","Scaled Data Type","Clamp Low","Clamp High",'
    '"Eng Units","Description","Negate Value"\n'
    '"Pump Running","000101","Boolean",1,R/W,100,,,,,,,,,,"motor contactor",0\n'
    '"Door","100001","Boolean",1,RO,1000,,,,,,,,,,,0\n'
    '"Level","300008","Short",1,RO,500,"Linear",0,1000,0,100,"Float",0,0,"%","tank level",0\n'
    '"Counter","400005","DWord",1,RO,1000,,,,,,,,,,,0\n'
    '"Temp","40201","Float",1,RO,,,,,,,,,,"degC",,0\n'
    '"Line","400301.12 H","String",1,RO,5000,,,,,,,,,,,0\n'
    '"Raw","40117","Word",1,RO,1000,,,,,,,,,,,0\n'
)


def test_kepware_export_is_translated_and_ignored_columns_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, KEPWARE, "kepware.csv")
    with caplog.at_level(logging.WARNING, logger="flowcollect.tags"):
        variables = read_csv(path, reader="plc", interval_ms=2000)
    assert [(v.name, v.address, v.interval_ms, v.scale, v.offset, v.tags) for v in variables] == [
        ("Pump Running", "coil:100", 100, None, None, {}),
        ("Door", "discrete:0", 1000, None, None, {}),
        ("Level", "input:7:int16", 500, 0.1, 0.0, {"unit": "%"}),
        ("Counter", "holding:4:uint32:CDAB", 1000, None, None, {}),
        ("Temp", "holding:200:float32:CDAB", 2000, None, None, {"unit": "degC"}),
        ("Line", "holding:300:string6:ABCD", 5000, None, None, {}),
        ("Raw", "holding:116:uint16", 1000, None, None, {}),
    ]
    assert [v.id for v in variables] == [stable_id("plc", v.name or "") for v in variables]
    assert caplog.messages == [
        "kepware.csv: Kepware columns not carried over: Clamp High, Clamp Low, Client Access, "
        "Description, Negate Value, Respect Data Type, Scaled Data Type"
    ]


def test_kepware_word_order_for_a_device_without_word_swap(tmp_path: Path) -> None:
    path = write(tmp_path, KEPWARE, "kepware.csv")
    by_name = {v.name: v for v in read_csv(path, reader="plc", kepware_word_order="ABCD")}
    assert by_name["Temp"].address == "holding:200:float32:ABCD"
    assert problems_of(path, reader="plc", kepware_word_order="BIG") == [
        "kepware.csv row 1: kepware_word_order 'BIG' is not one of ABCD, CDAB, BADC, DCBA"
    ]


def test_kepware_rows_without_an_equivalent_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Tag Name,Address,Data Type,Scan Rate,Scaling,Raw Low,Raw High,Scaled Low,Scaled High\n"
        "A,40001.3,Boolean,100,,,,,\n"
        "B,40002,BCD,100,,,,,\n"
        "C,40003,Word,100,Square Root,0,10,0,1\n"
        "D,40004,Word,100,Linear,5,5,0,1\n"
        "E,D100,Word,100,,,,,\n"
        "F,00001,Word,100,,,,,\n"
        "G,40005,Word,1s,,,,,\n"
        ",40006,Word,100,,,,,\n"
        "H,40007,String,100,,,,,\n",
        "kep.csv",
    )
    assert problems_of(path, reader="plc") == [
        "kep.csv row 2, column Address: '40001.3': a bit inside a register has no flowcollect equivalent; "
        "read the register as Word and test the bit downstream",
        "kep.csv row 3, column Data Type: 'BCD' has no flowcollect equivalent",
        "kep.csv row 4, column Scaling: 'Square Root' scaling has no flowcollect equivalent (Linear has)",
        "kep.csv row 5, column Raw High: equals Raw Low, so Linear scaling divides by zero",
        "kep.csv row 6, column Address: 'D100' is not a Kepware Modbus address (0xxxx, 1xxxx, 3xxxx or "
        "4xxxx, 1-based)",
        "kep.csv row 7, column Data Type: 'Word' does not fit a coil, which holds one bit",
        "kep.csv row 8, column Scan Rate: '1s' is not a whole number of milliseconds",
        "kep.csv row 9, column Tag Name: is empty",
        "kep.csv row 10, column Address: '40007': a String tag needs its length, as 4xxxx.nnn H or L",
    ]


def test_a_kepware_export_is_collected_from_the_simulator(tmp_path: Path, simulator: Simulator) -> None:
    plc = ModbusDataReader("plc", host="127.0.0.1", port=simulator.port)
    path = write(
        tmp_path,
        "Tag Name,Address,Data Type,Scan Rate\n"
        "Temp,40201,Float,1000\n"  # float32 at 200, first word low (Kepware's default)
        "Int,40133,Long,1000\n"  # int32 at 132 is stored ABCD: with first word low it reads differently
        "Text,400301.12 H,String,1000\n"
        "Bits,000101,Boolean,1000\n",
    )
    rows = {
        row.name: row.value
        for row in Pipeline(
            name="kepware", readers=[plc], writers=[MemoryDataWriter()],
            contexts=[DataCollectionContext(id=1, variables=read_csv(path, reader=plc))],
        ).read_once(timeout_s=10).rows
    }  # fmt: skip
    assert rows["Temp"] == 1234.5677490234375
    assert rows["Text"] == "flowcollect"
    assert rows["Bits"] is True
    assert rows["Int"] != -123456789


def test_short_rows_leave_cells_empty_and_long_rows_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "id,address,interval_ms,tag:line\n1,holding:0\n2,holding:1,100,A,extra\n")
    assert problems_of(path, reader="plc") == ["tags.csv row 3: has 5 cells, more than the header's 4"]
    [short] = read_csv(
        write(tmp_path, "id,address,interval_ms,tag:line\n1,holding:0\n", "short.csv"), reader="plc"
    )
    assert (short.interval_ms, short.tags) == (None, {})
