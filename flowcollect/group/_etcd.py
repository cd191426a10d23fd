"""The transport seam: the few etcd v3 calls a group makes, over etcd3gw (etcd's JSON gateway).

etcd3gw gives the HTTP plumbing (API path discovery: ``/v3/`` on etcd 3.4+, ``/v3beta/`` on
3.3; base64 keys; error mapping) and a single endpoint. What it lacks, this module adds:
several endpoints tried in turn, a time budget on every call (so no call outlives the member's
fencing deadline), the response header's revision, transactions comparing a key's create
revision, and a watch stream that reports when it ends instead of dying silently in a pool.

The budget is an overall deadline, not requests' per-read timeout: etcd3gw is handed a session
whose adapter runs each request inside a ``flowcollect._deadline`` scope over sockets that keep
it (a server dripping its answer is cut at the budget), and reads at most ``MAX_RESPONSE_BYTES``
of an answer.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcollect._deadline import deadline, deadline_socket, expired, read_capped
from flowcollect._text import peer_text
from flowcollect.group._access import EtcdAccess

if TYPE_CHECKING:
    # etcd3gw and requests come with the `group` extra: imported when a group is used, so
    # `import flowcollect.group` (and the CLI) works without them.
    import requests

__all__ = ["MAX_TXN_OPS", "EtcdUnavailable", "Kv", "Store", "Watch"]

MAX_TXN_OPS = 100
"""Keys per transaction: etcd refuses more than ``--max-txn-ops`` (128 by default)."""

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The most read of one answer: a group's whole prefix (members, owners, controls) is a few
hundred bytes a lane; etcd itself refuses requests over 1.5 MiB."""

MAX_WATCH_LINE = 4 * 1024 * 1024
"""The longest watch event line kept: longer, the watch ends (and is opened again)."""

_log = logging.getLogger("flowcollect.group")


class EtcdUnavailable(Exception):  # noqa: N818 - reads as a state, like ConnectionRefused
    """No endpoint answered the call in time (or answered with an error)."""


@dataclass(frozen=True, slots=True)
class Kv:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with ``prefix`` (last byte + 1)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


class Store:
    """etcd3gw clients, one per endpoint; a failed call moves on to the next endpoint.

    ``access`` (``EtcdAccess``): TLS through etcd3gw's https protocol and a session whose TLS
    context keeps the call's deadline; with a username, a token from etcd's
    ``auth/authenticate`` in every request's ``Authorization`` header, fetched again when etcd
    says it expired (simple tokens live 5 minutes by default).
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        request_timeout_s: float = 2.0,
        access: EtcdAccess | None = None,
    ) -> None:
        from etcd3gw.client import Etcd3Client

        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.request_timeout_s = request_timeout_s
        self.access = access or EtcdAccess()
        self._tls = self.access.ssl_context()
        protocol = "https" if self._tls is not None else "http"
        self._clients = [
            Etcd3Client(
                host=host,
                port=port,
                protocol=protocol,
                timeout=request_timeout_s,
                session=bounded_session(self._tls, self.access.tls_verify),
            )
            for host, port in endpoints
        ]
        self._tokens: dict[int, str] = {}  # client index -> auth token; guarded by _lock
        self._current = 0
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        client = self._clients[self._current]
        return f"{client.host}:{client.port}"

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    # -- calls -----------------------------------------------------------------------------------

    def grant(self, ttl_s: int, budget_s: float | None = None) -> tuple[int, int]:
        """A new lease: (id, the TTL etcd granted, which may be longer than asked)."""
        result = self._post("lease/grant", {"TTL": ttl_s, "ID": 0}, budget_s)
        return int(result["ID"]), int(result["TTL"])

    def keepalive(self, lease: int, budget_s: float | None = None) -> int:
        """Renew ``lease``: the seconds it has left, or 0 when etcd no longer has it."""
        result = self._post("lease/keepalive", {"ID": lease}, budget_s)
        return max(0, int(result.get("result", {}).get("TTL", 0)))

    def time_to_live(self, lease: int, budget_s: float | None = None) -> tuple[int, int]:
        """(seconds left, seconds granted) of ``lease``; seconds left is -1 once it has expired."""
        result = self._post("kv/lease/timetolive", {"ID": lease}, budget_s)
        return int(result.get("TTL", -1)), int(result.get("grantedTTL", 0))

    def revoke(self, lease: int, budget_s: float | None = None) -> None:
        """Drop ``lease`` and with it every key attached: a clean leave."""
        self._post("kv/lease/revoke", {"ID": lease}, budget_s)

    def read_prefix(self, prefix: str, budget_s: float | None = None) -> tuple[int, list[Kv]]:
        """Every key under ``prefix`` and the store's revision, in one linearizable read."""
        result = self._post(
            "kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}, budget_s
        )
        revision = int(result.get("header", {}).get("revision", 0))
        return revision, [_kv(item) for item in result.get("kvs", [])]

    def create(self, key: str, value: bytes, lease: int, budget_s: float | None = None) -> int | None:
        """Create ``key`` under ``lease`` if no such key exists; its create revision, or None if taken."""
        return self.create_all([(key, value)], lease, budget_s)

    def create_all(
        self, items: Sequence[tuple[str, bytes]], lease: int, budget_s: float | None = None
    ) -> int | None:
        """Create every key under ``lease`` in one transaction if none of them exists: their
        create revision, or None (nothing written) if any is taken. At most ``MAX_TXN_OPS``."""
        txn = {
            "compare": [
                {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
                for key, _ in items
            ],
            "success": [
                {"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}}
                for key, value in items
            ],
            "failure": [],
        }
        result = self._post("kv/txn", txn, budget_s)
        if not result.get("succeeded", False):
            return None
        return int(result["header"]["revision"])

    def delete_if_created(self, key: str, create_revision: int, budget_s: float | None = None) -> bool:
        """Delete ``key`` only while it is still the incarnation created at ``create_revision``."""
        return self.delete_all_if_created([(key, create_revision)], budget_s)

    def delete_all_if_created(self, items: Sequence[tuple[str, int]], budget_s: float | None = None) -> bool:
        """Delete every key in one transaction if each is still the incarnation created at its
        revision; False (nothing deleted) if any is not. At most ``MAX_TXN_OPS``."""
        txn = {
            "compare": [
                {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": revision}
                for key, revision in items
            ],
            "success": [{"request_delete_range": {"key": _b64(key)}} for key, _ in items],
            "failure": [],
        }
        return bool(self._post("kv/txn", txn, budget_s).get("succeeded", False))

    def put(self, key: str, value: bytes, lease: int = 0, budget_s: float | None = None) -> int:
        """Write ``key`` (under ``lease`` unless 0); the revision of the write."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        result = self._post("kv/put", body, budget_s)
        return int(result.get("header", {}).get("revision", 0))

    def delete(self, key: str, budget_s: float | None = None) -> None:
        self._post("kv/deleterange", {"key": _b64(key)}, budget_s)

    # -- plumbing --------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], budget_s: float | None) -> dict[str, Any]:
        import requests
        from etcd3gw import exceptions

        # Each endpoint in turn, from the one that answered last: a dead node refuses at once,
        # so the next one is asked within the same call. Never past the budget.
        began = time.monotonic()
        failures: list[str] = []
        with self._lock:
            for _ in self._clients:
                left = self.request_timeout_s if budget_s is None else budget_s - (time.monotonic() - began)
                if failures and left < 0.05:
                    break
                client = self._clients[self._current]
                try:
                    client.timeout = max(0.05, min(left, self.request_timeout_s))
                    url = client.get_url(path)
                    self._authenticate_locked(client)
                    # etcd3gw's post() would send json=; the body goes as is, already encoded.
                    try:
                        result = client.post(url, data=json.dumps(body))
                    except exceptions.Etcd3Exception as exc:
                        if not self._token_expired_locked(client, exc):
                            raise
                        self._authenticate_locked(client)
                        result = client.post(url, data=json.dumps(body))
                except (exceptions.Etcd3Exception, requests.RequestException, ValueError, KeyError) as exc:
                    failures.append(f"{client.host}:{client.port}: {_describe(exc)}")
                    self._current = (self._current + 1) % len(self._clients)
                    continue
                if not isinstance(result, dict):
                    raise EtcdUnavailable(
                        f"etcd {client.host}:{client.port} {path}: unexpected answer {result!r}"
                    )
                return result
        raise EtcdUnavailable(f"etcd {path}: " + "; ".join(failures) + _hint(failures, self.access))

    def _authenticate_locked(self, client: Any) -> None:
        """With a username: a token for ``client`` (etcd's ``auth/authenticate``), once."""
        index = self._clients.index(client)
        if self.access.username is None or index in self._tokens:
            return
        answer = client.post(
            client.get_url("auth/authenticate"),
            data=json.dumps({"name": self.access.username, "password": self.access.secret()}),
        )
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ValueError("etcd auth/authenticate answered without a token")
        self._tokens[index] = token
        client.session.headers["Authorization"] = token

    def _token_expired_locked(self, client: Any, exc: BaseException) -> bool:
        """Whether etcd refused the call for its token (expired, or etcd restarted): forget it."""
        index = self._clients.index(client)
        said = f"{getattr(exc, 'detail_text', None) or ''} {exc}"
        if index not in self._tokens or "invalid auth token" not in said:
            return False
        del self._tokens[index]
        client.session.headers.pop("Authorization", None)
        return True

    def watch(self, prefix: str, on_event: Callable[[], None]) -> Watch:
        client = self._clients[self._current]
        session = bounded_session(self._tls, self.access.tls_verify)
        token = client.session.headers.get("Authorization")
        if token:
            session.headers["Authorization"] = token
        return Watch(client.get_url("watch"), prefix, on_event, self.request_timeout_s, session)


def _hint(failures: Sequence[str], access: EtcdAccess) -> str:
    """What to set when etcd refused the credentials or the TLS settings (else nothing)."""
    text = " ".join(failures)
    if "user name is empty" in text:
        return " (etcd's auth is on: set FLOWCOLLECT_ETCD_USER and FLOWCOLLECT_ETCD_PASSWORD, or EtcdAccess)"
    if "authentication failed" in text:
        return f" (etcd refused the password of user {access.username!r})"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return " (etcd's certificate: set FLOWCOLLECT_ETCD_CA to the CA that signed it)"
    if "certificate required" in text.lower() or "bad certificate" in text.lower():
        return " (etcd wants a client certificate: FLOWCOLLECT_ETCD_CERT and FLOWCOLLECT_ETCD_KEY)"
    return ""


def _describe(exc: BaseException) -> str:
    """An exception's kind and words, which may quote etcd's answer: escaped and cut."""
    detail = getattr(exc, "detail_text", None)
    text = f"{type(exc).__name__}: {detail or exc}".strip()
    return peer_text(text, 300) if text else type(exc).__name__


def bounded_session(tls: ssl.SSLContext | None = None, verify: bool = True) -> requests.Session:
    """A requests session for etcd3gw: one deadline per request (its ``timeout``, connect to
    last byte), answers read to ``MAX_RESPONSE_BYTES``, TLS through ``tls`` (a ``tls_context``:
    the deadline holds through the handshake); ``None`` for plain http."""
    import requests

    session = requests.Session()
    session.verify = verify
    adapter = _bounded_adapter_class()(tls)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_ADAPTER: type | None = None


def _bounded_adapter_class() -> type:
    """The adapter class, made on first use (requests and urllib3 are the ``group`` extra's)."""
    global _ADAPTER  # noqa: PLW0603 - a lazily built class, built once
    if _ADAPTER is not None:
        return _ADAPTER
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class _Connection(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            self.sock = deadline_socket(self.sock)

    class _TlsConnection(HTTPSConnection):
        pass  # its TLS socket comes from the adapter's context (``DeadlineSSLSocket``)

    class _Pool(urllib3.HTTPConnectionPool):
        ConnectionCls = _Connection

    class _TlsPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = _TlsConnection

    class BoundedAdapter(HTTPAdapter):
        def __init__(self, tls: ssl.SSLContext | None) -> None:
            # Only for https (loading the system's CAs takes a while; plain etcd needs none).
            self._tls = tls
            super().__init__()

        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
            if self._tls is not None:
                kw["ssl_context"] = self._tls
            super().init_poolmanager(connections, maxsize, block, **kw)
            self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}

        def send(  # type: ignore[override]
            self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None, **kw: Any
        ) -> requests.Response:
            budget = timeout[0] if isinstance(timeout, tuple) else timeout
            with deadline(float(budget) if budget is not None else 30.0):
                try:
                    response = super().send(request, stream=True, timeout=timeout, **kw)
                    if stream:
                        return response
                    data, whole = read_capped(response.raw, MAX_RESPONSE_BYTES)
                except (OSError, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                    if expired():
                        raise requests.Timeout(f"no complete answer within {budget} s") from exc
                    raise
            if whole:
                response.raw.release_conn()
            else:
                response.close()  # the rest is never read; the connection goes
            # requests keeps a read body in _content: there is no public way to preload it,
            # and a stream would let etcd3gw read without a bound.
            response._content = data
            response._content_consumed = True
            # etcd speaks JSON (UTF-8); never let requests guess a charset from hostile bytes.
            response.encoding = response.encoding or "utf-8"
            return response

    _ADAPTER = BoundedAdapter
    return _ADAPTER


def _kv(item: dict[str, Any]) -> Kv:
    return Kv(
        key=_unb64(item["key"]).decode("utf-8", "replace"),
        value=_unb64(item.get("value", "")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


class Watch:
    """One watch stream on a prefix: ``on_event()`` for every batch of events, ended by ``cancel``.

    The member reads the whole prefix on every wake, so events are only a wake-up call: a watch
    that breaks loses nothing but promptness, and ``ended`` tells the member to open another.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        on_event: Callable[[], None],
        connect_timeout_s: float,
        session: requests.Session | None = None,
    ) -> None:
        import requests

        # The store's kind of session (TLS, token, a deadline up to the answer's head); the
        # stream itself has no deadline: an idle group sends nothing for hours.
        self._session = session or requests.Session()
        self._cancelled = threading.Event()
        self.ended = threading.Event()
        self._response: requests.Response | None = None
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}}
        self._thread = threading.Thread(
            target=self._run,
            args=(url, body, on_event, connect_timeout_s),
            name="flowcollect-group-watch",
            daemon=True,
        )
        self._thread.start()

    def _run(self, url: str, body: dict[str, Any], on_event: Callable[[], None], timeout_s: float) -> None:
        import requests

        try:
            # No read timeout: an idle group sends nothing for hours; cancel() shuts the socket.
            response = self._session.post(url, json=body, stream=True, timeout=(timeout_s, None))
            self._response = response
            if self._cancelled.is_set():
                return
            for chunk in _lines(response):
                result = json.loads(chunk).get("result", {})
                if result.get("canceled"):
                    return
                if result.get("events") or result.get("created"):
                    on_event()
        except (requests.RequestException, OSError, ValueError, AttributeError) as exc:
            # AttributeError: urllib3 reading a response that cancel() closed under it.
            if not self._cancelled.is_set():
                _log.debug("group watch ended: %s", _describe(exc))
        finally:
            self.ended.set()
            if not self._cancelled.is_set():
                on_event()  # the member notices the watch ended on its next wake

    def cancel(self, timeout_s: float = 2.0) -> None:
        self._cancelled.set()
        response = self._response
        if response is not None:
            _shutdown(response)
        self._session.close()
        self._thread.join(timeout_s)


def _lines(response: requests.Response) -> Iterator[bytes]:
    # chunk_size=None yields each chunk as it arrives; a fixed size would wait for it to fill.
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
        if len(pending) > MAX_WATCH_LINE:
            raise ValueError(f"a watch event longer than {MAX_WATCH_LINE} bytes")
    if pending.strip():
        yield pending


def _shutdown(response: requests.Response) -> None:
    # Closing the response from another thread does not wake a blocked read; shutting the
    # socket down does (the reader gets end-of-stream at once).
    try:
        raw = response.raw._fp.fp.raw._sock
        raw.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass
    response.close()
