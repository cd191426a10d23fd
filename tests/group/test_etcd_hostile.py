"""The group's etcd calls against a hostile server of the test's own: every call ends by its
budget (a dripping answer is cut, not waited for byte by byte), an endless answer is read only to
the cap, and etcd's words reach errors escaped and cut."""

from __future__ import annotations

import time

import pytest

from flowcollect.group._etcd import EtcdUnavailable, Store
from tests.support.hostile import HostileServer, drip, endless, respond

pytestmark = pytest.mark.timeout(60)

VERSION = b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}'


def test_a_dripping_answer_ends_the_call_at_its_budget() -> None:
    with HostileServer() as server:
        server.answer = drip(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"etcdserver":', every_s=0.1)
        store = Store([("127.0.0.1", server.port)], request_timeout_s=1.0)
        try:
            began = time.monotonic()
            with pytest.raises(EtcdUnavailable, match=r"no complete answer within 1\.0 s"):
                store.read_prefix("/flowcollect/g/")
            assert time.monotonic() - began < 2.0
        finally:
            store.close()


def test_an_endless_answer_is_read_only_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flowcollect.group._etcd.MAX_RESPONSE_BYTES", 100_000, raising=False)
    calls = []

    def answer(request: bytes, sock: object) -> None:
        calls.append(request)
        if b"/version" in request:
            respond(200, VERSION)(request, sock)  # type: ignore[arg-type]
        else:
            endless(b'HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n{"header":')(request, sock)  # type: ignore[arg-type]

    with HostileServer() as server:
        server.answer = answer
        store = Store([("127.0.0.1", server.port)], request_timeout_s=5.0)
        try:
            began = time.monotonic()
            with pytest.raises(EtcdUnavailable, match=r"ValueError|JSONDecodeError"):
                store.read_prefix("/flowcollect/g/")
            assert time.monotonic() - began < 3.0, "the rest of the 100 GB was not read"
        finally:
            store.close()


def test_etcd_error_text_is_escaped_and_cut() -> None:
    def answer(request: bytes, sock: object) -> None:
        if b"/version" in request:
            respond(200, VERSION)(request, sock)  # type: ignore[arg-type]
        else:
            body = b'{"error":"\x1b[31mboom\nforged line","code":3}' + b"z" * 100_000
            respond(400, body, reason="Bad Request")(request, sock)  # type: ignore[arg-type]

    with HostileServer() as server:
        server.answer = answer
        store = Store([("127.0.0.1", server.port)], request_timeout_s=2.0)
        try:
            with pytest.raises(EtcdUnavailable) as caught:
                store.read_prefix("/flowcollect/g/")
            text = str(caught.value)
            assert "\x1b" not in text and "\n" not in text and "\\x1b[31mboom\\nforged line" in text
            assert len(text) < 500
        finally:
            store.close()
