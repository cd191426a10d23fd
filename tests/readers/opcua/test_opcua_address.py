"""The address grammar and the reader's settings: pure, no server."""

from __future__ import annotations

import uuid

import pytest

from flowcollect.errors import ConfigError
from flowcollect.models import Variable
from flowcollect.readers import OpcUaDataReader
from flowcollect.readers.opcua import PathSegment, parse_address


@pytest.mark.parametrize(
    ("text", "namespace", "uri", "id_type", "identifier"),
    [
        ("ns=2;i=1003", 2, None, "i", 1003),
        ("i=85", 0, None, "i", 85),
        ("ns=3;s=Line1.Temp", 3, None, "s", "Line1.Temp"),
        ("ns=2;s=a;b=c", 2, None, "s", "a;b=c"),
        (
            "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            2,
            None,
            "g",
            uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63"),
        ),
        ("ns=2;b=AQL/", 2, None, "b", b"\x01\x02\xff"),
        ("nsu=urn:example:plant;s=Line1.Temp", None, "urn:example:plant", "s", "Line1.Temp"),
        ("nsu=http://x.org/UA/;i=7", None, "http://x.org/UA/", "i", 7),
    ],
)
def test_node_ids_parse(
    text: str, namespace: int | None, uri: str | None, id_type: str, identifier: object
) -> None:
    address = parse_address(text)
    assert (address.namespace, address.namespace_uri, address.id_type, address.identifier) == (
        namespace,
        uri,
        id_type,
        identifier,
    )
    assert not address.is_path
    assert address.needs_resolving == (uri is not None)


def test_browse_paths_parse_with_indexes_uris_defaults_and_escapes() -> None:
    assert parse_address("/2:Plant/2:Line1/2:Temp").path == (
        PathSegment("Plant", 2),
        PathSegment("Line1", 2),
        PathSegment("Temp", 2),
    )
    assert parse_address("/{urn:a:b}Plant/0:Server").path == (
        PathSegment("Plant", namespace_uri="urn:a:b"),
        PathSegment("Server", 0),
    )
    assert parse_address("nsu=urn:p;/Plant/3:X").path == (
        PathSegment("Plant", namespace_uri="urn:p"),
        PathSegment("X", 3),
    )
    assert parse_address("/2:A&/B/2:C&&D/E&:F").path == (
        PathSegment("A/B", 2),
        PathSegment("C&D", 2),
        PathSegment("E:F", 0),
    )
    address = parse_address("/Objects")
    assert address.is_path and address.needs_resolving


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "non-empty"),
        (" ns=2;i=1", "spaces"),
        ("ns=2;x=1", "expected a node id"),
        ("ns=2;i=-1", "integer 0..4294967295"),
        ("ns=2;i=4294967296", "integer 0..4294967295"),
        ("ns=70000;i=1", "above 65535"),
        ("ns=2;s=", "empty"),
        ("ns=2;g=not-a-guid", "not a GUID"),
        ("ns=2;b=%%%", "not base64"),
        ("ns=2;/2:Plant", "takes no ns="),
        ("/2:Plant//2:Temp", "empty segment"),
        ("/2:Plant/", "empty segment"),
        ("/{urn:x}", "no name"),
        ("/{}Plant", "namespace uri"),
        ("/2:", "no name"),
        ("/Plant&", "escapes nothing"),
        ("Temperature", "expected a node id"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_address(text)


def test_settings_problems_name_every_field_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        OpcUaDataReader(
            "",
            "http://plc:4840",
            mode="push",  # type: ignore[arg-type]
            timestamps="local",  # type: ignore[arg-type]
            security_policy="Basic128Rsa15",
            security_mode="Encrypt",
            timeout_s=0,
            min_interval_ms=0,
            max_nodes_per_read=0,
            queue_size=0,
        )
    text = str(caught.value)
    for field in (
        "type",
        "endpoint",
        "mode",
        "timestamps",
        "security_policy",
        "security_mode",
        "certificate",
        "private_key",
        "timeout_s",
        "min_interval_ms",
        "max_nodes_per_read",
        "queue_size",
    ):
        assert f"OpcUaDataReader {field}" in text, field


def test_password_never_shows_in_errors_or_repr(tmp_path: object) -> None:
    secret = "s3cr3t-Pa55"
    reader = OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840", username="ops", password=secret)
    assert secret not in repr(reader)
    assert "ops" in repr(reader)
    with pytest.raises(ConfigError) as caught:
        OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840", password=secret)
    assert "username and password" in str(caught.value)
    assert secret not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        OpcUaDataReader("opc", "opc.tcp://ops:pw@127.0.0.1:4840")
    assert "not in the URL" in str(caught.value)


def test_security_needs_a_policy_and_key_files(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="security_mode: needs a security_policy"):
        OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840", security_mode="Sign")
    with pytest.raises(ConfigError, match="server_certificate: no such file"):
        OpcUaDataReader(
            "opc",
            "opc.tcp://127.0.0.1:4840",
            security_policy="Basic256Sha256",
            certificate="c.der",
            private_key="k.pem",
            server_certificate="/nonexistent/server.der",
        )
    reader = OpcUaDataReader(
        "opc",
        "opc.tcp://127.0.0.1:4840",
        security_policy="Aes256_Sha256_RsaPss",
        certificate="c.der",
        private_key="k.pem",
    )
    assert reader.security_mode == "SignAndEncrypt"


def test_lane_pushes_validate_and_natural_type() -> None:
    poll = OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840/ua")
    sub = OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840/ua", mode="subscribe")
    assert poll.lane == "opc.tcp://127.0.0.1:4840/ua"
    assert (poll.pushes, sub.pushes) == (False, True)
    assert poll.natural_value_type("ns=2;i=1") is None
    poll.validate(Variable(id=1, address="/2:Plant/2:Temp", reader="opc"))
    with pytest.raises(ValueError, match="expected a node id"):
        poll.validate(Variable(id=1, address="Plant.Temp", reader="opc"))
    poll.endpoint = "opc.tcp://127.0.0.1:4999"
    assert poll.lane == "opc.tcp://127.0.0.1:4999"
    with pytest.raises(ConfigError):
        poll.endpoint = "tcp://x"


def test_describe_requests_chunks_by_the_limit_without_io() -> None:
    from opcua_helpers import specs

    reader = OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840", max_nodes_per_read=10)
    lines = reader.describe_requests(specs([f"ns=2;i={1000 + k}" for k in range(35)]))
    assert lines == [
        "Read: 10 node(s) (ns=2;i=1000 .. ns=2;i=1009)",
        "Read: 10 node(s) (ns=2;i=1010 .. ns=2;i=1019)",
        "Read: 10 node(s) (ns=2;i=1020 .. ns=2;i=1029)",
        "Read: 5 node(s) (ns=2;i=1030 .. ns=2;i=1034)",
    ]
    sub = OpcUaDataReader("opc", "opc.tcp://127.0.0.1:4840", mode="subscribe", max_items_per_call=20)
    lines = sub.describe_requests(
        [*specs([f"ns=2;i={k}" for k in range(30)]), *specs(["ns=2;i=99"], interval_ms=1000)]
    )
    assert lines == [
        "monitored items: 31 (30 every 100 ms, 1 every 1000 ms), pushed by the server, no request per tick; "
        "created once in 2 CreateMonitoredItems call(s) of at most 20"
    ]
