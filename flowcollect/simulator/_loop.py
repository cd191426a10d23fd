"""The simulators' event loop: stopped in order by a signal, and torn down in bounded time."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["run_bounded"]

# What is left once the simulator's coroutine has returned gets this long to finish its
# cancellation.
LEFT_TIMEOUT_S = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_bounded(main: Coroutine[Any, Any, None], request_stop: Callable[[], None], *, signals: bool) -> None:
    """Run ``main`` on a new event loop; with ``signals`` (the main thread only), SIGINT and
    SIGTERM call ``request_stop`` on the loop, so the server closes in order.

    Unlike ``asyncio.run``, the tasks left once ``main`` has returned get ``LEFT_TIMEOUT_S`` to
    finish their cancellation, not for ever: a KeyboardInterrupt raised into asyncua's callbacks
    once left a task that never ended, and the process with it. The signal handlers in place
    before are put back after.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    previous = {number: signal.getsignal(number) for number in _SIGNALS} if signals else {}
    try:
        for number in previous:
            loop.add_signal_handler(number, request_stop)
        loop.run_until_complete(loop.create_task(main))
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for pending in left:
                pending.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=LEFT_TIMEOUT_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            for number, handler in previous.items():
                loop.remove_signal_handler(number)
                signal.signal(number, handler)
            asyncio.set_event_loop(None)
            loop.close()
