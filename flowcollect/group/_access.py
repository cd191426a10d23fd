"""How a group reaches its etcd: TLS (CA, client certificate) and user/password authentication.

Given in code as ``EtcdAccess(...)``, or (the CLI's way, like etcdctl's ``ETCDCTL_*``) from the
environment with ``EtcdAccess.from_env()``:

| variable | meaning |
| --- | --- |
| ``FLOWCOLLECT_ETCD_CA`` | CA file to verify etcd's certificate (turns TLS on) |
| ``FLOWCOLLECT_ETCD_CERT``, ``FLOWCOLLECT_ETCD_KEY`` | client certificate and key (turn TLS on) |
| ``FLOWCOLLECT_ETCD_TLS`` | ``1``: TLS with the system's CAs |
| ``FLOWCOLLECT_ETCD_TLS_VERIFY`` | ``0``: do not verify etcd's certificate (tests only) |
| ``FLOWCOLLECT_ETCD_USER`` | etcd user name (etcd's auth must be enabled) |
| ``FLOWCOLLECT_ETCD_PASSWORD`` / ``FLOWCOLLECT_ETCD_PASSWORD_FILE`` | its password, or a file holding it |
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flowcollect._deadline import tls_context
from flowcollect._secret import Secret, SecretLike, secret_from_file
from flowcollect.errors import ConfigError

__all__ = ["EtcdAccess"]

_ENV = "FLOWCOLLECT_ETCD_"


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """TLS and credentials for etcd. TLS is on when ``tls`` is True or any file is given; the
    server's certificate is verified (against ``ca_file``, else the system's CAs) unless
    ``tls_verify`` is False. ``password`` is a ``Secret`` (or str); ``repr`` shows ``<set>``."""

    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_verify: bool = True
    username: str | None = None
    password: SecretLike | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if self.key_file is not None and self.cert_file is None:
            problems.append("etcd key_file: given without cert_file")
        if self.username is not None and not self.username:
            problems.append("etcd username: must not be empty")
        if self.password is not None and self.username is None:
            problems.append("etcd password: given without a username")
        if self.username is not None and not self.password:
            problems.append(f"etcd password: required with username {self.username!r}")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                problems.append(f"etcd {name}: {value} is not a readable file")
        if problems:
            raise ConfigError(problems)

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(v is not None for v in (self.ca_file, self.cert_file))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (its sockets keep each call's deadline), or None without TLS."""
        if not self.uses_tls:
            return None
        try:
            context = tls_context(self.ca_file, verify=self.tls_verify)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"etcd TLS files: cannot load: {type(exc).__name__}: {exc}") from None
        return context

    def secret(self) -> str | None:
        password = self.password
        return password.reveal() if isinstance(password, Secret) else password

    def __repr__(self) -> str:
        shown = [f"tls={self.uses_tls}"]
        files = ("ca_file", "cert_file", "key_file")
        shown += [f"{n}={getattr(self, n)!r}" for n in files if getattr(self, n)]
        if not self.tls_verify:
            shown.append("tls_verify=False")
        if self.username is not None:
            shown += [f"username={self.username!r}", "password=<set>"]
        return f"EtcdAccess({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EtcdAccess:
        """From ``FLOWCOLLECT_ETCD_*`` (see the module's table); empty when none is set."""
        source = os.environ if environ is None else environ
        env = {k[len(_ENV) :]: v for k, v in source.items() if k.startswith(_ENV) and v}
        password: SecretLike | None = None
        if "PASSWORD_FILE" in env:
            password = secret_from_file(env["PASSWORD_FILE"])
        elif "PASSWORD" in env:
            password = Secret(env["PASSWORD"], f"env {_ENV}PASSWORD")
        return cls(
            tls=env.get("TLS", "0") not in ("0", "false", "no"),
            ca_file=env.get("CA"),
            cert_file=env.get("CERT"),
            key_file=env.get("KEY"),
            tls_verify=env.get("TLS_VERIFY", "1") not in ("0", "false", "no"),
            username=env.get("USER"),
            password=password,
        )
