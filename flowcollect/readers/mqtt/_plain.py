"""Plain topics: the payload is the value (``plant/line1/temp``), or holds it at a JSON path
(``plant/line1/status#$.temperature``, ``...#$.pumps[0].speed``, ``...#$['a b']``).

A JSON object's top-level ``"time"`` (ISO 8601, or epoch milliseconds) or ``"timestamp"``
(epoch milliseconds) is the values' source time; a top-level ``"error"`` text with a null value
is delivered as the value's error (so the MQTT writer's own messages read back as they were).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowcollect.readers.mqtt._kinds import AddressKind, Delivery, Source, Watched
from flowcollect.values import VariableSpec

__all__ = ["PlainAddress", "PlainKind", "decode_text", "from_json"]

_PATH_STEP = re.compile(r"""\.([^.\[\]'"]+)|\[(\d+)\]|\['([^']*)'\]|\["([^"]*)"\]""")
_MAX_PAYLOAD = 1 << 20
_TRUE = frozenset(("1", "true", "on", "yes"))
_FALSE = frozenset(("0", "false", "off", "no"))


@dataclass(frozen=True, slots=True)
class PlainAddress:
    topic: str
    path: tuple[str | int, ...] | None  # None: the whole payload is the value
    text: str


def parse_path(text: str) -> tuple[str | int, ...]:
    if not text.startswith("$"):
        raise ValueError(f"a JSON path starts with '$', got {text!r}")
    steps: list[str | int] = []
    pos = 1
    while pos < len(text):
        m = _PATH_STEP.match(text, pos)
        if m is None:
            raise ValueError(f"the JSON path {text!r} is not understood at {text[pos:]!r}")
        name, index, single, double = m.groups()
        steps.append(int(index) if index is not None else (name or single or double or ""))
        pos = m.end()
    return tuple(steps)


class PlainKind(AddressKind):
    name = "topic"

    def claims(self, text: str) -> bool:
        return True  # the last kind: whatever no other kind claimed

    def parse(self, text: str) -> PlainAddress:
        topic, sep, path = text.partition("#$")
        if not topic:
            raise ValueError("names no topic")
        if topic.startswith("spBv1.0/"):
            # Sparkplug B payloads are protobuf, never a plain value: the Sparkplug kind (tried
            # before this one in KINDS) claims these; without it they are refused, not misread.
            raise ValueError("is a Sparkplug B address, and no Sparkplug B kind is registered")
        if "+" in topic or "#" in topic:
            raise ValueError(
                f"the topic {topic!r} has a wildcard ('+' or '#'); an address names one topic "
                "(a JSON path follows '#$', as in plant/line1/status#$.temperature)"
            )
        if "\x00" in topic:
            raise ValueError("the topic has a NUL character")
        return PlainAddress(topic, parse_path("$" + path) if sep else None, text)

    def source(self, qos: int) -> Source:
        return PlainSource(qos)


def decode_text(payload: bytes, value_type: str) -> tuple[Any, str | None]:  # noqa: PLR0911 - per type
    """A plain payload as the variable's type: (value, None) or (None, error)."""
    if len(payload) > _MAX_PAYLOAD:
        return None, f"payload of {len(payload)} bytes is larger than {_MAX_PAYLOAD}"
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "payload is not UTF-8 text"
    if value_type == "str":
        return text, None
    if value_type == "bool":
        word = text.lower()
        if word in _TRUE:
            return True, None
        if word in _FALSE:
            return False, None
        return None, f"payload {_short(text)} is not a bool (true/false, 1/0, on/off)"
    try:
        return (float(text) if value_type == "float" else int(text)), None
    except ValueError:
        return None, f"payload {_short(text)} is not {'a float' if value_type == 'float' else 'an int'}"


def from_json(value: Any, value_type: str) -> tuple[Any, str | None]:  # noqa: PLR0911 - per type
    """A JSON value as the variable's type."""
    if value_type == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
    elif value_type == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
    elif value_type == "bool":
        if isinstance(value, bool):
            return value, None
        if value in (0, 1) and not isinstance(value, float):
            return bool(value), None
    elif isinstance(value, str):
        return value, None
    elif value is not None and not isinstance(value, (dict, list)):
        return json.dumps(value), None
    return None, f"{_short(json.dumps(value))} is not {'an' if value_type == 'int' else 'a'} {value_type}"


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _source_ns(document: Any) -> int | None:
    if not isinstance(document, dict):
        return None
    stamp = document.get("time", document.get("timestamp"))
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp):
        return int(stamp * 1_000_000)
    if isinstance(stamp, str):
        try:
            return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1_000_000) * 1000
        except ValueError:
            return None
    return None


class PlainSource(Source):
    """The variables per exact topic; a message gives a value to each of its topic's variables."""

    def __init__(self, qos: int) -> None:
        self._qos = qos
        self._by_topic: dict[str, list[tuple[VariableSpec, PlainAddress]]] = {}

    def watch(self, watched: Sequence[Watched]) -> Mapping[str, int]:
        by_topic: dict[str, list[tuple[VariableSpec, PlainAddress]]] = {}
        for w in watched:
            by_topic.setdefault(w.address.topic, []).append((w.spec, w.address))
        self._by_topic = by_topic
        return dict.fromkeys(by_topic, self._qos)

    def handle(self, topic: str, payload: bytes, arrived_ns: int) -> Sequence[Delivery] | None:
        entries = self._by_topic.get(topic)  # replaced whole by watch(), never changed in place
        if entries is None:
            return None
        out: list[Delivery] = []
        document: Any = None
        parsed = False
        problem: str | None = None
        source_ns: int | None = None
        for spec, address in entries:
            if address.path is None:
                value, error = decode_text(payload, spec.value_type)
                out.append(Delivery(spec, value, error))
                continue
            if not parsed:
                parsed = True
                if len(payload) > _MAX_PAYLOAD:
                    problem = f"payload of {len(payload)} bytes is larger than {_MAX_PAYLOAD}"
                else:
                    try:
                        document = json.loads(payload)
                        source_ns = _source_ns(document)
                    except (ValueError, UnicodeDecodeError) as exc:
                        problem = f"payload is not JSON ({exc})"
            if problem is not None:
                out.append(Delivery(spec, None, problem))
                continue
            value, error = _walk(document, address.path)
            if error is None:
                if value is None and isinstance(document, dict) and isinstance(document.get("error"), str):
                    error = document["error"]
                else:
                    value, error = from_json(value, spec.value_type)
            out.append(Delivery(spec, value if error is None else None, error, source_ns))
        return out


def _walk(document: Any, path: tuple[str | int, ...]) -> tuple[Any, str | None]:
    node = document
    for k, step in enumerate(path):
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return None, f"no {_path_text(path[: k + 1])} in the payload"
            node = node[step]
        else:
            if not isinstance(node, dict) or step not in node:
                return None, f"no {_path_text(path[: k + 1])} in the payload"
            node = node[step]
    return node, None


def _path_text(path: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path)
