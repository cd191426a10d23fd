"""``peer_text``: whatever a server, device or broker says, what reaches a log or ``last_error``
has no control or invisible format character and no more than its limit (plus the note saying
how long the text was); and the readers' and writers' error texts go through it."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from flowcollect._text import peer_text
from flowcollect.readers.modbus._connection import describe_error, short_text
from flowcollect.readers.opcua._client import _short

HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def visible(text: str) -> bool:
    return not any(unicodedata.category(c) in HIDDEN for c in text)


@given(st.text(), st.integers(min_value=1, max_value=600))
def test_any_text_comes_out_visible_and_bounded(text: str, limit: int) -> None:
    out = peer_text(text, limit)
    assert visible(out)
    body, _, note = out.partition("... [cut; ")
    assert len(body) <= limit
    assert (note == f"{len(text)} characters in all]") if note else len(out) <= limit


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=300))
def test_any_bytes_come_out_visible_and_bounded(data: bytes, limit: int) -> None:
    out = peer_text(data, limit)
    assert visible(out)
    assert len(out.partition("... [cut; ")[0]) <= limit


def test_escapes_are_readable_and_text_is_kept() -> None:
    assert peer_text("ok: plain text, ünïcödé, 温度") == "ok: plain text, ünïcödé, 温度"
    assert (
        peer_text("a\nb\r\tc\x1b[2J\x00\x7f\u202e\u2028d\\")
        == "a\\nb\\r\\tc\\x1b[2J\\x00\\x7f\\u202e\\u2028d\\\\"
    )
    assert peer_text("x" * 10, 4) == "xxxx... [cut; 10 characters in all]"
    assert peer_text(b"\xff\x1b", 10) == "\ufffd\\x1b"


def test_modbus_and_opcua_error_texts_escape_what_the_device_said() -> None:
    hostile = "Modbus Error: [Input/Output] \x1b[31mboom\u202e" + "z" * 10_000 + "\nsecond line"
    for text in (
        short_text(OSError(hostile)),
        short_text(ValueError(hostile)),
        _short(RuntimeError(hostile)),
    ):
        assert visible(text) and "\\x1b[31mboom\\u202e" in text and len(text) < 200
        assert "second line" not in text or "\\n" in text
    assert visible(describe_error(OSError(5, "\x1b]0;title\x07")))
