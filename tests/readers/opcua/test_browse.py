"""OPC UA browse and discovery against the asyncua simulator: paged browsing through
continuation points, patterns that prune, ids stable across a restart that renumbers node ids and
namespaces, and the command's three formats, the pipeline one run as printed."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowcollect import ConfigError
from flowcollect.pipeline import load_pipeline
from flowcollect.readers.opcua import browse, browse_csv, discover
from flowcollect.simulator.opcua import KNOWN, LINE1, OpcUaSimulator
from flowcollect.tags import read_csv, stable_id
from tests.support.victoria import free_port
from tests.support.waiting import wait_until

BULK = 600
URI = "urn:flowcollect:simulator"


@pytest.fixture(scope="module")
def sim() -> Iterator[OpcUaSimulator]:
    with OpcUaSimulator(bulk=BULK) as simulator:
        yield simulator


def test_everything_is_browsed_in_pages_through_continuation_points(sim: OpcUaSimulator) -> None:
    seen: list[int] = []
    nodes = browse(sim.endpoint, page=100, progress=seen.append)
    names = [n.name for n in nodes]
    # Plant, its three folders, Line1's and Types' variables, the bulk's folders and nodes.
    types = len(KNOWN) + 2  # and Uncertain, Bad
    assert len(nodes) == 1 + 3 + len(LINE1) + types + BULK // 250 + 1 + BULK
    assert len(set(names)) == len(names)
    assert [f"Plant/Bulk/G{k // 250}/B{k}" for k in range(BULK)] == [
        n for n in names if re.search(r"/B\d+$", n)
    ]
    # Every reference counted once, pages included, and the few of namespace 0 under Objects
    # (the Server object) that are left out.
    assert len(nodes) < seen[-1] <= len(nodes) + 5
    temperature = next(n for n in nodes if n.name == "Plant/Line1/Temperature")
    assert (temperature.node_class, temperature.data_type, temperature.access, temperature.value_type) == (
        "Variable", "Double", "read", "float"
    )  # fmt: skip
    assert temperature.node_id == sim.node_id("Line1/Temperature")
    assert temperature.path == f"nsu={URI};/Plant/Line1/Temperature"
    assert not any(n.name.startswith("Server") for n in nodes), "the Server object is left out"


def test_depth_path_and_patterns_prune_before_descending(sim: OpcUaSimulator) -> None:
    assert [n.name for n in browse(sim.endpoint, depth=2)] == [
        "Plant",
        "Plant/Line1",
        "Plant/Types",
        "Plant/Bulk",
    ]
    under = browse(sim.endpoint, path="/2:Plant/2:Line1")
    assert [n.name for n in under] == [f"Plant/Line1/{leaf}" for leaf in LINE1]
    seen: list[int] = []
    matched = browse(sim.endpoint, match="/2:Plant/*/2:Temperature", progress=seen.append)
    assert [n.name for n in matched] == ["Plant/Line1/Temperature"]
    # Only Plant's children and theirs were asked for: nothing below Bulk's groups.
    assert seen[-1] < 60
    alarms = browse(sim.endpoint, match="/2:Plant/**/2:B1?")
    assert [n.name for n in alarms] == [f"Plant/Bulk/G0/B{k}" for k in range(10, 20)]
    anywhere = [n.name for n in browse(sim.endpoint, match="Int*")]
    assert anywhere == [
        f"Plant/Types/{name}" for name in ("Int16", "Int32", "Int64", "Int32Array", "Integral")
    ]


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
def test_discovered_ids_are_stable_across_a_restart_that_renumbers_everything(tmp_path: Path) -> None:
    pattern = "/2:Plant/2:Line1/*"
    with OpcUaSimulator() as first:
        before = discover(first.endpoint, pattern)
        node_ids = [n.node_id for n in browse(first.endpoint, match=pattern)]
    # Another server: node ids shifted and two namespaces more, so index 2 is no longer ours.
    with OpcUaSimulator(id_offset=500, extra_namespaces=2) as second:
        after = discover(second.endpoint, f"nsu={URI};/Plant/Line1/*")
        renumbered = [n.node_id for n in browse(second.endpoint, match=f"nsu={URI};/Plant/Line1/*")]
    assert node_ids != renumbered
    assert [(v.id, v.name, v.address, v.value_type) for v in before] == [
        (v.id, v.name, v.address, v.value_type) for v in after
    ]
    assert before[0].id == stable_id("opcua", f"nsu={URI};/Plant/Line1/Temperature")
    assert len({v.id for v in before}) == len(LINE1)


def test_discovered_variables_are_collected(sim: OpcUaSimulator) -> None:
    from flowcollect import DataCollectionContext, Pipeline
    from flowcollect.readers import OpcUaDataReader
    from flowcollect.writers import MemoryDataWriter

    variables = discover(sim.endpoint, "/2:Plant/2:Types/2:*Int*", reader="plc")
    assert [v.name for v in variables] == [
        "Plant/Types/Int16", "Plant/Types/UInt16", "Plant/Types/Int32", "Plant/Types/UInt32",
        "Plant/Types/Int64", "Plant/Types/UInt64", "Plant/Types/Int32Array", "Plant/Types/Integral",
    ]  # fmt: skip
    collectable = [v for v in variables if v.value_type is not None and "Array" not in v.name]
    assert variables[-1].value_type == "float"  # Integral is a Double
    rows = Pipeline(
        name="discovered", readers=[OpcUaDataReader("plc", sim.endpoint)], writers=[MemoryDataWriter()],
        contexts=[DataCollectionContext(id=1, variables=collectable)],
    ).read_once(timeout_s=20).rows  # fmt: skip
    assert {row.name: row.value for row in rows} == {
        f"Plant/Types/{name}": KNOWN[name][1]
        for name in ("Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Integral")
    }


def test_no_match_is_a_warning_naming_the_pattern_and_no_server_an_error(
    sim: OpcUaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flowcollect.readers.opcua"):
        assert discover(sim.endpoint, "/2:Plant/2:Nowhere/*") == []
    assert (
        f"discover({sim.endpoint}, '/2:Plant/2:Nowhere/*'): no variable matched the pattern"
        in caplog.messages
    )
    with pytest.raises(ConfigError, match="the server could not be browsed"):
        discover("opc.tcp://127.0.0.1:9/none", "/2:Plant/*", timeout_s=0.5)
    with pytest.raises(ValueError, match="must be a browse path"):
        browse(sim.endpoint, match="/")


def test_the_command_prints_a_tree_a_tag_list_and_a_pipeline_that_runs(
    sim: OpcUaSimulator, tmp_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowcollect", "browse", sim.endpoint, *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    tree = run("--path", "/2:Plant/2:Line1")
    assert tree.returncode == 0, tree.stderr
    assert tree.stdout.splitlines()[
        0
    ] == f"Temperature  {sim.node_id('Line1/Temperature')}  Double read = 20.0" or tree.stdout.splitlines()[
        0
    ].startswith(f"Temperature  {sim.node_id('Line1/Temperature')}  Double read = ")
    assert f"browsed {sim.endpoint}: {len(LINE1)} nodes, {len(LINE1)} variables in " in tree.stderr
    listed = run("--match", "/2:Plant/2:Line1/*", "--format", "csv")
    assert listed.returncode == 0, listed.stderr
    tags = tmp_path / "tags.csv"
    tags.write_text(listed.stdout)
    variables = read_csv(tags, reader="opcua")
    assert [v.name for v in variables] == [f"Plant/Line1/{leaf}" for leaf in LINE1]
    assert listed.stdout == browse_csv(browse(sim.endpoint, match="/2:Plant/2:Line1/*"))
    pipeline_text = run("--match", "/2:Plant/2:Types/*", "--format", "python")
    assert pipeline_text.returncode == 0, pipeline_text.stderr
    file = tmp_path / "browsed.py"
    file.write_text(pipeline_text.stdout)
    pipeline = load_pipeline(file)
    assert pipeline.check() == []
    rows = {row.name: row.value for row in pipeline.read_once(timeout_s=20).rows}
    assert rows["Plant/Types/Double"] == 2.25 and rows["Plant/Types/String"] == "hello"
    assert (
        "#   Plant/Types/DateTime" in pipeline_text.stdout or "# Plant/Types/DateTime" in pipeline_text.stdout
    )
    bad = run("--match", "/")
    assert bad.returncode == 1 and "must be a browse path" in bad.stderr


DISCOVERING = """
from flowcollect import DataCollectionContext, Pipeline
from flowcollect.readers import OpcUaDataReader
from flowcollect.readers.opcua import discover
from flowcollect.writers import MemoryDataWriter

URL = "{url}"
variables = discover(URL, "/2:Plant/2:Line1/*") + discover(URL, "/2:Plant/2:Nowhere/*")
pipeline = Pipeline(
    name="discovering", readers=[OpcUaDataReader("opcua", URL)], writers=[MemoryDataWriter()],
    contexts=[DataCollectionContext(id=1, interval_ms=1000, variables=variables)],
)
"""


def test_check_and_plan_say_how_many_each_pattern_matched(sim: OpcUaSimulator, tmp_path: Path) -> None:
    file = tmp_path / "discovering.py"
    file.write_text(DISCOVERING.replace("{url}", sim.endpoint))

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowcollect", command, str(file)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    matched = f"discover({sim.endpoint}, '/2:Plant/2:Line1/*'): {len(LINE1)} variables"
    nothing = f"discover({sim.endpoint}, '/2:Plant/2:Nowhere/*'): no variable matched the pattern"
    for command in ("check", "plan"):
        done = run(command)
        assert done.returncode == 0, done.stderr
        assert matched in done.stderr, (command, done.stderr)
        assert nothing in done.stderr, (command, done.stderr)
        assert done.stderr.count(matched) == 1, (command, done.stderr)


@pytest.mark.slow
def test_a_server_process_of_20000_nodes_is_browsed_whole_in_pages(tmp_path: Path) -> None:
    """The simulator in a process of its own, 20,000 Bulk variables in 80 folders of 250: every
    node found once, the folders in pages of 100 references (continuation points), and a pattern
    that reaches one folder browses only it."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "flowcollect.simulator.opcua", "--port", str(port), "--bulk", "20000"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        endpoint = f"opc.tcp://127.0.0.1:{port}/flowcollect"
        # It prints its endpoint once it serves (a 20,000-node address space takes a while).
        wait_until(
            lambda: endpoint in log.read_text() or server.poll() is not None, 120, "the server to serve"
        )
        assert server.poll() is None, log.read_text()
        nodes = browse(endpoint, page=100, timeout_s=30)
        bulk = [n for n in nodes if re.search(r"/B\d+$", n.name)]
        assert len(bulk) == 20000
        assert len({n.path for n in nodes}) == len(nodes)
        seen: list[int] = []
        one_folder = browse(endpoint, match="/2:Plant/2:Bulk/2:G79/*", progress=seen.append, timeout_s=30)
        assert [n.name for n in one_folder] == [f"Plant/Bulk/G79/B{k}" for k in range(19750, 20000)]
        assert seen[-1] < 250 + 80 + 50, "only the one folder below Bulk was browsed"
    finally:
        server.terminate()
        server.wait(30)
