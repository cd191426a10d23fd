"""The exceptions users catch."""

from __future__ import annotations

__all__ = [
    "CollectorClosedError",
    "ConfigError",
    "ContextAlreadyRunningError",
    "FlowcollectError",
    "PreflightError",
    "UnknownContextError",
]


class FlowcollectError(Exception):
    """Base class of every error flowcollect raises on purpose."""


class ConfigError(FlowcollectError, ValueError):
    """A context, variable, reader or pipeline is invalid; raised before anything starts.

    ``problems`` lists every problem found, each naming the context, variable, field or reader.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class UnknownContextError(FlowcollectError, KeyError):
    """No context with this id is known to the collector (never started, or already stopped)."""

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        super().__init__(context_id)

    def __str__(self) -> str:
        # KeyError would print the bare id in quotes; say what is missing.
        return f"no running or paused context with id {self.context_id}"


class ContextAlreadyRunningError(FlowcollectError):
    """A context with this id is already running or paused in this collector."""

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        super().__init__(f"context {context_id} is already started (stop it first)")


class CollectorClosedError(FlowcollectError, RuntimeError):
    """The collector was closed; it takes no more calls."""

    def __init__(self) -> None:
        super().__init__("the collector is closed")


class PreflightError(FlowcollectError):
    """A writer's destination cannot work (``DataWriter.preflight``): found before collecting."""
