"""The transport seam: the few etcd v3 calls a group makes, over etcd3gw (etcd's JSON gateway).

etcd3gw gives the HTTP plumbing (API path discovery: ``/v3/`` on etcd 3.4+, ``/v3beta/`` on
3.3; base64 keys; error mapping) and a single endpoint. What it lacks, this module adds:
several endpoints tried in turn, a time budget on every call (so no call outlives the member's
fencing deadline), the response header's revision, transactions comparing a key's create
revision, and a watch stream that reports when it ends instead of dying silently in a pool.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # etcd3gw and requests come with the `group` extra: imported when a group is used, so
    # `import flowcollect.group` (and the CLI) works without them.
    import requests

__all__ = ["MAX_TXN_OPS", "EtcdUnavailable", "Kv", "Store", "Watch"]

MAX_TXN_OPS = 100
"""Keys per transaction: etcd refuses more than ``--max-txn-ops`` (128 by default)."""

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
    """etcd3gw clients, one per endpoint; a failed call moves on to the next endpoint."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], request_timeout_s: float = 2.0) -> None:
        from etcd3gw.client import Etcd3Client

        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.request_timeout_s = request_timeout_s
        self._clients = [
            Etcd3Client(host=host, port=port, timeout=request_timeout_s) for host, port in endpoints
        ]
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
                    # etcd3gw's post() would send json=; the body goes as is, already encoded.
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
        raise EtcdUnavailable(f"etcd {path}: " + "; ".join(failures))

    def watch(self, prefix: str, on_event: Callable[[], None]) -> Watch:
        client = self._clients[self._current]
        return Watch(client.get_url("watch"), prefix, on_event, self.request_timeout_s)


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail_text", None)
    text = f"{type(exc).__name__}: {detail or exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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

    def __init__(self, url: str, prefix: str, on_event: Callable[[], None], connect_timeout_s: float) -> None:
        import requests

        self._session = requests.Session()
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
