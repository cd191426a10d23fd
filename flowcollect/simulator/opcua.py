"""An OPC UA server to collect from without a PLC: a small plant, fixed values, a bulk block.

Runs on asyncua's server. In-process (tests, pipelines)::

    with OpcUaSimulator() as sim:            # a free loopback port, served from a thread
        reader = OpcUaDataReader("opcua", sim.endpoint)

Standalone: ``python -m flowcollect.simulator.opcua --port 4840`` or ``flowcollect simulate
--opcua --port 4840`` (serves until Ctrl-C or SIGTERM; prints the endpoint it serves).

The address space, in namespace ``NAMESPACE_URI`` (index 2, or 2 + ``extra_namespaces``):

- ``Objects/Plant/Line1`` (``LINE1``): ``Temperature`` (Double), ``Pressure`` (Float), ``Counter``
  (UInt32), ``Level`` (Int16), ``Running`` (Boolean), ``State`` (String) change every ``period_s``;
  ``Flaky`` (Double) turns Bad (BadSensorFailure) on demand (``set_bad``); ``Setpoint`` (Double)
  changes only when written (``set_value``). Numeric node ids ``1001..1008`` (plus ``id_offset``:
  a restart with another offset renumbers them).
- ``Objects/Plant/Types`` (``TYPES``): one node of each built-in type with a fixed value (``KNOWN``),
  string node ids ``Types.<Name>``; also an Int32 array, an Uncertain and a Bad one.
- ``Objects/Plant/Bulk``: ``bulk`` Double nodes ``G<k // 250>/B<k>`` (node ids ``i=100000 + k``,
  value ``k``), changing
  every ``bulk_period_s`` when that is set (for benchmarks).

Counters of what the server received: ``read_calls`` and ``read_nodes`` (Read service calls that
touched this namespace, and their nodes). ``max_nodes_per_read`` (> 0) is announced in the
server's operation limits and enforced: a larger Read is refused with BadTooManyOperations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import math
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from flowcollect.simulator._loop import run_bounded

__all__ = [
    "KNOWN",
    "LINE1",
    "NAMESPACE_URI",
    "TYPES",
    "BULK_GROUP",
    "EmbeddedOpcUaSimulator",
    "OpcUaSimulator",
    "main",
    "serve",
]

# Stopping the server closes its sessions: bounded, so SIGTERM ends the process within about
# five seconds (with what is left after it, see run_bounded) whatever a client does.
_STOP_TIMEOUT_S = 3.0
_log = logging.getLogger("flowcollect.simulator.opcua")

NAMESPACE_URI: Final = "urn:flowcollect:simulator"
LINE1: Final[dict[str, tuple[int, str]]] = {
    "Temperature": (1001, "Double"),
    "Pressure": (1002, "Float"),
    "Counter": (1003, "UInt32"),
    "Level": (1004, "Int16"),
    "Running": (1005, "Boolean"),
    "State": (1006, "String"),
    "Flaky": (1007, "Double"),
    "Setpoint": (1008, "Double"),
}
"""Line1's nodes: browse name -> (numeric id before ``id_offset``, built-in type)."""

KNOWN: Final[dict[str, tuple[str, Any]]] = {
    "Boolean": ("Boolean", True),
    "SByte": ("SByte", -8),
    "Byte": ("Byte", 200),
    "Int16": ("Int16", -1234),
    "UInt16": ("UInt16", 54321),
    "Int32": ("Int32", -123456),
    "UInt32": ("UInt32", 3_000_000_000),
    "Int64": ("Int64", -9_000_000_000_000_000),
    "UInt64": ("UInt64", 18_000_000_000_000_000_000),
    "Float": ("Float", 1.5),
    "Double": ("Double", 2.25),
    "String": ("String", "hello"),
    "LocalizedText": ("LocalizedText", "Grüße"),
    "DateTime": ("DateTime", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    "ByteString": ("ByteString", b"\x01\x02\xff"),
    "Guid": ("Guid", uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")),
    "Int32Array": ("Int32", [1, 2, 3]),
    "Integral": ("Double", 7.0),
}
"""The Types folder: browse name -> (built-in type, fixed value). Also ``Uncertain`` (Double 3.5,
UncertainLastUsableValue) and ``Bad`` (Double 9.9 with BadSensorFailure: the value must never
be delivered)."""

TYPES: Final = tuple(KNOWN)

BULK_GROUP: Final = 250
"""Bulk nodes live in folders of this many: ``Bulk/G<k // 250>/B<k>``."""

_SECURED_POLICIES: Final = (
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
)


def _asyncua_ua() -> Any:
    # asyncua annotates its fields with NewTypes (Int16, UInt32...) that plain ints do not
    # satisfy; the simulator uses its constructors untyped. Imported when a server starts.
    from asyncua import ua

    return ua


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class OpcUaSimulator:
    """The simulated OPC UA server, served from a background thread (``start``) or this one.

    ``port=0`` picks a free port (``port`` and ``endpoint`` hold the real one once started).
    ``security=True`` generates a server certificate in ``certificate_dir`` (a temporary one by
    default) and offers every secured policy beside None (``allow_none=False``: only secured).
    ``users`` (name -> password) turns anonymous access off. ``trusted_clients``: client
    certificate files the server accepts (None: any).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        period_s: float = 1.0,
        bulk: int = 0,
        bulk_period_s: float | None = None,
        max_nodes_per_read: int = 0,
        extra_namespaces: int = 0,
        id_offset: int = 0,
        security: bool = False,
        allow_none: bool = True,
        certificate_dir: str | Path | None = None,
        users: dict[str, str] | None = None,
        trusted_clients: Sequence[str | Path] | None = None,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"OpcUaSimulator period_s: must be positive, got {period_s!r}")
        if bulk < 0 or max_nodes_per_read < 0 or extra_namespaces < 0 or id_offset < 0:
            raise ValueError(
                "OpcUaSimulator bulk, max_nodes_per_read, extra_namespaces, id_offset: must be >= 0"
            )
        self.host = host
        self.port = port
        self.period_s = period_s
        self.bulk = bulk
        self.bulk_period_s = bulk_period_s
        self.max_nodes_per_read = max_nodes_per_read
        self.extra_namespaces = extra_namespaces
        self.id_offset = id_offset
        self.security = security
        self.allow_none = allow_none
        self.certificate_dir = Path(certificate_dir) if certificate_dir is not None else None
        self.users = dict(users) if users else None
        self.trusted_clients = [Path(p) for p in trusted_clients] if trusted_clients is not None else None
        self.namespace_index = 2 + extra_namespaces
        self.server_certificate: Path | None = None
        """The server's certificate file (DER), once started with ``security``."""
        self._lock = threading.Lock()
        self._read_calls = 0
        self._read_nodes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._stop_requested = False  # a signal may come before _serve has made its event
        self._error: BaseException | None = None
        self._server: Any = None
        self._nodes: dict[str, Any] = {}
        self._bad = False
        self._tick = 0
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._on_ready: Callable[[OpcUaSimulator], None] | None = None

    # -- what it serves

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/flowcollect"

    def node_id(self, name: str) -> str:
        """The node id text of ``Line1/<name>``, ``Types/<name>`` or ``Bulk/B<k>`` on this run."""
        ns = self.namespace_index
        folder, _, leaf = name.rpartition("/")
        if folder in ("", "Line1") and leaf in LINE1:
            return f"ns={ns};i={LINE1[leaf][0] + self.id_offset}"
        if folder == "Types":
            return f"ns={ns};s=Types.{leaf}"
        if folder == "Bulk":
            return f"ns={ns};i={100000 + int(leaf.removeprefix('B'))}"
        raise KeyError(name)

    @staticmethod
    def browse_path(name: str) -> str:
        """The browse path of ``Line1/<name>``, ``Types/<name>`` or ``Bulk/B<k>``, with the
        namespace URI (the same every run)."""
        folder, _, leaf = name.rpartition("/")
        if folder == "Bulk":
            leaf = f"G{int(leaf.removeprefix('B')) // BULK_GROUP}/{leaf}"
        return f"nsu={NAMESPACE_URI};/Plant/{folder}/{leaf}"

    # -- counters

    @property
    def read_calls(self) -> int:
        with self._lock:
            return self._read_calls

    @property
    def read_nodes(self) -> int:
        with self._lock:
            return self._read_nodes

    def reset_counters(self) -> None:
        with self._lock:
            self._read_calls = 0
            self._read_nodes = 0

    # -- control from other threads

    def set_bad(self, bad: bool = True) -> None:
        """Turn ``Line1/Flaky`` Bad (BadSensorFailure, its last value still in the DataValue) or Good."""
        self._bad = bad
        self._call(self._write_flaky())

    def set_value(
        self,
        name: str,
        value: Any,
        *,
        source_time: dt.datetime | None = None,
        status: str | None = None,
    ) -> None:
        """Write ``value`` to a node (``Line1/Temperature``...), with that source time and status."""
        self._call(self._write(name, value, source_time, status))

    def delete_node(self, name: str) -> None:
        """Remove a node from the address space (its reads then answer BadNodeIdUnknown)."""
        self._call(self._delete(name))

    def _call(self, coro: Any, timeout_s: float = 10.0) -> Any:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the simulator is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)

    # -- lifecycle

    def start(self, timeout_s: float = 30.0) -> OpcUaSimulator:
        """Serve from a daemon thread; return once listening (``RuntimeError`` if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name="opcua-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the OPC UA simulator did not start within {timeout_s} s")
        error = self._failure()
        if error is not None:
            self._thread.join(timeout_s)
            self._thread = None
            raise RuntimeError(f"the OPC UA simulator could not serve {self.endpoint}: {error}")
        return self

    def _failure(self) -> BaseException | None:
        # A method, not the attribute: the server's thread sets it while start() waits.
        return self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the server and every session, and end the thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        self._thread = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def run(self, on_ready: Callable[[OpcUaSimulator], None] | None = None) -> None:
        """Serve from this thread until Ctrl-C, SIGTERM (on the main thread) or ``stop`` from
        another thread; returns within a few seconds of being asked, whatever a client does."""
        self._on_ready = on_ready
        self._stop_requested = False
        with contextlib.suppress(KeyboardInterrupt):
            run_bounded(
                self._serve(),
                self._request_stop,
                signals=threading.current_thread() is threading.main_thread(),
            )

    def _request_stop(self) -> None:
        # On the loop's thread (a signal handler the loop runs): the server then closes in order.
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    def __enter__(self) -> OpcUaSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self) -> None:
        self._stop_requested = False
        try:
            run_bounded(self._serve(), self._request_stop, signals=False)
        except BaseException as exc:  # reported to start(), which raises it
            self._error = exc
        finally:
            self._loop = None
            self._ready.set()

    # -- the server

    async def _serve(self) -> None:
        from asyncua.server.server import Server

        ua = _asyncua_ua()
        from asyncua.common.callback import CallbackType

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        server = Server(user_manager=_Users(self.users) if self.users else None)  # type: ignore[arg-type]
        await server.init()
        if self.port == 0:
            self.port = _free_port(self.host)
        server.set_endpoint(self.endpoint)
        server.set_server_name("flowcollect OPC UA simulator")
        await server.set_application_uri("urn:flowcollect:simulator:server")
        policies = [ua.SecurityPolicyType.NoSecurity] if self.allow_none or not self.security else []
        if self.security:
            await self._load_certificate(server)
            policies += [getattr(ua.SecurityPolicyType, name) for name in _SECURED_POLICIES]
        server.set_security_policy(policies)
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if self.trusted_clients is not None:
            server.set_certificate_validator(_Trust(self.trusted_clients).validate)
        for i in range(self.extra_namespaces):
            await server.register_namespace(f"urn:flowcollect:simulator:padding:{i}")
        ns = await server.register_namespace(NAMESPACE_URI)
        self.namespace_index = ns
        await self._build(server, ns)
        await self._set_limits(server)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        self._server = server
        await server.start()
        try:
            updater = asyncio.create_task(self._update_loop())
            bulk = asyncio.create_task(self._bulk_loop()) if self.bulk and self.bulk_period_s else None
            self._ready.set()
            if self._on_ready is not None:
                self._on_ready(self)
            try:
                await self._stop.wait()
            finally:
                for task in (updater, bulk):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
        finally:
            # asyncua's stop closes every session; a client that does not answer must not keep
            # the simulator (and whoever stops it) waiting.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.stop(), _STOP_TIMEOUT_S)
            self._server = None

    async def _load_certificate(self, server: Any) -> None:
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        if self.certificate_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="flowcollect-opcua-sim-")
            self.certificate_dir = Path(self._tempdir.name)
        self.certificate_dir.mkdir(parents=True, exist_ok=True)
        key = self.certificate_dir / "server-key.pem"
        cert = self.certificate_dir / "server-cert.der"
        await setup_self_signed_certificate(
            key,
            cert,
            "urn:flowcollect:simulator:server",
            socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"organizationName": "flowcollect"},
        )
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        self.server_certificate = cert

    async def _build(self, server: Any, ns: int) -> None:
        ua = _asyncua_ua()

        objects = server.nodes.objects
        plant = await objects.add_object(ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns))
        line = await plant.add_object(ua.NodeId("Plant.Line1", ns), ua.QualifiedName("Line1", ns))
        for name, (number, kind) in LINE1.items():
            initial = self._line_value(name, 0)
            node = await line.add_variable(
                ua.NodeId(number + self.id_offset, ns),
                ua.QualifiedName(name, ns),
                ua.Variant(initial, getattr(ua.VariantType, kind)),
            )
            self._nodes[f"Line1/{name}"] = node
        types = await plant.add_object(ua.NodeId("Plant.Types", ns), ua.QualifiedName("Types", ns))
        for name, (kind, value) in KNOWN.items():
            variant_type = getattr(ua.VariantType, kind)
            initial = ua.LocalizedText(value, "de") if kind == "LocalizedText" else value
            node = await types.add_variable(
                ua.NodeId(f"Types.{name}", ns), ua.QualifiedName(name, ns), ua.Variant(initial, variant_type)
            )
            self._nodes[f"Types/{name}"] = node
        for name, value, code in (
            ("Uncertain", 3.5, ua.StatusCodes.UncertainLastUsableValue),
            ("Bad", 9.9, ua.StatusCodes.BadSensorFailure),
        ):
            node = await types.add_variable(
                ua.NodeId(f"Types.{name}", ns),
                ua.QualifiedName(name, ns),
                ua.Variant(value, ua.VariantType.Double),
            )
            await node.write_value(
                ua.DataValue(
                    ua.Variant(value, ua.VariantType.Double),
                    StatusCode=ua.StatusCode(code),
                    SourceTimestamp=dt.datetime.now(dt.UTC),
                )
            )
            self._nodes[f"Types/{name}"] = node
        if self.bulk:
            bulk = await plant.add_object(ua.NodeId("Plant.Bulk", ns), ua.QualifiedName("Bulk", ns))
            # In folders of BULK_GROUP and one AddNodes call per folder: asyncua checks each new
            # reference against all of its parent's, so 10,000 siblings took minutes to add.
            for start in range(0, self.bulk, BULK_GROUP):
                group = f"G{start // BULK_GROUP}"
                folder = await bulk.add_object(
                    ua.NodeId(f"Plant.Bulk.{group}", ns), ua.QualifiedName(group, ns)
                )
                items = [
                    _variable_item(ua, folder.nodeid, ua.NodeId(100000 + k, ns), f"B{k}", float(k), ns)
                    for k in range(start, min(self.bulk, start + BULK_GROUP))
                ]
                for result in await server.iserver.isession.add_nodes(items):
                    result.StatusCode.check()
            for k in range(self.bulk):
                self._nodes[f"Bulk/B{k}"] = server.get_node(ua.NodeId(100000 + k, ns))

    async def _set_limits(self, server: Any) -> None:
        ua = _asyncua_ua()

        node = server.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        )
        await node.write_value(ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32))

    def _pre_read(self, event: Any, _dispatcher: Any) -> None:
        ua = _asyncua_ua()

        if not event.is_external:
            return
        nodes = event.request_params.NodesToRead
        ns = self.namespace_index
        if not any(item.NodeId.NamespaceIndex == ns for item in nodes):
            return
        with self._lock:
            self._read_calls += 1
            self._read_nodes += len(nodes)
        if self.max_nodes_per_read and len(nodes) > self.max_nodes_per_read:
            from asyncua.ua.uaerrors import UaStatusCodeError

            raise UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)  # type: ignore[no-untyped-call]

    @staticmethod
    def _line_value(name: str, tick: int) -> Any:
        t = tick
        return {
            "Temperature": 20.0 + 5.0 * math.sin(t / 10.0),
            "Pressure": 1.0 + 0.25 * math.cos(t / 7.0),
            "Counter": t,
            "Level": (t * 3) % 200 - 100,
            "Running": (t // 5) % 2 == 0,
            "State": "running" if (t // 5) % 2 == 0 else "idle",
            "Flaky": 50.0 + (t % 10),
            "Setpoint": 0.0,
        }[name]

    async def _update_loop(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self._tick += 1
            now = dt.datetime.now(dt.UTC)
            for name, (_number, kind) in LINE1.items():
                if name in ("Flaky", "Setpoint"):
                    continue
                await self._write(f"Line1/{name}", self._line_value(name, self._tick), now, None, kind)
            await self._write_flaky()

    async def _bulk_loop(self) -> None:
        ua = _asyncua_ua()
        assert self.bulk_period_s is not None  # noqa: S101 - started only with it
        server = self._server
        ids = [self._nodes[f"Bulk/B{k}"].nodeid for k in range(self.bulk)]
        period = self.bulk_period_s
        step = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # On a fixed grid, so a slow round does not stretch every later one.
            next_at += period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            step += 1
            now = dt.datetime.now(dt.UTC)
            for k, node_id in enumerate(ids):
                # The server's direct write: a tenth of a full Write service's cost per node.
                await server.write_attribute_value(
                    node_id,
                    ua.DataValue(ua.Variant(float(k + step), ua.VariantType.Double), SourceTimestamp=now),
                )
                if k % 1000 == 999:
                    await asyncio.sleep(0)  # let sessions be served between slices of the round

    async def _write_flaky(self) -> None:
        ua = _asyncua_ua()

        value = self._line_value("Flaky", self._tick)
        code = ua.StatusCodes.BadSensorFailure if self._bad else ua.StatusCodes.Good
        node = self._nodes["Line1/Flaky"]
        await node.write_value(
            ua.DataValue(
                ua.Variant(value, ua.VariantType.Double),
                StatusCode=ua.StatusCode(code),
                SourceTimestamp=dt.datetime.now(dt.UTC),
            )
        )

    async def _write(
        self,
        name: str,
        value: Any,
        source_time: dt.datetime | None,
        status: str | None,
        kind: str | None = None,
    ) -> None:
        ua = _asyncua_ua()

        node = self._nodes[name]
        if kind is None:
            kind = (await node.read_data_type_as_variant_type()).name
        code = getattr(ua.StatusCodes, status) if status else ua.StatusCodes.Good
        await node.write_value(
            ua.DataValue(
                ua.Variant(value, getattr(ua.VariantType, kind)),
                StatusCode=ua.StatusCode(code),
                SourceTimestamp=source_time or dt.datetime.now(dt.UTC),
            )
        )

    async def _delete(self, name: str) -> None:
        ua = _asyncua_ua()
        node = self._nodes.pop(name)
        # What a server should tell the node's subscribers (asyncua means to, but calls its
        # coroutine callback without awaiting it): a last notification with BadNodeIdUnknown.
        await self._server.write_attribute_value(
            node.nodeid, ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
        )
        data = self._server.iserver.aspace.get(node.nodeid)
        if data is not None and ua.AttributeIds.Value in data.attributes:
            data.attributes[ua.AttributeIds.Value].datachange_callbacks.clear()
        await self._server.delete_nodes([node])


def _variable_item(ua: Any, parent: Any, node_id: Any, name: str, value: float, ns: int) -> Any:
    """An AddNodesItem for a readable Double variable (what ``add_variable`` sends, batched)."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = ua.QualifiedName(name, ns)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
    attrs.Value = ua.Variant(value, ua.VariantType.Double)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    attrs.Historizing = False
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item.NodeAttributes = attrs
    return item


class _Users:
    """A user manager that knows a fixed set of names and passwords."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class _Trust:
    """Accepts a client's certificate only when it is one of the trusted files."""

    def __init__(self, files: Sequence[Path]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        self._trusted: set[bytes] = set()
        for path in files:
            data = path.read_bytes()
            if b"-----BEGIN" in data[:64]:
                data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
            self._trusted.add(data)

    async def validate(self, certificate: Any, _application: Any) -> None:
        ua = _asyncua_ua()
        from asyncua.common.utils import ServiceError
        from cryptography.hazmat.primitives.serialization import Encoding

        if certificate.public_bytes(Encoding.DER) not in self._trusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


class EmbeddedOpcUaSimulator:
    """The OPC UA simulator as a pipeline device.

    Serves on ``host`` at ``port`` (0: a free port, chosen when it starts) and, once it serves,
    points each of ``readers`` (OPC UA readers: anything with an ``endpoint``) at itself; so a
    pipeline file names no port and two runs never collide. asyncua's server is imported only
    when it starts.
    """

    def __init__(
        self,
        readers: Sequence[Any] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "",
        period_s: float = 1.0,
        bulk: int = 0,
    ) -> None:
        self.readers = list(readers)
        self.host = host
        self.port = port
        self.name = name or "opcua simulator"
        self.period_s = period_s
        self.bulk = bulk
        self.simulator: OpcUaSimulator | None = None
        """The running ``OpcUaSimulator``, between start and stop."""

    def start(self) -> None:
        from flowcollect.readers.opcua.reader import quiet_asyncua

        quiet_asyncua()  # its server logs every node of the standard address space at INFO
        self.simulator = OpcUaSimulator(self.host, self.port, period_s=self.period_s, bulk=self.bulk).start()
        for reader in self.readers:
            reader.endpoint = self.simulator.endpoint

    def stop(self) -> None:
        simulator, self.simulator = self.simulator, None
        if simulator is not None:
            simulator.stop()

    def __repr__(self) -> str:
        return f"EmbeddedOpcUaSimulator(name={self.name!r}, host={self.host!r}, port={self.port})"


def serve(host: str = "127.0.0.1", port: int = 4840, **options: Any) -> None:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM; prints its endpoint."""
    OpcUaSimulator(host, port, **options).run(on_ready=_announce)


def _announce(simulator: OpcUaSimulator) -> None:
    # The one line the standalone command prints; scripts and tests read the endpoint from it.
    extra = f", server certificate {simulator.server_certificate}" if simulator.server_certificate else ""
    print(
        f"flowcollect simulator: OPC UA on {simulator.endpoint} (namespace {simulator.namespace_index}"
        f"{extra}; Ctrl-C stops)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flowcollect.simulator.opcua",
        description="Serve the flowcollect OPC UA simulator until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4840, help="TCP port; 0 picks a free one (default 4840)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between plant changes (default 1)")
    parser.add_argument("--bulk", type=int, default=0, help="number of Bulk nodes (default 0)")
    parser.add_argument(
        "--bulk-period", type=float, default=None, help="seconds between Bulk changes (default: never)"
    )
    parser.add_argument(
        "--max-nodes-per-read", type=int, default=0, help="announce and enforce this limit (0: none)"
    )
    parser.add_argument(
        "--extra-namespaces", type=int, default=0, help="register this many namespaces before ours"
    )
    parser.add_argument(
        "--id-offset", type=int, default=0, help="shift Line1's numeric node ids by this much"
    )
    parser.add_argument(
        "--security", action="store_true", help="offer the secured policies too (generated certificate)"
    )
    parser.add_argument("--certificate-dir", default=None, help="where the server's certificate is kept")
    parser.add_argument(
        "--user", action="append", default=[], metavar="NAME:PASSWORD", help="require this user"
    )
    parser.add_argument(
        "--trust", action="append", default=None, metavar="CERT", help="accept only these client certificates"
    )
    args = parser.parse_args(argv)
    users = dict(entry.split(":", 1) for entry in args.user) if args.user else None
    logging.basicConfig(level=logging.WARNING)
    # "No signing policy available...": true of a simulator without --security, and no news.
    logging.getLogger("asyncua.server.server").setLevel(logging.ERROR)
    serve(
        args.host,
        args.port,
        period_s=args.period,
        bulk=args.bulk,
        bulk_period_s=args.bulk_period,
        max_nodes_per_read=args.max_nodes_per_read,
        extra_namespaces=args.extra_namespaces,
        id_offset=args.id_offset,
        security=args.security,
        certificate_dir=args.certificate_dir,
        users=users,
        trusted_clients=args.trust,
    )


if __name__ == "__main__":
    main()
