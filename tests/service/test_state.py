"""The state file and the token loader on their own (real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowcollect import ConfigError
from flowcollect.service import StateStore, is_loopback, load_token


def test_the_state_file_is_replaced_whole_and_read_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.put(
        3, {"context": {"id": 3}, "start_date": "2026-01-01T00:00:00Z", "duration_s": 60, "paused": False}
    )
    store.update(3, paused=True)
    store.put(
        4, {"context": {"id": 4}, "start_date": "2026-01-01T00:00:00Z", "duration_s": None, "paused": False}
    )
    store.drop(4)
    store.drop(5)  # unknown: nothing to do
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["contexts.json"]  # no temporary left
    assert json.loads(store.path.read_text())["contexts"]["3"]["paused"] is True
    again = StateStore(tmp_path / "state")
    assert again.records() == {
        3: {"context": {"id": 3}, "start_date": "2026-01-01T00:00:00Z", "duration_s": 60, "paused": True}
    }


def test_a_foreign_state_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "contexts.json").write_text('{"version": 9}')
    with pytest.raises(ConfigError, match=r"contexts\.json is not a flowcollect state file"):
        StateStore(tmp_path)
    (tmp_path / "contexts.json").write_text("{half")
    with pytest.raises(ConfigError, match="move it away"):
        StateStore(tmp_path)


def test_tokens_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  0123456789abcdef0123  \nsecond line\n")
    token = load_token(path)
    assert token is not None and token.reveal() == "0123456789abcdef0123"
    assert "0123" not in repr(token)
    assert load_token(None, {"FLOWCOLLECT_API_TOKEN": "from-the-environment-0"}) is not None
    assert load_token(None, {}) is None
    path.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_token(path)
    with pytest.raises(ConfigError, match="cannot read it"):
        load_token(tmp_path / "missing")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104 -- a host to classify, not a bind
        ("::", False),
        ("192.168.1.4", False),
        ("plc.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
