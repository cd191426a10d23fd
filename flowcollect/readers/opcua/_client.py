"""The reader's side of one OPC UA server: one session on an event loop, self-healing.

asyncua is asyncio. A ``Link`` is the whole client (the connect/reconnect supervisor, polled
reads, the subscription and its monitored items, the keep-alives) and lives on one event loop:
the engine's own loop when the engine drives the reader (``read_batch_async`` awaits the link
there, no thread of the reader's), or a ``LoopThread`` of the reader's for direct callers
(``read``, ``read_batch`` from a script, a notebook, a test), which call in with a bounded
wait. The rules are the link's, the same on both. The ``Link`` connects, learns the server's operation limits,
resolves addresses, and keeps a subscription with its monitored items; when the connection is
lost (a failed request, the transport closing, the session's watchdog) it drops everything and
starts again, with backoff, re-resolving every address on the new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from asyncua import ua as _ua
from asyncua.client.client import Client
from asyncua.crypto import uacrypto
from asyncua.ua import (
    BrowsePath,
    DataValue,
    MonitoredItemCreateRequest,
    NodeId,
    PublishResult,
    ReadParameters,
)
from asyncua.ua.uaerrors import UaStatusCodeError

from flowcollect._logs import RateLimitedLog
from flowcollect._text import peer_text
from flowcollect.readers.opcua._security import APPLICATION_URI, MODES, POLICIES, file_format
from flowcollect.readers.opcua._values import Timestamps, decode, status_name
from flowcollect.readers.opcua.address import OpcUaAddress, parse_address
from flowcollect.values import ValueBatch, VariableSpec

__all__ = ["Link", "LinkSettings", "LoopThread", "ReadOutcome", "retry_delay"]

_log = logging.getLogger("flowcollect.readers.opcua")

# asyncua annotates its fields with NewTypes (Int16, UInt32...) that plain ints and bools do not
# satisfy, and re-exports its constants implicitly: its constructors are used untyped here.
ua: Any = _ua

MAX_RETRY_DELAY_S: Final = 5.0
"""The longest wait between two connection attempts to a server that does not answer."""
_REFUSED_RETRY_DELAY_S: Final = 0.5
"""A refused connection costs nothing: retry often, so values return soon after a restart."""
_RETRY_FAILED_S: Final = 10.0
"""While connected, how often addresses and items the server refused are tried again."""
_OBJECTS: Final = ua.NodeId(ua.ObjectIds.ObjectsFolder)
_HIERARCHICAL: Final = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
_LIMIT_NODES: Final = {
    "read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "items": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    "translate": (
        ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds
    ),
}
# Service results that say the session or its channel is gone: reconnect, do not retry.
_SESSION_LOST: Final = frozenset(
    {
        ua.StatusCodes.BadSessionIdInvalid,
        ua.StatusCodes.BadSessionClosed,
        ua.StatusCodes.BadSessionNotActivated,
        ua.StatusCodes.BadSecureChannelIdInvalid,
        ua.StatusCodes.BadSecureChannelClosed,
        ua.StatusCodes.BadConnectionClosed,
        ua.StatusCodes.BadServerHalted,
        ua.StatusCodes.BadShutdown,
        ua.StatusCodes.BadCommunicationError,
        ua.StatusCodes.BadNotConnected,
        ua.StatusCodes.BadNoSubscription,
        ua.StatusCodes.BadSubscriptionIdInvalid,
    }
)
_AUTH_CODES: Final = frozenset(
    {
        ua.StatusCodes.BadUserAccessDenied,
        ua.StatusCodes.BadIdentityTokenRejected,
        ua.StatusCodes.BadIdentityTokenInvalid,
    }
)
_CERT_CODES: Final = frozenset(
    {
        ua.StatusCodes.BadCertificateUntrusted,
        ua.StatusCodes.BadCertificateInvalid,
        ua.StatusCodes.BadSecurityChecksFailed,
        ua.StatusCodes.BadCertificateUriInvalid,
    }
)


class LoopThread:
    """An asyncio event loop on a daemon thread of its own, for a reader called outside the
    engine's loop; the reader calls in with bounds (``OpcUaDataReader._call``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> asyncio.AbstractEventLoop:
        if self.loop is not None and self.running:
            return self.loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(target=self._main, args=(loop, ready), name=self._name, daemon=True)
        self.loop, self._thread = loop, thread
        thread.start()
        ready.wait(5.0)
        return loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            # Whatever is still running (asyncua's own tasks of a session that would not close)
            # is cancelled and given a moment to unwind, so sockets close and nothing warns.
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def stop(self, timeout_s: float) -> bool:
        """Stop the loop and join its thread within ``timeout_s``; False if it would not end."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return True
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
        self.loop, self._thread = None, None
        return not thread.is_alive()


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Everything a ``Link`` needs to connect (the reader checked it)."""

    reader: str
    endpoint: str
    mode: str
    timestamps: Timestamps
    timeout_s: float
    max_nodes_per_read: int
    max_items_per_call: int
    queue_size: int
    publishing_interval_ms: int | None = None
    security_policy: str | None = None
    security_mode: str | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


class _RefusedError(Exception):
    """The server cannot be used with these settings (no matching endpoint, untrusted cert)."""


@dataclass(slots=True)
class _Chunk:
    params: ReadParameters
    slots: list[int]
    """For each node of the request, its index in the plan's unique addresses."""


@dataclass(slots=True)
class _ReadPlan:
    generation: int
    unique: list[str]
    index_of: list[int]
    """For each address of the tick, its index in ``unique``."""
    chunks: list[_Chunk]
    unresolved: dict[int, str]
    """Unique index -> why it has no node id (a browse path the server does not know)."""


ReadOutcome = list["DataValue | str"]
"""Per address of a tick: the server's DataValue, or an error text."""

_ItemKey = tuple[str, int, float | None]


@dataclass(slots=True)
class _Item:
    """A monitored item: one node at one sampling interval and deadband, for some variables."""

    key: _ItemKey
    specs: list[VariableSpec]
    handle: int = 0
    server_id: int | None = None
    error: str | None = None
    heard: bool = False
    """Whether a notification of this item arrived (its first one is the current value)."""


class Link:
    """One OPC UA server as the reader sees it; every method runs on the loop it lives on (the
    engine's, or the reader's own loop thread), which owns its state."""

    def __init__(
        self, settings: LinkSettings, counters: dict[str, int], prepare: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.counters = counters
        self._prepare = prepare
        """Blocking work before the first connection (a certificate to generate): on a thread."""
        self.connected = False
        self.down_text = self._not_connected("not connected yet")
        self.max_read = settings.max_nodes_per_read
        self.max_items = settings.max_items_per_call
        self.max_translate = settings.max_nodes_per_read
        self._client: Client | None = None
        self._generation = 0
        self._closing = False
        self._lost_event: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._lost_reason = "connection lost"
        self._supervisor: asyncio.Task[None] | None = None
        self._addresses: dict[str, OpcUaAddress] = {}
        self._nodes: dict[str, NodeId | str] = {}
        self._plans: dict[tuple[str, ...], _ReadPlan] = {}
        self._log = RateLimitedLog(_log, window_s=60.0)
        # Subscribe mode.
        self.emit: Callable[[ValueBatch], None] | None = None
        self._wanted: dict[_ItemKey, list[VariableSpec]] = {}
        self._items: dict[_ItemKey, _Item] = {}
        self._by_handle: dict[int, _Item] = {}
        self._next_handle = 1
        self._subscription_id: int | None = None
        self._publishing_ms: float | None = None
        self._watch_lock: asyncio.Lock | None = None
        self.items_active = 0
        self.first_attempt = threading.Event()
        """Set once the first connection attempt has succeeded or failed (``open`` waits for it
        on the reader's own loop thread; on the engine's loop the lane awaits it through
        ``plan_changed``'s awaitable, and the first read through ``settled``)."""
        self._first: asyncio.Event | None = None  # the same, for waiters on the loop

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the supervisor (on the loop)."""
        if self._supervisor is None:
            self._lost_event = asyncio.Event()
            self._wake = asyncio.Event()
            self._watch_lock = asyncio.Lock()
            self._first = asyncio.Event()
            if self.first_attempt.is_set():
                self._first.set()
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"flowcollect-opcua-{self.settings.reader}"
            )

    async def settled(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the first connection attempt has succeeded or failed,
        so the first read after ``start`` finds the session of a server that is up."""
        first = self._first
        if first is None or first.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await first.wait()

    def _attempted(self) -> None:
        self.first_attempt.set()
        if self._first is not None:
            self._first.set()

    def _stop_supervisor(self) -> asyncio.Task[None] | None:
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._lost_event is not None:
            self._lost_event.set()
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
        return task

    async def shutdown(self, goodbye_s: float | None = None) -> None:
        """Stop reconnecting and say goodbye to the server (CloseSession, CloseSecureChannel),
        at most ``goodbye_s`` (default: the reader's timeout) for the goodbye; the socket is
        closed in any case, a cancelled shutdown too."""
        task = self._stop_supervisor()
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, self.settings.timeout_s)
        await self._drop_client(orderly=True, goodbye_s=goodbye_s)
        self.connected = False

    def drop_now(self) -> None:
        """Let go of the server at once, without a goodbye (on the loop, which must not wait):
        the supervisor stops and the socket closes now."""
        self._stop_supervisor()
        client, self._client = self._client, None
        self.connected = False
        self._forget_session()
        if client is not None:
            _close_socket(client)

    def _stopping(self) -> bool:
        # A method, not the attribute: shutdown() sets it while the supervisor awaits.
        return self._closing

    def _not_connected(self, reason: str) -> str:
        return f"not connected (opcua reader {self.settings.reader!r}): {reason}"

    async def _supervise(self) -> None:
        failures = 0
        while not self._closing:
            assert self._lost_event is not None  # noqa: S101 - set by start()
            self._lost_event = asyncio.Event()
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason, cheap = _describe_connect_error(exc, self.settings)
                self.counters["connect_failures"] += 1
                await self._drop_client(orderly=False)
                self._went_down(reason)
                failures += 1
                self._attempted()
                await self._pause(retry_delay(failures, refused=cheap))
                continue
            failures = 0
            self.connected = True
            if self.counters["connects"] > 0:
                self.counters["reconnects"] += 1
                _log.info(
                    "opcua %s (reader %r): connected again", self.settings.endpoint, self.settings.reader
                )
            self.counters["connects"] += 1
            self._attempted()
            try:
                await self._apply_watch()
                while not self._lost_event.is_set() and not self._closing:
                    try:
                        await asyncio.wait_for(self._lost_event.wait(), _RETRY_FAILED_S)
                    except TimeoutError:
                        await self._retry_failed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost_reason = f"connection lost: {_short(exc)}"
            if self._stopping():
                return
            self.connected = False
            self._went_down(self._lost_reason)
            await self._drop_client(orderly=False)

    async def _pause(self, delay_s: float) -> None:
        wake = self._wake
        if wake is None:
            await asyncio.sleep(delay_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay_s)
        wake.clear()

    def _went_down(self, reason: str) -> None:
        self.connected = False
        self.down_text = self._not_connected(reason)
        self._log.warning(
            (reason,),
            "opcua %s (reader %r): %s; reconnecting",
            self.settings.endpoint,
            self.settings.reader,
            reason,
        )
        self._emit_errors(self.down_text)

    def lose(self, reason: str) -> None:
        """The session is unusable: reconnect (called on the loop)."""
        if self._lost_event is not None and not self._lost_event.is_set():
            self._lost_reason = reason
            self._lost_event.set()
        self.connected = False

    def _lost_callback(self, client: Client) -> Callable[[Exception], Coroutine[Any, Any, None]]:
        async def lost(exc: Exception) -> None:
            # Only the current session's loss counts: an old one's comes late, after a reconnect.
            if client is self._client:
                self.lose(f"connection lost: {_short(exc)}")

        return lost

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> None:
        self.counters["connect_attempts"] += 1
        if self._prepare is not None:
            await asyncio.to_thread(self._prepare)  # raises: this attempt failed, the next retries
            self._prepare = None

        def prepare(client: Client) -> None:
            self._client = client
            client.connection_lost_callback = self._lost_callback(client)

        client = await open_client(self.settings, prepare)
        self._generation += 1
        self._plans.clear()
        self._nodes.clear()
        await self._read_limits(client)
        await self._resolve(client, list(self._addresses))

    async def _read_limits(self, client: Client) -> None:
        s = self.settings
        nodes = [ua.NodeId(node_id) for node_id in _LIMIT_NODES.values()]
        try:
            values = await client.uaclient.read_attributes(nodes, ua.AttributeIds.Value)
        except UaStatusCodeError:
            values = []
        limits: dict[str, int] = {}
        for name, data in zip(_LIMIT_NODES, values, strict=False):
            value = (
                data.Value.Value
                if data.Value is not None and data.StatusCode is not None and data.StatusCode.is_good()
                else None
            )
            if isinstance(value, int) and value > 0:
                limits[name] = value
        # 0 or none: the server sets no limit; our own caps still bound a request's size.
        self.max_read = min(limits.get("read", s.max_nodes_per_read), s.max_nodes_per_read)
        self.max_items = min(limits.get("items", s.max_items_per_call), s.max_items_per_call)
        self.max_translate = min(limits.get("translate", s.max_nodes_per_read), s.max_nodes_per_read)

    # ------------------------------------------------------------------ addresses

    def know(self, addresses: Sequence[str]) -> None:
        for text in addresses:
            if text not in self._addresses:
                self._addresses[text] = parse_address(text)

    async def _resolve(self, client: Client, texts: Sequence[str]) -> None:  # noqa: PLR0912
        """Node ids for ``texts`` on this session: direct, via the namespace array, or browsed."""
        namespaces: list[str] | None = None
        paths: list[tuple[str, OpcUaAddress]] = []
        for text in texts:
            address = self._addresses[text]
            if address.is_path:
                paths.append((text, address))
            elif address.namespace_uri is not None:
                if namespaces is None:
                    namespaces = await client.get_namespace_array()
                self._nodes[text] = _node_in(address, namespaces)
            else:
                self._nodes[text] = ua.NodeId(address.identifier, address.namespace or 0)
        if not paths:
            return
        if namespaces is None and any(seg.namespace_uri for _, a in paths for seg in a.path):
            namespaces = await client.get_namespace_array()
        requests: list[tuple[str, BrowsePath]] = []
        for text, address in paths:
            built = _browse_path(address, namespaces or [])
            if isinstance(built, str):
                self._nodes[text] = built
            else:
                requests.append((text, built))
        for start in range(0, len(requests), self.max_translate):
            part = requests[start : start + self.max_translate]
            self.counters["resolve_calls"] += 1
            results = await client.uaclient.translate_browsepaths_to_nodeids([p for _, p in part])
            for (text, _path), result in zip(part, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    target = result.Targets[0].TargetId
                    self._nodes[text] = ua.NodeId(target.Identifier, target.NamespaceIndex)
                else:
                    self.counters["resolve_failures"] += 1
                    name = status_name(result.StatusCode.value)
                    self._nodes[text] = f"browse path not found on the server ({name})"

    async def _ensure_nodes(self, texts: Sequence[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self._nodes]
        if missing and self._client is not None:
            self.know(missing)
            try:
                await self._resolve(self._client, missing)
            except (TimeoutError, UaStatusCodeError, ConnectionError, OSError) as exc:
                self._check_lost(exc)
                raise

    # ------------------------------------------------------------------ polling

    async def read(self, addresses: tuple[str, ...]) -> ReadOutcome | str:
        """One tick's Read calls (one per chunk of at most ``max_read`` nodes, concurrently)."""
        client = self._client
        if not self.connected or client is None:
            return self.down_text
        plan = self._plans.get(addresses)
        if plan is None or plan.generation != self._generation:
            try:
                await self._ensure_nodes(addresses)
            except Exception as exc:
                return f"cannot resolve addresses: {_short(exc)}"
            plan = self._plan(addresses)
        outcome: list[DataValue | str] = [""] * len(plan.unique)
        for index, text in plan.unresolved.items():
            outcome[index] = text
        if plan.chunks:
            results = await asyncio.gather(*(self._read_chunk(client, c) for c in plan.chunks))
            for chunk, result in zip(plan.chunks, results, strict=True):
                if isinstance(result, str):
                    for index in chunk.slots:
                        outcome[index] = result
                else:
                    for index, value in zip(chunk.slots, result, strict=False):
                        outcome[index] = value
                    for index in chunk.slots[len(result) :]:
                        outcome[index] = "the server answered fewer values than asked"
        return [outcome[i] for i in plan.index_of]

    def _plan(self, addresses: tuple[str, ...]) -> _ReadPlan:
        unique = list(dict.fromkeys(addresses))
        position = {text: i for i, text in enumerate(unique)}
        unresolved: dict[int, str] = {}
        nodes: list[tuple[int, NodeId]] = []
        for i, text in enumerate(unique):
            node = self._nodes.get(text, "not resolved")
            if isinstance(node, str):
                unresolved[i] = node
            else:
                nodes.append((i, node))
        # "instant" too asks for the source's time: it travels beside the value (source_time).
        which = {"server": ua.TimestampsToReturn.Server}
        returned = which.get(self.settings.timestamps, ua.TimestampsToReturn.Source)
        chunks: list[_Chunk] = []
        for start in range(0, len(nodes), self.max_read):
            part = nodes[start : start + self.max_read]
            params = ua.ReadParameters(
                MaxAge=0,
                TimestampsToReturn=returned,
                NodesToRead=[
                    ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value) for _, node in part
                ],
            )
            chunks.append(_Chunk(params, [i for i, _ in part]))
        if len(self._plans) >= 256:
            self._plans.clear()  # due sets that never repeat must not grow a cache for ever
        plan = _ReadPlan(self._generation, unique, [position[t] for t in addresses], chunks, unresolved)
        self._plans[addresses] = plan
        return plan

    async def _read_chunk(self, client: Client, chunk: _Chunk) -> list[DataValue] | str:
        self.counters["read_calls"] += 1
        try:
            return await client.uaclient.read(chunk.params)
        except UaStatusCodeError as exc:
            self.counters["read_call_errors"] += 1
            code = exc.code
            if code == ua.StatusCodes.BadTooManyOperations and len(chunk.slots) > 1:
                # The server's limit is lower than it said (or it said none): learn from it.
                self.max_read = max(1, len(chunk.slots) // 2)
                self.counters["learned_read_limit"] = self.max_read
                self._plans.clear()
            if client is self._client:
                self._check_lost(exc)
            return f"Read refused: {status_name(code)}"
        except TimeoutError:
            self.counters["read_call_errors"] += 1
            self.counters["timeouts"] += 1
            text = f"no response within {self.settings.timeout_s:g} s"
            if client is self._client:  # a read of a session already dropped tells nothing
                self.lose(text)
            return text
        except (ConnectionError, OSError, ua.UaError) as exc:
            self.counters["read_call_errors"] += 1
            text = f"connection lost: {_short(exc)}"
            if client is self._client:  # a read of a session already dropped tells nothing
                self.lose(text)
            return text

    def _check_lost(self, exc: BaseException) -> None:
        if isinstance(exc, UaStatusCodeError):
            if exc.code in _SESSION_LOST:
                self.lose(f"session lost: {status_name(exc.code)}")
        elif isinstance(exc, asyncio.TimeoutError | TimeoutError | ConnectionError | OSError):
            self.lose(f"connection lost: {_short(exc)}")

    # ------------------------------------------------------------------ subscribing

    async def watch(self, specs: Sequence[VariableSpec]) -> None:
        """Serve exactly ``specs`` from now on (add and remove monitored items to match)."""
        self.want(specs)
        await self.apply_wanted()

    def want(self, specs: Sequence[VariableSpec]) -> None:
        """The variables to serve from now on (``apply_wanted`` makes the items match); on the
        loop, without waiting, so the latest call always wins."""
        wanted: dict[_ItemKey, list[VariableSpec]] = {}
        for spec in specs:
            wanted.setdefault((spec.address, spec.interval_ms, spec.deadband), []).append(spec)
        self.know([spec.address for spec in specs])
        self._wanted = wanted
        if not self.connected and self.first_attempt.is_set():
            # Errors at once, not "no value yet", for variables added while the server is away.
            self._emit_errors(self.down_text)

    async def apply_wanted(self) -> None:
        """Add and remove monitored items to match ``want``, then wait (bounded) for the new
        items' first values."""
        await self._apply_watch()
        await self._first_values()

    async def _first_values(self) -> None:
        """Wait (bounded) for each new item's first notification: the server sends the current
        value at once, so the first due instant after a plan change samples a value, not
        "no value pushed yet"."""
        if not self.connected or self._publishing_ms is None:
            return
        limit = min(self.settings.timeout_s, 2 * self._publishing_ms / 1000 + 0.5)
        deadline = asyncio.get_running_loop().time() + limit
        while asyncio.get_running_loop().time() < deadline:
            if all(item.heard for item in self._items.values() if item.server_id is not None):
                return
            await asyncio.sleep(0.01)

    async def start_emitting(self, emit: Callable[[ValueBatch], None]) -> None:
        self.emit = emit
        if not self.connected and self.first_attempt.is_set():
            self._emit_errors(self.down_text)
        await self._apply_watch()

    async def _apply_watch(self) -> None:
        lock = self._watch_lock
        if lock is None or self.settings.mode != "subscribe":
            return
        async with lock:
            client = self._client
            if not self.connected or client is None or self.emit is None:
                return
            try:
                await self._reconcile(client)
            except Exception as exc:
                self._check_lost(exc)
                if isinstance(exc, UaStatusCodeError | asyncio.TimeoutError | ConnectionError | OSError):
                    self.lose(f"cannot create monitored items: {_short(exc)}")
                else:
                    raise

    async def _reconcile(self, client: Client) -> None:
        wanted = self._wanted
        gone = [item for key, item in self._items.items() if key not in wanted]
        for item in gone:
            del self._items[item.key]
            self._by_handle.pop(item.handle, None)
        if self._subscription_id is not None:
            ids = [item.server_id for item in gone if item.server_id is not None]
            for start in range(0, len(ids), self.max_items):
                part = ids[start : start + self.max_items]
                await client.uaclient.delete_monitored_items(
                    ua.DeleteMonitoredItemsParameters(
                        SubscriptionId=self._subscription_id, MonitoredItemIds=part
                    )
                )
                self.counters["items_deleted"] += len(part)
        for key, specs in wanted.items():
            known = self._items.get(key)
            if known is None:
                self._items[key] = _Item(key, specs)
            else:
                known.specs = specs
        # Items without a server id: new ones, those of a lost session, those refused before.
        new = [item for item in self._items.values() if item.server_id is None]
        if not wanted:
            self.items_active = 0
            return
        await self._ensure_subscription(client)
        await self._create_items(client, new)

    async def _ensure_subscription(self, client: Client) -> None:
        fastest = _publishing_ms(min(key[1] for key in self._wanted), self.settings.publishing_interval_ms)
        if self._subscription_id is not None:
            if fastest != self._publishing_ms:
                modified = await client.uaclient.update_subscription(
                    ua.ModifySubscriptionParameters(
                        SubscriptionId=self._subscription_id,
                        RequestedPublishingInterval=fastest,
                        RequestedLifetimeCount=_lifetime(fastest),
                        RequestedMaxKeepAliveCount=_keepalive(fastest),
                        MaxNotificationsPerPublish=0,
                        Priority=0,
                    )
                )
                self._publishing_ms = fastest
                self.counters["publishing_interval_ms"] = int(modified.RevisedPublishingInterval)
            return
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=fastest,
            RequestedLifetimeCount=_lifetime(fastest),
            RequestedMaxKeepAliveCount=_keepalive(fastest),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        result = await client.uaclient.create_subscription(params, self._on_publish)
        self._subscription_id = result.SubscriptionId
        self._publishing_ms = fastest
        self.counters["subscriptions_created"] += 1
        self.counters["publishing_interval_ms"] = int(result.RevisedPublishingInterval)

    async def _create_items(self, client: Client, items: list[_Item]) -> None:
        if not items or self._subscription_id is None:
            return
        await self._ensure_nodes([item.key[0] for item in items])
        failed: list[tuple[_Item, str]] = []
        requests: list[tuple[_Item, MonitoredItemCreateRequest]] = []
        for item in items:
            node = self._nodes.get(item.key[0], "not resolved")
            if isinstance(node, str):
                item.error = node
                failed.append((item, node))
                continue
            item.handle = self._next_handle
            self._next_handle += 1
            self._by_handle[item.handle] = item
            requests.append((item, _item_request(item, node, self.settings.queue_size)))
        returned = {
            "source": ua.TimestampsToReturn.Both,
            "server": ua.TimestampsToReturn.Both,
            "instant": ua.TimestampsToReturn.Source,
        }[self.settings.timestamps]
        for start in range(0, len(requests), self.max_items):
            part = requests[start : start + self.max_items]
            self.counters["item_calls"] += 1
            results = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(
                    SubscriptionId=self._subscription_id,
                    TimestampsToReturn=returned,
                    ItemsToCreate=[request for _, request in part],
                )
            )
            for (item, _request), result in zip(part, results, strict=True):
                if result.StatusCode.is_good():
                    item.server_id = result.MonitoredItemId
                    item.error = None
                    self.counters["items_created"] += 1
                else:
                    self._by_handle.pop(item.handle, None)
                    item.error = f"cannot monitor: {status_name(result.StatusCode.value)}"
                    failed.append((item, item.error))
        self.counters["item_errors"] = sum(1 for item in self._items.values() if item.error is not None)
        self.items_active = sum(1 for item in self._items.values() if item.server_id is not None)
        if failed:
            self._emit_failed(failed)

    async def _retry_failed(self) -> None:
        """Try again what the server refused: a browse path or node may have appeared since."""
        client = self._client
        if client is None or not self.connected:
            return
        stale = [text for text, node in self._nodes.items() if isinstance(node, str)]
        if stale:
            for text in stale:
                del self._nodes[text]
            self._plans.clear()
        if self.settings.mode == "subscribe" and self._watch_lock is not None:
            async with self._watch_lock:
                # Refused items, and any a cut-short reconcile left without a server id.
                retry = [item for item in self._items.values() if item.server_id is None]
                if retry and self._subscription_id is not None:
                    for item in retry:
                        self._nodes.pop(item.key[0], None)
                    await self._create_items(client, retry)
        elif stale:
            await self._ensure_nodes(stale)

    def _on_publish(self, result: PublishResult) -> None:
        message = result.NotificationMessage
        data = message.NotificationData
        now_ms = time.time_ns() // 1_000_000
        if not data:
            # A keep-alive: nothing changed, and the source is alive. The engine hears it (an
            # empty batch), so values held for sampling do not go stale while nothing moves.
            self._emit(ValueBatch(now_ms, [], reader=self.settings.reader), keepalive=True)
            return
        specs: list[VariableSpec] = []
        values: list[Any] = []
        errors: list[str | None] = []
        source: list[int | None] = []
        quality: list[str | None] = []
        timestamps = self.settings.timestamps
        by_handle = self._by_handle
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for monitored in notification.MonitoredItems:
                    item = by_handle.get(monitored.ClientHandle)
                    if item is None:
                        continue
                    item.heard = True
                    self.counters["notifications"] += 1
                    for spec in item.specs:
                        value, error, good, when = decode(monitored.Value, spec.value_type, timestamps)
                        specs.append(spec)
                        values.append(value)
                        errors.append(error)
                        quality.append(good)
                        source.append(when)
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and status.is_bad():
                    self.lose(f"subscription ended: {status_name(status.value)}")
        if specs and self.emit is not None:
            self.counters["values_pushed"] += len(specs)
            batch = ValueBatch(
                now_ms,
                specs,
                values,
                errors,
                source_ns=source if timestamps != "instant" else None,
                quality=quality,
                reader=self.settings.reader,
                source_time_ns=source if timestamps == "instant" else None,
            )
            self._emit(batch)

    def _emit(self, batch: ValueBatch, *, keepalive: bool = False) -> None:
        emit = self.emit
        if emit is None or (not len(batch) and not keepalive):
            return
        try:
            emit(batch)
        except Exception:
            _log.exception("opcua reader %r: the engine's emit raised", self.settings.reader)

    def _emit_errors(self, text: str) -> None:
        if self.settings.mode != "subscribe" or self.emit is None:
            return
        specs = [spec for specs in self._wanted.values() for spec in specs]
        if specs:
            now_ms = time.time_ns() // 1_000_000
            self._emit(ValueBatch(now_ms, specs, None, [text] * len(specs), reader=self.settings.reader))

    def _emit_failed(self, failed: list[tuple[_Item, str]]) -> None:
        specs: list[VariableSpec] = []
        errors: list[str | None] = []
        for item, text in failed:
            for spec in item.specs:
                specs.append(spec)
                errors.append(text)
        now_ms = time.time_ns() // 1_000_000
        self._emit(ValueBatch(now_ms, specs, None, errors, reader=self.settings.reader))

    # ------------------------------------------------------------------ teardown

    def _forget_session(self) -> None:
        self._subscription_id = None
        self._publishing_ms = None
        for item in self._items.values():
            item.server_id = None
            item.handle = 0
            item.heard = False
        self._by_handle.clear()
        self.items_active = 0

    async def _drop_client(self, *, orderly: bool, goodbye_s: float | None = None) -> None:
        client, self._client = self._client, None
        self._forget_session()
        if client is None:
            return
        # A lost server would make every close request wait its timeout: only an orderly close
        # (ours) says goodbye; a lost one just lets the socket go.
        try:
            with contextlib.suppress(Exception):  # a dying session may fail any way; it is gone anyway
                if orderly and client.uaclient.state.value == "connected":
                    bound = self.settings.timeout_s if goodbye_s is None else goodbye_s
                    await asyncio.wait_for(client.disconnect(), bound)
                else:
                    await asyncio.wait_for(client.close_session(), 0.2)
        finally:
            # Cancelled too (the engine's loop ending under a goodbye): the socket closes.
            _close_socket(client)


def _close_socket(client: Client) -> None:
    """Close ``client``'s socket now, whatever asyncua's state (no await: usable from a
    cancelled task and from a loop that must not wait), and stop the tasks it runs beside."""
    protocol = client.uaclient.protocol
    # asyncua's own tasks beside the session (its publish loop, watchdogs, channel renewal):
    # private names of asyncua 2.1, looked up softly so another version only skips them.
    tasks = (
        getattr(getattr(client.uaclient, "session", None), "_publish_task", None),
        getattr(client, "_stale_watchdog_task", None),
        getattr(client, "_supervisor_task", None),
        getattr(client, "_renew_channel_task", None),
    )
    for task in tasks:
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
    with contextlib.suppress(Exception):
        client.disconnect_socket()
    # A goodbye cut short by its timeout leaves asyncua "disconnecting" with the socket open
    # (its disconnect_socket then does nothing): close it here, whatever asyncua thinks.
    transport = protocol.transport if protocol is not None else None
    if transport is not None and not transport.is_closing():
        transport.abort()


async def open_client(settings: LinkSettings, prepare: Callable[[Client], None] | None = None) -> Client:
    """A connected asyncua client for ``settings`` (security, user), within the timeout.

    ``prepare`` sees the client before it connects (the reader's link keeps it and watches for
    a lost connection); ``flowcollect browse`` connects through here too.
    """
    s = settings
    client = Client(s.endpoint, timeout=s.timeout_s, watchdog_intervall=max(1.0, s.timeout_s))
    client.application_uri = APPLICATION_URI
    client.name = client.description = f"flowcollect ({s.reader})"
    # A session left behind by a crash of ours expires in a minute, not asyncua's hour.
    client.session_timeout = 60_000
    if prepare is not None:
        prepare(client)
    if s.security_policy is not None and s.security_policy != "None":
        await _secure(client, s)
    if s.username is not None:
        client.set_user(s.username)
        client.set_password(s.password or "")
    await asyncio.wait_for(client.connect(), s.timeout_s * 2)
    return client


async def _secure(client: Client, s: LinkSettings) -> None:
    policy = POLICIES[s.security_policy or ""]
    mode = MODES[s.security_mode or "SignAndEncrypt"]
    endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), s.timeout_s * 2)
    match = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
    if not match:
        offered = sorted(
            {
                peer_text(f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}", 80)
                for e in endpoints
            }
        )
        raise _RefusedError(
            f"the server offers no endpoint with security_policy={s.security_policy} and "
            f"security_mode={s.security_mode or 'SignAndEncrypt'} (it offers {', '.join(offered)})"
        )
    server_der: bytes = match[0].ServerCertificate or b""
    if s.server_certificate is not None:
        trusted = await asyncio.to_thread(_load_der, s.server_certificate)  # a file: never on the loop
        if not server_der.startswith(trusted):
            raise _RefusedError(
                f"the server's certificate is not the trusted one (server_certificate={s.server_certificate})"
            )
    assert s.certificate is not None and s.private_key is not None  # noqa: S101 - checked by the reader
    await client.set_security(
        policy,
        certificate=uacrypto.CertProperties(str(s.certificate), extension=file_format(s.certificate)),
        private_key=uacrypto.CertProperties(str(s.private_key), extension=file_format(s.private_key)),
        server_certificate=uacrypto.CertProperties(server_der, extension="der"),
        mode=mode,
    )


def _node_in(address: OpcUaAddress, namespaces: list[str]) -> NodeId | str:
    uri = address.namespace_uri or ""
    try:
        index = namespaces.index(uri)
    except ValueError:
        return f"namespace {uri!r} is not on the server"
    node: NodeId = ua.NodeId(address.identifier, index)
    return node


def _browse_path(address: OpcUaAddress, namespaces: list[str]) -> BrowsePath | str:
    elements = []
    for segment in address.path:
        index = segment.namespace
        if segment.namespace_uri is not None:
            try:
                index = namespaces.index(segment.namespace_uri)
            except ValueError:
                return f"namespace {segment.namespace_uri!r} is not on the server"
        element = ua.RelativePathElement()
        element.ReferenceTypeId = _HIERARCHICAL
        element.IsInverse = False
        element.IncludeSubtypes = True
        element.TargetName = ua.QualifiedName(segment.name, index or 0)
        elements.append(element)
    path: BrowsePath = ua.BrowsePath()
    path.StartingNode = _OBJECTS
    path.RelativePath = ua.RelativePath(Elements=elements)
    return path


def _item_request(item: _Item, node: NodeId, queue_size: int) -> MonitoredItemCreateRequest:
    _address, interval_ms, deadband = item.key
    params = ua.MonitoringParameters()
    params.ClientHandle = item.handle
    params.SamplingInterval = float(interval_ms)
    params.QueueSize = queue_size
    params.DiscardOldest = True
    if deadband is not None:
        params.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute.value,
            DeadbandValue=float(deadband),
        )
    request: MonitoredItemCreateRequest = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value)
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = params
    return request


def retry_delay(failures: int, *, refused: bool) -> float:
    """Seconds before the next connection attempt after ``failures`` failed ones in a row.

    0.1 s, doubling: up to ``MAX_RETRY_DELAY_S`` for a server that did not answer (each attempt
    cost up to a timeout), up to 0.5 s for a refused connection (it cost nothing, and retrying
    often brings values back soon after a restart).
    """
    if failures <= 0:
        return 0.0
    cap = _REFUSED_RETRY_DELAY_S if refused else MAX_RETRY_DELAY_S
    return float(min(cap, 0.1 * 2 ** min(failures - 1, 16)))


def _publishing_ms(fastest_item_ms: int, configured: int | None) -> float:
    """The subscription's publishing interval: the configured one, else a quarter of the fastest
    item's sampling interval (at least 50 ms, at most that interval): a change then waits at
    most a quarter interval in the server's queue, which keeps sampled-and-held values fresh."""
    if configured is not None:
        return float(configured)
    return float(min(fastest_item_ms, max(50.0, fastest_item_ms / 4)))


def _keepalive(publishing_ms: float) -> int:
    # A keep-alive about every 5 s whatever the publishing interval.
    return max(1, math.ceil(5000.0 / max(publishing_ms, 1.0)))


def _lifetime(publishing_ms: float) -> int:
    return _keepalive(publishing_ms) * 6


def _load_der(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = path.read_bytes()
    if file_format(path) == "pem":
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def _describe_connect_error(exc: BaseException, settings: LinkSettings) -> tuple[str, bool]:  # noqa: PLR0911
    """A short reason for a failed connection, and whether retrying soon costs nothing."""
    if isinstance(exc, _RefusedError):
        return str(exc), False
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {settings.timeout_s:g} s", False
    if isinstance(exc, UaStatusCodeError):
        code = exc.code
        name = status_name(code)
        if code in _AUTH_CODES:
            who = f"username={settings.username!r}" if settings.username is not None else "anonymous"
            return f"{name}: the server refused the user ({who}; check username and password)", False
        if code in _CERT_CODES:
            return (
                f"{name}: the server does not accept this client's certificate "
                f"(certificate={settings.certificate}); add it to the server's trusted certificates"
            ), False
        return name, False
    if isinstance(exc, FileNotFoundError | PermissionError):
        return _short(exc), False
    if isinstance(exc, OSError):
        return peer_text((exc.strerror or str(exc) or type(exc).__name__).lower(), 160), False
    return _short(exc), False


def _short(exc: BaseException, limit: int = 160) -> str:
    # An exception's words may quote the server: escaped and cut (flowcollect._text).
    return peer_text(str(exc) or type(exc).__name__, limit)
