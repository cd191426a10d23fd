"""Properties of the Modbus reader's pure parts: request planning and register decoding."""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowcollect.readers.modbus.address import BIT_TABLES, TABLES, parse_address
from flowcollect.readers.modbus.decoding import decode, decoder_for, encode
from flowcollect.readers.modbus.packing import gap_limit, pack

# ----------------------------------------------------------------------------- planning


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    max_registers = draw(st.integers(10, 125))
    max_bits = draw(st.integers(1, 2000))
    max_gap = draw(st.integers(0, 20))
    spans: list[tuple[str, int, int]] = []
    for _ in range(draw(st.integers(1, 60))):
        table = draw(st.sampled_from(TABLES))
        width = 1 if table in BIT_TABLES else draw(st.sampled_from([1, 2, 3, 4, 10]))
        start = draw(st.integers(0, 300))
        spans.append((table, start, start + width))
    bad = {
        table: sorted(set(draw(st.lists(st.integers(0, 310), max_size=4))))
        for table in draw(st.sets(st.sampled_from(TABLES)))
    }
    return {
        "spans": spans,
        "max_registers": max_registers,
        "max_bits": max_bits,
        "max_gap": max_gap,
        "bad": bad,
    }


def pack_case(case: dict[str, Any], bad: bool = True) -> list[Any]:
    """Pack a generated plan with its limits (and, unless told not to, its bad registers)."""
    return pack(
        case["spans"],
        max_gap=case["max_gap"],
        max_registers=case["max_registers"],
        max_bits=case["max_bits"],
        bad=case["bad"] if bad else None,
    )


@settings(max_examples=200)
@given(plans())
def test_every_span_is_read_by_exactly_one_request_that_contains_it(case: dict[str, Any]) -> None:
    requests = pack_case(case)
    owned: set[tuple[str, int, int]] = set()
    for request in requests:
        for start, end in request.spans:
            key = (request.table, start, end)
            assert key not in owned, "a span read twice"
            owned.add(key)
            assert request.start <= start < end <= request.end
        # A request is exactly as wide as what it serves: no register read for nobody at the ends.
        assert request.start == min(s for s, _ in request.spans)
        assert request.end == max(e for _, e in request.spans)
    assert owned == set(case["spans"])


@settings(max_examples=200)
@given(plans())
def test_requests_respect_the_limits_and_never_outnumber_the_variables(case: dict[str, Any]) -> None:
    requests = pack_case(case)
    for request in requests:
        limit = case["max_bits"] if request.table in BIT_TABLES else case["max_registers"]
        assert request.count <= limit
        bad = case["bad"].get(request.table, [])
        if len(request.spans) > 1:
            # A merged request never covers a register the device refused.
            assert not any(request.start <= r < request.end for r in bad)
            # ...nor bridges a gap wider than max_gap.
            ordered = sorted(request.spans)
            reach = ordered[0][1]
            for start, end in ordered[1:]:
                assert start - reach <= gap_limit(request.table, case["max_gap"])
                reach = max(reach, end)
    naive = len(case["spans"])  # one request per variable
    assert len(requests) <= naive


@settings(max_examples=200)
@given(plans())
def test_no_two_neighbouring_requests_could_have_been_one(case: dict[str, Any]) -> None:
    # Without learned bad registers the greedy plan is tight: each request starts where the
    # previous one could not be extended.
    requests = pack_case(case, bad=False)
    for before, after in itertools.pairwise(requests):
        if before.table != after.table:
            continue
        limit = case["max_bits"] if before.table in BIT_TABLES else case["max_registers"]
        first_start, first_end = after.spans[0]
        too_far = first_start - before.end > gap_limit(before.table, case["max_gap"])
        too_big = max(before.end, first_end) - before.start > limit
        assert too_far or too_big


@given(st.integers(1, 125), st.integers(1, 3000))
def test_contiguous_registers_take_the_minimum_number_of_requests(max_registers: int, n: int) -> None:
    requests = pack(
        [("holding", r, r + 1) for r in range(n)], max_gap=0, max_registers=max_registers, max_bits=2000
    )
    assert len(requests) == math.ceil(n / max_registers)


# ----------------------------------------------------------------------------- decoding

STRUCT_CODES = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
# Which byte of the big-endian value sits at each wire position, written out independently of
# the reader's code.
WIRE = {
    2: {"ABCD": [0, 1], "CDAB": [0, 1], "BADC": [1, 0], "DCBA": [1, 0]},
    4: {"ABCD": [0, 1, 2, 3], "CDAB": [2, 3, 0, 1], "BADC": [1, 0, 3, 2], "DCBA": [3, 2, 1, 0]},
    8: {
        "ABCD": [0, 1, 2, 3, 4, 5, 6, 7],
        "CDAB": [6, 7, 4, 5, 2, 3, 0, 1],
        "BADC": [1, 0, 3, 2, 5, 4, 7, 6],
        "DCBA": [7, 6, 5, 4, 3, 2, 1, 0],
    },
}
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


def wire_registers(type_name: str, order: str, raw: bytes) -> list[int]:
    wire = bytes(raw[i] for i in WIRE[len(raw)][order])
    return list(struct.unpack(f">{len(wire) // 2}H", wire))


@settings(max_examples=500)
@given(
    type_name=st.sampled_from(sorted(STRUCT_CODES)),
    order=st.sampled_from(ORDERS),
    data=st.data(),
)
def test_decoding_matches_struct_for_every_type_and_order(
    type_name: str, order: str, data: st.DataObject
) -> None:
    size = struct.calcsize(STRUCT_CODES[type_name])
    raw = data.draw(st.binary(min_size=size, max_size=size))
    expected = struct.unpack(">" + STRUCT_CODES[type_name], raw)[0]
    registers = wire_registers(type_name, order, raw)

    decoded = decode(registers, type_name, order)
    fast = decoder_for(parse_address(f"holding:0:{type_name}:{order}"))
    padding = data.draw(st.lists(st.integers(0, 0xFFFF), max_size=3))
    fast_decoded = fast([*padding, *registers, 0xFFFF], len(padding))
    for value in (decoded, fast_decoded):
        if isinstance(expected, float) and math.isnan(expected):
            assert isinstance(value, float)
            assert math.isnan(value)
        else:
            assert value == expected
            assert type(value) is type(expected)
    if not (isinstance(expected, float) and math.isnan(expected)):
        # NaN payloads may not survive a float round trip; everything else must.
        assert encode(expected, type_name, order) == registers


@given(
    text=st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=20),
    extra=st.integers(0, 3),
    order=st.sampled_from(["ABCD", "BADC"]),
)
def test_strings_round_trip_high_byte_first(text: str, extra: int, order: str) -> None:
    width = (len(text) + 1) // 2 + extra
    if width == 0:
        width = 1
    registers = encode(text, "string", order, width=width)
    assert len(registers) == width
    raw = text.encode("ascii").ljust(2 * width, b"\x00")
    if order == "ABCD":
        assert registers == [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    else:
        assert registers == [raw[i + 1] << 8 | raw[i] for i in range(0, len(raw), 2)]
    assert decode(registers, "string", order) == text
    fast = decoder_for(parse_address(f"holding:0:string{width}:{order}"))
    assert fast([0, *registers], 1) == text
