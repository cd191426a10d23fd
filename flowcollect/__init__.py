"""flowcollect: collect industrial variables at exact intervals, read each once, write in batches.

The public surface is what this module exports; modules whose names start with ``_`` are
internals and may change without notice.
"""

from __future__ import annotations

from flowcollect._secret import Secret, secret_from_env, secret_from_file
from flowcollect.collector import DataCollector
from flowcollect.errors import (
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    FlowcollectError,
    PreflightError,
    UnknownContextError,
)
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy, ValueType, Variable
from flowcollect.pipeline import Pipeline
from flowcollect.readers.base import DataReader
from flowcollect.stats import CollectorStats, ContextStats, ReaderStats, WriterStats
from flowcollect.values import CollectedVariable, Receipt, ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter

__version__ = "0.1.0"

__all__ = [
    # Models: what to collect
    "DataCollectionContext",
    "IntervalLimitPolicy",
    "ValueType",
    "Variable",
    # The engine
    "CollectedVariable",
    "DataCollectionListener",
    "DataCollector",
    "Receipt",
    "ValueBatch",
    "VariableSpec",
    # Pipelines
    "Pipeline",
    # Plugin bases
    "DataReader",
    "DataWriter",
    # Metrics
    "CollectorStats",
    "ContextStats",
    "ReaderStats",
    "WriterStats",
    # Secrets in pipeline files
    "Secret",
    "secret_from_env",
    "secret_from_file",
    # Errors
    "CollectorClosedError",
    "ConfigError",
    "ContextAlreadyRunningError",
    "FlowcollectError",
    "PreflightError",
    "UnknownContextError",
    "__version__",
]
