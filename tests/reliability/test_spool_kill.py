"""kill -9 of ``flowcollect run`` while the database is down: the spool loses nothing it accepted.

For each ``sync`` mode: a real ``flowcollect run`` process (RandomDataReader -> SpooledWriter ->
InfluxDBDataWriter -> VictoriaMetrics) runs twice while nothing listens at the server's address
and is killed with SIGKILL at a random moment each time; between kills the test reads the
spool's segment files, which is what the spool had accepted (nothing can have been
acknowledged: the server was down). Then the server starts; a third run is killed while it
replays and sends (acknowledged batches whose position was not yet saved are sent again), and
a fourth goes to its end.

The reader writes each instant it read to a log of its own (one unbuffered append per tick, so
a kill leaves it whole): what the reader produced. Then, against the server's export:

- every value the spool had accepted before a kill is stored;
- each (series, time) is stored exactly once (VictoriaMetrics deduplicates equal timestamps,
  as InfluxDB overwrites a point: the replays are harmless), and nothing the reader did not
  produce is stored;
- what was produced and not stored is only the newest instants of a killed run (read, still in
  the engine's queue, not yet appended): its span before the kill is each mode's loss window,
  printed for docs/spool.md;
- the run that ends normally loses nothing.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from flowcollect.writers.spool import _records as rec
from flowcollect.writers.spool._store import iter_records
from tests.support.victoria import Factory, victoria_factory

__all__ = ["victoria_factory"]

pytestmark = [pytest.mark.realtime, pytest.mark.server]

VARIABLES = 10
INTERVAL_MS = 10

PIPELINE = """\
import os

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import InfluxDBDataWriter, SpooledWriter

PRODUCED = {produced!r}


class LoggedRandomReader(RandomDataReader):
    \"\"\"Random values; each instant read is appended to PRODUCED (one write: whole after a kill).\"\"\"

    def __init__(self) -> None:
        super().__init__(seed=None)
        self._log = os.open(PRODUCED, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def read(self, variables):
        super().read(variables)
        t = variables[0].time
        os.write(self._log, f"{{round(t.timestamp() * 1000)}} {{len(variables)}}\\n".encode())


writer = InfluxDBDataWriter({url!r}, token="t", org="o", bucket="b", measurement={measurement!r})
pipeline = Pipeline(
    name="spool-kill",
    readers=[LoggedRandomReader()],
    writers=[SpooledWriter(writer, {spool!r}, max_bytes=256 << 20, sync={sync!r}, close_timeout_s=10)],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms={interval},
            min_interval_ms={interval},
            variables=[Variable(id=n, address=f"v{{n}}", reader="random") for n in range(1, {n} + 1)],
        )
    ],
)
"""


def spooled_points(spool: Path) -> set[tuple[int, int]]:
    """(variable id, t_ms) of every value in the spool's segment files: what it accepted."""
    out: set[tuple[int, int]] = set()
    for segment in sorted(spool.glob("*.seg")):
        data = segment.read_bytes()
        tables: dict[int, object] = {}
        for record in iter_records(data, len(rec.MAGIC), len(data)):
            if record.kind == rec.KIND_SPECS:
                list_id, specs = rec.decode_specs(record.payload)
                tables[list_id] = specs
            else:
                batch = rec.decode_batch(record.payload, record.t_ms, tables)  # type: ignore[arg-type]
                out.update((spec.id, batch.t_ms) for spec in batch.variables)
    return out


def produced_ticks(log: Path) -> list[int]:
    ticks = []
    for line in log.read_text().splitlines():
        t_ms, n = line.split()
        assert int(n) == VARIABLES
        ticks.append(int(t_ms))
    return ticks


def start_run(
    pipeline: Path, tmp_path: Path, *args: str, log_level: str = "warning", status_every: str = "0"
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "run.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flowcollect",
                "run",
                str(pipeline),
                "--log-level",
                log_level,
                "--status-every",
                status_every,
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert process.poll() is None, f"flowcollect run exited with {process.returncode}"
        assert time.monotonic() < deadline, "the reader produced nothing in time"
        time.sleep(0.02)


@pytest.fixture
def rng() -> Iterator[random.Random]:
    seed = random.randrange(2**32)
    print(f"kill moments from seed {seed}")
    yield random.Random(seed)


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["always", "batch", "never"])
def test_kill_9_while_the_server_is_down_loses_nothing_the_spool_accepted(
    sync: str, tmp_path: Path, victoria_factory: Factory, rng: random.Random
) -> None:
    from flowcollect.writers import InfluxDBDataWriter

    if not InfluxDBDataWriter.acknowledges:
        # Until the acknowledging writer (issue 9's buffered sender) is merged, the InfluxDB
        # writer holds points in memory after write() returns: the spool cannot know when
        # they are stored, so this guarantee does not hold yet and the test says so.
        pytest.skip("needs the acknowledging InfluxDBDataWriter (influx branch)")
    server = victoria_factory(start=False, args=["-dedup.minScrapeInterval=1ms"])
    measurement = f"spoolkill_{sync}"
    spool = tmp_path / "spool"
    produced = tmp_path / "produced.log"
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(
        PIPELINE.format(
            produced=str(produced),
            url=server.url,
            measurement=measurement,
            spool=str(spool),
            sync=sync,
            interval=INTERVAL_MS,
            n=VARIABLES,
        )
    )

    accepted: set[tuple[int, int]] = set()
    kills: list[tuple[float, int]] = []  # (kill instant, ticks produced by then)
    for run in range(3):
        if run == 2:
            server.start()  # the third run is killed while it replays and sends
        process = start_run(pipeline, tmp_path)
        before = len(produced.read_text().splitlines()) if produced.exists() else 0
        wait_for_lines(produced, before + 5, process)
        time.sleep(rng.uniform(0.2, 1.2))
        killed_at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        kills.append((killed_at, len(produced.read_text().splitlines())))
        now = spooled_points(spool)
        if run < 2:
            # The server is down: nothing can be acknowledged, so nothing may leave the spool.
            assert accepted <= now, "a value the spool had accepted is gone from it while the server was down"
        accepted |= now
    assert accepted

    log_size = (tmp_path / "run.log").stat().st_size
    last = start_run(pipeline, tmp_path, "--duration", "3", log_level="info", status_every="1")
    assert last.wait(60) == 0, (tmp_path / "run.log").read_text()[-3000:]
    # The status lines show the spool: its backlog, bytes and oldest value's age.
    status = (tmp_path / "run.log").read_bytes()[log_size:].decode()
    assert re.search(
        r"status spool-kill: .*; influxdb:b spool: [\d,]+ values, [\d.,]+ MB, oldest [\d,]+ s", status
    ), status[-2000:]

    ticks = produced_ticks(produced)
    expected = {(vid, t) for t in ticks for vid in range(1, VARIABLES + 1)}
    last_run = {(vid, t) for t in ticks[kills[-1][1] :] for vid in range(1, VARIABLES + 1)}
    series = server.wait_for(
        f'{{__name__=~"{measurement}_.*"}}',
        lambda s: {(int(x.labels["variable"]), t) for x in s for t in x.timestamps_ms} >= accepted | last_run,
        timeout_s=20,
    )
    stored_list = [(int(s.labels["variable"]), t) for s in series for t in s.timestamps_ms]
    stored = set(stored_list)

    missing_accepted = accepted - stored
    assert not missing_accepted, (
        f"{len(missing_accepted)} accepted values not stored, e.g. {sorted(missing_accepted)[:5]}"
    )
    assert len(stored_list) == len(stored), "a (series, time) is stored more than once"
    assert stored <= expected, f"stored values the reader never produced: {sorted(stored - expected)[:5]}"

    # What was lost: only the newest instants of each killed run, never of the last run.
    lost_ticks = sorted({t for (_, t) in expected - stored})
    bounds = [0] + [k[1] for k in kills] + [len(ticks)]
    runs = [ticks[a:b] for a, b in pairwise(bounds)]
    windows = []
    for (killed_at, _), run in zip(kills, runs[:-1], strict=True):
        lost_here = [t for t in run if t in set(lost_ticks)]
        if lost_here:
            kept_after = [t for t in run if t > lost_here[0] and t not in set(lost_ticks)]
            assert not kept_after, "a value was lost while a later one of the same run was stored"
            windows.append(killed_at - lost_here[0] / 1000)
        else:
            windows.append(0.0)
    assert not [t for t in runs[-1] if t in set(lost_ticks)], "the run that ended normally lost values"
    print(
        f"sync={sync}: produced {len(expected)} values, the spool held {len(accepted)} at the kills, "
        f"stored {len(stored)}, lost {len(expected) - len(stored)}; "
        f"loss window at each kill: {', '.join(f'{w * 1000:.1f} ms' for w in windows)}"
    )
