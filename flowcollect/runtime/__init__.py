"""The runtime: lanes (all on one event loop thread, their synchronous reader calls on a bounded
worker pool), the named steps values pass through, and the latest-value store of pushing readers.
For users: the clock a collector can be given (``DataCollector(clock=...)``), ``tune_gc`` for a
program that embeds one, and the step names ``flowcollect plan`` draws; for the collector that
builds the graph: the lane, the steps of a context's branch (each alone, and ``branch``: the three
fused in one operator, as the collector subscribes them on each lane) and its time ``Window``."""

from __future__ import annotations

from flowcollect.runtime._clock import Clock, LaneScheduler, SystemClock, VirtualScheduler, clock_offset
from flowcollect.runtime._gc import GC_ENV, THRESHOLDS, tune_gc
from flowcollect.runtime._lane import STEP_MS, Lane, asynchronous_reader
from flowcollect.runtime._loop import DEFAULT_WORKERS, InlineWork, LoopScheduler, LoopWork, Work, WorkerPool
from flowcollect.runtime._steps import STEPS, ChangeState, Window, branch, for_context, gate, report_changes

__all__ = [
    # Clocks (``DataCollector(clock=...)``, ``flowcollect.testing``)
    "Clock",
    "LaneScheduler",
    "SystemClock",
    "VirtualScheduler",
    "clock_offset",
    # The event loop and the worker pool (``DataCollector(reader_workers=...)``)
    "DEFAULT_WORKERS",
    "InlineWork",
    "LoopScheduler",
    "LoopWork",
    "Work",
    "WorkerPool",
    "asynchronous_reader",
    # The garbage collector's settings while collecting (``DataCollector(gc_tuning=...)``, programs)
    "GC_ENV",
    "THRESHOLDS",
    "tune_gc",
    # The graph a collector builds: lanes, the steps of a context's branch, its time window
    "STEPS",
    "STEP_MS",
    "ChangeState",
    "Lane",
    "Window",
    "branch",
    "for_context",
    "gate",
    "report_changes",
]
