"""The InfluxDB writer over TLS, with certificates the test makes: VictoriaMetrics with ``-tls``
(its own CA given as ``ca_file``, verification on by default), and an in-process server that
demands a client certificate (VictoriaMetrics' open-source build verifies none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowcollect import ConfigError
from flowcollect.errors import PreflightError
from flowcollect.writers import InfluxDBDataWriter
from tests.support.certs import Pki
from tests.support.hostile import HostileServer, respond
from tests.support.victoria import Factory, sample_count

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def preflight(writer: InfluxDBDataWriter) -> str:
    try:
        writer.preflight()
    except PreflightError as exc:
        return str(exc)
    finally:
        writer.close()
    return "ok"


@pytest.mark.server
def test_values_reach_victoriametrics_over_tls_verified_against_the_ca_file(
    pki: Pki, victoria_factory: Factory
) -> None:
    server = victoria_factory(
        args=["-tls", f"-tlsCertFile={pki.server_cert}", f"-tlsKeyFile={pki.server_key}"], tls_ca=pki.ca
    )
    assert server.url.startswith("https://")
    writer = InfluxDBDataWriter(server.url, token="t", org="o", bucket="b", ca_file=pki.ca, timeout_s=5)
    assert preflight(writer) == "ok"
    writer = InfluxDBDataWriter(
        server.url, token="t", org="o", bucket="b", ca_file=pki.ca, measurement="tls", timeout_s=5
    )
    try:
        writer.sender.submit(
            [f"tls,variable={i} value={i} {1_700_000_000_000_000_000 + i * 1_000_000}" for i in range(50)]
        )
        writer.flush()
        assert writer.sender.stats().written == 50
    finally:
        writer.close()
    assert sample_count(server.wait_for_samples('{__name__="tls_value"}', 50)) == 50

    # Verification is on by default: without the CA (the system's CAs do not know it), with a
    # CA that did not sign the server's certificate, the server is refused; nothing is lost.
    for ca, hint in (
        (None, "give the CA that signed the server's certificate as ca_file"),
        (pki.other_ca, "did not sign the server's certificate"),
    ):
        writer = InfluxDBDataWriter(server.url, token="t", org="o", bucket="b", ca_file=ca, timeout_s=2)
        text = preflight(writer)
        assert "cannot reach" in text and "CERTIFICATE_VERIFY_FAILED" in text and hint in text
    writer = InfluxDBDataWriter(server.url, token="t", org="o", bucket="b", timeout_s=2)
    try:
        writer.sender.submit(["tls2 value=1 1700000000000000000"])
        writer.flush()
        stats = writer.sender.stats()
        assert (
            stats.written == 0
            and stats.buffered == 1
            and "CERTIFICATE_VERIFY_FAILED" in str(stats.last_error)
        )
    finally:
        writer.close()
    # Switched off on purpose, it connects.
    writer = InfluxDBDataWriter(server.url, token="t", org="o", bucket="b", tls_verify=False, timeout_s=5)
    assert preflight(writer) == "ok"


def test_a_client_certificate_is_presented_when_the_server_demands_one(pki: Pki) -> None:
    with HostileServer(tls=pki.server_context(require_client=True)) as server:
        server.answer = respond(204)
        base = {"api": "v1", "database": "plant", "ca_file": pki.ca, "timeout_s": 3.0}
        ok = InfluxDBDataWriter(server.url, cert_file=pki.client_cert, key_file=pki.client_key, **base)  # type: ignore[arg-type]
        assert preflight(ok) == "ok"
        assert "cannot reach" in preflight(InfluxDBDataWriter(server.url, **base))  # type: ignore[arg-type]
        stranger = InfluxDBDataWriter(
            server.url,
            cert_file=pki.stranger_cert,
            key_file=pki.stranger_key,
            **base,  # type: ignore[arg-type]
        )
        assert "cannot reach" in preflight(stranger)


def test_tls_settings_are_checked_before_anything_starts(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        InfluxDBDataWriter("http://h:1", token="t", org="o", bucket="b", ca_file=pki.ca)
    assert "ca_file: TLS settings need an https:// url" in str(caught.value)
    with pytest.raises(ConfigError, match="ca_file: cannot load"):
        InfluxDBDataWriter("https://h:1", token="t", org="o", bucket="b", ca_file=tmp_path / "none.pem")
    with pytest.raises(ConfigError, match="cert_file, key_file: cannot load"):
        InfluxDBDataWriter(
            "https://h:1", token="t", org="o", bucket="b", cert_file=pki.client_cert, key_file=pki.server_key
        )
    with pytest.raises(ConfigError, match="key_file: given without cert_file"):
        InfluxDBDataWriter("https://h:1", token="t", org="o", bucket="b", key_file=pki.client_key)


def test_a_certificate_for_another_host_is_refused_and_said_so(tmp_path: Path) -> None:
    pki = Pki(tmp_path, hosts=("influx.example",))
    with HostileServer(tls=pki.server_context()) as server:
        server.answer = respond(204)
        text = preflight(
            InfluxDBDataWriter(server.url, api="v1", database="plant", ca_file=pki.ca, timeout_s=3)
        )
    assert "CERTIFICATE_VERIFY_FAILED" in text
    assert "the server's certificate is not for '127.0.0.1'" in text
