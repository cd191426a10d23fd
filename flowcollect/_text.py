"""Text from the other side of a connection, made safe to log and to keep in ``last_error``.

A server, a device or a broker may answer anything: an ANSI escape that rewrites the operator's
terminal, a newline that forges a second log line, a NUL, a right-to-left override, a megabyte
of HTML. Every reader and writer that puts a peer's words into an error passes them through
``peer_text`` first: control and invisible format characters become visible escapes (``\\n``,
``\\x1b``, ``\\u202e``) and the result is cut at ``limit`` characters, saying how much was left out.
"""

from __future__ import annotations

import unicodedata

__all__ = ["PEER_TEXT_LIMIT", "peer_text"]

PEER_TEXT_LIMIT = 500
"""Characters of a peer's text kept in an error (the escapes included)."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Cc: C0/C1 controls and DEL; Cf: invisible formatting (bidi overrides, zero-width joiners);
# Zl/Zp: the Unicode line and paragraph separators some viewers break lines at; Cs: lone
# surrogates (from a bytes decode with surrogateescape), which cannot even be encoded.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isascii() and char.isprintable():
        return char
    if unicodedata.category(char) not in _HIDDEN:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def peer_text(text: str | bytes | bytearray | None, limit: int = PEER_TEXT_LIMIT) -> str:
    """``text`` with control characters escaped, cut at ``limit`` characters with a note of the
    full length (bytes are decoded as UTF-8, undecodable ones shown as U+FFFD). Only the start
    of a huge text is looked at."""
    if text is None:
        return ""
    if isinstance(text, bytes | bytearray):
        head = bytes(text[: limit * 4 + 4]).decode("utf-8", "replace")
        whole = f"{len(text)} bytes"
        cut = len(text) > limit * 4 + 4
    else:
        head = text[: limit + 1]
        whole = f"{len(text)} characters"
        cut = len(text) > limit + 1
    out: list[str] = []
    size = 0
    for char in head:
        piece = _escape(char)
        if size + len(piece) > limit:
            cut = True
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + (f"... [cut; {whole} in all]" if cut else "")
