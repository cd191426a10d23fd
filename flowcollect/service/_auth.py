"""Who may do what: the bearer token, and which addresses count as loopback."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from flowcollect._secret import Secret
from flowcollect.errors import ConfigError

__all__ = ["TOKEN_ENV", "is_loopback", "load_token", "token_matches"]

TOKEN_ENV = "FLOWCOLLECT_API_TOKEN"  # noqa: S105 -- a variable's name, not a token
"""The environment variable read for the token when no ``--token-file`` is given."""


def load_token(token_file: Path | None, environ: dict[str, str] | None = None) -> Secret | None:
    """The API token from ``token_file`` (its first line, stripped) or ``$FLOWCOLLECT_API_TOKEN``;
    None when neither gives one. The value never reaches a message: errors name the file only."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it: {exc.strerror}") from None
        lines = text.strip().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        if len(token) < 16:
            raise ConfigError(f"--token-file {token_file}: the token is shorter than 16 characters")
        return Secret(token, f"--token-file {token_file}")
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    if not value:
        return None
    if len(value) < 16:
        raise ConfigError(f"${TOKEN_ENV}: the token is shorter than 16 characters")
    return Secret(value, f"${TOKEN_ENV}")


def token_matches(token: Secret, header: str) -> bool:
    """Whether ``header`` (an Authorization header's value after ``Bearer ``) is the token,
    compared in constant time (as bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(token.reveal().encode(), header.encode())


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for any other address or name
    (0.0.0.0 listens on every interface, so it is not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
