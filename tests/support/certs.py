"""Certificates the TLS tests make for themselves: a CA, a server certificate it signed (for
127.0.0.1 and localhost), a client certificate it signed, and a second CA nobody trusts.

Usage::

    pki = Pki(tmp_path)        # files under tmp_path/pki
    pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key, pki.other_ca
    pki.server_context(require_client=True)     # an ssl.SSLContext for an in-process server
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki"]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    pem = serialization.Encoding.PEM
    path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class Pki:
    def __init__(self, folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
        folder = folder / "pki"
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        self._valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
        ca_key, ca_cert = self._ca("flowcollect test CA")
        self.ca = _write_cert(ca_cert, folder / "ca.pem")
        other_key, other_cert = self._ca("a CA nobody trusts")
        self.other_ca = _write_cert(other_cert, folder / "other-ca.pem")
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        server_key = _key()
        # Client use too: etcd's JSON gateway dials etcd itself with the server's certificate.
        server = self._leaf(
            ca_key,
            ca_cert,
            server_key,
            "server",
            sans,
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        self.server_cert = _write_cert(server, folder / "server.pem")
        self.server_key = _write_key(server_key, folder / "server-key.pem")
        client_key = _key()
        client = self._leaf(ca_key, ca_cert, client_key, "collector", [], ExtendedKeyUsageOID.CLIENT_AUTH)
        self.client_cert = _write_cert(client, folder / "client.pem")
        self.client_key = _write_key(client_key, folder / "client-key.pem")
        stranger_key = _key()
        stranger = self._leaf(
            other_key, other_cert, stranger_key, "stranger", [], ExtendedKeyUsageOID.CLIENT_AUTH
        )
        self.stranger_cert = _write_cert(stranger, folder / "stranger.pem")
        self.stranger_key = _write_key(stranger_key, folder / "stranger-key.pem")

    def server_context(self, require_client: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context

    def _ca(self, common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(_name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._valid[0])
            .not_valid_after(self._valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def _leaf(
        self,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        common: str,
        sans: list[x509.GeneralName],
        *usage: x509.ObjectIdentifier,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._valid[0])
            .not_valid_after(self._valid[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256())
