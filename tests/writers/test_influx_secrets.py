"""Secrets in pipeline files: ``Secret``, ``secret_from_env``, ``secret_from_file`` and the
InfluxDB writer's ``token_file``/``password_file``. The secret reaches the server and nothing
else: a server echoing every header back in its error text, ``repr()``, logs, ``last_error``."""

from __future__ import annotations

import base64
import copy
import logging
import pickle
import re
import socket
from pathlib import Path

import pytest

from flowcollect import ConfigError, Secret, secret_from_env, secret_from_file
from flowcollect.errors import PreflightError
from flowcollect.writers import InfluxDBDataWriter
from tests.support.hostile import HostileServer, respond

pytestmark = pytest.mark.timeout(60)

TOKEN = "tok-5f1b9c0e7d"  # a test's made-up token


def test_a_secret_shows_as_set_everywhere_but_reveal() -> None:
    secret = Secret(TOKEN)
    assert repr(secret) == "Secret(<set>)" and str(secret) == "<set>" and f"{secret}" == "<set>"
    assert f"{secret!r}" == "Secret(<set>)" and "%s" % (secret,) == "<set>"  # noqa: UP031
    assert secret.reveal() == TOKEN
    assert secret == Secret(TOKEN) and secret != Secret("other")
    with pytest.raises(TypeError):
        hash(secret)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(secret)
    assert copy.deepcopy({"token": secret})["token"] is secret, "copies share it (it is immutable)"


def test_secret_from_env_and_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FC_TEST_TOKEN", TOKEN)
    from_env = secret_from_env("FC_TEST_TOKEN")
    assert from_env.reveal() == TOKEN and repr(from_env) == "Secret(<set>, from env FC_TEST_TOKEN)"
    monkeypatch.delenv("FC_TEST_TOKEN")
    with pytest.raises(ConfigError, match="FC_TEST_TOKEN is not set"):
        secret_from_env("FC_TEST_TOKEN")
    for text in (TOKEN, TOKEN + "\n", TOKEN + "\r\n"):
        (tmp_path / "token").write_text(text)
        assert secret_from_file(tmp_path / "token").reveal() == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        secret_from_file(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"cannot read .*missing"):
        secret_from_file(tmp_path / "missing")


def echo_headers(status: int = 401) -> object:
    """A server that answers with every header it received, the credentials included."""

    def answer(request: bytes, sock: socket.socket) -> None:
        head = request.split(b"\r\n\r\n", 1)[0]
        respond(
            status, b'{"error":"you sent ' + head.replace(b"\r\n", b" | ") + b'"}', reason="Unauthorized"
        )(request, sock)

    answer.requests = []  # type: ignore[attr-defined]
    return answer


@pytest.mark.parametrize(
    ("settings", "sent"),
    [
        ({"token": Secret(TOKEN)}, f"Token {TOKEN}"),
        ({"token_file": "FILE"}, f"Token {TOKEN}"),
        ({"token": "ENV"}, f"Token {TOKEN}"),
        (
            {"api": "v1", "database": "plant", "username": "collector", "password_file": "FILE"},
            "Basic " + base64.b64encode(f"collector:{TOKEN}".encode()).decode(),
        ),
    ],
    ids=["secret", "token_file", "secret_from_env", "password_file"],
)
def test_the_secret_goes_to_the_server_and_nowhere_else(
    settings: dict[str, object],
    sent: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "secret").write_text(TOKEN + "\n")
    monkeypatch.setenv("FC_TEST_TOKEN", TOKEN)
    settings = {
        k: (
            str(tmp_path / "secret") if v == "FILE" else secret_from_env("FC_TEST_TOKEN") if v == "ENV" else v
        )
        for k, v in settings.items()
    }
    if settings.get("api") != "v1":
        settings.update(org="o", bucket="b")
    caplog.set_level(logging.DEBUG)
    with HostileServer() as server:
        server.answer = echo_headers()  # type: ignore[assignment]
        writer = InfluxDBDataWriter(server.url, timeout_s=2.0, **settings)  # type: ignore[arg-type]
        try:
            with pytest.raises(PreflightError) as caught:
                writer.preflight()
            writer.sender.submit(["m value=1 1"])
            writer.flush()
            shown = [str(caught.value), repr(writer), str(writer.last_error)]
        finally:
            writer.close()
    masked = re.compile(r"Authorization: (Token|Basic) \*\*\*")
    assert "you sent POST" in shown[0] and masked.search(shown[0]), "the echo came back, masked"
    assert ("token=<set>" if "token" in repr(writer) else "password=<set>") in shown[1]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert masked.search(logged)
    for text in [*shown, logged]:
        assert TOKEN not in text and sent.split(" ")[1] not in text


def test_a_token_and_a_token_file_together_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(TOKEN)
    with pytest.raises(ConfigError) as caught:
        InfluxDBDataWriter("http://x:1", token=TOKEN, token_file=tmp_path / "t", org="o", bucket="b")
    assert "token_file: give token or token_file, not both" in str(caught.value)
    assert TOKEN not in str(caught.value)
    with pytest.raises(ConfigError, match="password_file: secret_from_file: cannot read"):
        InfluxDBDataWriter(
            "http://x:1", api="v1", database="d", username="u", password_file=tmp_path / "nope"
        )
