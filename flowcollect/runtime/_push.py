"""The latest values a pushing reader handed over, for sampling at due instants (sample and hold).

Staleness: a held value stays good while its reader is heard from. Any ``emit`` counts, even of
an empty batch (a keep-alive: an OPC UA subscription's keep-alive, which says "nothing changed"),
so a value that does not move (deadbands at the source) is never stale on its own. When the
reader has said nothing for ``DataReader.stale_after_ms``, every held value of it is delivered as
an error at the next due instants, until it is heard from again. A reader that loses its source
says so at once by emitting error values (``errors[i]`` set): those are held like any other.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from flowcollect.values import ValueBatch, VariableSpec

__all__ = ["NO_VALUE_YET", "PushStore"]

NO_VALUE_YET = "no value pushed yet"


class PushStore:
    """One pushing reader's latest value per (address, value type); written from any thread."""

    __slots__ = ("_lock", "heard_ms", "latest", "pushes")

    def __init__(self) -> None:
        # Guards latest, heard_ms and pushes: the reader's threads write, the lane's job samples.
        self._lock = threading.Lock()
        # (value, error, source time stamping it, quality, source time carried beside it)
        self.latest: dict[tuple[str, str], tuple[Any, str | None, int | None, str | None, int | None]] = {}
        self.heard_ms: float | None = None
        self.pushes = 0

    def update(self, batch: ValueBatch, now_ms: float) -> None:
        source, quality, beside = batch.source_ns, batch.quality, batch.source_time_ns
        with self._lock:
            latest = self.latest
            for i, spec in enumerate(batch.variables):
                latest[(spec.address, spec.value_type)] = (
                    batch.values[i],
                    batch.errors[i],
                    None if source is None else source[i],
                    None if quality is None else quality[i],
                    None if beside is None else beside[i],
                )
            self.heard_ms = now_ms
            self.pushes += 1

    def sample(
        self, reads: Sequence[VariableSpec], t_ms: int, stale_after_ms: int | None
    ) -> tuple[
        list[Any], list[str | None], list[int | None], list[str | None] | None, list[int | None] | None
    ]:
        """The held value of each read at ``t_ms``: values, errors, source times, quality, and the
        source times carried beside the values."""
        n = len(reads)
        with self._lock:
            heard = self.heard_ms
            held = [self.latest.get((s.address, s.value_type)) for s in reads]
        if heard is None:
            return [None] * n, [NO_VALUE_YET] * n, [None] * n, None, None
        if stale_after_ms is not None and t_ms - heard > stale_after_ms:
            text = (
                f"stale: no word from the source for {t_ms - heard:.0f} ms (stale_after_ms={stale_after_ms})"
            )
            return [None] * n, [text] * n, [None] * n, None, None
        values: list[Any] = []
        errors: list[str | None] = []
        source: list[int | None] = []
        quality: list[str | None] = []
        beside: list[int | None] = []
        for h in held:
            if h is None:
                values.append(None)
                errors.append(NO_VALUE_YET)
                source.append(None)
                quality.append(None)
                beside.append(None)
            else:
                values.append(h[0])
                errors.append(h[1])
                source.append(h[2])
                quality.append(h[3])
                beside.append(h[4])
        return (
            values,
            errors,
            source,
            quality if any(q is not None for q in quality) else None,
            beside if any(b is not None for b in beside) else None,
        )
