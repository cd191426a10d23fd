"""Helpers shared by the reliability tests: polling, instants, listener-event checks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from flowcollect import CollectedVariable
from flowcollect.errors import (
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    UnknownContextError,
)

DOCUMENTED_ERRORS: tuple[type[Exception], ...] = (
    UnknownContextError,
    ContextAlreadyRunningError,
    CollectorClosedError,
    ConfigError,
)

# One context's listener events cycle through these, in this order, from the first start.
CYCLE = ("before_start", "after_start", "before_stop", "after_stop")
# Between its after_start and before_stop, a run's pause and resume events cycle through these.
PAUSES = ("before_pause", "after_pause", "before_resume", "after_resume")


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0, poll_s: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


def ms(v: CollectedVariable) -> int:
    """A value's scheduled instant in epoch milliseconds."""
    assert v.time is not None
    return round(v.time.timestamp() * 1000)


def check_listener_events(
    events: Sequence[tuple[str, int | None]],
    active: Iterable[int],
    closed: bool,
    paused: Iterable[int] | None = None,
) -> dict[int, list[str]]:
    """Assert the events are balanced: per context, starts and stops alternate and each before_*
    is followed by its after_*; within a run (after_start to before_stop) pauses and resumes
    alternate, from a pause, in pairs; the contexts in ``active`` end started, all others
    stopped; with ``paused`` given, exactly those of ``active`` end paused. The close pair appears
    once, only when ``closed``, and brackets every stop after it. Returns the events per context."""
    active = set(active)
    per_context: dict[int, list[str]] = {}
    close_events = []
    for n, (event, cid) in enumerate(events):
        if cid is None:
            close_events.append((n, event))
        else:
            per_context.setdefault(cid, []).append(event)
    for cid, seq in per_context.items():
        lifecycle = [e for e in seq if e in CYCLE]
        for k, event in enumerate(lifecycle):
            assert event == CYCLE[k % 4], (
                f"context {cid}: event {k} is {event}, expected {CYCLE[k % 4]}: {seq}"
            )
        ends = "after_start" if cid in active else "after_stop"
        assert lifecycle[-1] == ends, f"context {cid} ends with {lifecycle[-1]}, expected {ends}: {seq}"
        switches: list[str] | None = None  # the current run's pause/resume events; None: not started
        for event in seq:
            if event == "after_start":
                switches = []
            elif event == "before_stop":
                assert switches is not None and len(switches) % 2 == 0, (cid, seq)
                switches = None
            elif event in PAUSES:
                assert switches is not None, f"context {cid}: {event} outside a run: {seq}"
                expected = PAUSES[len(switches) % 4]
                assert event == expected, f"context {cid}: {event}, expected {expected}: {seq}"
                switches.append(event)
            else:
                assert event in CYCLE, f"context {cid}: unknown event {event}"
        if paused is not None and cid in active:
            assert switches is not None
            is_paused = bool(switches) and switches[-1] == "after_pause"
            assert is_paused == (cid in set(paused)), f"context {cid}: paused is {is_paused}: {seq}"
    assert active <= set(per_context), (active, per_context)
    if closed:
        assert [e for _, e in close_events] == ["before_close", "after_close"], close_events
        (begin, _), (end, _) = close_events
        after_close = [e for e, cid in events[begin:] if cid is not None]
        assert all(e in ("before_stop", "after_stop") for e in after_close), after_close
        assert not [e for e in events[end + 1 :]], events[end + 1 :]
    else:
        assert not close_events, close_events
    return per_context
