"""Where the broker is (``mqtt://`` / ``mqtts://`` URLs) and how to connect to it (options)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from flowcollect._secret import Secret

__all__ = ["MqttEndpoint", "MqttOptions", "Protocol", "TlsOptions", "options_problems", "parse_url"]

Protocol = Literal["5", "3.1.1"]
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """A broker's address: host, port, and whether the connection is TLS (``mqtts://``)."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_url(url: object) -> MqttEndpoint:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; raises ``ValueError`` saying what is wrong.

    Credentials in the URL are refused (they would show wherever the URL is printed): use the
    ``username`` and ``password`` options. The text of an error never repeats the URL's user part.
    """
    if not isinstance(url, str):
        raise ValueError(f"must be a str like mqtt://host:1883, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"must start with mqtt:// or mqtts://, got scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); use username= and password=")
    if not parts.hostname:
        raise ValueError(f"names no host: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must be only scheme://host:port, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port: {url!r}") from None
    return MqttEndpoint(parts.hostname, port or _DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")


class TlsOptions(BaseModel):
    """TLS for ``mqtts://``: the CA that signed the broker's certificate (None: the system's CAs),
    a client certificate and key when the broker asks for one, and ``insecure=True`` to accept
    any certificate (a self-signed test broker; never the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    """The client certificate's private key (PEM, unencrypted); None with ``cert_file``: the key
    is in the certificate's file."""
    insecure: bool = False
    """Do not verify the broker's certificate nor its host name. For test brokers only."""

    @field_validator("key_file")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: Any) -> Path | None:
        if value is not None and info.data.get("cert_file") is None:
            raise ValueError("key_file given without cert_file")
        return value

    def context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` from these files; ``OSError``/``ssl.SSLError`` if they do not load."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file is not None else None)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(
                str(self.cert_file), str(self.key_file) if self.key_file is not None else None
            )
        return ctx


class MqttOptions(BaseModel):
    """How to connect, shared by every MQTT writer and reader. ``password`` is kept as a
    ``SecretStr``: it shows as ``**********`` in ``repr``, dumps and errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    client_id: str | None = Field(default=None, min_length=1, max_length=65535)
    """None: a random id per connection (a clean session every time)."""
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    tls: TlsOptions | None = None
    protocol: Protocol = "5"
    keepalive_s: int = Field(default=30, ge=5, le=65535)

    @field_validator("password", mode="before")
    @classmethod
    def _plain_or_secret(cls, value: object) -> object:
        # A plain str, flowcollect's Secret (secret_from_env, secret_from_file), pydantic's
        # SecretStr: kept as a SecretStr either way.
        if isinstance(value, Secret):
            value = value.reveal()
        getter = getattr(value, "get_secret_value", None)
        if callable(getter):
            value = getter()
        if isinstance(value, str) and not value:
            raise ValueError("must not be empty (leave it out for no password)")
        return value

    def password_text(self) -> str | None:
        return None if self.password is None else self.password.get_secret_value()


def options_problems(
    where: str, url: object, **options: Any
) -> tuple[MqttEndpoint | None, MqttOptions | None, list[str]]:
    """Check a writer's or reader's url and connection options together; every problem is one line
    naming ``where`` and the field, never a password. ``tls`` may be a ``TlsOptions``, a mapping of
    its fields, or True (``mqtts://`` with the system's CAs)."""
    problems: list[str] = []
    endpoint: MqttEndpoint | None = None
    try:
        endpoint = parse_url(url)
    except ValueError as exc:
        problems.append(f"{where} url: {exc}")
    if options.get("tls") is True:
        options["tls"] = TlsOptions()
    elif options.get("tls") is False:
        options["tls"] = None
    parsed: MqttOptions | None = None
    try:
        parsed = MqttOptions(**options)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "options"
            problems.append(f"{where} {field}: {error['msg']}")
    if endpoint is not None and parsed is not None:
        if parsed.tls is not None and not endpoint.tls:
            problems.append(f"{where} tls: given with a mqtt:// url; use mqtts:// for TLS")
        if parsed.password is not None and parsed.username is None:
            problems.append(f"{where} password: given without a username")
    return endpoint, parsed, problems
