"""Connect and authenticate once, with a deadline, and say in one line why it failed."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import uuid
from typing import Any

from paho.mqtt.enums import MQTTErrorCode

from flowcollect.errors import PreflightError
from flowcollect.mqtt._connection import make_client
from flowcollect.mqtt._options import MqttEndpoint, MqttOptions, TlsOptions

__all__ = ["preflight"]


def preflight(endpoint: MqttEndpoint, options: MqttOptions, timeout_s: float = 10.0) -> None:
    """Open a connection of its own (a random client id, so a running collector's session is not
    taken over), wait for the broker's CONNACK, disconnect. Raises ``PreflightError`` with the
    cause: an unknown host, nothing listening, a refused TLS handshake or certificate, bad
    credentials, no answer within ``timeout_s``. The whole attempt, name lookup included, is
    bounded by ``timeout_s`` (plus a second)."""
    outcome: list[str | None] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_attempt(endpoint, options, timeout_s)),
        name="flowcollect-mqtt-preflight",
        daemon=True,
    )
    worker.start()
    worker.join(timeout_s + 1.0)
    if not outcome:
        raise PreflightError(f"no answer from the MQTT broker at {endpoint} within {timeout_s:g} s")
    if outcome[0] is not None:
        raise PreflightError(outcome[0])


def _attempt(endpoint: MqttEndpoint, options: MqttOptions, timeout_s: float) -> str | None:  # noqa: PLR0911 - a line per cause
    where = f"the MQTT broker at {endpoint}"
    try:
        client = make_client(endpoint, options, f"flowcollect-preflight-{uuid.uuid4().hex[:8]}")
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load the TLS files for {where}: {_ssl_text(exc)}"
    if endpoint.tls:
        # The handshake first, on a socket of our own: paho leaks the socket of a failed one.
        problem = _tls_probe(endpoint, options, where, timeout_s)
        if problem is not None:
            return problem
    client.connect_timeout = timeout_s
    answer: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.append(reason)
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=options.keepalive_s)
        while not answer and time.monotonic() < deadline:
            rc = client.loop(timeout=0.1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not answer:
                hint = " (does it require a TLS client certificate?)" if endpoint.tls else ""
                return f"{where} closed the connection before accepting it{hint}"
    except OSError as exc:  # ssl.SSLError and socket.gaierror are OSErrors
        return _connect_error(endpoint, where, timeout_s, exc)
    finally:
        with contextlib.suppress(Exception):  # a connection that may already be gone
            client.disconnect()
    if not answer:
        return f"{where} did not answer the connection within {timeout_s:g} s"
    if answer[0].is_failure:
        return f"{where} refused the connection: {answer[0]}"
    return None


def _tls_probe(endpoint: MqttEndpoint, options: MqttOptions, where: str, timeout_s: float) -> str | None:
    tls = options.tls if options.tls is not None else TlsOptions()
    try:
        context = tls.context()
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load the TLS files for {where}: {_ssl_text(exc)}"
    try:
        with (
            socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=endpoint.host),
        ):
            return None
    except OSError as exc:
        return _connect_error(endpoint, where, timeout_s, exc)


def _connect_error(endpoint: MqttEndpoint, where: str, timeout_s: float, exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{where} presented a certificate that was refused: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with {where} failed: {_ssl_text(exc)}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host {endpoint.host!r} ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {endpoint} (connection refused)"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within {timeout_s:g} s"
    return f"cannot connect to {where}: {exc.strerror or exc}"


def _ssl_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)
