"""Rendezvous (highest random weight) hashing: which live member owns which lane.

Every member computes the same answer from the same member list, with no coordination: each
(lane, member) pair gets a pseudo-random weight and the heaviest eligible member wins. When a
member joins, it takes only the lanes where it now weighs most; when one leaves, only its own
lanes move, each to the runner-up. That is the "move only what changed" property the group
relies on, and it holds without any stored assignment table.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping

__all__ = ["Pin", "eligible", "owner", "weight"]


def weight(lane: str, member: str) -> int:
    """The pair's weight: 64 bits of BLAKE2b, identical in every process and Python version.

    Python's ``hash()`` is salted per process, so it would give each member a different answer.
    """
    digest = hashlib.blake2b(f"{member}\x00{lane}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Pin:
    """A lane pattern (``fnmatch`` glob over lane keys) that only members with ``label`` may own."""

    __slots__ = ("label", "pattern")

    def __init__(self, pattern: str, label: str) -> None:
        self.pattern = pattern
        self.label = label

    def matches(self, lane: str) -> bool:
        return fnmatch.fnmatchcase(lane, self.pattern)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pin) and (self.pattern, self.label) == (other.pattern, other.label)

    def __hash__(self) -> int:
        return hash((self.pattern, self.label))

    def __repr__(self) -> str:
        return f"Pin({self.pattern!r}, {self.label!r})"

    def __str__(self) -> str:
        return f"{self.pattern}={self.label}"


def eligible(lane: str, members: Mapping[str, frozenset[str]], pins: Iterable[Pin]) -> list[str]:
    """The members that may own ``lane``: those carrying the label of every pin matching it."""
    needed = {pin.label for pin in pins if pin.matches(lane)}
    return [member for member, labels in members.items() if needed <= labels]


def owner(lane: str, members: Mapping[str, frozenset[str]], pins: Iterable[Pin] = ()) -> str | None:
    """The rendezvous owner of ``lane`` among ``members`` (id -> labels), or None if none may own it.

    Ties (astronomically unlikely with 64 bits) go to the smaller member id, so every member
    still agrees.
    """
    candidates = eligible(lane, members, pins)
    if not candidates:
        return None
    # max() keeps the first of equal weights: sorted, that is the smallest id.
    return max(sorted(candidates), key=lambda member: weight(lane, member))
