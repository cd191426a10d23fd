"""JSON payloads of the two layouts, from a batch's columns (pure; no I/O).

``"value"``: one message per value, ``{"value": 21.5, "time": "2026-12-07T10:15:00.100Z"}`` plus
``"quality"`` and ``"error"`` when present (an error's ``"value"`` is null). ``"instant"``: one
message per topic and instant, ``{"time": ..., "values": {name: value}, "errors": {name: text}}``
plus ``"quality": {name: word}`` when a value has one. Times are UTC with milliseconds: the grid
instant, or the source's own time when the reader gave one (``"value"`` layout).

A number JSON cannot carry (NaN, infinity) is not published: it is reported back as failed.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic_core import PydanticSerializationError, to_json

from flowcollect.mqtt import TopicTemplate
from flowcollect.values import ValueBatch, VariableSpec

__all__ = ["Encoded", "Encoder", "Layout", "iso_ms"]

Layout = Literal["value", "instant"]
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_SPEC_CACHE = 4096


def iso_ms(t_ms: int) -> str:
    """``2026-12-07T10:15:00.100Z`` for an epoch millisecond (exact: integer arithmetic)."""
    seconds, ms = divmod(t_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"


def _json_value(value: Any) -> str | None:
    """The JSON text of a value, or None when JSON cannot carry it (NaN, infinity, other types)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return _dumps(value)
    return None


class Encoded:
    """One batch's messages: ``messages`` as ``(topic, payload, values carried)``, and the values
    that cannot be published (``unwritable``: ``(index, reason)``)."""

    __slots__ = ("messages", "unwritable")

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.unwritable: list[tuple[int, str]] = []


class Encoder:
    """Turns batches into messages for one template and layout; caches each variable list's
    topics (by identity: a plan's tuple is shared by every batch of it)."""

    def __init__(self, template: TopicTemplate, layout: Layout) -> None:
        self.template = template
        self.layout = layout
        self._last_t: int | None = None
        self._last_iso = ""
        # id(variables) -> (variables kept so the id is not reused, per-layout plan)
        self._topics: dict[int, tuple[Sequence[VariableSpec], list[str]]] = {}
        self._groups: dict[int, tuple[Sequence[VariableSpec], list[tuple[str, list[int], list[str]]]]] = {}
        self._prefixes: dict[int, tuple[list[str], list[bytes]]] = {}  # id(keys): '"key":' texts

    def _iso(self, t_ms: int) -> str:
        if t_ms != self._last_t:
            self._last_t = t_ms
            self._last_iso = iso_ms(t_ms)
        return self._last_iso

    def topics(self, variables: Sequence[VariableSpec]) -> list[str]:
        hit = self._topics.get(id(variables))
        if hit is not None and hit[0] is variables:
            return hit[1]
        topics = [self.template.render(spec) for spec in variables]
        if len(self._topics) >= _SPEC_CACHE:
            self._topics.clear()
        self._topics[id(variables)] = (variables, topics)
        return topics

    def groups(self, variables: Sequence[VariableSpec]) -> list[tuple[str, list[int], list[str]]]:
        """``"instant"``: per topic, the indices of its variables and their keys (names)."""
        hit = self._groups.get(id(variables))
        if hit is not None and hit[0] is variables:
            return hit[1]
        by_topic: dict[str, tuple[list[int], list[str]]] = {}
        for i, spec in enumerate(variables):
            entry = by_topic.setdefault(self.template.render(spec), ([], []))
            entry[0].append(i)
            entry[1].append(spec.name if spec.name is not None else spec.address)
        groups = [(topic, idx, keys) for topic, (idx, keys) in by_topic.items()]
        if len(self._groups) >= _SPEC_CACHE:
            self._groups.clear()
        self._groups[id(variables)] = (variables, groups)
        return groups

    def encode(self, batch: ValueBatch) -> Encoded:
        if self.layout == "value":
            return self._by_value(batch)
        return self._by_instant(batch)

    def _by_value(self, batch: ValueBatch) -> Encoded:
        out = Encoded()
        messages = out.messages
        topics = self.topics(batch.variables)
        values, errors, source, quality = batch.values, batch.errors, batch.source_ns, batch.quality
        tail = f',"time":"{self._iso(batch.t_ms)}"}}'
        for i, topic in enumerate(topics):
            error = errors[i]
            when = tail
            ns = None if source is None else source[i]
            if ns is not None:
                when = f',"time":"{iso_ms(ns // 1_000_000)}"}}'
            extra = ""
            if quality is not None and quality[i] is not None:
                extra = f',"quality":{_dumps(quality[i])}'
            if error is not None:
                payload = f'{{"value":null{extra},"error":{_dumps(error)}{when}'
            else:
                text = _json_value(values[i])
                if text is None:
                    out.unwritable.append((i, f"JSON cannot carry {values[i]!r}"))
                    continue
                payload = f'{{"value":{text}{extra}{when}'
            messages.append((topic, payload.encode(), 1))
        return out

    def _by_instant(self, batch: ValueBatch) -> Encoded:
        out = Encoded()
        values, errors, quality = batch.values, batch.errors, batch.quality
        when = self._iso(batch.t_ms)
        clean = quality is None and errors.count(None) == len(errors)
        for topic, idx, keys in self.groups(batch.variables):
            data: bytes | None = None
            if clean:
                picked = values if len(idx) == len(values) else [values[i] for i in idx]
                data = self._instant_fast(when, topic, keys, picked)
            skipped = 0
            if data is None:
                body, skipped = self._instant_slow(out, batch, when, idx, keys)
                data = body.encode()
            carried = len(idx) - skipped
            if carried:
                out.messages.append((topic, data, carried))
        return out

    def _instant_fast(self, when: str, topic: str, keys: list[str], picked: list[Any]) -> bytes | None:
        """The whole message in two C calls: pydantic-core's encoder (Ryu for floats, ~4x json's)
        writes the values as a JSON list, whose items are joined with the keys' texts, encoded
        once per variable list. Only for numbers and bools (a text may hold a comma); NaN and
        infinities come out as bare NaN/Infinity, not JSON: None sends those the slow way."""
        try:
            listed = to_json(picked)
        except (ValueError, TypeError, PydanticSerializationError):
            return None
        if b'"' in listed or b"NaN" in listed or b"Infinity" in listed or b"null" in listed:
            return None
        items = listed[1:-1].split(b",") if len(picked) else []
        if len(items) != len(keys):
            return None
        prefixes = self._key_prefixes(topic, keys)
        return b"".join(
            (
                b'{"time":"',
                when.encode(),
                b'","values":{',
                b",".join(map(operator.add, prefixes, items)),
                b'},"errors":{}}',
            )
        )

    def _key_prefixes(self, topic: str, keys: list[str]) -> list[bytes]:
        hit = self._prefixes.get(id(keys))
        if hit is not None and hit[0] is keys:
            return hit[1]
        prefixes = [_dumps(k).encode() + b":" for k in keys]
        if len(self._prefixes) >= _SPEC_CACHE:
            self._prefixes.clear()
        self._prefixes[id(keys)] = (keys, prefixes)
        return prefixes

    def _instant_slow(
        self, out: Encoded, batch: ValueBatch, when: str, idx: list[int], keys: list[str]
    ) -> tuple[str, int]:
        values, errors, quality = batch.values, batch.errors, batch.quality
        vals: dict[str, Any] = {}
        errs: dict[str, str] = {}
        quals: dict[str, str] = {}
        skipped = 0
        for i, key in zip(idx, keys, strict=True):
            error = errors[i]
            if error is not None:
                errs[key] = error
            else:
                value = values[i]
                if _json_value(value) is None:
                    out.unwritable.append((i, f"JSON cannot carry {value!r}"))
                    skipped += 1
                    continue
                vals[key] = value
            if quality is not None and quality[i] is not None:
                quals[key] = quality[i]  # type: ignore[assignment]
        body: dict[str, Any] = {"time": when, "values": vals, "errors": errs}
        if quals:
            body["quality"] = quals
        return _dumps(body), skipped
