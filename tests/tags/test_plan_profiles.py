"""``flowcollect plan`` summarises the devices of one profile instead of listing every reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flowcollect.pipeline import load_pipeline
from flowcollect.plan import render_text

PIPELINE = """
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import ModbusDataReader
from flowcollect.tags import DeviceProfile
from flowcollect.writers import MemoryDataWriter

pump = DeviceProfile(name="pump", variables=[
    Variable(id=i, name=f"r{i}", address=f"holding:{i}", reader="x") for i in range(1, 51)
])
meter = DeviceProfile(
    name="meter", variables=[Variable(id=1, name="energy", address="holding:0:uint32", reader="x")]
)
readers = [ModbusDataReader(f"pump{n}", host="127.0.0.1", port=15020 + n) for n in range(12)]
solo = ModbusDataReader("meter1", host="127.0.0.1", port=15100)
variables = [v for n, r in enumerate(readers) for v in pump.instantiate(f"pump-{n}", r)]
variables += meter.instantiate("meter-1", solo)
pipeline = Pipeline(
    name="plant", readers=[*readers, solo], writers=[MemoryDataWriter()],
    contexts=[DataCollectionContext(id=1, interval_ms=1000, variables=variables)],
)
"""


def plan(tmp_path: Path, *args: str) -> str:
    """The command's output, as a user sees it."""
    file = tmp_path / "plant.py"
    file.write_text(PIPELINE)
    done = subprocess.run(
        [sys.executable, "-m", "flowcollect", "plan", str(file), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_devices_of_a_profile_are_summarised_and_full_lists_each(tmp_path: Path) -> None:
    text = plan(tmp_path)
    assert text.count("\nreader ") == 2  # the first pump and the meter
    assert "collects 50 from pump0, 50 from pump1," in text and ", ... (5 more)" in text
    lane = "modbus+tcp://127.0.0.1:15020"
    assert f"reader pump0 (ModbusDataReader) on lane {lane}, device pump-0 of profile pump\n" in text
    assert (
        "  ... and 11 more devices of profile pump: pump-1 (pump1), pump-2 (pump2), pump-3 (pump3), "
        "pump-4 (pump4), pump-5 (pump5), pump-6 (pump6), pump-7 (pump7), pump-8 (pump8), ... (3 more) "
        "(plan --full shows each)\n"
    ) in text
    assert "device profiles\n  profile pump: 12 devices, 50 variables each, 600 wanted in all\n" in text
    assert "  profile meter: 1 device, 1 variable each, 1 wanted in all\n" in text
    full = render_text(load_pipeline(tmp_path / "plant.py").plan(), full=True)
    assert full.count("\nreader ") == 13
    assert "more devices of profile" not in full
