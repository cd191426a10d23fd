"""Simulated devices for demos, tests and benchmarks: a Modbus plant (``modbus``) and an OPC UA
plant (``flowcollect.simulator.opcua``, imported on its own: it needs asyncua).

Each protocol's simulator lives in a module of its own, imported only by those who use it; the
Modbus names are re-exported here, where the first design had them.
"""

from __future__ import annotations

from flowcollect.simulator.modbus import (
    BULK_COUNT,
    BULK_START,
    HOLE_INVALID,
    HOLE_START,
    KNOWN,
    KNOWN_BITS,
    KNOWN_TYPES,
    ORDERS,
    PLANT,
    PLANT_NAME,
    REGISTER_MAP,
    UNIT_REGISTER,
    LineSimulator,
    SimPoint,
    Simulator,
    known_offset,
    main,
    plant_state,
    serve,
    serve_line,
)

__all__ = [
    "BULK_COUNT",
    "BULK_START",
    "HOLE_INVALID",
    "HOLE_START",
    "KNOWN",
    "KNOWN_BITS",
    "KNOWN_TYPES",
    "ORDERS",
    "UNIT_REGISTER",
    "LineSimulator",
    "PLANT",
    "PLANT_NAME",
    "REGISTER_MAP",
    "SimPoint",
    "Simulator",
    "known_offset",
    "main",
    "plant_state",
    "serve",
    "serve_line",
]
