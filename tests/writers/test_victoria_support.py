"""The server helper's skip policy: skip when VictoriaMetrics is missing, fail when CI requires it."""

from __future__ import annotations

import pytest

from tests.support import victoria


def test_a_missing_server_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(victoria.BINARY_ENV, "/nonexistent/victoria-metrics")
    monkeypatch.delenv(victoria.REQUIRE_SERVERS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="victoria-metrics is not installed"):
        victoria.victoria_binary()


def test_a_missing_server_fails_when_servers_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(victoria.BINARY_ENV, "/nonexistent/victoria-metrics")
    monkeypatch.setenv(victoria.REQUIRE_SERVERS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        victoria.victoria_binary()


def test_a_server_restarts_on_its_port_with_its_data(victoria_factory: victoria.Factory) -> None:
    server = victoria_factory()
    port = server.port
    server.write_lines("probe,k=a value=1.5 1700000000000000000\nprobe,k=b value=2 1700000001000000000")
    assert victoria.sample_count(server.wait_for_samples('{__name__="probe_value"}', 2)) == 2
    server.stop()
    assert not server.running
    server.start()
    assert server.running and server.port == port
    series = server.export('{__name__="probe_value"}')
    assert sorted((s.labels["k"], s.values, s.timestamps_ms) for s in series) == [
        ("a", [1.5], [1700000000000]),
        ("b", [2.0], [1700000001000]),
    ]
