"""Security against an in-process server that offers only secured endpoints and wants a user."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opcua_helpers import read, specs, wait_for

from flowcollect import secret_from_env
from flowcollect.errors import ConfigError
from flowcollect.pipeline import load_pipeline
from flowcollect.readers import OpcUaDataReader
from flowcollect.readers.opcua._security import ensure_client_certificate
from flowcollect.simulator.opcua import OpcUaSimulator

USER, PASSWORD = "ops", "r1ght-Pa55"


@pytest.fixture(scope="module")
def client_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("client")
    cert, key = directory / "client-cert.der", directory / "client-key.pem"
    assert ensure_client_certificate(cert, key) is True
    return cert, key


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, client_files: tuple[Path, Path]
) -> Iterator[OpcUaSimulator]:
    with OpcUaSimulator(
        security=True,
        allow_none=False,
        certificate_dir=tmp_path_factory.mktemp("server"),
        users={USER: PASSWORD},
        trusted_clients=[client_files[0]],
    ) as simulator:
        yield simulator


def make(secured: OpcUaSimulator, cert: Path, key: Path, **options: object) -> OpcUaDataReader:
    settings: dict[str, object] = {
        "security_policy": "Basic256Sha256",
        "security_mode": "SignAndEncrypt",
        "certificate": cert,
        "private_key": key,
        "server_certificate": secured.server_certificate,
        "username": USER,
        "password": PASSWORD,
        "timeout_s": 3.0,
    }
    settings.update(options)
    return OpcUaDataReader("secure-plc", secured.endpoint, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        ("Basic256Sha256", "Sign"),
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Aes128_Sha256_RsaOaep", "Sign"),
        ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "Sign"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
    ],
)
def test_each_policy_and_mode_reads(
    secured: OpcUaSimulator, client_files: tuple[Path, Path], policy: str, mode: str
) -> None:
    reader = make(secured, *client_files, security_policy=policy, security_mode=mode)
    reader.open()
    try:
        assert reader.wait_connected(20), reader.connection_error
        batch = read(reader, specs([secured.node_id("Types/Double")]))
        assert (batch.values, batch.errors) == ([2.25], [None])
    finally:
        reader.close()


def test_the_password_may_be_a_secret_from_the_environment(
    secured: OpcUaSimulator, client_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPCUA_TEST_PASSWORD", PASSWORD)
    reader = make(secured, *client_files, password=secret_from_env("OPCUA_TEST_PASSWORD"))
    assert PASSWORD not in repr(reader)
    reader.open()
    try:
        assert reader.wait_connected(20), reader.connection_error
        batch = read(reader, specs([secured.node_id("Types/Double")]))
        assert (batch.values, batch.errors) == ([2.25], [None])
    finally:
        reader.close()


def test_unsecured_access_to_a_secured_only_server_says_what_it_offers(secured: OpcUaSimulator) -> None:
    reader = OpcUaDataReader("plain-plc", secured.endpoint, username=USER, password=PASSWORD, timeout_s=3.0)
    reader.open()
    try:
        assert wait_for(lambda: "opcua reader 'plain-plc'" in (reader.connection_error or ""), 15)
        assert not reader.connected
        batch = read(reader, specs([secured.node_id("Types/Double")]))
        assert batch.values == [None] and batch.errors[0] == reader.connection_error
    finally:
        reader.close()


def test_a_wrong_password_is_a_clear_error_naming_the_reader(
    secured: OpcUaSimulator, client_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flowcollect")
    wrong = "wr0ng-Pa55"
    reader = make(secured, *client_files, password=wrong)
    reader.open()
    try:
        assert wait_for(lambda: "Bad" in (reader.connection_error or ""), 20)
        error = reader.connection_error or ""
        assert error.startswith("not connected (opcua reader 'secure-plc'): ")
        assert "the server refused the user (username='ops'; check username and password)" in error
        assert wrong not in error and wrong not in repr(reader)
        batch = read(reader, specs([secured.node_id("Types/Double")]))
        assert batch.errors == [error] and batch.values == [None]
    finally:
        reader.close()
    assert any("secure-plc" in r.getMessage() for r in caplog.records)  # the reader said why...
    assert all(wrong not in r.getMessage() for r in caplog.records)  # ...without the password


def test_an_untrusted_client_certificate_is_a_clear_error_and_is_generated_only_once(
    secured: OpcUaSimulator, tmp_path: Path
) -> None:
    cert, key = tmp_path / "pki" / "new-cert.pem", tmp_path / "pki" / "new-key.pem"
    reader = make(secured, cert, key)
    reader.open()
    try:
        assert cert.is_file() and key.is_file()
        assert key.stat().st_mode & 0o777 == 0o600
        assert wait_for(lambda: "certificate" in (reader.connection_error or ""), 20)
        error = reader.connection_error or ""
        assert error.startswith("not connected (opcua reader 'secure-plc'): Bad")
        assert f"the server does not accept this client's certificate (certificate={cert})" in error
    finally:
        reader.close()
    first = (cert.read_bytes(), key.read_bytes())
    again = make(secured, cert, key)
    again.open()
    again.close()
    assert (cert.read_bytes(), key.read_bytes()) == first  # kept, never regenerated
    key.unlink()
    with pytest.raises(
        ConfigError, match="OpcUaDataReader private_key: the file is missing but the certificate"
    ):
        make(secured, cert, key)


def test_a_server_certificate_other_than_the_trusted_one_is_refused(
    secured: OpcUaSimulator, client_files: tuple[Path, Path]
) -> None:
    reader = make(secured, *client_files, server_certificate=client_files[0])
    reader.open()
    try:
        assert wait_for(lambda: "trusted one" in (reader.connection_error or ""), 15)
        assert (reader.connection_error or "").startswith("not connected (opcua reader 'secure-plc'): ")
    finally:
        reader.close()


def test_secured_readers_on_the_engines_loop_read_and_make_their_key_pair_off_the_loop(
    secured: OpcUaSimulator, client_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a collector the secured session lives on the engine's loop; a key pair still to be
    generated is made on a thread before the first connection (never on the loop), and a server
    that does not trust it says so in the values."""
    import threading

    import flowcollect.readers.opcua.reader as reader_module
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.writers.memory import MemoryDataWriter

    made_on: list[str] = []

    def ensure(certificate: Path, private_key: Path) -> bool:  # the real one, its thread noted
        made_on.append(threading.current_thread().name)
        return ensure_client_certificate(certificate, private_key)

    monkeypatch.setattr(reader_module, "ensure_client_certificate", ensure)
    fresh_cert, fresh_key = tmp_path / "new-cert.der", tmp_path / "new-key.pem"
    trusted = make(secured, *client_files)
    untrusted = OpcUaDataReader(
        "new-plc",
        secured.endpoint + "/new",
        security_policy="Basic256Sha256",
        certificate=fresh_cert,
        private_key=fresh_key,
        server_certificate=secured.server_certificate,
        username=USER,
        password=PASSWORD,
        timeout_s=3.0,
    )
    writer = MemoryDataWriter()
    node = secured.node_id("Types/Double")
    with DataCollector(readers=[trusted, untrusted], writers=[writer]) as collector:
        for cid, reader in ((1, "secure-plc"), (2, "new-plc")):
            variables = [Variable(id=1, address=node, value_type="float", reader=reader)]
            collector.start(
                DataCollectionContext(id=cid, variables=variables, interval_ms=200, duration_s=60)
            )
        assert wait_for(lambda: any(v.context_id == 1 and v.value == 2.25 for v in writer.snapshot()), 20)
        assert wait_for(
            lambda: any(
                v.context_id == 2 and "does not accept this client's certificate" in (v.error or "")
                for v in writer.snapshot()
            ),
            20,
        )
        assert not [t.name for t in threading.enumerate() if t.name.startswith("flowcollect-opcua")]
        for cid in (1, 2):
            collector.stop(cid)
    assert fresh_cert.is_file() and fresh_key.is_file()
    assert made_on and "flowcollect-loop" not in made_on, made_on
    assert all(v.error is None for v in writer.snapshot() if v.context_id == 1)


def test_browse_with_security_prints_a_pipeline_that_connects_as_the_browse_did(
    secured: OpcUaSimulator,
    client_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``flowcollect browse --format python`` against a server that wants a secured channel and a
    user: the printed file carries the security options and the user (the password by its
    variable, never its text), so it runs as printed."""
    cert, key = client_files
    done = subprocess.run(
        [sys.executable, "-m", "flowcollect", "browse", secured.endpoint,
         "--match", "/2:Plant/2:Types/2:Double", "--format", "python",
         "--security-policy", "Basic256Sha256", "--security-mode", "SignAndEncrypt",
         "--certificate", str(cert), "--private-key", str(key),
         "--server-certificate", str(secured.server_certificate),
         "--username", USER, "--password-env", "BROWSE_TEST_PASSWORD", "--timeout", "5"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "BROWSE_TEST_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout
    assert 'password=secret_from_env("BROWSE_TEST_PASSWORD")' in done.stdout
    assert f'certificate="{cert.resolve()}"' in done.stdout
    file = tmp_path / "browsed.py"
    file.write_text(done.stdout)
    monkeypatch.setenv("BROWSE_TEST_PASSWORD", PASSWORD)
    pipeline = load_pipeline(file)
    assert pipeline.check() == []
    rows = pipeline.read_once(timeout_s=20).rows
    assert [(row.name, row.value, row.error) for row in rows] == [("Plant/Types/Double", 2.25, None)]
