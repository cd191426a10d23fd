"""Pure parts of the reader: DataValue decoding, status names, retry delays, publishing intervals."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from asyncua import ua
from opcua_helpers import free_port

from flowcollect.readers import OpcUaDataReader
from flowcollect.readers.opcua._client import _publishing_ms, retry_delay
from flowcollect.readers.opcua._values import decode, status_name, to_epoch_ns

WHEN = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
SERVER = dt.datetime(2025, 1, 2, 3, 4, 6, tzinfo=dt.UTC)


def data(value: object, kind: ua.VariantType, code: int = 0) -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(value, kind), StatusCode=ua.StatusCode(code), SourceTimestamp=WHEN, ServerTimestamp=SERVER
    )


def test_good_uncertain_and_bad() -> None:
    assert decode(data(2.5, ua.VariantType.Double), "float", "source") == (2.5, None, None, to_epoch_ns(WHEN))
    uncertain = data(2.5, ua.VariantType.Double, ua.StatusCodes.UncertainLastUsableValue)
    assert decode(uncertain, "float", "server") == (
        2.5,
        None,
        "UncertainLastUsableValue",
        to_epoch_ns(SERVER),
    )
    # A Bad DataValue that still carries a value: the value is never delivered.
    bad = data(2.5, ua.VariantType.Double, ua.StatusCodes.BadSensorFailure)
    # With "instant", the source's time is still decoded: it travels beside the value.
    assert decode(bad, "float", "instant") == (None, "BadSensorFailure", None, to_epoch_ns(WHEN))
    # Uncertain and not deliverable as the type: the conversion error wins, no quality.
    assert decode(uncertain, "int", "instant") == (
        None,
        "cannot deliver Double 2.5 as int",
        None,
        to_epoch_ns(WHEN),
    )
    assert decode(None, "float", "source") == (None, "the server sent no data value", None, None)
    empty = ua.DataValue(ua.Variant(None), StatusCode=ua.StatusCode(0))
    assert decode(empty, "float", "source")[1] == "the server sent no value (Null)"


def test_epoch_ns_and_status_names() -> None:
    assert to_epoch_ns(WHEN) == int(WHEN.replace(microsecond=0).timestamp()) * 10**9 + 678_901_000
    assert to_epoch_ns(WHEN.replace(tzinfo=None)) == to_epoch_ns(WHEN)  # naive is UTC
    assert to_epoch_ns(None) is None
    assert status_name(ua.StatusCodes.BadNodeIdUnknown) == "BadNodeIdUnknown"
    assert status_name(ua.StatusCodes.UncertainLastUsableValue | 0x0400) == "UncertainLastUsableValue"
    assert status_name(0x80FF0000) == "Bad (0x80FF0000)"


def test_retry_delays_double_up_to_their_caps() -> None:
    assert [retry_delay(n, refused=False) for n in range(8)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert [retry_delay(n, refused=True) for n in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert retry_delay(10_000, refused=False) == 5.0


@pytest.mark.parametrize(
    ("fastest", "configured", "expected"),
    [(1000, None, 250.0), (100, None, 50.0), (20, None, 20.0), (1000, 100, 100.0)],
)
def test_publishing_interval_is_a_quarter_of_the_fastest_item(
    fastest: int, configured: int | None, expected: float
) -> None:
    assert _publishing_ms(fastest, configured) == expected


def test_close_ends_the_readers_thread_even_when_the_server_never_answered() -> None:
    reader = OpcUaDataReader("gone", f"opc.tcp://127.0.0.1:{free_port()}/x", timeout_s=0.2)  # nothing listens
    reader.open()
    assert any(t.name == "flowcollect-opcua-gone" for t in threading.enumerate())
    reader.close()
    assert not any(t.name == "flowcollect-opcua-gone" for t in threading.enumerate())
    reader.close()  # idempotent
