"""The InfluxDB HTTP transport: one POST of line protocol per request, and what the answer means.

The three write APIs take the same line protocol and differ in their path, parameters,
credentials and in how they report a write the server took only in part:

- v1 ``POST /write?db=&rp=&precision=ns``, HTTP Basic credentials. A partial write is a 400 whose
  ``error`` reads ``partial write: <why> dropped=N`` (lines that do not parse are not in ``N``:
  each is an ``unable to parse`` in the text). A 400 without ``partial write`` stored nothing.
- v2 ``POST /api/v2/write?org=&bucket=&precision=ns``, ``Authorization: Token``. A partial write is
  a 422 (or a 400 from some versions) with the same ``partial write ... dropped=N`` in ``message``.
- v3 ``POST /api/v3/write_lp?db=&precision=nanosecond``, ``Authorization: Bearer``. A partial write
  (``accept_partial``, the server's default) is a 400 whose JSON ``data`` lists the rejected lines
  with their ``line_number``.

Connections are ``http.client`` ones, one per sender thread, kept alive. Each exchange
(connect, TLS handshake, request, the whole answer, a retry on a fresh connection) runs under
one deadline (``flowcollect._deadline``): a server that drips its answer a byte at a time is cut
there, as ``close()`` and the preflight need. Of an answer at most ``max_response_bytes`` are
read (InfluxDB answers in a few hundred bytes; v3's list of rejected lines is the one long
answer); the rest is never read and the connection is dropped, so an endless body costs
nothing. The server's words go into errors only through ``peer_text`` (control characters
escaped, cut at a length).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import math
import re
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

from flowcollect._deadline import deadline, deadline_socket, expired, read_capped, tls_context
from flowcollect._text import peer_text
from flowcollect.writers.sender import Outcome, Status

__all__ = ["Api", "Endpoint", "HttpTransport", "Probe"]

Api = Literal["v1", "v2", "v3"]
# Level 1 compresses line protocol 6-11:1 (ISA-L ~0.11 us a point, zlib ~0.43 us); zlib's level
# 9 gains a third more for ten times the CPU.
GZIP_LEVEL = 1
# InfluxDB answers in a few hundred bytes; v3's partial write lists every rejected line (its
# number, error and the line itself), which for a 5,000-point request may reach a megabyte or two.
MAX_RESPONSE_BYTES = {"v1": 64 * 1024, "v2": 64 * 1024, "v3": 4 * 1024 * 1024}
_MIN_SCRUBBED = 4
_DROPPED = re.compile(r"dropped=(\d+)")
_CONFLICT = re.compile(r'input field "((?:[^"\\]|\\.)*)" on measurement "((?:[^"\\]|\\.)*)" is type (\w+)')
_GZIP_MAGIC = b"\x1f\x8b"
# A 404 naming what is missing: 1.x `database not found: "x"`, 2.x `bucket "x" not found`,
# 3.x `database not found`/`db does not exist`. Any other 404 is the endpoint that is missing.
TARGET_MISSING = re.compile(
    r"database not found|bucket .*not found|organization .*not found|org .*not found|does not exist",
    re.IGNORECASE,
)

try:
    # ISA-L's gzip: the same format as zlib's, ~4x less CPU at level 1 and a little smaller.
    from isal.igzip import compress as _isal_compress

    def _gzip(data: bytes) -> bytes:
        return _isal_compress(data, compresslevel=GZIP_LEVEL, mtime=0)

except ImportError:  # a platform without its wheel: the standard library's zlib

    def _gzip(data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")
_UNESCAPED_TAGS_START = re.compile(r"(?<!\\)[, ]")


@dataclass(frozen=True)
class Endpoint:
    """Where and how to write: scheme, host, port, the path with its query, the auth header."""

    api: Api
    https: bool
    host: str
    port: int | None
    path: str
    authorization: str | None  # the header's value: a secret, never shown
    secrets: tuple[str, ...]  # texts to mask in anything logged

    @classmethod
    def build(
        cls,
        url: str,
        api: Api,
        params: Mapping[str, str | None],
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Endpoint:
        parts = urlsplit(url)
        base = parts.path.rstrip("/")
        path = {"v1": "/write", "v2": "/api/v2/write", "v3": "/api/v3/write_lp"}[api]
        query = urlencode({k: v for k, v in params.items() if v is not None})
        authorization = None
        secrets: list[str] = []
        if api == "v1":
            if username is not None:
                pair = f"{username}:{password or ''}"
                authorization = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
                secrets += [password or "", authorization.split(" ", 1)[1]]
        elif token is not None:
            authorization = ("Token " if api == "v2" else "Bearer ") + token
            secrets.append(token)
        return cls(
            api,
            parts.scheme == "https",
            parts.hostname or "",
            parts.port,
            f"{base}{path}?{query}",
            authorization,
            tuple(s for s in secrets if len(s) >= _MIN_SCRUBBED),
        )

    @property
    def origin(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.host}" + (f":{self.port}" if self.port else "")

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class Probe:
    """A preflight's answer: the HTTP status (None: no answer) and a loggable text."""

    status: int | None
    detail: str
    server: str = ""  # the server's own version header (``X-Influxdb-Version``), when it sent one


class HttpTransport:
    """Posts line protocol to one InfluxDB endpoint; classifies every answer as an ``Outcome``."""

    def __init__(self, endpoint: Endpoint, *, gzip: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.endpoint = endpoint
        self.gzip = gzip
        self.max_response_bytes = MAX_RESPONSE_BYTES[endpoint.api]
        # https: the writer's context (its CA, client certificate, verification); else the
        # system's CAs with verification on.
        self._tls = (tls or tls_context()) if endpoint.https else None
        self._local = threading.local()  # this thread's _Connection
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []  # guarded by _lock: every open one, for close()
        self._closed = False  # guarded by _lock

    def encode(self, records: Sequence[str]) -> bytes:
        text = "\n".join(records).encode("utf-8")
        return _gzip(text) if self.gzip else text

    def send(self, body: bytes, *, timeout_s: float) -> Outcome:
        # The body says how it was encoded (gzip may have been switched since it was made).
        compressed = body[:2] == _GZIP_MAGIC
        try:
            status, reason, headers, data = self._post(body, timeout_s, compressed=compressed)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(Status.RETRY, _failure(exc, self.endpoint.scrub))
        outcome = classify(self.endpoint.api, status, reason, headers, data, self.endpoint.scrub)
        if outcome.status is Status.PARTIAL and outcome.rejected_records is None:
            lines = _conflicting_lines(_message(headers, data), body, outcome.rejected)
            if lines is not None:
                return Outcome(Status.PARTIAL, outcome.detail, rejected=len(lines), rejected_records=lines)
        return outcome

    def probe(self, timeout_s: float) -> Probe:
        """POST an empty body: InfluxDB checks the credentials and the database (and, in 1.x,
        the user's write permission) and stores nothing. No exception: a status or None."""
        try:
            status, reason, headers, data = self._post(b"", timeout_s, compressed=False)
        except (OSError, http.client.HTTPException) as exc:
            return Probe(None, _failure(exc, self.endpoint.scrub))
        version = peer_text(str(headers.get("X-Influxdb-Version") or ""), 40)
        return Probe(status, _detail(status, reason, headers, data, self.endpoint.scrub), version)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    # -- internals -------------------------------------------------------------------------------

    def _connection(self, timeout_s: float) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            e = self.endpoint
            port = e.port or (443 if e.https else 80)
            connection = _Connection(e.host, port, timeout_s, self._tls)
            with self._lock:
                if self._closed:
                    raise ConnectionError("the transport is closed")
                self._connections.append(connection)
            self._local.connection = connection
        connection.timeout = timeout_s  # the connect; every later read and write keeps the deadline
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)

    def _post(
        self, body: bytes, timeout_s: float, *, compressed: bool
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        headers = {"Content-Type": "text/plain; charset=utf-8", "Accept": "application/json"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        if self.endpoint.authorization is not None:
            headers["Authorization"] = self.endpoint.authorization
        timeout_s = max(0.001, timeout_s)
        # One deadline for the whole exchange, the retry on a fresh connection included.
        with deadline(timeout_s):
            try:
                connection = self._connection(timeout_s)
                reused = connection.sock is not None
                try:
                    return self._exchange(connection, body, headers)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    if not reused or expired():
                        raise
                # A kept-alive connection the server had closed while idle: once more on a fresh
                # one (harmless even if the first reached the server: a point written twice is
                # one point).
                return self._exchange(self._connection(timeout_s), body, headers)
            except (OSError, http.client.HTTPException) as exc:
                if expired():
                    raise TimeoutError(f"no complete answer within {timeout_s:g} s") from exc
                raise

    def _exchange(
        self, connection: _Connection, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        try:
            connection.request("POST", self.endpoint.path, body=body, headers=headers)
            response = connection.getresponse()
            data, whole = read_capped(response, self.max_response_bytes)
        except BaseException:
            # A connection in an unknown state (half a request sent) is never reused.
            self._drop_connection()
            raise
        if response.will_close or not whole:
            # The rest of an overlong answer is never read: the connection goes with it.
            self._drop_connection()
        return response.status, response.reason, response.headers, data


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose socket keeps the exchange's deadline (``_deadline``): the
    TCP socket becomes a ``DeadlineSocket``, the TLS one (from a ``tls_context``) a
    ``DeadlineSSLSocket`` from the first byte of the handshake on."""

    def __init__(self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.tls = tls

    def connect(self) -> None:
        super().connect()
        self.sock = deadline_socket(self.sock)
        if self.tls is not None:
            self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


def _failure(exc: BaseException, scrub: object) -> str:
    """A failed exchange's text: the exception's kind and words (which may quote the server)."""
    text = f"{type(exc).__name__}: {exc}"
    return peer_text(scrub(text) if callable(scrub) else text)


def classify(  # noqa: PLR0911 - one return per kind of answer reads best
    api: Api,
    status: int,
    reason: str,
    headers: http.client.HTTPMessage | Mapping[str, str],
    data: bytes,
    scrub: object = None,
) -> Outcome:
    """What an answer to a write means for the sender (pure: the tests feed it real answers)."""
    detail = _detail(status, reason, headers, data, scrub)
    if 200 <= status < 300:
        return Outcome.ok()
    if status == 413:
        return Outcome(Status.TOO_LARGE, detail)
    if status == 404 and not TARGET_MISSING.search(detail):
        # Go's "404 page not found": this server has no such write endpoint (InfluxDB 1.x before
        # 1.8 has no v2 API), which waits for an operator like a missing database.
        return Outcome(
            Status.HOLD, f"{detail} (no {api} write endpoint here: the wrong api for this server?)"
        )
    if status in (401, 403, 404):
        return Outcome(Status.HOLD, detail)
    if status == 429 or status >= 500:
        return Outcome(Status.RETRY, detail, _seconds(headers.get("Retry-After")))
    message = _message(headers, data)
    if api == "v3" and status == 400:
        lines = _v3_rejected_lines(data)
        if lines is not None:
            return Outcome(Status.PARTIAL, detail, rejected=len(lines), rejected_records=lines)
    if status in (400, 422) and "partial write" in message:
        match = _DROPPED.search(message)
        dropped = int(match.group(1)) if match else 0
        # 1.x leaves lines it cannot parse out of dropped=N; each is named in the text.
        rejected = dropped + message.count("unable to parse")
        return Outcome(Status.PARTIAL, detail, rejected=rejected)
    return Outcome(Status.REFUSED, detail)


def _conflicting_lines(message: str, body: bytes, rejected: int) -> tuple[int, ...] | None:
    """The lines a 1.x/2.x field type conflict refused, when the server's words pin them down.

    The server names one conflict (``input field "f" on measurement "m" is type integer``) and
    counts every refused line (``dropped=N``). When exactly N lines of the request write ``f`` of
    ``m`` as that type, those are the refused ones; otherwise None (the count alone is used).
    """
    match = _CONFLICT.search(message)
    if match is None or rejected <= 0:
        return None
    field, measurement, kind = (g.replace('\\"', '"') for g in match.groups())
    try:
        text = (gzip.decompress(body) if body[:2] == _GZIP_MAGIC else body).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError):
        return None
    out = []
    for i, line in enumerate(text.split("\n")):
        head = _UNESCAPED_SPACE.split(line, 2)
        if len(head) < 2:
            continue
        name = _UNESCAPED_TAGS_START.split(head[0], 1)[0].replace("\\,", ",").replace("\\ ", " ")
        key, _, value = head[1].partition("=")
        if name == measurement and key == field and _field_type(value) == kind:
            out.append(i)
    return tuple(out) if len(out) == rejected else None


def _field_type(value: str) -> str:
    """The InfluxDB type name of a field value's text (up to the next field)."""
    if value.startswith('"'):
        return "string"
    first = value.split(",", 1)[0]
    if first in ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"):
        return "boolean"
    if first.endswith("i"):
        return "integer"
    if first.endswith("u"):
        return "unsigned"
    return "float"


def _v3_rejected_lines(data: bytes) -> tuple[int, ...] | None:
    """0-based indexes of the lines a v3 server lists as rejected, or None if it lists none."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    rows = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(rows, list):
        return None
    out = []
    for row in rows:
        number = row.get("line_number") if isinstance(row, dict) else None
        if isinstance(number, int) and number >= 1:
            out.append(number - 1)
    return tuple(out) if out else None


def _message(headers: http.client.HTTPMessage | Mapping[str, str], data: bytes) -> str:
    """The server's own words: JSON ``error`` (1.x, 3.x) or ``message`` (2.x), else the body."""
    text = data.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text.startswith("{") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("error", "message"):
            if isinstance(parsed.get(key), str) and parsed[key]:
                return str(parsed[key])
    return text or str(headers.get("X-Influxdb-Error") or "")


def _detail(
    status: int,
    reason: str,
    headers: http.client.HTTPMessage | Mapping[str, str],
    data: bytes,
    scrub: object = None,
) -> str:
    """``HTTP 404 Not Found: database not found: "x"``: secrets masked first (on the whole text,
    so a cut cannot leave half a secret), then the server's words made safe to log."""
    message = _message(headers, data)
    if callable(scrub):
        message, reason = scrub(message), scrub(reason or "")
    head = f"HTTP {status} {peer_text(reason or '', 100)}".rstrip()
    return f"{head}: {peer_text(message)}" if message and message != reason else head


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
