"""What a request costs on the wire, and when a line may send the next one. Pure, no I/O.

Modbus RTU (the serial line spec, 2.5.1.1) counts a character as 11 bits: start, 8 data bits,
parity (or a second stop bit) and stop. Frames are separated by at least 3.5 character times
of silence; above 19,200 baud the spec fixes that silence at 1.75 ms, because a UART's timer
cannot resolve shorter ones reliably.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from flowcollect.readers.modbus.address import BIT_TABLES
from flowcollect.readers.modbus.packing import ModbusRequest

__all__ = [
    "BITS_PER_CHARACTER",
    "FIXED_SILENCE_S",
    "Pacer",
    "answer_bytes",
    "request_bytes",
    "silent_interval_s",
    "wire_time_s",
]

BITS_PER_CHARACTER: Final = 11
FIXED_SILENCE_S: Final = 0.00175
"""The silent interval above 19,200 baud."""
_FIXED_ABOVE_BAUD: Final = 19_200

# A read request: unit, function, start (2), count (2), CRC (2).
_REQUEST_BYTES: Final = 8
# An answer: unit, function, byte count, the data, CRC (2).
_ANSWER_OVERHEAD: Final = 5


def request_bytes(request: ModbusRequest) -> int:
    """Bytes of the RTU frame asking for ``request`` (every read request is 8 bytes)."""
    return _REQUEST_BYTES


def answer_bytes(request: ModbusRequest) -> int:
    """Bytes of the RTU frame answering ``request`` in full."""
    if request.table in BIT_TABLES:
        return _ANSWER_OVERHEAD + math.ceil(request.count / 8)
    return _ANSWER_OVERHEAD + 2 * request.count


def silent_interval_s(baudrate: int) -> float:
    """The silence required between two frames: 3.5 characters, at least 1.75 ms above 19,200."""
    if baudrate > _FIXED_ABOVE_BAUD:
        return FIXED_SILENCE_S
    return 3.5 * BITS_PER_CHARACTER / baudrate


def wire_time_s(request: ModbusRequest, baudrate: int, *, turnaround_s: float, pause_s: float = 0.0) -> float:
    """The line time one request costs: both frames at ``baudrate``, the silence before the
    next frame, the device's turnaround allowance and the configured pause between requests.
    """
    frames = (request_bytes(request) + answer_bytes(request)) * BITS_PER_CHARACTER / baudrate
    return frames + silent_interval_s(baudrate) + turnaround_s + pause_s


@dataclass(slots=True)
class Pacer:
    """Keeps a line's frames apart: the silent interval plus an optional pause between requests.

    ``wait_s(now)`` says how long to wait before the next frame may be sent; ``sent(now)`` is
    called when an exchange ended (an answer arrived, or the wait for it timed out). Time comes
    in as an argument, so the rule is tested without a clock.
    """

    gap_s: float
    quiet_at: float = float("-inf")

    def wait_s(self, now: float) -> float:
        return max(0.0, self.quiet_at - now)

    def done(self, now: float) -> None:
        self.quiet_at = now + self.gap_s
