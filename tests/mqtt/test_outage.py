"""The broker killed and restarted during a run: with the spool and QoS 1 every value arrives at
least once, exactly once per (topic, time) after dropping duplicates, and the figures agree.

The test's own subscriber keeps a persistent session (clean_session=False, saved by Mosquitto's
one-second autosave) and subscribes again after the restart, before the writer is back (it
retries every 2 s): a killed broker forgets what it had not saved. What a broker killed between
acknowledging a message and handing it to a subscriber loses is the broker's loss (see
docs/guarantees.md); should it happen, the failure lists the values missing, by their time
after the kill.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import MqttDataWriter, SpooledWriter
from tests.support.mqtt_peer import Peer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realtime

PERSISTENT = "autosave_interval 1\nmax_queued_messages 0"


@pytest.mark.parametrize("layout", ["value", "instant"])
def test_kill_and_restart_of_the_broker_with_spool_and_qos1(
    mosquitto_factory: Any, tmp_path: Path, layout: str
) -> None:
    broker = mosquitto_factory(extra_config=PERSISTENT)
    topic = "plant/{context}/{name}" if layout == "value" else "plant/{context}"
    inner = MqttDataWriter(broker.url, topic=topic, layout=layout, qos=1)  # type: ignore[arg-type]
    # The writer retries every 2 s: the test's subscriber (whose session a killed broker may not
    # have saved) subscribes again after the restart, before the writer is back.
    inner.reconnect_min_s = inner.reconnect_max_s = 2.0
    spool = SpooledWriter(inner, tmp_path / "spool", max_bytes=64 << 20, close_timeout_s=10)
    variables = [Variable(id=i, address=f"r{i}", reader="random") for i in range(1, 11)]
    peer = Peer(broker.url, clean=False, client_id="counting-subscriber")
    try:
        peer.subscribe("plant/#", qos=1)
        time.sleep(1.5)  # the autosave keeps the subscription through the kill
        with DataCollector([RandomDataReader(seed=7)], [spool]) as collector:
            collector.start(
                DataCollectionContext(id=1, variables=variables, interval_ms=50, min_interval_ms=10)
            )
            wait_until(lambda: inner.stats()["written"] >= 200, what="values before the outage")
            killed_ms = time.time() * 1000
            broker.kill()
            wait_until(lambda: inner.stats()["connected"] == 0, what="the writer noticing the outage")
            time.sleep(1.5)
            held = collector.stats().writers[spool.name]
            assert held.in_flight > 0, "values wait while the broker is down"
            broker.start()
            wait_until(lambda: peer.connected, what="the subscriber back")
            peer.subscribe("plant/#", qos=1)
            assert inner.stats()["connects"] == 1, "the subscriber is back first"
            wait_until(lambda: inner.stats()["connects"] >= 2, what="the writer back")
            time.sleep(1.0)
        stats = collector.stats().writers[spool.name]
        assert stats.received == stats.written, f"everything acknowledged by the end: {stats}"
        assert stats.failed == stats.dropped == stats.in_flight == stats.queued == 0
        if layout == "value":

            def missing() -> str:
                keys = {(t, json.loads(p)["time"]) for t, p, _d in peer.taken()}
                ms = sorted(
                    {datetime.fromisoformat(k[1].replace("Z", "+00:00")).timestamp() * 1000 for k in keys}
                )
                have = {
                    (t, datetime.fromisoformat(w.replace("Z", "+00:00")).timestamp() * 1000) for t, w in keys
                }
                lost = [
                    (m - killed_ms, f"r{i}")
                    for m in ms
                    for i in range(1, 11)
                    if (f"plant/1/r{i}", m) not in have
                ]
                return f"{len(keys)} of {stats.written}; missing (ms after the kill, variable): {lost[:40]}"

            try:
                wait_until(
                    lambda: len({(t, json.loads(p)["time"]) for t, p, _d in peer.taken()}) >= stats.written,
                    timeout_s=20,
                )
            except AssertionError:
                raise AssertionError(missing()) from None
            wait_until(
                lambda: len({(t, json.loads(p)["time"]) for t, p, _d in peer.taken()}) >= stats.written,
                what="every value at the subscriber",
                timeout_s=20,
            )
            got = peer.taken()
            keys = Counter((t, json.loads(p)["time"]) for t, p, _d in got)
            assert len(keys) == stats.written, "exactly once per (topic, time) after dropping duplicates"
        else:

            def distinct_values() -> int:
                seen: dict[tuple[str, str], int] = {}
                for t, p, _d in peer.taken():
                    body = json.loads(p)
                    seen[(t, body["time"])] = len(body["values"])
                return sum(seen.values())

            wait_until(
                lambda: distinct_values() >= stats.written, what="every value at the subscriber", timeout_s=20
            )
            got = peer.taken()
            keys = Counter((t, json.loads(p)["time"]) for t, p, _d in got)
            assert distinct_values() == stats.written
        duplicates = len(got) - len(keys)
        assert duplicates >= 0
        times = sorted({k[1] for k in keys})
        # no hole: one instant every 50 ms from the first to the last, each with all its values
        assert len(times) * (10 if layout == "value" else 1) == len(keys)
        ms = [round(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000) for t in times]
        assert {b - a for a, b in itertools.pairwise(ms)} == {50}
        print(f"{layout}: {stats.written} values, {len(got)} messages, {duplicates} duplicates")
    finally:
        peer.close()
