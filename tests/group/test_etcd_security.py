"""The group's etcd over TLS (certificates the test makes) and with etcd's user/password
authentication on: real etcd processes. Members join and share lanes; a wrong password, a missing
client certificate or an untrusted server are refused with a clear error that shows no secret;
an expired auth token is fetched again."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from flowcollect import ConfigError, Secret
from flowcollect.group import EtcdAccess, EtcdUnavailable, GroupMember, group_status
from flowcollect.group._etcd import Store
from tests.support.certs import Pki
from tests.support.etcd import Etcd
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

PASSWORD = "etcd-pw-51c0a9"  # made up for the test
LANES = [f"modbus+tcp://127.0.0.1:{5300 + i}" for i in range(4)]


def enable_auth(etcd: Etcd) -> None:
    """A root user (etcd's auth needs one with the root role), then auth on."""
    etcd.call("auth/user/add", {"name": "root", "password": PASSWORD})
    etcd.call("auth/role/add", {"name": "root"})
    etcd.call("auth/user/grant", {"user": "root", "role": "root"})
    etcd.call("auth/enable", {})


def endpoint(etcd: Etcd) -> list[tuple[str, int]]:
    return [("127.0.0.1", etcd.client_port)]


def join(etcd: Etcd, access: EtcdAccess, name: str) -> tuple[GroupMember, list[frozenset[str]]]:
    seen: list[frozenset[str]] = []
    member = GroupMember(
        f"etcd://{etcd.endpoint}/{name}", LANES, seen.append, member_id="m1", ttl_s=2, etcd=access
    )
    return member.start(), seen


def test_with_auth_on_a_member_with_the_password_joins_and_others_are_refused(
    etcd_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    etcd = etcd_factory(args=["--auth-token=simple", "--auth-token-ttl=2"])
    enable_auth(etcd)
    caplog.set_level(logging.DEBUG)
    member, seen = join(etcd, EtcdAccess(username="root", password=Secret(PASSWORD)), "auth")
    try:
        assert member.wait_joined(15)
        wait_until(lambda: bool(seen) and seen[-1] == frozenset(LANES), 10, "every lane owned")
        status = group_status(
            f"etcd://{etcd.endpoint}/auth", etcd=EtcdAccess(username="root", password=PASSWORD)
        )
        assert [m.id for m in status.members] == ["m1"]
    finally:
        member.stop()
    for access, words in (
        (EtcdAccess(), "user name is empty.*set FLOWCOLLECT_ETCD_USER and FLOWCOLLECT_ETCD_PASSWORD"),
        (
            EtcdAccess(username="root", password=Secret("wrong-" + PASSWORD)),
            "authentication failed.*refused the password of user 'root'",
        ),
    ):
        store = Store(endpoint(etcd), 2.0, access)
        try:
            with pytest.raises(EtcdUnavailable, match=words) as caught:
                store.read_prefix("/flowcollect/auth/")
            assert PASSWORD not in str(caught.value)
        finally:
            store.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in logged


def test_an_expired_auth_token_is_fetched_again(etcd_factory: Any) -> None:
    etcd = etcd_factory(args=["--auth-token=simple", "--auth-token-ttl=1"])
    enable_auth(etcd)
    store = Store(endpoint(etcd), 2.0, EtcdAccess(username="root", password=PASSWORD))
    try:
        store.put("/flowcollect/t/k", b"v")
        first = store._tokens[0]
        time.sleep(3)  # the simple token's TTL passes (etcd checks it about every second)
        _, kvs = store.read_prefix("/flowcollect/t/")
        assert [kv.value for kv in kvs] == [b"v"]
        assert store._tokens[0] != first, "a new token was fetched"
    finally:
        store.close()


def test_a_member_reaches_etcd_over_tls_with_a_client_certificate(etcd_factory: Any, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    etcd = etcd_factory(
        tls=(pki.server_cert, pki.server_key, pki.ca), client_cert=(pki.client_cert, pki.client_key)
    )
    assert etcd.url.startswith("https://")
    good = EtcdAccess(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    member, seen = join(etcd, good, "tls")
    try:
        assert member.wait_joined(15)
        wait_until(lambda: bool(seen) and seen[-1] == frozenset(LANES), 10, "every lane owned over TLS")
    finally:
        member.stop()
    refused = {
        "no client certificate": EtcdAccess(ca_file=str(pki.ca)),
        "an untrusted server": EtcdAccess(
            ca_file=str(pki.other_ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        ),
        "a client certificate etcd does not trust": EtcdAccess(
            ca_file=str(pki.ca), cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key)
        ),
        "plain http": EtcdAccess(),
    }
    hints: dict[str, str | None] = {
        "no client certificate": "FLOWCOLLECT_ETCD_CERT",
        "an untrusted server": "FLOWCOLLECT_ETCD_CA",
        "a client certificate etcd does not trust": None,
        "plain http": None,
    }
    for why, access in refused.items():
        store = Store(endpoint(etcd), 2.0, access)
        try:
            with pytest.raises(EtcdUnavailable, match=hints[why]):
                store.read_prefix("/flowcollect/tls/")
        except BaseException as exc:
            raise AssertionError(why) from exc
        finally:
            store.close()


def test_etcd_access_from_the_environment_and_its_checks(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    access = EtcdAccess.from_env(
        {"FLOWCOLLECT_ETCD_USER": "collector", "FLOWCOLLECT_ETCD_PASSWORD_FILE": str(tmp_path / "pw")}
    )
    assert access.username == "collector" and access.secret() == PASSWORD and not access.uses_tls
    assert PASSWORD not in repr(access) and "password=<set>" in repr(access)
    assert EtcdAccess.from_env({"FLOWCOLLECT_ETCD_TLS": "1"}).uses_tls
    assert EtcdAccess.from_env({}) == EtcdAccess()
    with pytest.raises(ConfigError, match="password: required with username"):
        EtcdAccess.from_env({"FLOWCOLLECT_ETCD_USER": "collector"})
    with pytest.raises(ConfigError, match=r"ca_file: .* is not a readable file"):
        EtcdAccess(ca_file=str(tmp_path / "missing.pem"))
