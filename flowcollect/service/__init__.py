"""The collector operated from outside: an HTTP API (FastAPI on uvicorn) over a running
``DataCollector`` and its pipeline, with contexts that survive a restart (docs/service.md).

Needs the ``service`` extra (``pip install flowcollect[service]``). ``flowcollect run PIPELINE
--http HOST:PORT`` wires it; in Python, ``Service`` holds the operations, ``build_app`` makes
the application and ``ApiServer`` serves it on a thread of its own.
"""

from __future__ import annotations

from flowcollect.service._app import MAX_BODY_BYTES, build_app
from flowcollect.service._auth import TOKEN_ENV, is_loopback, load_token
from flowcollect.service._latest import LatestValue, LatestValues
from flowcollect.service._server import ApiServer
from flowcollect.service._service import ContextConflictError, Service, Subscription
from flowcollect.service._state import StateStore
from flowcollect.service._wiring import HttpOptions, ServiceRun

__all__ = [
    # The operations and their state
    "Service",
    "ContextConflictError",
    "Subscription",
    "LatestValue",
    "LatestValues",
    "StateStore",
    # HTTP
    "ApiServer",
    "MAX_BODY_BYTES",
    "build_app",
    # `flowcollect run --http`
    "HttpOptions",
    "ServiceRun",
    # Tokens
    "TOKEN_ENV",
    "is_loopback",
    "load_token",
]
