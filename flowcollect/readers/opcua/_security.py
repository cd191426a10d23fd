"""Security settings: policy names, and the client's certificate generated once and kept.

A client certificate that is regenerated at every start must be trusted again by the server at
every start; so a missing certificate and key are generated once, at the paths the user gave,
and from then on only loaded. If only one of the two exists, nothing is generated (that would
orphan the other): the reader reports the missing one instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Final

from asyncua import ua
from asyncua.crypto import security_policies

__all__ = [
    "APPLICATION_URI",
    "MODES",
    "POLICIES",
    "ensure_client_certificate",
    "file_format",
]

APPLICATION_URI: Final = "urn:flowcollect:client"
"""The client's application URI: the certificate's subject alternative name carries it."""

POLICIES: Final[dict[str, type[security_policies.SecurityPolicy]]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
"""The policies with security; ``None`` (or no policy) is the unsecured one."""

MODES: Final[dict[str, ua.MessageSecurityMode]] = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


def ensure_client_certificate(certificate: Path, private_key: Path) -> bool:
    """Generate a self-signed client certificate and key when neither file exists.

    Returns True when it generated them. Raises ``FileNotFoundError`` naming the missing file
    when only one of them exists: the other would no longer match it.
    """
    has_cert, has_key = certificate.is_file(), private_key.is_file()
    if has_cert and has_key:
        return False
    if has_cert != has_key:
        missing = private_key if has_cert else certificate
        present = certificate if has_cert else private_key
        raise FileNotFoundError(
            f"{missing} is missing but {present} exists; restore it, or remove both to have a new "
            "pair generated (the server must then trust the new certificate)"
        )
    from asyncua.crypto.cert_gen import generate_private_key, generate_self_signed_app_certificate
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    host = socket.gethostname()
    cert = generate_self_signed_app_certificate(
        key,
        APPLICATION_URI,
        {"organizationName": "flowcollect"},
        [x509.UniformResourceIdentifier(APPLICATION_URI), x509.DNSName(host)],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=3650,
    )
    for path in (certificate, private_key):
        path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # The key is written readable by its owner only, before any byte of it is in the file.
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    certificate.write_bytes(
        cert.public_bytes(Encoding.PEM if certificate.suffix.lower() == ".pem" else Encoding.DER)
    )
    return True


def file_format(path: Path) -> str:
    """``"pem"`` or ``"der"``, from the file's content (asyncua would guess from its suffix)."""
    with path.open("rb") as handle:
        head = handle.read(64)
    return "pem" if b"-----BEGIN" in head else "der"
