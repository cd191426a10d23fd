"""Passwords and tokens in pipeline files: from the environment or a file, never shown.

A pipeline file is code that lives in version control; its secrets should not. ``Secret`` holds
one (from ``secret_from_env("INFLUX_TOKEN")``, ``secret_from_file("/run/secrets/influx")`` or
``Secret("...")``) and shows as ``<set>`` in ``repr()``, ``str()``, f-strings and logs; only
``reveal()`` gives the text, at the one place it is sent. Every password or token option of
flowcollect takes a ``Secret`` (or a plain ``str``, for scripts that already hold one).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import NoReturn

from flowcollect.errors import ConfigError

__all__ = ["Secret", "SecretLike", "reveal", "secret_from_env", "secret_from_file"]


class Secret:
    """A password or token. ``repr``/``str``/``format`` give ``<set>``; ``reveal()`` the text.

    Equal to another ``Secret`` with the same text (compared in constant time); not hashable
    and not picklable, so it never lands in a dict key, a cache or a pickle by accident.
    """

    __slots__ = ("__value", "source")

    def __init__(self, value: str, source: str = "given") -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self.__value = value
        self.source = source
        """Where it came from (``env INFLUX_TOKEN``, ``file /run/secrets/x``): safe to show."""

    def reveal(self) -> str:
        """The secret text: for the one place that sends it (a header, a login)."""
        return self.__value

    def __repr__(self) -> str:
        return f"Secret(<set>, from {self.source})" if self.source != "given" else "Secret(<set>)"

    def __str__(self) -> str:
        return "<set>"

    def __format__(self, spec: str) -> str:
        return "<set>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.__value.encode(), other.reveal().encode())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not pickled (it would be written out in clear)")

    def __copy__(self) -> Secret:
        return self  # immutable: copies (and deep copies of what holds one) share it

    def __deepcopy__(self, memo: object) -> Secret:
        return self

    def __bool__(self) -> bool:
        return bool(self.__value)


SecretLike = str | Secret
"""What a password or token option takes."""


def secret_from_env(name: str) -> Secret:
    """The environment variable ``name`` as a ``Secret``; a ``ConfigError`` naming the variable
    (never a value) when it is unset or empty."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"secret_from_env: the environment variable {name} is not set (or empty)")
    return Secret(value, f"env {name}")


def secret_from_file(path: str | os.PathLike[str]) -> Secret:
    """The text of the file at ``path`` as a ``Secret`` (one trailing newline dropped, as files
    written by ``echo`` or Docker/Kubernetes secrets end); a ``ConfigError`` naming the file when
    it cannot be read or is empty."""
    where = Path(path)
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"secret_from_file: cannot read {where}: {type(exc).__name__}") from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if not text:
        raise ConfigError(f"secret_from_file: {where} is empty")
    return Secret(text, f"file {where}")


def reveal(value: SecretLike | None) -> str | None:
    """The text of a password/token option's value (``None`` stays ``None``)."""
    return value.reveal() if isinstance(value, Secret) else value
