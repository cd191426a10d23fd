"""Topic templates: ``flowcollect/{context}/{name}``, rendered per variable, checked before a run.

Placeholders: ``{context}`` (the context id), ``{id}`` (the variable id), ``{name}`` (the
variable's name, else its address), ``{address}``, ``{reader}`` (the reader type) and
``{tag:KEY}`` (the variable's tag KEY). ``{{`` and ``}}`` are literal braces. A rendered topic
must be a valid MQTT topic name: no wildcard (``+``, ``#``), no empty level, no NUL, at most
65,535 bytes; a template is refused when it names an unknown placeholder, and a variable when
it lacks a tag the template names or renders to an invalid topic.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from flowcollect.values import VariableSpec

__all__ = ["PLACEHOLDERS", "TopicTemplate", "topic_problem"]

PLACEHOLDERS = ("context", "id", "name", "address", "reader", "tag")
_TAG = re.compile(r"tag:(.+)\Z", re.DOTALL)
_MAX_TOPIC_BYTES = 65_535


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (None: it can)."""
    if not topic:
        return "the topic is empty"
    if "+" in topic or "#" in topic:
        return f"the topic {topic!r} has a wildcard ('+' or '#'), which a published topic must not"
    if "\x00" in topic:
        return f"the topic {topic!r} has a NUL character"
    if "" in topic.split("/"):
        return f"the topic {topic!r} has an empty level ('//', or '/' at an end)"
    if len(topic.encode("utf-8")) > _MAX_TOPIC_BYTES:
        return f"the topic is longer than {_MAX_TOPIC_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class _Part:
    literal: str
    field: str | None  # a placeholder, "tag:KEY", or None after the last literal


class TopicTemplate:
    """A parsed template; ``render(spec)`` gives a variable's topic (``KeyError`` naming a missing
    tag), ``problem(spec)`` says why a variable cannot be published with it (None: it can)."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str, allowed: Sequence[str] = PLACEHOLDERS) -> None:
        """Raises ``ValueError`` for a malformed template or a placeholder not in ``allowed``
        (``tag:KEY`` is allowed when ``"tag"`` is)."""
        if not isinstance(text, str) or not text:
            raise ValueError("must be a non-empty str")
        parts: list[_Part] = []
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid template: {exc}") from None
        for literal, name, format_spec, conversion in parsed:
            field, spec = name, format_spec
            if field == "tag" and spec:  # the formatter reads {tag:KEY} as a format spec
                field, spec = f"tag:{spec}", ""
            if field is not None:
                tag = _TAG.match(field)
                known = field in allowed or (tag is not None and "tag" in allowed)
                if spec or conversion or not known:
                    shown = (
                        "{"
                        + field
                        + (f"!{conversion}" if conversion else "")
                        + (f":{spec}" if spec else "")
                        + "}"
                    )
                    names = ", ".join("{" + p + "}" for p in allowed if p != "tag")
                    extra = ", {tag:KEY}" if "tag" in allowed else ""
                    raise ValueError(f"unknown placeholder {shown} in {text!r} (known: {names}{extra})")
                fields.append(field)
            parts.append(_Part(literal, field))
        self.text = text
        self.fields = tuple(fields)
        self._parts = tuple(parts)
        # What no variable can mend (a '#' in the text, '//', a '/' at an end) is the template's
        # own fault: said once, here, rather than once per variable.
        shape = "".join(p.literal + ("x" if p.field is not None else "") for p in parts)
        problem = topic_problem(shape)
        if problem is not None:
            raise ValueError(problem.replace(repr(shape), repr(text)))

    @property
    def per_variable(self) -> bool:
        """True when the topic depends on more than the context and the reader."""
        return any(f not in ("context", "reader") for f in self.fields)

    def render(self, spec: VariableSpec) -> str:
        out: list[str] = []
        for part in self._parts:
            out.append(part.literal)
            field = part.field
            if field is None:
                continue
            if field == "context":
                out.append(str(spec.context_id))
            elif field == "id":
                out.append(str(spec.id))
            elif field == "name":
                out.append(spec.name if spec.name is not None else spec.address)
            elif field == "address":
                out.append(spec.address)
            elif field == "reader":
                out.append(spec.reader)
            else:
                key = field[4:]
                for k, v in spec.tags:
                    if k == key:
                        out.append(v)
                        break
                else:
                    raise KeyError(key)
        return "".join(out)

    def problem(self, spec: VariableSpec) -> str | None:
        try:
            topic = self.render(spec)
        except KeyError as exc:
            return (
                f"the topic template {self.text!r} names the tag {exc.args[0]!r}, "
                "which the variable does not have"
            )
        problem = topic_problem(topic)
        return None if problem is None else f"{problem} (from the template {self.text!r})"

    def __repr__(self) -> str:
        return f"TopicTemplate({self.text!r})"
