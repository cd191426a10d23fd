"""The runtime: lanes (one thread and clock each), the named steps values pass through, and the
latest-value store of pushing readers. The public parts are the clock a collector can be given
(``DataCollector(clock=...)``), the step names ``flowcollect plan`` draws and a context's time
``Window``."""

from __future__ import annotations

from flowcollect.runtime._clock import Clock, LaneScheduler, SystemClock, VirtualScheduler
from flowcollect.runtime._steps import STEPS, Window

__all__ = ["STEPS", "Clock", "LaneScheduler", "SystemClock", "VirtualScheduler", "Window"]
