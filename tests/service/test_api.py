"""The HTTP API through real HTTP against a real ``flowcollect run --http`` process (Modbus
simulator pipeline): every endpoint, the token rules, bad bodies."""

from __future__ import annotations

import http.client
import json
import signal
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from tests.service.conftest import TOKEN, Api

pytestmark = pytest.mark.realtime

NEW_CONTEXT = {
    "id": 10,
    "interval_ms": 250,
    "duration_s": 3600,
    "variables": [{"id": 1, "address": "holding:2:float32", "reader": "plc", "name": "temp_2"}],
}


def oversized(api: Api, *, declared: bool) -> tuple[int, str]:
    """POST a body one byte over the cap; ``declared``: only the headers are sent, saying so."""
    url = urllib.parse.urlsplit(api.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        if declared:
            connection.putrequest("POST", "/api/v1/contexts")
            for key, value in headers.items():
                connection.putheader(key, value)
            connection.putheader("Content-Length", str((1 << 20) + 1))
            connection.endheaders()
        else:
            body = iter([b"[" + b" " * (1 << 19), b" " * (1 << 19) + b"]"])
            connection.request("POST", "/api/v1/contexts", body=body, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        return response.status, json.loads(response.read())["detail"]
    finally:
        connection.close()


def parse(date: str) -> datetime:
    assert date.endswith("Z"), date  # ISO 8601, UTC
    return datetime.fromisoformat(date.replace("Z", "+00:00"))


def test_reads_status_contexts_values_and_metrics(tmp_path: Path, apis: list[Api], token_file: Path) -> None:
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    # Reads are open on a loopback bind.
    status = api.wait_for("/api/v1/status", lambda s: s["readers"].get("plc", {}).get("values", 0) >= 6)
    plc = status["readers"]["plc"]
    assert plc["values"] >= 6 and plc["errors"] == 0 and plc["lane"].startswith("modbus+tcp://")
    assert {"lateness_ms_p50", "lateness_ms_p99", "delivery_ms_p99", "overruns", "last_error"} <= set(plc)
    assert list(status["lanes"].values()) == [{"readers": ["plc"]}]
    # The API's own store of latest values is not a writer people see: no doubled totals.
    assert list(status["writers"]) == ["csv:out/api.csv"]
    assert {"written", "failed", "dropped", "pending"} <= set(status["writers"]["csv:out/api.csv"]["figures"])
    assert status["contexts"]["1"]["state"] == "running"

    contexts = api.get("/api/v1/contexts")
    assert [c["id"] for c in contexts] == [1, 2]
    one = api.get("/api/v1/contexts/1")
    assert one["state"] == "running" and one["end_date"] is None and one["source"] == "pipeline"
    assert one["interval_ms"] == 200 and [v["name"] for v in one["variables"]] == ["temp_1", "pump_speed"]
    assert parse(one["start_date"]) <= datetime.now(parse(one["start_date"]).tzinfo)
    assert one["delivered"] > 0 and one["missed_instants"] == 0
    assert api.call("GET", "/api/v1/contexts/99")[0] == 404

    values = api.get("/api/v1/values")
    assert values["total"] == 3
    assert {(v["context"], v["variable"]) for v in values["values"]} == {(1, 1), (1, 2), (2, 3)}
    temp = api.get("/api/v1/values?name=temp*")["values"]
    assert [v["name"] for v in temp] == ["temp_1"]
    assert isinstance(temp[0]["value"], float) and temp[0]["error"] is None and temp[0]["quality"] is None
    parse(temp[0]["time"])
    assert api.get("/api/v1/values?context=2")["total"] == 1
    assert api.get("/api/v1/values?reader=other")["total"] == 0
    page = api.get("/api/v1/values?offset=1&limit=1")
    assert page["total"] == 3 and len(page["values"]) == 1

    status_code, text, headers = api.call("GET", "/metrics")
    assert status_code == 200 and headers["content-type"].startswith("text/plain")
    assert 'flowcollect_context_state{context="1",state="running"} 1.0' in text
    assert 'writer="api:latest"' not in text
    assert api.call("GET", "/api/v1/openapi.json")[0] == 200
    assert api.stop() == 0


def test_changes_need_the_right_token(tmp_path: Path, apis: list[Api], token_file: Path) -> None:
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    status, body, headers = api.call("POST", "/api/v1/contexts/1/pause")
    assert status == 401 and "Bearer" in body["detail"] and headers["www-authenticate"] == "Bearer"
    assert api.call("POST", "/api/v1/contexts/1/pause", headers={"Authorization": "Basic eDp5"})[0] == 401
    status, body, _ = api.call("POST", "/api/v1/contexts/1/pause", token=TOKEN + "x")
    assert (status, body["detail"]) == (403, "wrong token")
    assert api.get("/api/v1/contexts/1")["state"] == "running"  # nothing changed

    status, body = api.post("/api/v1/contexts/1/pause", token=TOKEN)
    assert (status, body["state"]) == (200, "paused")
    assert api.get("/api/v1/status")["contexts"]["1"]["state"] == "paused"
    status, body = api.post("/api/v1/contexts/1/resume", token=TOKEN)
    assert (status, body["state"]) == (200, "running")
    status, body = api.post("/api/v1/contexts/2/stop", token=TOKEN)
    assert (status, body["state"]) == (200, "stopped")
    assert parse(body["end_date"]) >= parse(body["start_date"])
    assert api.post("/api/v1/contexts/2/pause", token=TOKEN)[0] == 404  # not running
    assert api.post("/api/v1/contexts/2/stop", token=TOKEN)[0] == 404
    # A pipeline's context is started again by id; a running one is a conflict.
    status, body = api.post("/api/v1/contexts/2/start", token=TOKEN)
    assert (status, body["state"], body["end_date"]) == (200, "running", None)
    assert api.post("/api/v1/contexts/2/start", token=TOKEN)[0] == 409
    assert api.post("/api/v1/contexts/77/start", token=TOKEN)[0] == 404
    # Every context stopped: a service stays up for the next one.
    assert api.post("/api/v1/contexts/1/stop", token=TOKEN)[0] == 200
    assert api.post("/api/v1/contexts/2/stop", token=TOKEN)[0] == 200
    assert api.get("/api/v1/status")["contexts"]["1"]["state"] == "stopped"
    assert api.proc.poll() is None
    assert api.stop() == 0
    assert TOKEN not in api.log()  # never logged


def test_bad_bodies_get_a_4xx_naming_the_problem_and_change_nothing(
    tmp_path: Path, apis: list[Api], token_file: Path
) -> None:
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    status, body, _ = api.call("POST", "/api/v1/contexts", raw=b'{"id": 3,', token=TOKEN)
    assert status == 400 and body["detail"].startswith("body is not JSON")
    status, body = api.post("/api/v1/contexts", [1, 2], token=TOKEN)
    assert status == 422 and "JSON object" in body["detail"]
    bad = dict(NEW_CONTEXT, colour="red", interval_ms=0)
    bad["variables"] = [{"id": 1, "address": "holding:2:float32", "reader": "plc", "unit": "C"}]
    status, body = api.post("/api/v1/contexts", bad, token=TOKEN)
    assert status == 422
    problems = body["problems"]
    assert any(p.startswith("colour:") for p in problems), problems
    assert any(p.startswith("interval_ms:") for p in problems), problems
    assert any(p.startswith("variables.0.unit:") for p in problems), problems
    # Valid as a model, but its reader does not exist: the compiler's problem, named.
    unknown = dict(NEW_CONTEXT, variables=[{"id": 1, "address": "x", "reader": "nope"}])
    status, body = api.post("/api/v1/contexts", unknown, token=TOKEN)
    assert status == 422 and any("nope" in p for p in body["problems"]), body
    # Too large: said by Content-Length (refused before the body is sent), or found reading it.
    assert oversized(api, declared=True) == (413, f"body too large: {(1 << 20) + 1} bytes, at most {1 << 20}")
    assert oversized(api, declared=False) == (413, f"body too large: more than {1 << 20} bytes")
    running = dict(NEW_CONTEXT, id=1)
    status, body = api.post("/api/v1/contexts", running, token=TOKEN)
    assert status == 409 and "1" in body["detail"]
    # Nothing of the above started or changed anything.
    assert [c["id"] for c in api.get("/api/v1/contexts")] == [1, 2]
    assert api.get("/api/v1/contexts/1")["interval_ms"] == 200

    status, body = api.post("/api/v1/contexts", NEW_CONTEXT, token=TOKEN)
    assert status == 201, body
    assert body["state"] == "running" and body["source"] == "api" and body["duration_s"] == 3600
    parse(body["start_date"])
    got = api.wait_for("/api/v1/values?context=10", lambda v: v["total"] == 1)
    assert got["values"][0]["name"] == "temp_2"
    assert api.stop() == 0


def test_events_stream_lifecycle_and_figures(tmp_path: Path, apis: list[Api], token_file: Path) -> None:
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    seen: list[str] = []
    with urllib.request.urlopen(api.url + "/api/v1/events", timeout=10) as stream:  # noqa: S310
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert api.post("/api/v1/contexts/1/pause", token=TOKEN)[0] == 200
        assert api.post("/api/v1/contexts/1/resume", token=TOKEN)[0] == 200
        assert api.post("/api/v1/contexts/2/stop", token=TOKEN)[0] == 200
        assert api.post("/api/v1/contexts/2/start", token=TOKEN)[0] == 200
        broken = dict(
            NEW_CONTEXT, id=20, variables=[{"id": 5, "address": "holding:60000:uint16", "reader": "plc"}]
        )
        assert api.post("/api/v1/contexts", broken, token=TOKEN)[0] == 201
        data: list[dict[str, object]] = []
        wanted = {"pause", "resume", "stop", "start", "figures", "error"}
        while not wanted <= {str(d["event"]) for d in data}:
            line = stream.readline().decode()
            if line.startswith("event: "):
                seen.append(line[7:].strip())
            elif line.startswith("data: "):
                data.append(json.loads(line[6:]))
        stopped_status = api.get("/api/v1/status")  # the reader's newest error, kept
        # The run ends: the stream says so, then ends.
        api.proc.send_signal(signal.SIGTERM)
        rest = stream.read().decode()
    assert "event: close" in rest
    assert api.proc.wait(15) == 0
    assert seen.index("pause") < seen.index("resume") < seen.index("stop") < seen.index("start")
    figures = next(d for d in data if d["event"] == "figures")
    assert set(figures) == {"event", "readers", "writers", "contexts"}
    assert {"event": "pause", "context": 1} in data
    error = next(d for d in data if d["event"] == "error")
    assert (error["context"], error["variable"], error["reader"]) == (20, 5, "plc") and error["error"]
    last = stopped_status["readers"]["plc"]["last_error"]
    assert (last["context"], last["variable"], last["error"]) == (20, 5, error["error"])


def test_no_token_means_no_changes_and_no_public_bind(tmp_path: Path, apis: list[Api]) -> None:
    # Loopback without a token: reads work, changes are refused (403, saying how to enable them).
    api = Api(tmp_path, "--http", "127.0.0.1:0")
    apis.append(api)
    status, body = api.post("/api/v1/contexts/1/pause")
    assert status == 403 and "--token-file" in body["detail"]
    assert api.get("/api/v1/contexts/1")["state"] == "running"
    assert api.stop() == 0
    # Every interface without a token: refused at start, nothing started.
    refused = Api(tmp_path, "--http", "0.0.0.0:0", wait=False)
    apis.append(refused)
    assert refused.proc.wait(20) == 1
    assert "non-loopback address needs a token" in refused.log()
    assert "context 1 started" not in refused.log()


def test_reads_need_the_token_off_loopback(tmp_path: Path, apis: list[Api]) -> None:
    # The token from the environment this time; bound to every interface, reached on loopback.
    api = Api(tmp_path, "--http", "0.0.0.0:0", env={"FLOWCOLLECT_API_TOKEN": TOKEN})
    apis.append(api)
    api.url = api.url.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 -- reached on loopback
    assert api.call("GET", "/api/v1/status")[0] == 401
    assert api.call("GET", "/metrics", token="wrong-token-wrong-token")[0] == 403
    assert api.get("/api/v1/status", token=TOKEN)["pipeline"] == "api"
    assert api.stop() == 0
    assert TOKEN not in api.log()


def test_tls(tmp_path: Path, apis: list[Api], token_file: Path) -> None:
    from tests.support.certs import Pki

    pki = Pki(tmp_path / "pki")
    api = Api(
        tmp_path,
        "--http",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    )
    apis.append(api)
    assert api.url.startswith("https://")
    import ssl

    trusted = ssl.create_default_context(cafile=str(pki.ca))
    assert api.get("/api/v1/contexts/1", context=trusted)["state"] == "running"
    status, body, _ = api.call("POST", "/api/v1/contexts/1/pause", token=TOKEN, context=trusted)
    assert (status, body["state"]) == (200, "paused")
    assert api.stop() == 0


def test_bad_options_fail_before_anything_starts(tmp_path: Path, apis: list[Api], token_file: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    cases = [
        (("--http", "localhost"), "expected HOST:PORT"),
        (("--http", "127.0.0.1:0", "--token-file", str(short)), "shorter than 16"),
        (("--http", "127.0.0.1:0", "--tls-cert", str(token_file)), "--tls-cert and --tls-key go together"),
        (("--token-file", str(token_file)), "only apply with --http"),
    ]
    for args, message in cases:
        api = Api(tmp_path, *args, wait=False)
        apis.append(api)
        assert api.proc.wait(20) == 1, api.log()
        assert message in api.log(), api.log()
        assert "started" not in api.log()
