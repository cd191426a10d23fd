"""Modbus/TCP Security: the reader against pymodbus's TLS server, with certificates the tests make.

Nothing is mocked: the simulator serves Modbus over TLS (pymodbus's ``ModbusTlsServer``) with a
server certificate from a CA made here; the reader's line dials, verifies and reads as it would
a PLC's port 802.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from modbus_helpers import LoopThread, collected, on_loop, wait_until

from flowcollect.errors import ConfigError
from flowcollect.readers.modbus import ModbusDataReader, ModbusLine
from flowcollect.simulator import Simulator
from tests.support.certs import Pki

ADDRESSES = ["holding:1005", "holding:148:uint32"]
EXPECTED = [5, 3_456_789_012]  # the simulator's fixed registers (see docs/modbus.md)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A plant CA, the device's certificate (127.0.0.1 and localhost), a collector's client
    certificate, and a second CA that signed nothing of this device."""
    return Pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def device(pki: Pki) -> Iterator[Simulator]:
    with Simulator(sslctx=pki.server_context()) as simulator:
        yield simulator


REFUSED = {
    # pymodbus's server closes without an alert: the client can only say when it saw the close.
    ssl.TLSVersion.TLSv1_2: "not connected: TLS: closed by the device during the handshake "
    "(does it accept this client's certificate?)",
    # TLS 1.3 checks the client's certificate after the client's handshake is done.
    ssl.TLSVersion.TLSv1_3: "connection lost: closed by the device before any answer "
    "(does it accept this client's certificate?)",
}


@pytest.fixture(params=sorted(REFUSED), ids=lambda v: v.name)
def strict_device(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[Simulator, str]]:
    """A device that asks for a client certificate, and what a client without one is told."""
    ctx = pki.server_context(require_client=True)
    ctx.maximum_version = request.param
    with Simulator(sslctx=ctx) as simulator:
        yield simulator, REFUSED[request.param]


def routed(path: LoopThread | None, reader: ModbusDataReader) -> ModbusDataReader:
    """The reader, read on the event loop when ``path`` is one (``path`` fixture)."""
    return reader if path is None else on_loop(reader, path)


def read(reader: ModbusDataReader) -> tuple[list[object], list[str | None]]:
    variables = collected(ADDRESSES)
    reader.read(variables)
    return [v.value for v in variables], [v.error for v in variables]


def test_a_device_whose_certificate_the_ca_signed_is_read_over_tls(
    device: Simulator, pki: Pki, path: LoopThread | None
) -> None:
    reader = routed(path, ModbusDataReader("plc", "127.0.0.1", port=device.port, tls=True, ca_file=pki.ca))
    try:
        assert reader.lane == f"modbus+tls://127.0.0.1:{device.port}"
        assert read(reader) == (EXPECTED, [None, None])
        assert read(reader) == (EXPECTED, [None, None])
        assert reader.stats()["connected"] == 1
        assert device.connections == 1
    finally:
        reader.close()


def test_verification_is_on_by_default(device: Simulator, path: LoopThread | None) -> None:
    # No ca_file: the system's CAs, which never signed this device's certificate.
    reader = routed(path, ModbusDataReader("plc", "127.0.0.1", port=device.port, tls=True))
    try:
        values, errors = read(reader)
        assert values == [None, None]
        assert errors[0] is not None
        assert errors[0].startswith("not connected: TLS: certificate verify failed: "), errors[0]
        assert device.requests == 0
    finally:
        reader.close()


def test_a_certificate_from_another_ca_or_for_another_name_is_refused(
    device: Simulator, pki: Pki, path: LoopThread | None
) -> None:
    untrusting = routed(
        path, ModbusDataReader("a", "127.0.0.1", port=device.port, tls=True, ca_file=pki.other_ca)
    )
    wrong_name = routed(
        path,
        ModbusDataReader(
            "b", "localhost", port=device.port, tls=True, ca_file=pki.ca, server_name="plc.example"
        ),
    )
    try:
        assert read(untrusting)[1][0] == (
            "not connected: TLS: certificate verify failed: unable to get local issuer certificate"
        )
        error = read(wrong_name)[1][0]
        assert error is not None
        assert error.startswith("not connected: TLS: certificate verify failed: Hostname mismatch"), error
        assert device.requests == 0
    finally:
        untrusting.close()
        wrong_name.close()


def test_tls_verify_false_accepts_any_certificate_and_name(
    device: Simulator, path: LoopThread | None
) -> None:
    reader = routed(
        path,
        ModbusDataReader(
            "plc", "127.0.0.1", port=device.port, tls=True, tls_verify=False, server_name="plc.example"
        ),
    )
    try:
        assert read(reader) == (EXPECTED, [None, None])
    finally:
        reader.close()


def test_a_device_asking_for_a_client_certificate_gets_the_collectors(
    strict_device: tuple[Simulator, str], pki: Pki, path: LoopThread | None
) -> None:
    device, refused = strict_device
    anonymous = routed(path, ModbusDataReader("a", "127.0.0.1", port=device.port, tls=True, ca_file=pki.ca))
    known = routed(
        path,
        ModbusDataReader(
            "b",
            line=ModbusLine(
                host="localhost",
                port=device.port,
                tls=True,
                ca_file=pki.ca,
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            ),
        ),
    )
    try:
        # Without one the device refuses: in the handshake (TLS 1.2) or at the first request
        # (TLS 1.3); either way no value, the reason points at the certificate, and the line
        # backs off (a device is not asked for a handshake every tick).
        assert read(anonymous) == ([None, None], [refused, refused])
        assert read(anonymous) == ([None, None], [refused, refused])
        assert anonymous.stats()["connect_attempts"] == 1
        assert read(known) == (EXPECTED, [None, None])
        assert device.requests >= 1
    finally:
        anonymous.close()
        known.close()


def test_tls_settings_are_checked_by_name_before_anything_opens(tmp_path: Path, pki: Pki) -> None:
    line = ModbusLine(host="plc.example", tls=True, ca_file=pki.ca)
    assert (line.port, line.key) == (802, "modbus+tls://plc.example:802")
    assert line.tls is not None and line.tls.ca_file == str(pki.ca)
    assert ModbusDataReader("plc", "plc2.example", tls=True).port == 802
    assert ModbusDataReader("plc", "plc3.example").lane == "modbus+tcp://plc3.example:502"
    cases: list[tuple[dict[str, object], str]] = [
        ({"ca_file": tmp_path / "missing.pem"}, "ModbusLine ca_file: cannot load"),
        ({"ca_file": pki.client_key}, "ModbusLine ca_file: cannot load"),
        ({"cert_file": pki.client_cert, "key_file": tmp_path / "missing.key"}, "cert_file/key_file: cannot"),
        ({"key_file": pki.client_key}, "ModbusLine key_file: given without cert_file"),
        ({"tls_verify": "yes"}, "ModbusLine tls_verify: must be True or False"),
        ({"server_name": ""}, "ModbusLine server_name: must be a non-empty str"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            ModbusLine(host="plc.example", tls=True, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ModbusLine ca_file: only with tls=True"):
        ModbusLine(host="plc.example", ca_file=pki.ca)
    with pytest.raises(ConfigError, match="Modbus/TCP Security is Modbus TCP only"):
        ModbusLine(host="gw.example", port=4001, framer="rtu", tls=True)
    with pytest.raises(ConfigError, match="ModbusDataReader ca_file: cannot load"):
        ModbusDataReader("plc", "plc4.example", tls=True, ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="give the TLS settings to the ModbusLine, not its readers"):
        ModbusDataReader("plc", line=line, ca_file=pki.ca)


def test_abort_ends_a_read_stuck_on_a_tls_device_at_once(pki: Pki, path: LoopThread | None) -> None:
    # The collector's close deadline gave up on this read (a device taking 5 s, a timeout of
    # 30 s): abort from another thread shuts the TLS connection down under it.
    with Simulator(sslctx=pki.server_context(), response_delay_s=5.0) as slow:
        reader = routed(
            path,
            ModbusDataReader("plc", "127.0.0.1", port=slow.port, tls=True, ca_file=pki.ca, timeout_s=30.0),
        )
        reader.open()
        outcome: list[tuple[tuple[list[object], list[str | None]], float]] = []

        def stuck() -> None:
            started = time.monotonic()
            result = read(reader)
            outcome.append((result, time.monotonic() - started))

        thread = threading.Thread(target=stuck, daemon=True)
        thread.start()
        assert wait_until(lambda: slow.requests >= 1, timeout_s=5.0)
        reader.abort()
        thread.join(2.0)
        assert not thread.is_alive(), "the read outlived abort()"
        (values, errors), took = outcome[0]
        assert took < 2.0
        assert values == [None, None]
        assert errors == ["closed", "closed"]  # the collector's doing: no "connection lost"
        assert reader.stats()["connected"] == 0


class _MuteServer:
    """Accepts one TCP connection, reads whatever comes (a TLS hello) and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.received = 0
        self.hung_up = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.hung_up.set()
                    return
                self.received += len(data)


def test_abort_ends_a_tls_handshake_the_device_never_finishes(path: LoopThread | None) -> None:
    device = _MuteServer()
    reader = routed(
        path,
        ModbusDataReader("plc", "127.0.0.1", port=device.port, tls=True, tls_verify=False, timeout_s=30.0),
    )
    outcome: list[tuple[list[str | None], float]] = []

    def stuck() -> None:
        started = time.monotonic()
        errors = read(reader)[1]
        outcome.append((errors, time.monotonic() - started))

    thread = threading.Thread(target=stuck, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: device.received > 0, timeout_s=5.0)  # the hello arrived
        reader.abort()
        thread.join(2.0)
        assert not thread.is_alive(), "the handshake outlived abort()"
        errors, took = outcome[0]
        assert took < 2.0
        assert errors == ["closed", "closed"]
        assert device.hung_up.wait(2.0), "the device's connection stayed open"
    finally:
        device.listener.close()


def test_the_files_are_loaded_again_at_each_connect(device: Simulator, pki: Pki, tmp_path: Path) -> None:
    # A CA file replaced on disk (a renewal) is what the next connect trusts; one gone is that
    # connect's failure, said as such, not an exception out of read().
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.other_ca.read_bytes())
    reader = ModbusDataReader("plc", "127.0.0.1", port=device.port, tls=True, ca_file=ca_file)
    try:
        assert read(reader)[1][0] == (
            "not connected: TLS: certificate verify failed: unable to get local issuer certificate"
        )
        ca_file.unlink()
        reader.close()
        gone = f"not connected: TLS files did not load (no such file or directory): ca_file {str(ca_file)!r}"
        assert read(reader)[1] == [gone, gone]
        ca_file.write_bytes(pki.ca.read_bytes())
        reader.close()
        assert read(reader) == (EXPECTED, [None, None])
    finally:
        reader.close()
