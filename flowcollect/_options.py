"""How a reader or writer was built, as a value a reload compares (``options_key``).

A pipeline file builds its readers and writers by calling their classes; a reload builds them
again from the edited file. Two instances have the same options when their classes are the same
(by module and name: the file's own classes are new objects at every load) and the arguments of
those calls are equal, plus what a writer was given after it was built (``receive``, its queue
settings). The arguments are recorded by ``DataReader.__new__``/``DataWriter.__new__``, so every
plugin gets this without writing anything; a plugin that knows better defines ``options_key``.

An argument that has no equality of its own (an object the file makes anew, compared by
identity) makes its reader or writer count as changed at every reload: replaced, never silently
kept with old options. The device's later changes to an instance (an embedded simulator that
points its readers at its port) are not options: the calls are compared, not the instances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

__all__ = ["MADE_WITH", "options_key", "record_construction"]

MADE_WITH = "_flowcollect_made_with"
"""The attribute holding an instance's construction call: ``(args, kwargs)``."""


def record_construction(instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Called by ``DataReader.__new__``/``DataWriter.__new__``: the outermost call's arguments
    (a subclass calling ``super().__init__`` does not record again: ``__new__`` runs once).
    ``kwargs`` is kept as it is: ``__new__``'s own ``**kwargs``, a dict made for that call (a
    copy of it was one more dict for each of 2,000 readers)."""
    object.__setattr__(instance, MADE_WITH, (args, kwargs))


def _writer_settings(obj: object) -> tuple[Any, ...]:
    routing = getattr(obj, "routing", None)
    route = None
    if routing is not None:
        contexts, variables = getattr(routing, "contexts", None), getattr(routing, "variables", None)
        route = (
            None if contexts is None else tuple(sorted(contexts)),
            None if variables is None else tuple(sorted(variables, key=repr)),
        )
    return (
        route,
        getattr(obj, "queue_policy", None),
        getattr(obj, "queue_limit", None),
        getattr(obj, "flush_interval_s", None),
    )


def options_key(obj: Any) -> Any:
    """A value equal for two readers/writers (or arguments) built alike, and comparable with
    ``==``: classes by module and name, containers element by element, readers and writers by
    their recorded construction (recursively: a spool's inner writer), everything else as it
    is (its own ``__eq__``)."""
    if isinstance(obj, type):
        return _class(obj)
    own = getattr(type(obj), "options_key", None)
    if callable(own):
        return (_class(type(obj)), own(obj))
    made = getattr(obj, MADE_WITH, None)
    if made is not None:
        return _made(obj, made)
    if isinstance(obj, (str, bytes, int, float, bool, type(None), Enum, PurePath)):
        return obj
    return _container(obj)


def _made(obj: Any, made: tuple[tuple[Any, ...], dict[str, Any]]) -> tuple[Any, ...]:
    args, kwargs = made
    key: tuple[Any, ...] = (
        _class(type(obj)),
        tuple(options_key(a) for a in args),
        tuple(sorted((k, options_key(v)) for k, v in kwargs.items())),
    )
    if hasattr(obj, "write_batch"):  # a writer: what was set on it after it was built
        key += _writer_settings(obj)
    return key


def _container(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return ("mapping", tuple(sorted(((repr(k), options_key(v)) for k, v in obj.items()), key=repr)))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(options_key(v) for v in obj))
    if isinstance(obj, (set, frozenset)):
        return ("set", frozenset(obj))
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # a pydantic model (spool options, TLS settings): its fields
        return (_class(type(obj)), options_key(dump()))
    if dataclasses.is_dataclass(obj):
        return (_class(type(obj)), obj)
    return obj  # its own equality (identity, for an object without one)


def _class(cls: type) -> tuple[str, str]:
    return (cls.__module__, cls.__qualname__)
