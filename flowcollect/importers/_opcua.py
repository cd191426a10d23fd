"""Telegraf's ``[[inputs.opcua]]`` (polled) and ``[[inputs.opcua_listener]]`` (subscribed) as an
OPC UA reader and variables that write the points Telegraf wrote: the measurement ``opcua`` (or
the group's ``name``, or the input's), a field per node named by its ``name``, the tag ``id``
(``ns=3;s=Temperature``) and the node's and group's tags. Telegraf's ``Quality`` field is not
written: flowcollect writes a doubtful value's quality as ``<name>_quality`` and a bad one as an
error, never as a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from flowcollect.importers._modbus import ImportedVariable
from flowcollect.importers._values import Options, duration_ms, slug

__all__ = ["OpcUaImport", "translate_opcua"]

_TIMESTAMPS: Final = {"gather": "instant", "server": "server", "source": "source"}
_IGNORED: Final = {
    "client_trace": "use flowcollect's own logging (--verbose)",
    "optional_fields": "the DataType field is not written",
    "session_timeout": "flowcollect keeps one session and renews it itself",
    "workarounds": "not carried over (no flowcollect equivalent)",
    "request_workarounds": "not carried over (no flowcollect equivalent)",
    "connect_fail_behavior": "flowcollect reconnects by itself and never stops collecting the other readers",
    "subscription_interval": "the publishing interval follows each variable's interval",
    "deadband_type": "use Variable(report='change', deadband=...) per variable",
    "deadband_value": "use Variable(report='change', deadband=...) per variable",
    "trigger": "not carried over (no flowcollect equivalent)",
}


@dataclass
class OpcUaImport:
    type: str
    endpoint: str
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of ``OpcUaDataReader``, Python values."""
    secrets: dict[str, str] = field(default_factory=dict)
    """Option -> the environment variable Telegraf read it from (``${OPCUA_PASSWORD}``)."""
    variables: list[ImportedVariable] = field(default_factory=list)


def translate_opcua(
    where: str,
    table: Mapping[str, Any],
    *,
    listener: bool,
    interval_ms: int,
    base_tags: Mapping[str, object],
    measurement_of: Callable[[str], str],
    unique_type: Callable[[str], str],
    environment_reference: Callable[[str, object], str | None],
    note: Callable[[str, str], None],
) -> OpcUaImport | None:
    options = Options(where, table)
    metric = str(options.take("name", "opcua_listener" if listener else "opcua"))
    endpoint = str(options.take("endpoint", "opc.tcp://localhost:4840"))
    result = OpcUaImport(type=unique_type(slug(metric)), endpoint=endpoint)
    result.options["mode"] = "subscribe" if listener else "poll"
    timeout = options.take("request_timeout")
    if timeout is not None:
        result.options["timeout_s"] = duration_ms(timeout) / 1000
    connect = options.take("connect_timeout")
    if connect is not None:
        note(f"{where} connect_timeout", "flowcollect bounds connecting by timeout_s (request_timeout)")
    stamp = str(options.take("timestamp", "gather"))
    if stamp not in _TIMESTAMPS:
        note(f"{where} timestamp", f"{stamp!r} is not gather, server or source; the grid instant is used")
    result.options["timestamps"] = _TIMESTAMPS.get(stamp, "instant")
    _security(options, result, environment_reference, note)
    plugin_tags = {str(k): str(v) for k, v in (options.take("tags") or {}).items()}
    defaults = {"namespace": "", "identifier_type": "", "tags": {}}
    scope = _Scope(result, interval_ms, base_tags, plugin_tags, measurement_of, note)
    for i, node in enumerate(options.take("nodes") or []):
        _node(f"{where} nodes[{i}]", node, defaults, metric, scope)
    for g, group in enumerate(options.take("group") or []):
        group_options = Options(f"{where} group[{g}]", group)
        group_defaults = {
            "namespace": group_options.take("namespace", ""),
            "identifier_type": group_options.take("identifier_type", ""),
            "tags": dict(group_options.take("default_tags") or {}),
        }
        group_metric = str(group_options.take("name") or metric)
        for i, node in enumerate(group_options.take("nodes") or []):
            _node(f"{group_options.where} nodes[{i}]", node, group_defaults, group_metric, scope)
        for key in group_options.left():
            note(f"{group_options.where} {key}", "not carried over (no flowcollect equivalent)")
    for key, reason in _IGNORED.items():
        if options.has(key):
            options.take(key)
            note(f"{where} {key}", reason)
    for key in options.left():
        note(f"{where} {key}", "not carried over (no flowcollect equivalent)")
    if not result.variables:
        note(where, "no node to collect; input left out")
        return None
    return result


def _security(
    options: Options,
    result: OpcUaImport,
    environment_reference: Callable[[str, object], str | None],
    note: Callable[[str, str], None],
) -> None:
    policy = options.take("security_policy", "auto")
    mode = options.take("security_mode", "auto")
    if policy not in ("auto", "None", None):
        result.options["security_policy"] = policy
    if mode not in ("auto", "None", None):
        result.options["security_mode"] = mode
    for key in ("certificate", "private_key"):
        value = options.take(key)
        if value:
            result.options[key] = value
    method = str(options.take("auth_method", "Anonymous"))
    username, password = options.take("username"), options.take("password")
    if method == "UserName":
        result.options["username"] = username
        variable = environment_reference(f"{options.where} password", password)
        if variable is not None:
            result.secrets["password"] = variable
    elif method == "Certificate":
        note(f"{options.where} auth_method", "Certificate user identity is not supported; anonymous is used")


@dataclass(frozen=True)
class _Scope:
    """What every node of one input shares."""

    result: OpcUaImport
    interval_ms: int
    base_tags: Mapping[str, object]
    plugin_tags: Mapping[str, str]
    measurement_of: Callable[[str], str]
    note: Callable[[str, str], None]


def _node(
    spot: str, node: Mapping[str, Any], defaults: Mapping[str, Any], metric: str, scope: _Scope
) -> None:
    name = node.get("name") or node.get("field_name")
    identifier = node.get("identifier")
    namespace = str(node.get("namespace") or defaults["namespace"] or "0")
    kind = str(node.get("identifier_type") or defaults["identifier_type"] or "s")
    if not name or identifier in (None, ""):
        scope.note(spot, "a node needs a name and an identifier; left out")
        return
    if kind not in ("s", "i", "g", "b"):
        scope.note(spot, f"identifier_type {kind!r} is not s, i, g or b; left out")
        return
    node_id = f"ns={namespace};{kind}={identifier}"
    tags: dict[str, object] = {str(k): str(v) for k, v in dict(defaults["tags"]).items()}
    legacy = node.get("tags") or []
    tags.update({str(pair[0]): str(pair[1]) for pair in legacy if len(pair) == 2})
    tags.update({str(k): str(v) for k, v in (node.get("default_tags") or {}).items()})
    measurement = scope.measurement_of(metric)
    all_tags = {**scope.base_tags, "id": node_id, **tags, **scope.plugin_tags, "measurement": measurement}
    reader = scope.result.type
    scope.result.variables.append(
        ImportedVariable(reader, node_id, str(name), None, all_tags, scope.interval_ms)
    )
