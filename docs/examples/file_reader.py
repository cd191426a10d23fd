"""A reader of `name=value` lines from a text file another program keeps up to date."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flowcollect import CollectedVariable, DataReader, Variable

CASTS = {"float": float, "int": int, "bool": lambda text: text.strip().lower() in ("1", "true", "on"), "str": str}


class KeyValueFileReader(DataReader):
    def __init__(self, path: str | Path, type: str = "kvfile") -> None:  # noqa: A002
        self.path = Path(path)
        self._type = type

    @property
    def type(self) -> str:
        return self._type

    @property
    def min_interval_ms(self) -> int:
        return 100  # re-reading a file faster than this is pointless

    def validate(self, variable: Variable) -> None:
        # Called for every variable before a context starts: reject what can never work.
        if "=" in variable.address or not variable.address.strip():
            raise ValueError("an address is a key without '='")

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        # One read per tick for every due variable: open the file once, not once per variable.
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            for v in variables:
                v.error = f"cannot read {self.path.name}: {exc.strerror}"
            return
        table = dict(line.split("=", 1) for line in lines if "=" in line)
        for v in variables:
            text = table.get(v.address)
            if text is None:
                v.error = "no such key"
                continue
            try:
                v.value = CASTS[v.value_type](text)
            except ValueError:
                v.error = f"not a {v.value_type}: {text!r}"
