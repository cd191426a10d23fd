"""``InfluxDBDataWriter``: values as line protocol points, delivered and acknowledged.

The writer's own work is configuration, the schema (``_lineprotocol``), receipts and the
preflight. Batching, the in-flight limit, retries with backoff, 413 splits and the buffer limit
are the reusable ``BufferedSender``'s; the HTTP request and the meaning of each answer are
``_http``'s. No influxdb-client here: its write APIs run their own threads and retries or take no
per-request timeout, and none speaks all three APIs.
"""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar, get_args
from urllib.parse import urlsplit, urlunsplit

from flowcollect._deadline import tls_context
from flowcollect._logs import RateLimitedLog
from flowcollect._secret import Secret, SecretLike, secret_from_file
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import CollectedVariable, ValueBatch
from flowcollect.writers._lineprotocol import LineSerializer, Schema
from flowcollect.writers.base import DataWriter
from flowcollect.writers.influxdb._http import TARGET_MISSING, Api, Endpoint, HttpTransport
from flowcollect.writers.sender import Backoff, BufferedSender, SenderStats

__all__ = ["InfluxDBDataWriter"]

logger = logging.getLogger("flowcollect.writers.influxdb")

TOKEN_ENV = "INFLUX_TOKEN"  # noqa: S105 - the name of the variable, not a token
PASSWORD_ENV = "INFLUX_PASSWORD"  # noqa: S105 - the name of the variable, not a password
_APIS = ("v1", "v2", "v3")
_EMPTY_REFUSED = re.compile(r"requires points|no points|empty|no data|no lines", re.IGNORECASE)
_SCHEMAS = get_args(Schema)


class InfluxDBDataWriter(DataWriter):
    """Writes each value as one point; batches by size and time; rides out outages; acknowledges.

    ``api`` selects the server's write API: ``"v2"`` (default: InfluxDB 2.x, and 1.8+/3.x through
    their v2 endpoint; ``org``, ``bucket``, ``token``), ``"v1"`` (``/write``: ``database``,
    ``retention_policy``, ``username``, ``password``) or ``"v3"`` (``/api/v3/write_lp``:
    ``database``, ``token``). ``token`` defaults to ``$INFLUX_TOKEN`` and ``password`` to
    ``$INFLUX_PASSWORD``; neither ever shows in logs, errors or ``repr()``.

    A point per value without ``error``: measurement ``measurement``; tags ``address``,
    ``context``, ``reader``, ``variable``, ``name`` (when the variable has one) and the variable's
    own ``tags``; the field ``value`` (float), ``value_int``, ``value_bool`` or ``value_str``
    (``schema="typed"``, the default; ``"single"`` puts every type in ``value``; ``"fields"``
    writes Telegraf's shape instead: a field named by the variable, the measurement from its
    ``measurement`` tag, its own tags only); the grid instant (or the source's time) in
    nanoseconds. See docs/influxdb.md.

    ``write_batch()`` serializes from the columns and queues; the sender posts. Every value of
    a batch is acknowledged once it is stored, refused for good or given up: values with an error
    or not writable as their type at once (failed), the rest when the server has answered.
    """

    acknowledges: ClassVar[bool] = True

    retry_initial_s = 0.2
    """The first retry waits about this long; each failure doubles it, up to ``retry_max_s``."""
    retry_max_s = 10.0

    def __init__(
        self,
        url: str,
        token: SecretLike | None = None,
        org: str | None = None,
        bucket: str | None = None,
        measurement: str = "flowcollect",
        batch_size: int = 5000,
        flush_interval_ms: int = 1000,
        buffer_limit: int = 1_000_000,
        timeout_s: float = 10,
        *,
        api: Api = "v2",
        database: str | None = None,
        retention_policy: str | None = None,
        username: str | None = None,
        password: SecretLike | None = None,
        schema: Schema = "typed",
        token_file: str | os.PathLike[str] | None = None,
        password_file: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        tls_verify: bool = True,
    ) -> None:
        problems: list[str] = []
        token, password = _secrets(token, token_file, password, password_file, problems)
        if token is None and api in ("v2", "v3"):
            token = os.environ.get(TOKEN_ENV) or None
        if password is None and username is not None:
            password = os.environ.get(PASSWORD_ENV) or None
        tls = _tls(url, ca_file, cert_file, key_file, tls_verify, problems)
        problems += _check_config(
            url=url,
            api=api,
            token=token,
            org=org,
            bucket=bucket,
            database=database,
            retention_policy=retention_policy,
            username=username,
            password=password,
            measurement=measurement,
            schema=schema,
            batch_size=batch_size,
            flush_interval_ms=flush_interval_ms,
            buffer_limit=buffer_limit,
            timeout_s=timeout_s,
        )
        if problems:
            raise ConfigError(problems)
        self.ca_file = None if ca_file is None else os.fspath(ca_file)
        self.cert_file = None if cert_file is None else os.fspath(cert_file)
        self.tls_verify = tls_verify
        self.url = url
        self.api: Api = api
        self.org = org
        self.bucket = bucket
        self.database = database
        self.retention_policy = retention_policy
        self.username = username
        self.measurement = measurement
        self.schema: Schema = schema
        self.batch_size = batch_size
        self.flush_interval_ms = flush_interval_ms
        self.buffer_limit = buffer_limit
        self.timeout_s = float(timeout_s)
        self.__has_secret = bool(token or password)
        self._serializer = LineSerializer(measurement, schema)
        self._value_log = RateLimitedLog(logger, window_s=3600.0)
        self._lock = threading.Lock()
        self._errors_skipped = 0
        self._unwritable = 0

        params: dict[str, str | None]
        if api == "v1":
            params = {"db": database, "rp": retention_policy, "precision": "ns"}
        elif api == "v2":
            params = {"org": org, "bucket": bucket, "precision": "ns"}
        else:
            params = {"db": database, "precision": "nanosecond"}
        self._endpoint = Endpoint.build(url, api, params, token=token, username=username, password=password)
        self._transport = HttpTransport(self._endpoint, gzip=True, tls=tls)
        self.sender = BufferedSender(
            self._transport,
            name=self.name,
            on_settled=self._settled,
            batch_size=batch_size,
            flush_interval_s=flush_interval_ms / 1000.0,
            buffer_limit=buffer_limit,
            max_in_flight=2,
            timeout_s=self.timeout_s,
            backoff=Backoff(self.retry_initial_s, self.retry_max_s),
            logger=logger,
        )
        """The buffered sender: ``sender.stats()`` gives the typed counters (``SenderStats``)."""

    # -- tuning (before the first write) --------------------------------------------------------

    @property
    def gzip(self) -> bool:
        """Compress requests (default). Over a network it pays ~11:1; on the same machine it
        costs both sides CPU (see docs/performance.md) and may be turned off."""
        return self._transport.gzip

    @gzip.setter
    def gzip(self, value: bool) -> None:
        self._transport.gzip = bool(value)

    @property
    def max_in_flight(self) -> int:
        """Requests at once while the server answers (2): one waits on the server while the next
        is on its way. Set it before the first write."""
        return self.sender.max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self.sender.max_in_flight = max(1, int(value))

    # -- the DataWriter contract ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"influxdb:{self.bucket if self.api == 'v2' else self.database}"

    def write_batch(self, batch: ValueBatch) -> None:
        if self.sender.closed:
            raise RuntimeError(f"{self.name} is closed; it takes no more values")
        lines, problems = self._serializer.serialize_batch(batch)
        if problems:
            variables = batch.variables
            errors = unwritable = 0
            first = ""
            for i, kind, text in problems:
                spec = variables[i]
                if kind == "error":
                    errors += 1
                    self._log_error_value(spec.context_id, spec.id, spec.address, text)
                else:
                    unwritable += 1
                    self._log_unwritable(spec.context_id, spec.id, spec.address, spec.value_type, text)
                first = first or text
            with self._lock:
                self._errors_skipped += errors
                self._unwritable += unwritable
            self.acknowledge(batch, 0, len(problems), 0, f"not written: {first}")
        self.sender.submit(lines, batch)

    def write(self, values: Sequence[CollectedVariable]) -> None:
        """The per-value path (no receipts: nothing to acknowledge a batch by)."""
        if self.sender.closed:
            raise RuntimeError(f"{self.name} is closed; it takes no more values")
        lines, failed, unwritable = self._serializer.serialize(values, time.time_ns())
        for v in failed:
            self._log_error_value(v.context_id, v.id, v.address, v.error or "")
        for v, reason in unwritable:
            self._log_unwritable(v.context_id, v.id, v.address, v.value_type, reason)
        with self._lock:
            self._errors_skipped += len(failed)
            self._unwritable += len(unwritable)
        self.sender.submit(lines)

    def flush(self) -> None:
        """Send everything queued now and wait until the server took it, or ``timeout_s`` passed.

        A flush during an outage retries at once, then keeps the backoff until its deadline.
        """
        missing = self.sender.flush()
        if missing:
            logger.warning(
                "%s: flush timed out after %s s with %d points not yet delivered (last error: %s)",
                self.name,
                self.timeout_s,
                missing,
                self.last_error,
            )

    def close(self) -> None:
        """Flush (bounded by ``timeout_s``), then stop the sender threads and close the connections.

        Points still queued at the deadline are counted as dropped (and acknowledged so).
        """
        self.sender.close(kept_by=self.kept_by)

    def preflight(self) -> None:
        """The server answers, accepts the credentials, and the database or bucket exists: an
        empty write (InfluxDB checks all three and stores nothing)."""
        probe = self._transport.probe(min(self.timeout_s, 10.0))
        e = self._endpoint
        target = (
            f"bucket {self.bucket!r} (org {self.org!r})"
            if self.api == "v2"
            else f"database {self.database!r}"
        )
        if probe.status is None:
            hint = _tls_hint(probe.detail, self.ca_file, e.host)
            raise PreflightError(f"cannot reach InfluxDB at {e.origin}: {probe.detail}{hint}")
        if 200 <= probe.status < 300 or (probe.status == 400 and _EMPTY_REFUSED.search(probe.detail)):
            # InfluxDB 2.0 (before 2.1) refuses an empty write with 400 "writing requires points",
            # after checking the token and the bucket: as good as a 204 here.
            return
        if probe.status == 401:
            raise PreflightError(
                f"InfluxDB at {e.origin} refused the credentials for {target}: {probe.detail}"
            )
        if probe.status == 403:
            raise PreflightError(
                f"InfluxDB at {e.origin} does not let these credentials write to {target}: {probe.detail}"
            )
        if probe.status == 404:
            raise PreflightError(self._not_found(probe.detail, probe.server, target))
        raise PreflightError(f"InfluxDB at {e.origin} refused a write to {target}: {probe.detail}")

    def _not_found(self, detail: str, server: str, target: str) -> str:
        """A 404 names the database or bucket when it is missing; any other 404 (Go's ``404
        page not found``) is the write endpoint itself missing: the wrong ``api`` for this
        server (InfluxDB 1.x before 1.8 has no v2 endpoint), or a URL with a wrong base path."""
        e = self._endpoint
        if TARGET_MISSING.search(detail):
            return f"InfluxDB at {e.origin} has no {target}: {detail}"
        path = e.path.split("?", 1)[0]
        said = f" (it says it is InfluxDB {server})" if server else ""
        hint = {
            "v2": 'InfluxDB 1.x before 1.8 has no v2 API: use api="v1" with database=...',
            "v1": 'InfluxDB 3.x answers v1 writes only with its compatibility on: try api="v3"',
            "v3": 'only InfluxDB 3.x has it: use api="v2" for 2.x, api="v1" for 1.x',
        }[self.api]
        return (
            f"InfluxDB at {e.origin}{said} has no {self.api} write endpoint ({path}: {detail}); "
            f"{hint}, or check the URL's base path"
        )

    def stats(self) -> Mapping[str, float]:
        """The sender's counters (``SenderStats``: ``written``, ``failed``, ``dropped``,
        ``buffered``, ``in_flight``, ``oldest_buffered_age_s``, ``requests``, ``retries``,
        ``held_retries``, ``holding``, ``splits``, ``partial_writes``) and the writer's own
        ``errors_skipped`` (values with ``error``) and ``unwritable`` (not of their type)."""
        out = self.sender.stats().as_mapping()
        with self._lock:
            out["errors_skipped"] = float(self._errors_skipped)
            out["unwritable"] = float(self._unwritable)
        return out

    def sender_stats(self) -> SenderStats:
        """The sender's typed counters."""
        return self.sender.stats()

    @property
    def last_error(self) -> str | None:
        """The last failure's text (status and server message, or connection error), if any."""
        return self.sender.stats().last_error

    def __repr__(self) -> str:
        where = (
            f"org={self.org!r}, bucket={self.bucket!r}"
            if self.api == "v2"
            else f"database={self.database!r}"
            + (f", retention_policy={self.retention_policy!r}" if self.retention_policy else "")
            + (f", username={self.username!r}" if self.api == "v1" and self.username else "")
        )
        secret = "password" if self.api == "v1" else "token"
        return (
            f"InfluxDBDataWriter(url={_redact_url(self.url)!r}, api={self.api!r}, {where}, "
            f"measurement={self.measurement!r}, {secret}={'<set>' if self.__has_secret else None})"
        )

    def __enter__(self) -> InfluxDBDataWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _settled(self, token: object, written: int, failed: int, dropped: int, error: str | None) -> None:
        if isinstance(token, ValueBatch):
            self.acknowledge(token, written, failed, dropped, error)

    def _log_error_value(self, context_id: int, var_id: int, address: str, error: str) -> None:
        self._value_log.warning(
            ("error", context_id, var_id, address, error),
            "%s: not writing context %s variable %s (%s): %s",
            self.name,
            context_id,
            var_id,
            address,
            error,
        )

    def _log_unwritable(
        self, context_id: int, var_id: int, address: str, value_type: str, reason: str
    ) -> None:
        self._value_log.warning(
            ("unwritable", context_id, var_id, address, reason),
            "%s: cannot write context %s variable %s (%s) as %s: %s",
            self.name,
            context_id,
            var_id,
            address,
            value_type,
            reason,
        )


def _tls_hint(detail: str, ca_file: str | None, host: str) -> str:
    """What to do about a certificate the writer refused (empty for other failures)."""
    if "CERTIFICATE_VERIFY_FAILED" not in detail:
        return ""
    if "Hostname mismatch" in detail or "IP address mismatch" in detail:
        return f"; the server's certificate is not for {host!r} (connect by a name it lists)"
    if ca_file is None:
        return "; give the CA that signed the server's certificate as ca_file"
    return f"; ca_file={ca_file} did not sign the server's certificate"


def _secrets(
    token: object, token_file: object, password: object, password_file: object, problems: list[str]
) -> tuple[str | None, str | None]:
    """The token and password as text (from a ``Secret``, a file, or as given); the problems
    name the option, never the value."""
    return (
        _secret("token", token, token_file, problems),
        _secret("password", password, password_file, problems),
    )


def _secret(field: str, given: object, path: object, problems: list[str]) -> str | None:
    where = "InfluxDBDataWriter"
    value = given
    if path is not None:
        if given is not None:
            problems.append(f"{where} {field}_file: give {field} or {field}_file, not both")
        if not isinstance(path, str | os.PathLike):
            problems.append(f"{where} {field}_file: must be a path, got {type(path).__name__}")
            return None
        try:
            value = secret_from_file(path)
        except ConfigError as exc:
            problems.extend(f"{where} {field}_file: {p}" for p in exc.problems)
            return None
    if isinstance(value, Secret):
        return value.reveal()
    if value is not None and not isinstance(value, str):
        problems.append(f"{where} {field}: must be a str or a Secret, got {type(value).__name__}")
        return None
    return value


def _path(value: object) -> str | None:
    return os.fspath(value) if isinstance(value, str | os.PathLike) else None


def _tls(
    url: object, ca_file: object, cert_file: object, key_file: object, verify: object, problems: list[str]
) -> ssl.SSLContext | None:
    """The TLS context of an https URL (None for http); unreadable files are problems."""
    where = "InfluxDBDataWriter"
    files = (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file))
    given = [name for name, value in files if value is not None]
    bad = [
        f"{where} {name}: must be a path, got {type(value).__name__}"
        for name, value in files
        if value is not None and _path(value) is None
    ]
    if not isinstance(verify, bool):
        bad.append(f"{where} tls_verify: must be True or False, got {verify!r}")
    if key_file is not None and cert_file is None:
        bad.append(f"{where} key_file: given without cert_file")
    if bad:
        problems.extend(bad)
        return None
    verify = bool(verify)
    if not (isinstance(url, str) and url.startswith("https://")):
        if given or not verify:
            names = ", ".join(given + ([] if verify else ["tls_verify"]))
            problems.append(f"{where} {names}: TLS settings need an https:// url")
        return None
    try:
        context = tls_context(_path(ca_file), verify=verify)
    except (OSError, ssl.SSLError, ValueError) as exc:
        problems.append(f"{where} ca_file: cannot load: {type(exc).__name__}: {exc}")
        return None
    if cert_file is not None:
        try:
            context.load_cert_chain(_path(cert_file) or "", _path(key_file))
        except (OSError, ssl.SSLError, ValueError) as exc:
            field = "cert_file, key_file" if key_file is not None else "cert_file"
            problems.append(f"{where} {field}: cannot load: {type(exc).__name__}: {exc}")
            return None
    return context


def _check_config(
    *,
    url: object,
    api: object,
    token: object,
    org: object,
    bucket: object,
    database: object,
    retention_policy: object,
    username: object,
    password: object,
    measurement: object,
    schema: object,
    batch_size: object,
    flush_interval_ms: object,
    buffer_limit: object,
    timeout_s: object,
) -> list[str]:
    problems: list[str] = []
    where = "InfluxDBDataWriter"
    if not isinstance(url, str):
        problems.append(f"{where} url: must be a str, got {type(url).__name__}")
    else:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            problems.append(f"{where} url: must look like http(s)://host:port, got {_redact_url(url)!r}")
    if api not in _APIS:
        problems.append(f"{where} api: must be one of 'v1', 'v2', 'v3', got {api!r}")
        return problems
    if token is not None and (not isinstance(token, str) or not token.strip()):
        problems.append(f"{where} token: must be a non-empty str (or None to read ${TOKEN_ENV})")
    problems += _check_api_settings(api, token, org, bucket, database, retention_policy, username, password)
    if not isinstance(measurement, str) or not measurement.strip():
        problems.append(f"{where} measurement: must be a non-empty str, got {measurement!r}")
    elif measurement.startswith("#"):
        problems.append(f"{where} measurement: must not start with '#' (a line protocol comment)")
    if schema not in _SCHEMAS:
        problems.append(f"{where} schema: must be 'typed', 'single' or 'fields', got {schema!r}")
    for field, value in (
        ("batch_size", batch_size),
        ("flush_interval_ms", flush_interval_ms),
        ("buffer_limit", buffer_limit),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"{where} {field}: must be a positive int, got {value!r}")
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        problems.append(f"{where} timeout_s: must be a positive number of seconds, got {timeout_s!r}")
    return problems


def _check_api_settings(
    api: object,
    token: object,
    org: object,
    bucket: object,
    database: object,
    retention_policy: object,
    username: object,
    password: object,
) -> list[str]:
    """Each API's own settings: the ones it needs, and none of another API's."""
    problems: list[str] = []
    where = "InfluxDBDataWriter"
    required: tuple[tuple[str, object], ...]
    forbidden: tuple[tuple[str, object], ...]
    if api == "v2":
        required = (("org", org), ("bucket", bucket))
        forbidden = (
            ("database", database),
            ("retention_policy", retention_policy),
            ("username", username),
            ("password", password),
        )
    elif api == "v1":
        required = (("database", database),)
        forbidden = (("org", org), ("bucket", bucket), ("token", token))
        if retention_policy is not None and (not isinstance(retention_policy, str) or not retention_policy):
            problems.append(f"{where} retention_policy: a non-empty str or None (the default policy)")
        if username is not None and (not isinstance(username, str) or not username):
            problems.append(f"{where} username: a non-empty str or None (no authentication)")
        if password is not None and username is None:
            problems.append(f"{where} password: given without a username")
        elif username is not None and (not isinstance(password, str) or not password):
            problems.append(f"{where} password: required with a username (or ${PASSWORD_ENV})")
    else:
        required = (("database", database),)
        forbidden = (
            ("org", org),
            ("bucket", bucket),
            ("retention_policy", retention_policy),
            ("username", username),
            ("password", password),
        )
    for field, value in required:
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where} {field}: required with api={api!r}, a non-empty str; got {value!r}")
    for field, value in forbidden:
        if value is not None:
            problems.append(f"{where} {field}: not used with api={api!r}; remove it")
    return problems


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
