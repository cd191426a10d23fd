"""Descriptors of 1,024 and above: a process with a thousand connections has them, and
``select.select`` cannot watch them (it failed as if the device had closed). Both paths read."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterator

import pytest
from modbus_helpers import RawDevice, Respond, collected, second_time_only

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.simulator import BULK_START

MakeReader = Callable[..., ModbusDataReader]
ABOVE: int = 1100


def _high_sockets() -> list[int]:
    """This process's socket descriptors of 1,024 and above."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if int(name) >= 1024 and os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.append(int(name))
    return found


@pytest.fixture
def low_descriptors_taken() -> Iterator[None]:
    """Every descriptor below ``ABOVE`` in use (a file dup'ed), so the next socket gets one above."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ABOVE + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}: raise it to run this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[int] = []
    try:
        with open(os.devnull, "rb") as devnull:
            while not held or held[-1] < ABOVE:
                held.append(os.dup(devnull.fileno()))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_device_whose_socket_is_above_1024_is_read(
    low_descriptors_taken: None, make_reader: MakeReader
) -> None:
    reader = make_reader(timeout_s=1.0)
    variables = collected(
        ["holding:4:uint32", f"holding:{BULK_START + 5}", "coil:100"], ["int", "int", "bool"]
    )
    reader.read(variables)
    assert [v.error for v in variables] == [None, None, None]
    assert variables[1].value == 5
    assert variables[2].value is True
    assert _high_sockets(), "the connection did not get a descriptor above 1024"
    assert reader.stats()["connected"] == 1


def test_an_unanswered_request_resent_above_1024(
    low_descriptors_taken: None, raw_device: Callable[[Respond], RawDevice], make_reader: MakeReader
) -> None:
    # The resend drains what came late on the connection first: that wait too must cope.
    device = raw_device(second_time_only())
    reader = make_reader(port=device.port, timeout_s=0.2, retries=1)
    variables = collected(["holding:7"])
    reader.read(variables)
    assert (variables[0].value, variables[0].error) == (7, None)
    assert len(device.requests) == 2
    assert _high_sockets()
