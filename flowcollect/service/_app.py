"""The FastAPI application: routes, the token rules and the body checks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from flowcollect._secret import Secret
from flowcollect.errors import (
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    UnknownContextError,
)
from flowcollect.metrics import registry_for
from flowcollect.models import DataCollectionContext
from flowcollect.service._auth import token_matches
from flowcollect.service._service import ContextConflictError, NotReadyError, Service

__all__ = ["MAX_BODY_BYTES", "build_app"]

MAX_BODY_BYTES = 1 << 20
"""Request bodies larger than this (1 MiB) are refused with 413 before they are parsed."""
EVENTS_POLL_S = 0.1
FIGURES_EVERY_S = 1.0


class ApiError(Exception):
    def __init__(self, status: int, detail: str, problems: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problems = problems or []


def _problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]


async def _json_body(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"body too large: {length} bytes, at most {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"body too large: more than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "body is empty: a JSON object is expected")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def build_app(  # noqa: PLR0915 -- the routes are declared here, one by one
    service: Service,
    *,
    token: Secret | None,
    open_reads: bool,
    closing: Callable[[], bool] = lambda: False,
) -> FastAPI:
    """The API over ``service``. ``open_reads``: GET needs no token (a loopback bind); changes
    always need it, and with no token configured they are refused (403)."""
    app = FastAPI(
        title="flowcollect",
        version="1",
        docs_url=None,  # the interactive pages load scripts from a CDN; the document stays
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    registry = registry_for(service.snapshot_or_none)

    def authorise(request: Request, change: bool) -> None:
        if not change and open_reads:
            return
        if token is None:
            raise ApiError(
                403,
                "changes are disabled: no token configured "
                "(start with --token-file or $FLOWCOLLECT_API_TOKEN)",
            )
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "missing Authorization: Bearer <token>")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "Authorization must be 'Bearer <token>'")
        if not token_matches(token, value.strip()):
            raise ApiError(403, "wrong token")

    async def reads(request: Request) -> None:
        authorise(request, change=False)

    async def changes(request: Request) -> None:
        authorise(request, change=True)

    read = [Depends(reads)]
    change = [Depends(changes)]

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.problems:
            body["problems"] = exc.problems
        return JSONResponse(body, status_code=exc.status, headers=headers)

    async def call(fn: Callable[..., Any], *args: Any) -> JSONResponse:
        # The collector's calls block (a start waits for its lanes): off the event loop.
        try:
            # Encoded by json.dumps at once: the data are plain already, and FastAPI's
            # encoder walks every value in Python (a 10,000-value page held the GIL for long).
            return JSONResponse(await run_in_threadpool(fn, *args))
        except UnknownContextError as exc:
            raise ApiError(404, str(exc)) from None
        except ContextAlreadyRunningError as exc:
            raise ApiError(409, str(exc)) from None
        except NotReadyError as exc:
            raise ApiError(503, str(exc)) from None
        except ContextConflictError as exc:
            raise ApiError(409, str(exc), exc.problems) from None
        except CollectorClosedError as exc:
            raise ApiError(503, f"the collector is closing: {exc}") from None
        except ConfigError as exc:
            raise ApiError(422, "the context cannot start", exc.problems) from None

    @app.get("/api/v1/status", dependencies=read)
    async def status() -> Any:
        return await call(service.status)

    @app.get("/api/v1/contexts", dependencies=read)
    async def contexts() -> Any:
        return await call(service.contexts)

    @app.get("/api/v1/contexts/{context_id}", dependencies=read)
    async def context(context_id: int) -> Any:
        return await call(service.context, context_id)

    @app.post("/api/v1/contexts", dependencies=change, status_code=201)
    async def create(request: Request) -> Any:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(422, "body must be a JSON object (a DataCollectionContext)")
        try:
            model = DataCollectionContext.model_validate(body)
        except ValidationError as exc:
            raise ApiError(422, "invalid context", _problems(exc)) from None
        response = await call(service.create, model)
        response.status_code = 201
        return response

    def operation(name: str, fn: Callable[[int], Any]) -> None:
        async def handler(context_id: int) -> Any:
            return await call(fn, context_id)

        handler.__name__ = f"context_{name}"
        app.post(f"/api/v1/contexts/{{context_id}}/{name}", dependencies=change)(handler)

    operation("start", service.start)
    operation("pause", service.pause)
    operation("resume", service.resume)
    operation("stop", service.stop)

    @app.post("/api/v1/reload", dependencies=change)
    async def reload() -> Any:
        try:
            return JSONResponse(await run_in_threadpool(service.reload))
        except NotReadyError as exc:
            raise ApiError(503, str(exc)) from None
        except ContextConflictError as exc:
            raise ApiError(409, str(exc)) from None
        except ConfigError as exc:
            raise ApiError(422, "reload refused, nothing changed", exc.problems) from None

    @app.get("/api/v1/values", dependencies=read)
    async def values(
        context: int | None = None,
        reader: str | None = None,
        name: str | None = Query(None, description="a glob: temp*"),
        offset: int = Query(0, ge=0),
        limit: int = Query(1000, ge=1, le=10_000),
    ) -> Any:
        # Made on a worker thread, row by row, as JSON text: see LatestValues.page_json.
        body = await run_in_threadpool(service.values_json, context, reader, name, offset, limit)
        return Response(body, media_type="application/json")

    @app.get("/api/v1/events", dependencies=read)
    async def events() -> StreamingResponse:
        sub = service.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                next_figures = 0.0
                while not closing():
                    for event in sub.drain():
                        yield _sse(event)
                    if time.monotonic() >= next_figures:
                        next_figures = time.monotonic() + FIGURES_EVERY_S
                        figures = await run_in_threadpool(service.figures_or_none)
                        if figures is not None:
                            yield _sse(figures)
                    await asyncio.sleep(EVENTS_POLL_S)
                for event in sub.drain():  # the last ones (the close) before the stream ends
                    yield _sse(event)
            finally:
                service.unsubscribe(sub)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    console = (resources.files("flowcollect.service") / "console.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        # The page holds no data (it asks the API, with the token where needed): open to all.
        return HTMLResponse(
            console,
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'",
                "Cache-Control": "no-cache",
            },
        )

    @app.get("/metrics", dependencies=read)
    async def metrics() -> Response:
        body: bytes = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # For mypy: the decorated functions are used through the app.
    _: list[Callable[..., Awaitable[Any]]] = [
        status,
        contexts,
        context,
        create,
        values,
        events,
        page,
        metrics,
    ]
    return app


def _sse(event: dict[str, Any]) -> str:
    kind = event.get("event", "message")
    return f"event: {kind}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
