"""The Sparkplug B payload schema, built at import from the specification's field numbers.

No generated ``_pb2`` module and no ``protoc``: the messages are described here as a
``FileDescriptorProto`` (proto2, package ``org.eclipse.tahu.protobuf``, as in the Sparkplug 3.0
specification, chapter "Payloads") and turned into classes by the protobuf runtime. Only what a
collector needs is described: the payload, its metrics with their scalar values, and property
sets (the ``Quality`` property). DataSet, Template and MetaData values are left out; protobuf
keeps their bytes as unknown fields, so a payload carrying them still decodes.

``Payload`` is the message class; ``DataType`` holds the datatype numbers of the specification.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["PACKAGE", "DataType", "Payload"]

PACKAGE = "org.eclipse.tahu.protobuf"


class DataType(IntEnum):
    """The Sparkplug datatype numbers (``Metric.datatype``, ``PropertyValue.type``)."""

    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21


_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _F.LABEL_OPTIONAL
_REPEATED = _F.LABEL_REPEATED

# (name, number, label, type, message type name or "", oneof index or None)
_Field = tuple[str, int, int, int, str, int | None]

_PROPERTY_VALUE: list[_Field] = [
    ("type", 1, _OPTIONAL, _F.TYPE_UINT32, "", None),
    ("is_null", 2, _OPTIONAL, _F.TYPE_BOOL, "", None),
    ("int_value", 3, _OPTIONAL, _F.TYPE_UINT32, "", 0),
    ("long_value", 4, _OPTIONAL, _F.TYPE_UINT64, "", 0),
    ("float_value", 5, _OPTIONAL, _F.TYPE_FLOAT, "", 0),
    ("double_value", 6, _OPTIONAL, _F.TYPE_DOUBLE, "", 0),
    ("boolean_value", 7, _OPTIONAL, _F.TYPE_BOOL, "", 0),
    ("string_value", 8, _OPTIONAL, _F.TYPE_STRING, "", 0),
    ("propertyset_value", 9, _OPTIONAL, _F.TYPE_MESSAGE, "PropertySet", 0),
]

_PROPERTY_SET: list[_Field] = [
    ("keys", 1, _REPEATED, _F.TYPE_STRING, "", None),
    ("values", 2, _REPEATED, _F.TYPE_MESSAGE, "PropertyValue", None),
]

_METRIC: list[_Field] = [
    ("name", 1, _OPTIONAL, _F.TYPE_STRING, "", None),
    ("alias", 2, _OPTIONAL, _F.TYPE_UINT64, "", None),
    ("timestamp", 3, _OPTIONAL, _F.TYPE_UINT64, "", None),
    ("datatype", 4, _OPTIONAL, _F.TYPE_UINT32, "", None),
    ("is_historical", 5, _OPTIONAL, _F.TYPE_BOOL, "", None),
    ("is_transient", 6, _OPTIONAL, _F.TYPE_BOOL, "", None),
    ("is_null", 7, _OPTIONAL, _F.TYPE_BOOL, "", None),
    ("properties", 9, _OPTIONAL, _F.TYPE_MESSAGE, "PropertySet", None),
    ("int_value", 10, _OPTIONAL, _F.TYPE_UINT32, "", 0),
    ("long_value", 11, _OPTIONAL, _F.TYPE_UINT64, "", 0),
    ("float_value", 12, _OPTIONAL, _F.TYPE_FLOAT, "", 0),
    ("double_value", 13, _OPTIONAL, _F.TYPE_DOUBLE, "", 0),
    ("boolean_value", 14, _OPTIONAL, _F.TYPE_BOOL, "", 0),
    ("string_value", 15, _OPTIONAL, _F.TYPE_STRING, "", 0),
    ("bytes_value", 16, _OPTIONAL, _F.TYPE_BYTES, "", 0),
]

_PAYLOAD: list[_Field] = [
    ("timestamp", 1, _OPTIONAL, _F.TYPE_UINT64, "", None),
    ("metrics", 2, _REPEATED, _F.TYPE_MESSAGE, "Metric", None),
    ("seq", 3, _OPTIONAL, _F.TYPE_UINT64, "", None),
    ("uuid", 4, _OPTIONAL, _F.TYPE_STRING, "", None),
    ("body", 5, _OPTIONAL, _F.TYPE_BYTES, "", None),
]


def _message(
    parent: Any, name: str, fields: list[_Field], *, scope: str, oneof: str | None = None
) -> descriptor_pb2.DescriptorProto:
    message: descriptor_pb2.DescriptorProto = parent.add()
    message.name = name
    if oneof is not None:
        message.oneof_decl.add().name = oneof
    for field_name, number, label, kind, type_name, oneof_index in fields:
        field = message.field.add()
        field.name = field_name
        field.number = number
        field.label = label
        field.type = kind
        if type_name:
            field.type_name = f".{scope}.{type_name}"
        if oneof_index is not None:
            field.oneof_index = oneof_index
    return message


def _build() -> Any:
    file = descriptor_pb2.FileDescriptorProto()
    file.name = "flowcollect/sparkplug_b.proto"
    file.package = PACKAGE
    file.syntax = "proto2"
    scope = f"{PACKAGE}.Payload"  # the other messages are nested in Payload
    payload = _message(file.message_type, "Payload", _PAYLOAD, scope=scope)
    _message(payload.nested_type, "PropertyValue", _PROPERTY_VALUE, scope=scope, oneof="value")
    _message(payload.nested_type, "PropertySet", _PROPERTY_SET, scope=scope)
    _message(payload.nested_type, "Metric", _METRIC, scope=scope, oneof="value")
    # A pool of our own: another library that registers the same names (tahu's generated module)
    # must not clash with this one in the default pool.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


Payload: Any = _build()
"""The Sparkplug B ``Payload`` message class (``Payload.Metric``, ``Payload.PropertySet`` ...)."""
