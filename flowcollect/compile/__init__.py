"""The compiler: contexts + readers + the interval-limit policy -> a ``CompiledPlan``.

Pure (no threads, no I/O): ``DataCollector.start``/``check``, ``Pipeline.check`` and
``flowcollect plan`` all call it, so what is checked and drawn is what runs.
"""

from __future__ import annotations

from flowcollect.compile._compile import (
    CompiledContext,
    CompiledLane,
    CompiledPlan,
    ReaderSchedule,
    compile_context,
    compile_plan,
    lane_key,
    lane_keys,
    lane_problems,
    lane_schedule,
    reader_schedules,
)
from flowcollect.compile._schedule import (
    Delivery,
    DuePattern,
    DueWalk,
    LanePhase,
    LaneSchedule,
    ReaderPhase,
    distinct_reads,
    due_patterns,
    next_due,
)

__all__ = [
    # Compiling
    "compile_context",
    "compile_plan",
    "lane_key",
    "lane_keys",
    "lane_problems",
    "lane_schedule",
    "reader_schedules",
    # The grid: when something is due
    "due_patterns",
    "next_due",
    # What it produces
    "CompiledContext",
    "CompiledLane",
    "CompiledPlan",
    "Delivery",
    "DuePattern",
    "DueWalk",
    "LanePhase",
    "LaneSchedule",
    "ReaderPhase",
    "ReaderSchedule",
    "distinct_reads",
]
