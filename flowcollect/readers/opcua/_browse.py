"""OPC UA browse and discovery: walk a server's address space in pages, describe its variables.

``browse_nodes`` walks from the Objects folder (or a browse path) breadth first: many nodes per
Browse call, at most ``page`` references per node per answer, the rest through continuation
points (BrowseNext), so a folder of 100,000 nodes is read in bounded pieces. ``--depth`` and a
pattern prune before descending: a node is browsed only if something below it can still match.
Variables are then described by Read calls in chunks of the server's ``MaxNodesPerRead`` (data
type, access level, value). Every call is bounded by the reader's ``timeout_s``; the whole walk
by ``max_time_s``.

``discover(url, pattern)`` gives the matching variables as ``Variable``s with **stable ids**:
``stable_id(reader, path)`` where ``path`` is the node's browse path with namespace URIs (not
indexes, not node ids), so a server that renumbers its node ids or namespaces across a restart
gives every node the same id, and a different node never gets it (unless two 53-bit hashes
collide, which the context's unique-id check would report). The variable's address is that same
path, resolved on every connect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError

from flowcollect import _discoveries
from flowcollect._ids import stable_id
from flowcollect.errors import ConfigError
from flowcollect.models import ValueType, Variable
from flowcollect.readers.opcua._client import open_client
from flowcollect.readers.opcua._pattern import PathPattern, parse_pattern
from flowcollect.readers.opcua.reader import OpcUaDataReader, quiet_asyncua

__all__ = ["BrowsedNode", "browse", "discover", "node_value_type", "path_text"]

_log = logging.getLogger("flowcollect.readers.opcua")

# asyncua types its NodeId fields with NewTypes that plain ints do not satisfy.
_OBJECTS: Final = ua.NodeId(ObjectIds.ObjectsFolder)  # type: ignore[arg-type]
_HIERARCHICAL: Final = ua.NodeId(ObjectIds.HierarchicalReferences)  # type: ignore[arg-type]
_NODES_PER_BROWSE: Final = 100
_DEFAULT_PAGE: Final = 1000
# Attribute reads per Read call: below the MaxNodesPerRead of common servers (1000).
_READS_PER_CALL: Final = 900
_RESULT_MASK: Final = (
    ua.BrowseResultMask.IsForward | ua.BrowseResultMask.NodeClass | ua.BrowseResultMask.BrowseName
)
_TYPES: Final = (AttributeIds.DataType, AttributeIds.AccessLevel)
_WITH_VALUES: Final = (*_TYPES, AttributeIds.Value)
_VALUE_TYPES: Final[dict[str, ValueType]] = {
    "Boolean": "bool",
    "SByte": "int",
    "Byte": "int",
    "Int16": "int",
    "UInt16": "int",
    "Int32": "int",
    "UInt32": "int",
    "Int64": "int",
    "UInt64": "int",
    "Float": "float",
    "Double": "float",
    "String": "str",
    "LocalizedText": "str",
}
_ESCAPE: Final = str.maketrans({"&": "&&", "/": "&/", "{": "&{", ":": "&:"})


@dataclass(frozen=True)
class BrowsedNode:
    """One node found by a browse."""

    path: str
    """Its browse path with namespace URIs: stable across restarts; a reader address."""
    name: str
    """Its browse names joined by ``/`` (``Plant/Line1/Temperature``)."""
    node_id: str
    node_class: str
    depth: int
    data_type: str | None = None
    access: str | None = None
    value: Any = None

    @property
    def value_type(self) -> ValueType | None:
        return node_value_type(self.data_type)


def node_value_type(data_type: str | None) -> ValueType | None:
    """The ``Variable.value_type`` a node of this OPC UA data type is collected as, or None."""
    return _VALUE_TYPES.get(data_type or "")


def browse(
    url: str,
    *,
    path: str | None = None,
    depth: int | None = None,
    match: str | None = None,
    page: int = _DEFAULT_PAGE,
    max_time_s: float = 300.0,
    include_server: bool = False,
    progress: Callable[[int], None] | None = None,
    describe: bool = True,
    values: bool = True,
    **options: Any,
) -> list[BrowsedNode]:
    """Every node under ``path`` (the Objects folder by default) to ``depth`` levels, those
    matching ``match`` (a pattern, see ``_pattern``) reported. ``options``: the reader's
    connection options (security, user, ``timeout_s``). The server's own ``Server`` object
    (namespace 0) is left out unless ``include_server``. ``progress(n)`` hears the count of
    nodes browsed so far, after each Browse call."""
    reader = OpcUaDataReader("browse", url, **options)
    settings = reader.link_settings()
    quiet_asyncua()
    pattern = parse_pattern(match) if match else None
    walk = _Walk(settings.timeout_s, page, depth, pattern, include_server, progress, max_time_s)
    walk.attributes = () if not describe else _WITH_VALUES if values else _TYPES
    nodes: list[BrowsedNode] = _run(walk.run(settings, path))
    return nodes


def discover(url: str, pattern: str, *, reader: str = "opcua", **options: Any) -> list[Variable]:
    """The variables under ``pattern`` (``/2:Plant/*/2:Temperature``, ``/2:Plant/**/2:Alarm*``)
    for the reader of type ``reader``, with stable ids and names from their paths (see the
    module). No match is a warning naming the pattern; an unreachable server raises."""
    try:
        nodes = browse(url, match=pattern, values=False, **options)
    except (OSError, TimeoutError, UaError) as exc:
        raise ConfigError(f"discover({url!r}, {pattern!r}): the server could not be browsed: {exc}") from exc
    variables = [
        Variable(
            id=stable_id(reader, node.path),
            name=node.name,
            address=node.path,
            value_type=node.value_type,
            reader=reader,
        )
        for node in nodes
        if node.node_class == "Variable"
    ]
    _discoveries.note(url, pattern, len(variables))
    if variables:
        _log.info("discover(%s, %r): %d variables", url, pattern, len(variables))
    else:
        _log.warning("discover(%s, %r): no variable matched the pattern", url, pattern)
    return variables


def _run(coroutine: Any) -> Any:
    """Run a coroutine to its end, from a thread with or without an event loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flowcollect-browse") as pool:
        return pool.submit(asyncio.run, coroutine).result()


class _Walk:
    def __init__(
        self,
        timeout_s: float,
        page: int,
        depth: int | None,
        pattern: PathPattern | None,
        include_server: bool,
        progress: Callable[[int], None] | None,
        max_time_s: float,
    ) -> None:
        self.timeout_s = timeout_s
        self.page = page
        self.depth = depth
        self.pattern = pattern
        self.include_server = include_server
        self.progress = progress
        self.deadline = time.monotonic() + max_time_s
        self.browsed = 0
        self.namespaces: list[str] = []
        self.attributes: tuple[int, ...] = _WITH_VALUES

    async def call(self, awaitable: Any) -> Any:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the browse took longer than max_time_s")
        return await asyncio.wait_for(awaitable, min(self.timeout_s * 2, remaining))

    async def run(self, settings: Any, path: str | None) -> list[BrowsedNode]:
        client = await open_client(settings)
        try:
            self.namespaces = await self.call(client.get_namespace_array())
            start, start_path, start_names = await self._start(client, path)
            nodes = await self._walk(client, start, start_path, start_names)
            if self.attributes:
                await self._describe(client, nodes)
            return nodes
        finally:
            with contextlib.suppress(OSError, TimeoutError, UaError):
                await asyncio.wait_for(client.disconnect(), self.timeout_s)

    async def _start(
        self, client: Client, path: str | None
    ) -> tuple[ua.NodeId, list[tuple[str, str]], list[str]]:
        if not path:
            return _OBJECTS, [], []
        # asyncua's get_child takes "2:Plant" segments, as a --path gives them.
        segments = [segment for segment in path.strip("/").split("/") if segment]
        node = await self.call(client.nodes.objects.get_child(segments))
        pairs = []
        for segment in segments:
            index, _, name = segment.rpartition(":")
            number = int(index) if index.isdigit() else 0
            pairs.append((self.namespaces[number] if number and number < len(self.namespaces) else "", name))
        return node.nodeid, pairs, [name for _, name in pairs]

    async def _walk(
        self, client: Client, start: ua.NodeId, start_path: list[tuple[str, str]], start_names: list[str]
    ) -> list[BrowsedNode]:
        found: list[BrowsedNode] = []
        pattern = self.pattern
        states = pattern.start() if pattern is not None else frozenset()
        level: list[tuple[ua.NodeId, list[tuple[str, str]], list[str], frozenset[int]]] = [
            (start, start_path, start_names, states)
        ]
        depth = 0
        while level and (self.depth is None or depth < self.depth):
            depth += 1
            following: list[tuple[ua.NodeId, list[tuple[str, str]], list[str], frozenset[int]]] = []
            for first in range(0, len(level), _NODES_PER_BROWSE):
                chunk = level[first : first + _NODES_PER_BROWSE]
                references = await self._browse(client, [node for node, *_ in chunk])
                for (parent, path, names, parent_states), refs in zip(chunk, references, strict=True):
                    # The Server object (namespace 0, under Objects): diagnostics, not plant data.
                    skip_server = parent == _OBJECTS and not self.include_server
                    for ref in refs:
                        if skip_server and ref.NodeId.NamespaceIndex == 0:
                            continue
                        child = self._child(ref, path, names, parent_states, depth)
                        if child is None:
                            continue
                        node, child_path, child_names, child_states, descend = child
                        if pattern is None or pattern.matches(child_states):
                            found.append(node)
                        if descend:
                            following.append((ref.NodeId, child_path, child_names, child_states))
                if self.progress is not None:
                    self.progress(self.browsed)
            level = following
        return found

    def _child(
        self,
        ref: ua.ReferenceDescription,
        path: list[tuple[str, str]],
        names: list[str],
        states: frozenset[int],
        depth: int,
    ) -> tuple[BrowsedNode, list[tuple[str, str]], list[str], frozenset[int], bool] | None:
        if not ref.IsForward:
            return None
        qualified = ref.BrowseName
        index = qualified.NamespaceIndex
        uri = self.namespaces[index] if index < len(self.namespaces) else ""
        child_states = states
        if self.pattern is not None:
            child_states = self.pattern.advance(states, qualified.Name, index, uri)
            if not child_states:
                return None
        child_path = [*path, (uri if index else "", qualified.Name)]
        child_names = [*names, qualified.Name]
        node_class = ref.NodeClass.name
        node = BrowsedNode(
            path=path_text(child_path),
            name="/".join(child_names),
            node_id=ref.NodeId.to_string(),
            node_class=node_class,
            depth=depth,
        )
        descend = node_class == "Object" and (self.pattern is None or self.pattern.may_continue(child_states))
        return node, child_path, child_names, child_states, descend

    async def _browse(
        self, client: Client, nodes: Sequence[ua.NodeId]
    ) -> list[list[ua.ReferenceDescription]]:
        params = ua.BrowseParameters()
        params.View.Timestamp = ua.get_win_epoch()
        params.RequestedMaxReferencesPerNode = self.page
        for node in nodes:
            description = ua.BrowseDescription()
            description.NodeId = node
            description.BrowseDirection = ua.BrowseDirection.Forward
            description.ReferenceTypeId = _HIERARCHICAL
            description.IncludeSubtypes = True
            description.NodeClassMask = ua.NodeClass.Object | ua.NodeClass.Variable
            # Only what the walk uses: less for the server to send and for us to decode.
            description.ResultMask = _RESULT_MASK
            params.NodesToBrowse.append(description)
        results = await self.call(client.uaclient.browse(params))
        out = [list(result.References) for result in results]
        self.browsed += sum(len(refs) for refs in out)
        # Pages beyond the first: one BrowseNext for every node that has a continuation point.
        pending = {
            i: result.ContinuationPoint for i, result in enumerate(results) if result.ContinuationPoint
        }
        while pending:
            following = ua.BrowseNextParameters()
            following.ReleaseContinuationPoints = False
            following.ContinuationPoints = list(pending.values())
            answers = await self.call(client.uaclient.browse_next(following))
            next_pending: dict[int, bytes] = {}
            for index, answer in zip(list(pending), answers, strict=True):
                out[index].extend(answer.References)
                self.browsed += len(answer.References)
                if answer.ContinuationPoint:
                    next_pending[index] = answer.ContinuationPoint
            pending = next_pending
        return out

    async def _describe(self, client: Client, nodes: list[BrowsedNode]) -> None:
        variables = [i for i, node in enumerate(nodes) if node.node_class == "Variable"]
        attributes = self.attributes
        chunk = max(1, _READS_PER_CALL // len(attributes))
        for first in range(0, len(variables), chunk):
            indexes = variables[first : first + chunk]
            params = ua.ReadParameters()
            for i in indexes:
                node_id = ua.NodeId.from_string(nodes[i].node_id)
                for attribute in attributes:
                    rv = ua.ReadValueId()
                    rv.NodeId = node_id
                    rv.AttributeId = attribute
                    params.NodesToRead.append(rv)
            answers = await self.call(client.uaclient.read(params))
            width = len(attributes)
            for k, i in enumerate(indexes):
                data_type, access, *value = answers[width * k : width * (k + 1)]
                nodes[i] = dataclasses.replace(
                    nodes[i],
                    data_type=_type_name(data_type),
                    access=_access(access),
                    value=value[0].Value.Value
                    if value and _good(value[0]) and value[0].Value is not None
                    else None,
                )


def path_text(segments: Sequence[tuple[str, str]]) -> str:
    """A browse path with namespace URIs (``(uri, name)`` pairs; ``""`` for namespace 0): one
    leading ``nsu=`` when the names share a namespace, else ``{uri}`` on each segment."""
    uris = {uri for uri, _ in segments if uri}
    if len(uris) == 1:
        [uri] = uris
        body = "/".join(
            name.translate(_ESCAPE) if u else f"0:{name.translate(_ESCAPE)}" for u, name in segments
        )
        return f"nsu={uri};/{body}"
    return "/" + "/".join(
        f"{{{u}}}{name.translate(_ESCAPE)}" if u else f"0:{name.translate(_ESCAPE)}" for u, name in segments
    )


def _good(value: ua.DataValue) -> bool:
    return (value.StatusCode is None or value.StatusCode.is_good()) and value.Value is not None


def _type_name(value: ua.DataValue) -> str | None:
    if not _good(value) or value.Value is None:
        return None
    node_id = value.Value.Value
    if isinstance(node_id, ua.NodeId) and node_id.NamespaceIndex == 0 and isinstance(node_id.Identifier, int):
        return ObjectIdNames.get(node_id.Identifier, node_id.to_string())
    return node_id.to_string() if isinstance(node_id, ua.NodeId) else None


def _access(value: ua.DataValue) -> str | None:
    if not _good(value) or value.Value is None:
        return None
    level = int(value.Value.Value)
    can_read, can_write = bool(level & 1), bool(level & 2)
    return {(True, True): "read/write", (True, False): "read", (False, True): "write"}.get(
        (can_read, can_write), "none"
    )
