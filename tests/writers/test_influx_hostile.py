"""The InfluxDB writer against a hostile server of the test's own: dripping and endless answers,
control characters and megabytes of text. Every request ends by its deadline, nothing read is
larger than the cap, the server's words reach ``last_error`` and the log escaped and cut."""

from __future__ import annotations

import logging
import time
import tracemalloc

import pytest

from flowcollect.errors import PreflightError
from flowcollect.writers import InfluxDBDataWriter
from flowcollect.writers.influxdb._http import MAX_RESPONSE_BYTES
from tests.support.hostile import HostileServer, drip, endless, respond
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def writer_for(server: HostileServer, **options: object) -> InfluxDBDataWriter:
    defaults: dict[str, object] = {"timeout_s": 1.0, "batch_size": 10, "flush_interval_ms": 50}
    defaults.update(options)
    return InfluxDBDataWriter(server.url, api="v1", database="plant", **defaults)  # type: ignore[arg-type]


def lines(n: int) -> list[str]:
    return [f"m,variable={i} value={i} {i}" for i in range(n)]


def test_a_dripping_answer_is_cut_at_the_deadline_and_delivery_resumes_once_the_server_heals() -> None:
    with HostileServer() as server:
        server.answer = drip(b"HTTP/1.1 204 No Content\r\n", every_s=0.1)
        writer = writer_for(server)
        try:
            writer.sender.submit(lines(25))
            # Each request is cut after 1 s (it would drip for ever): retries pile up.
            wait_until(lambda: writer.sender.stats().retries >= 2, timeout_s=10)
            assert writer.sender.stats().written == 0
            assert "no complete answer within 1 s" in (writer.last_error or "")
            server.answer = respond(204)
            began = time.monotonic()
            wait_until(lambda: writer.sender.stats().written == 25, timeout_s=15)
            assert time.monotonic() - began < 12, "the sender threads were not pinned"
        finally:
            began = time.monotonic()
            writer.close()
            assert time.monotonic() - began < 3


def test_close_ends_within_its_bound_while_the_server_drips() -> None:
    with HostileServer() as server:
        server.answer = drip(b"HTTP/1.1 2", every_s=0.05)
        writer = writer_for(server, timeout_s=1.5)
        writer.sender.submit(lines(30))
        wait_until(lambda: server.requests >= 1, timeout_s=5)
        began = time.monotonic()
        writer.close()
        assert time.monotonic() - began < 1.5 + 1.0
        stats = writer.sender.stats()
        assert stats.written == 0 and stats.dropped == 30, "every point accounted for"


@pytest.mark.parametrize(
    "answer",
    [
        drip(b"HTTP/1.1 204 No Content\r\n", every_s=0.1),  # a dripping status line and headers
        drip(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1000\r\n\r\n", every_s=0.01, then=b"x"),  # body
    ],
    ids=["head", "body"],
)
def test_the_preflight_against_a_dripping_server_ends_within_its_bound(answer: object) -> None:
    with HostileServer() as server:
        server.answer = answer  # type: ignore[assignment]
        writer = writer_for(server, timeout_s=1.0)
        try:
            began = time.monotonic()
            with pytest.raises(
                PreflightError, match=r"cannot reach InfluxDB .*no complete answer within 1 s"
            ):
                writer.preflight()
            assert time.monotonic() - began < 2.0
        finally:
            writer.close()


def test_an_endless_body_is_read_only_up_to_the_cap() -> None:
    with HostileServer() as server:
        server.answer = endless()  # "200 OK", a body of 100 GB promised and sent as fast as taken
        writer = writer_for(server, timeout_s=5.0)
        try:
            began = time.monotonic()
            tracemalloc.start()
            try:
                writer.sender.submit(lines(10))
                writer.flush()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert writer.sender.stats().written == 10, "a 2xx stores the points, whatever follows"
            assert time.monotonic() - began < 3, "the rest of the body is not read: the connection goes"
            assert peak < 4 * 1024 * 1024, f"{peak} bytes at the peak: the body was read"
            # What the server got rid of is what fits the socket buffers: far below the promise.
            assert writer._transport.max_response_bytes == MAX_RESPONSE_BYTES["v1"] == 64 * 1024
        finally:
            writer.close()

    with HostileServer() as server:
        server.answer = endless(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 100000000000\r\n\r\n")
        writer = writer_for(server, timeout_s=5.0)
        try:
            writer.sender.submit(lines(3))
            writer.flush()
            assert writer.sender.stats().failed == 3
            error = writer.last_error or ""
            assert error.startswith("HTTP 400 Bad Request: xxx") and len(error) < 700
            assert "cut;" in error
        finally:
            writer.close()


HOSTILE_TEXT = b'{"error":"\x1b[2J\x1b[31mpwned\nERROR forged log line\r\x00\x07 \xe2\x80\xae evil"}'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            HOSTILE_TEXT,  # not JSON (raw control characters in a string): the whole body is shown
            'HTTP 400 Bad Request: {"error":"\\x1b[2J\\x1b[31mpwned\\nERROR forged log line\\r\\x00\\x07'
            ' \\u202e evil"}',
        ),
        (b"y" * 5_000_000, None),
    ],
    ids=["control-characters", "five-megabytes"],
)
def test_server_text_reaches_last_error_and_the_log_escaped_and_cut(
    body: bytes, expected: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with HostileServer() as server:
        server.answer = respond(400, body, reason="Bad Request\x1b[0m")
        writer = writer_for(server, timeout_s=5.0)
        try:
            caplog.set_level(logging.ERROR)
            writer.sender.submit(lines(2))
            writer.flush()
            wait_until(lambda: bool(caplog.records), what="the refusal logged (after its receipt)")
            error = writer.last_error or ""
            assert writer.sender.stats().failed == 2
            if expected is not None:
                assert error == expected.replace("Bad Request:", "Bad Request\\x1b[0m:")
            assert len(error) < 700
            logged = "\n".join(r.getMessage() for r in caplog.records)
            for char in "\x1b\x00\x07\r\u202e":
                assert char not in error and char not in logged
            assert "\nERROR forged" not in logged
        finally:
            writer.close()


def test_after_a_413_storm_the_request_size_grows_back_against_a_real_http_server() -> None:
    # Issue 21 item 8, over real HTTP: a server refuses every request of more than one point
    # with 413 (a storm), then heals. The writer must not send one point per request for ever:
    # after ``regrow_after_s`` without a 413 its requests grow back to ``batch_size``.
    limit = [1]
    sizes: list[tuple[int, int]] = []  # (points in the request, status answered)

    def answer(request: bytes, sock: object) -> None:
        body = request.partition(b"\r\n\r\n")[2]
        points = len([line for line in body.split(b"\n") if line.strip()])
        status = 413 if points > limit[0] else 204
        sizes.append((points, status))
        respond(status, reason="Request Entity Too Large" if status == 413 else "No Content")(
            request,
            sock,  # type: ignore[arg-type]
        )

    with HostileServer() as server:
        server.answer = answer
        writer = writer_for(server, batch_size=8, timeout_s=2.0)
        writer.gzip = False  # the server counts the points in the body
        writer.sender.regrow_after_s = 0.3
        sent = 0
        try:
            writer.sender.submit(lines(8))
            sent += 8
            writer.flush()
            assert (1, 204) in sizes and (8, 413) in sizes, sizes  # the storm cut it to one point
            assert writer.sender.stats().written == 8
            limit[0] = 1_000  # healed
            healed_at = len(sizes)

            def grown_back() -> bool:
                nonlocal sent
                writer.sender.submit(lines(8))
                sent += 8
                writer.flush()
                return sizes[-1] == (8, 204)

            wait_until(grown_back, timeout_s=20, what="requests of batch_size points again")
            assert all(status == 204 for _, status in sizes[healed_at:]), sizes  # no 413 once healed
            assert sizes[healed_at][0] < 8, sizes  # it did start small: the growth was the writer's
            stats = writer.sender.stats()
            assert (stats.written, stats.failed, stats.dropped) == (sent, 0, 0)
        finally:
            writer.close()
