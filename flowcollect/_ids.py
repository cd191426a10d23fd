"""Stable variable ids derived from names: the same text gives the same id on every run.

Public as ``flowcollect.tags.stable_id``; here, below every package, so that readers (OPC UA
discovery) and tag lists share it without importing each other.

``stable_id(*parts)`` hashes the parts (joined by a unit separator, so ``("a", "bc")`` and
``("ab", "c")`` differ) with BLAKE2b and keeps 53 bits, plus one: an id in ``1 .. 2**53``, exact
in JSON numbers and in every database's integers. Among 100,000 derived ids the chance that two
collide is about one in twenty million; a collision is never silent, because ids must be unique
in a context and a tag list or profile that derived two equal ids says which rows.
"""

from __future__ import annotations

import hashlib

__all__ = ["stable_id"]

_BITS = 53
_SEPARATOR = "\x1f"


def stable_id(*parts: str) -> int:
    """A positive id in ``1 .. 2**53`` that depends only on ``parts``, the same on every run."""
    digest = hashlib.blake2b(_SEPARATOR.join(parts).encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _BITS)) + 1
