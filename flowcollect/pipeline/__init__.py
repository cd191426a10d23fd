"""Pipelines: what to collect, from where, to where, declared in one object a file can hold.

A pipeline file is a Python module that builds a ``Pipeline`` at import and binds it to the
module-level name ``pipeline``; importing it must do no I/O (readers connect and writers open
their files when collection starts, not when they are built)::

    from flowcollect import DataCollectionContext, Pipeline, Variable
    from flowcollect.readers import RandomDataReader
    from flowcollect.writers import CsvFileDataWriter

    pipeline = Pipeline(
        name="random",
        readers=[RandomDataReader()],
        writers=[CsvFileDataWriter("out/random.csv")],
        contexts=[DataCollectionContext(id=1, interval_ms=500, variables=[...])],
    )

``flowcollect run pipelines/random.py`` loads it with ``load_pipeline`` and calls ``run``.

The package is split by concern: the model (``Pipeline``), the loader (``load_pipeline``), the
run loop and its summary (``RunSummary``), ``--once``, devices and the pause schedule.
"""

from __future__ import annotations

from flowcollect.pipeline._devices import Device, EmbeddedModbusSimulator, device_name, port_in_use
from flowcollect.pipeline._loader import PipelineLoadError, load_pipeline, validation_problems
from flowcollect.pipeline._member import MEMBER, for_member
from flowcollect.pipeline._model import Pipeline
from flowcollect.pipeline._once import OnceResult, OnceRow
from flowcollect.pipeline._pause import PauseSchedule
from flowcollect.pipeline._summary import (
    EXIT_ALL_ERRORS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_STORED,
    EXIT_OK,
    RunSummary,
    WriterFigures,
    writer_figures,
)

__all__ = [
    # The model
    "Pipeline",
    # Loading files
    "PipelineLoadError",
    "load_pipeline",
    "validation_problems",
    # One file for every member of a group: `{member}` in file paths
    "MEMBER",
    "for_member",
    # Running
    "OnceResult",
    "OnceRow",
    "RunSummary",
    "WriterFigures",
    "writer_figures",
    # Exit codes of `flowcollect run`
    "EXIT_ALL_ERRORS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_STORED",
    "EXIT_OK",
    # Devices and listeners
    "Device",
    "EmbeddedModbusSimulator",
    "PauseSchedule",
    "device_name",
    "port_in_use",
]
