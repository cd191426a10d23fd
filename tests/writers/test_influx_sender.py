"""The buffered sender in virtual time: batching, backoff, Retry-After, 401/403/404, 413, partial writes.

No network here: a scripted transport answers with the outcomes a test gives it (the InfluxDB
transport's reading of real answers is tested against real servers and in ``classify``'s
tests). The clock is a variable; ``threaded=False`` makes ``pump()`` send what is due now.
"""

from __future__ import annotations

import gzip
import itertools
import logging
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowcollect.writers.influxdb._http import _conflicting_lines, classify
from flowcollect.writers.sender import Backoff, BufferedSender, Outcome, Status

OK = Outcome.ok()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A transport whose answers come from ``answer(records)``; it keeps what it stored."""

    def __init__(self, answer: Callable[[list[str]], Outcome] | None = None) -> None:
        self.answer = answer or (lambda records: OK)
        self.requests: list[list[str]] = []
        self.stored: list[str] = []
        self.closed = False

    def encode(self, records: Sequence[str]) -> bytes:
        return "\n".join(records).encode()

    def send(self, body: bytes, *, timeout_s: float) -> Outcome:
        records = body.decode().split("\n")
        self.requests.append(records)
        outcome = self.answer(records)
        if outcome.status is Status.OK:
            self.stored += records
        elif outcome.status is Status.PARTIAL:
            bad = set(outcome.rejected_records or range(outcome.rejected))
            self.stored += [r for i, r in enumerate(records) if i not in bad]
        return outcome

    def close(self) -> None:
        self.closed = True


def script(*outcomes: Outcome) -> Callable[[list[str]], Outcome]:
    """Answer with these outcomes in turn, then OK."""
    left = list(outcomes)
    return lambda records: left.pop(0) if left else OK


class Settled:
    def __init__(self) -> None:
        self.calls: list[tuple[object, int, int, int, str | None]] = []

    def __call__(self, token: object, written: int, failed: int, dropped: int, error: str | None) -> None:
        self.calls.append((token, written, failed, dropped, error))

    def per_token(self) -> dict[object, tuple[int, int, int]]:
        out: dict[object, tuple[int, int, int]] = {}
        for token, w, f, d, _ in self.calls:
            a, b, c = out.get(token, (0, 0, 0))
            out[token] = (a + w, b + f, c + d)
        return out


def make(
    transport: Scripted, clock: Clock, settled: Settled | None = None, *, rng: float = 1.0, **options: object
) -> BufferedSender:
    defaults: dict[str, object] = {"batch_size": 10, "flush_interval_s": 1.0, "buffer_limit": 1000}
    defaults.update(options)
    return BufferedSender(
        transport,
        name="test",
        on_settled=settled,
        clock=clock,
        rng=lambda: rng,
        threaded=False,
        **defaults,  # type: ignore[arg-type]
    )


def records(token: str, n: int) -> list[str]:
    return [f"{token}-{i}" for i in range(n)]


# -- batching ---------------------------------------------------------------------------------------


def test_a_full_batch_goes_at_once_a_part_batch_after_the_interval() -> None:
    clock, transport = Clock(), Scripted()
    sender = make(transport, clock)
    sender.submit(records("a", 25))
    assert sender.pump() == 2 and [len(r) for r in transport.requests] == [10, 10]
    clock.now = 0.999
    assert sender.pump() == 0, "the part batch waits for flush_interval_s"
    clock.now = 1.0
    assert sender.pump() == 1 and len(transport.requests[-1]) == 5
    assert transport.stored == records("a", 25)


def test_receipts_follow_tokens_across_merged_and_split_requests() -> None:
    clock, transport, settled = Clock(), Scripted(), Settled()
    sender = make(transport, clock, settled)
    for token, n in (("a", 4), ("b", 13), ("c", 2)):
        sender.submit(records(token, n), token)
    sender.flush()
    assert [len(r) for r in transport.requests] == [10, 9]
    assert settled.per_token() == {"a": (4, 0, 0), "b": (13, 0, 0), "c": (2, 0, 0)}
    assert [c[:2] for c in settled.calls] == [("a", 4), ("b", 6), ("b", 7), ("c", 2)]


# -- backoff ---------------------------------------------------------------------------------------


def retry(detail: str = "HTTP 503", after: float | None = None) -> Outcome:
    return Outcome(Status.RETRY, detail, retry_after_s=after)


def attempts_at(
    sender: BufferedSender, clock: Clock, transport: Scripted, until: float, step: float = 0.01
) -> list[float]:
    """Advance virtual time in steps; the times at which a request went."""
    times = []
    start = clock.now
    for k in range(round((until - start) / step)):
        clock.now = start + k * step  # no drift from adding floats
        before = len(transport.requests)
        sender.pump()
        if len(transport.requests) > before:
            times.append(round(clock.now, 2))
    return times


@pytest.mark.parametrize(("rng", "factor"), [(1.0, 1.0), (0.0, 0.5)])
def test_backoff_doubles_with_jitter_up_to_the_maximum(rng: float, factor: float) -> None:
    clock = Clock()
    transport = Scripted(script(*[retry()] * 8))
    sender = make(transport, clock, rng=rng, backoff=Backoff(initial_s=0.2, max_s=2.0))
    sender.submit(records("a", 10))
    times = attempts_at(sender, clock, transport, until=20.0)
    waits = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    expected = [round(min(2.0, 0.2 * 2**k) * factor, 2) for k in range(8)]
    assert waits == pytest.approx(expected, abs=0.011)
    assert len(times) == 9 and transport.stored == records("a", 10)
    stats = sender.stats()
    assert (stats.retries, stats.written, stats.buffered) == (8, 10, 0)


def test_retry_after_lengthens_the_wait_and_is_capped() -> None:
    clock = Clock()
    transport = Scripted(script(retry("HTTP 429", after=3.0), retry("HTTP 429", after=600.0)))
    sender = make(transport, clock, backoff=Backoff(initial_s=0.2, max_s=10.0))
    sender.submit(records("a", 10))
    times = attempts_at(sender, clock, transport, until=20.0)
    assert times == pytest.approx([0.0, 3.0, 13.0], abs=0.011)


def test_while_failing_one_request_probes_and_the_oldest_goes_first() -> None:
    clock = Clock()
    transport = Scripted(script(retry(), retry()))
    sender = make(transport, clock, max_in_flight=4)
    sender.submit(records("a", 10))
    sender.submit(records("b", 10))
    attempts_at(sender, clock, transport, until=5.0)
    assert [r[0] for r in transport.requests] == ["a-0", "a-0", "a-0", "b-0"]
    assert transport.stored == records("a", 10) + records("b", 10)


def test_401_403_404_keep_the_data_log_an_error_and_count_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock, settled = Clock(), Settled()
    hold = Outcome(Status.HOLD, "HTTP 404 Not Found: database not found")
    transport = Scripted(script(hold, hold, hold))
    sender = make(transport, clock, settled)
    sender.submit(records("a", 10), "a")
    attempts_at(sender, clock, transport, until=0.5)
    stats = sender.stats()
    assert (stats.held_retries, stats.holding, stats.buffered, stats.written) == (2, 1, 10, 0)
    assert settled.calls == [], "nothing settled while the operator fixes it"
    attempts_at(sender, clock, transport, until=5.0)
    stats = sender.stats()
    assert (stats.held_retries, stats.holding, stats.written, stats.dropped, stats.failed) == (3, 0, 10, 0, 0)
    assert settled.per_token() == {"a": (10, 0, 0)}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "database not found" in errors[0] and "kept" in errors[0]
    assert any("delivering again after 3 failed attempts" in r.getMessage() for r in caplog.records)


# -- 413 --------------------------------------------------------------------------------------------


def test_413_splits_the_request_and_later_ones_are_cut_to_the_size_that_worked() -> None:
    clock, settled = Clock(), Settled()
    too_large = Outcome(Status.TOO_LARGE, "HTTP 413")
    transport = Scripted(lambda rs: too_large if len(rs) > 3 else OK)
    sender = make(transport, clock, settled, batch_size=10)
    sender.submit(records("a", 10), "a")
    sender.submit(records("b", 10), "b")
    sender.flush()
    assert transport.stored == records("a", 10) + records("b", 10), "all once, in order"
    refused = [r for r in transport.requests if len(r) > 3]
    assert len(refused) == 2, "10 -> 5 -> 3: two refusals, then every request fits"
    assert sender.stats().splits == 2 and sender.stats().written == 20
    assert settled.per_token() == {"a": (10, 0, 0), "b": (10, 0, 0)}


def test_a_single_record_too_large_is_failed() -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(lambda rs: Outcome(Status.TOO_LARGE, "HTTP 413"))
    sender = make(transport, clock, settled)
    sender.submit(records("a", 2), "a")
    sender.flush()
    sender.pump()
    assert settled.per_token() == {"a": (0, 2, 0)} and sender.stats().failed == 2


@pytest.mark.parametrize(
    ("server_limit_after", "sizes_after"),
    [
        # the storm passed: back to batch_size, doubling once per quiet minute
        (10, [[3, 6, 1], [6, 4], [10]]),
        # the limit stays at 4: one 413 a minute at most (the try at 6), no more
        (4, [[3, 6, 3, 3, 1], [3, 6, 3, 3, 1]]),
    ],
)
def test_after_a_413_storm_the_request_size_grows_back(
    server_limit_after: int, sizes_after: list[list[int]]
) -> None:
    clock, settled = Clock(), Settled()
    limit = [3]
    too_large = Outcome(Status.TOO_LARGE, "HTTP 413")
    transport = Scripted(lambda rs: too_large if len(rs) > limit[0] else OK)
    sender = make(transport, clock, settled, batch_size=10, regrow_after_s=60.0)
    sender.submit(records("a", 10), "a")
    sender.flush()
    limit[0] = server_limit_after
    sizes = []
    for minute in range(1, len(sizes_after) + 1):
        clock.now = 60.0 * minute + 0.5
        before = len(transport.requests)
        sender.submit(records(f"m{minute}", 10), f"m{minute}")
        sender.flush()
        sizes.append([len(r) for r in transport.requests[before:]])
    assert sizes == sizes_after
    assert (
        transport.stored
        == records("a", 10) + [r for m in range(1, 5) for r in records(f"m{m}", 10)][: 10 * len(sizes_after)]
    )
    assert sender.stats().written == 10 + 10 * len(sizes_after) and sender.stats().failed == 0


def test_one_oversized_record_does_not_leave_the_sender_at_one_record_a_request() -> None:
    clock, settled = Clock(), Settled()
    huge = "x" * 100
    transport = Scripted(lambda rs: Outcome(Status.TOO_LARGE, "HTTP 413") if huge in rs else OK)
    sender = make(transport, clock, settled, batch_size=8, regrow_after_s=60.0)
    sender.submit([*records("a", 7), huge], "a")
    sender.flush()
    assert settled.per_token() == {"a": (7, 1, 0)}, "the oversized record alone is failed"
    sizes = []
    for minute in range(1, 5):
        clock.now = 60.0 * minute + 0.5
        before = len(transport.requests)
        sender.submit(records(f"m{minute}", 8), f"m{minute}")
        sender.flush()
        sizes.append(max(len(r) for r in transport.requests[before:]))
    assert sizes == [2, 4, 4, 8], "doubling (after the first request of each quiet minute) back to batch_size"


# -- refusals and partial writes --------------------------------------------------------------------


def test_a_refused_request_is_failed_and_never_retried() -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(script(Outcome(Status.REFUSED, "HTTP 400: bad")))
    sender = make(transport, clock, settled)
    sender.submit(records("a", 10), "a")
    attempts_at(sender, clock, transport, until=5.0)
    assert len(transport.requests) == 1
    assert settled.calls == [("a", 0, 10, 0, "HTTP 400: bad")]


def test_a_partial_write_with_a_count_is_attributed_in_order() -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(script(Outcome(Status.PARTIAL, "partial write dropped=5", rejected=5)))
    sender = make(transport, clock, settled)
    sender.submit(records("a", 3), "a")
    sender.submit(records("b", 7), "b")
    sender.pump()
    assert settled.per_token() == {"a": (0, 3, 0), "b": (5, 2, 0)}
    stats = sender.stats()
    assert (stats.written, stats.failed, stats.partial_writes, stats.retries) == (5, 5, 1, 0)


def test_a_partial_write_naming_its_lines_is_attributed_exactly() -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(script(Outcome(Status.PARTIAL, "x", rejected=2, rejected_records=(1, 8))))
    sender = make(transport, clock, settled)
    sender.submit(records("a", 3), "a")
    sender.submit(records("b", 7), "b")
    sender.pump()
    assert settled.per_token() == {"a": (2, 1, 0), "b": (6, 1, 0)}
    assert transport.stored == ["a-0", "a-2", *records("b", 5), "b-6"]


# -- limits and close ---------------------------------------------------------------------------------


def test_buffer_limit_drops_the_oldest_and_reports_them() -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(lambda rs: retry())
    sender = make(transport, clock, settled, buffer_limit=15)
    for token in "abc":
        sender.submit(records(token, 10), token)
    assert settled.per_token() == {"a": (0, 0, 10), "b": (0, 0, 5)}
    assert sender.stats().dropped == 15 and sender.stats().buffered == 15


def test_close_reports_what_it_could_not_deliver_as_dropped() -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(lambda rs: retry())
    sender = make(transport, clock, settled, timeout_s=0.0)
    sender.submit(records("a", 12), "a")
    assert sender.close() == 12
    assert settled.per_token() == {"a": (0, 0, 12)} and transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        sender.submit(records("b", 1), "b")


_OUTCOMES = st.sampled_from(
    [
        OK,
        OK,
        retry(),
        Outcome(Status.HOLD, "HTTP 401"),
        Outcome(Status.TOO_LARGE, "HTTP 413"),
        Outcome(Status.REFUSED, "HTTP 400"),
        Outcome(Status.PARTIAL, "dropped=2", rejected=2),
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=8),
    answers=st.lists(_OUTCOMES, max_size=30),
    batch_size=st.integers(1, 12),
)
def test_every_record_is_settled_exactly_once_whatever_the_server_says(
    sizes: list[int], answers: list[Outcome], batch_size: int
) -> None:
    clock, settled = Clock(), Settled()
    transport = Scripted(script(*answers))
    sender = make(transport, clock, settled, batch_size=batch_size, buffer_limit=10_000)
    tokens = [f"t{i}" for i in range(len(sizes))]
    for token, n in zip(tokens, sizes, strict=True):
        sender.submit(records(token, n), token)
    attempts_at(sender, clock, transport, until=400.0, step=0.5)
    per_token = settled.per_token()
    assert {t: sum(v) for t, v in per_token.items()} == dict(zip(tokens, sizes, strict=True))
    stats = sender.stats()
    assert stats.written + stats.failed + stats.dropped == sum(sizes) and stats.buffered == 0
    assert sum(w for w, _, _ in per_token.values()) == stats.written == len(transport.stored)
    assert len(set(transport.stored)) == len(transport.stored), "nothing stored twice"


# -- what InfluxDB's answers mean (classify), for the answers no packaged server gives -------------


def test_a_v3_partial_write_names_its_rejected_lines() -> None:
    # The shape InfluxDB 3 documents for /api/v3/write_lp with accept_partial (the default).
    body = (
        b'{"error":"partial write of line protocol occurred","data":['
        b'{"original_line":"m v=1i","line_number":2,"error_message":"invalid column type"},'
        b'{"original_line":"m v=x","line_number":5,"error_message":"No fields were provided"}]}'
    )
    outcome = classify("v3", 400, "Bad Request", {}, body)
    assert outcome.status is Status.PARTIAL and outcome.rejected_records == (1, 4) and outcome.rejected == 2


def test_a_v2_422_partial_write_gives_its_count() -> None:
    body = (
        b'{"code":"unprocessable entity","message":"failure writing points to database: partial write:'
        b' points beyond retention policy dropped=3"}'
    )
    outcome = classify("v2", 422, "Unprocessable Entity", {}, body)
    assert (outcome.status, outcome.rejected) == (Status.PARTIAL, 3)
    assert "points beyond retention policy" in outcome.detail


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (204, {}, Status.OK),
        (401, {}, Status.HOLD),
        (403, {}, Status.HOLD),
        (404, {}, Status.HOLD),
        (413, {}, Status.TOO_LARGE),
        (429, {"Retry-After": "7"}, Status.RETRY),
        (503, {}, Status.RETRY),
        (400, {}, Status.REFUSED),
    ],
)
def test_statuses(status: int, headers: dict[str, str], expected: Status) -> None:
    outcome = classify("v2", status, "", headers, b'{"message":"x"}')
    assert outcome.status is expected
    if headers:
        assert outcome.retry_after_s == 7.0


def test_a_404_says_whether_the_database_or_the_endpoint_is_missing() -> None:
    endpoint = classify("v2", 404, "Not Found", {}, b"404 page not found\n")
    assert endpoint.status is Status.HOLD
    assert endpoint.detail == (
        "HTTP 404 Not Found: 404 page not found (no v2 write endpoint here: the wrong api for this server?)"
    )
    database = classify("v1", 404, "Not Found", {}, b'{"error":"database not found: \\"nope\\""}')
    assert database.status is Status.HOLD
    assert database.detail == 'HTTP 404 Not Found: database not found: "nope"'
    bucket = classify(
        "v2", 404, "Not Found", {}, b'{"code":"not found","message":"bucket \\"b\\" not found"}'
    )
    assert bucket.detail == 'HTTP 404 Not Found: bucket "b" not found'


def test_a_named_type_conflict_pins_down_its_lines_and_a_mismatch_falls_back_to_the_count() -> None:
    lines = [
        r"my\ m,address=a\ b value=1.5 1",
        r"my\ m,address=a\ b value_int=2i 1",
        r'my\ m,address=c value_str="x y" 1',
        r"my\ m,address=d value_int=3i 1",
        r"other value_int=4i 1",
    ]
    body = gzip.compress("\n".join(lines).encode(), 1)
    message = (
        'partial write: field type conflict: input field "value_int" on measurement "my m" is type integer'
    )
    assert _conflicting_lines(message, body, 2) == (1, 3)
    assert _conflicting_lines(message, b"\n".join(x.encode() for x in lines), 2) == (1, 3)
    assert _conflicting_lines(message, body, 3) is None, "more refused than named: the count alone"
    assert _conflicting_lines("partial write: points beyond retention policy dropped=2", body, 2) is None


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "stdlib-gzip"])
def test_bodies_are_gzip_level_1_with_or_without_isal(isal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from flowcollect.writers.influxdb import _http

    if not isal:
        monkeypatch.setitem(sys.modules, "isal", None)  # import isal now fails: the fallback
        monkeypatch.setitem(sys.modules, "isal.igzip", None)
    module = importlib.reload(_http)
    try:
        uses = module._gzip.__code__.co_names
        assert ("_isal_compress" in uses) is isal
        endpoint = module.Endpoint.build("http://127.0.0.1:1", "v1", {"db": "d"})
        records = [f"m,variable={i} value={i * 0.1!r} {i}" for i in range(2000)]
        body = module.HttpTransport(endpoint).encode(records)
        raw = "\n".join(records).encode()
        assert body[:2] == b"\x1f\x8b" and len(body) < len(raw) / 3
        assert gzip.decompress(body).decode() == "\n".join(records)
        assert module.HttpTransport(endpoint, gzip=False).encode(records) == "\n".join(records).encode()
    finally:
        monkeypatch.undo()
        importlib.reload(_http)
