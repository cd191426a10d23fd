"""Device profiles: one list of variables for identical devices, instantiated per device.

``DeviceProfile(name="pump", variables=[...])`` holds the variables of one kind of device, with
any placeholder reader. ``profile.instantiate(device="pump-3", reader="pump3", tags={...})``
gives that device's variables: the reader replaced, each name prefixed by the device
(``pump-3/flow``; a variable without a name uses its address), the tags merged (the tags
``profile`` and ``device``, then the profile variable's tags, then the instance's ``tags``, later
ones winning), and stable ids. ``flowcollect plan`` summarises by those two tags.

The id rule: ``stable_id(device, str(variable.id))`` (see ``flowcollect.tags.stable_id``), so
the same device's same profile variable has the same id on every run, whatever else the pipeline
holds, and two devices never share an id unless 53-bit hashes collide (which the context's
unique-id check reports). ``id_base=N`` gives readable ids instead: ``N + variable.id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowcollect._ids import stable_id
from flowcollect.errors import ConfigError
from flowcollect.models import Variable, share_fields_set
from flowcollect.readers.base import DataReader
from flowcollect.tags._csv import read_csv, validate_for_reader

__all__ = ["DeviceProfile"]

PROFILE_READER = "profile"
"""The placeholder reader of variables read into a profile from a tag list."""


class DeviceProfile(BaseModel):
    """The variables of one kind of device; ``instantiate`` makes one device's variables."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    variables: list[Variable] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("variables")
    @classmethod
    def _unique(cls, variables: list[Variable]) -> list[Variable]:
        ids = [v.id for v in variables]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"variable ids must be unique in a profile; repeated: {repeated}")
        labels = [v.name or v.address for v in variables]
        same = sorted({n for n in labels if labels.count(n) > 1})
        if same:
            raise ValueError(f"variable names (else addresses) must be unique in a profile; repeated: {same}")
        return variables

    @classmethod
    def from_csv(cls, path: str | Path, *, name: str | None = None, **defaults: Any) -> DeviceProfile:
        """A profile from a tag list (``flowcollect.tags.read_csv``); named after the file by default."""
        source = Path(path)
        return cls(name=name or source.stem, variables=read_csv(source, reader=PROFILE_READER, **defaults))

    def instantiate(
        self,
        device: str,
        reader: str | DataReader,
        tags: Mapping[str, str] | None = None,
        *,
        id_base: int | None = None,
    ) -> list[Variable]:
        """This device's variables: ``reader`` (a type or the reader), ``device/name`` names,
        merged tags, stable ids. Given the reader itself, each address is checked against it.
        """
        problems = self._check_instance(device, reader, tags, id_base)
        if problems:
            raise ConfigError(problems)
        reader_type = reader.type if isinstance(reader, DataReader) else reader
        extra = dict(tags or {})
        out: list[Variable] = []
        for variable in self.variables:
            vid = id_base + variable.id if id_base is not None else stable_id(device, str(variable.id))
            # Every field below comes from validated values (the profile's variable, the checked
            # device, reader and tags), so a copy needs no second validation (a quarter cheaper).
            instance = variable.model_copy(
                update={
                    "id": vid,
                    "reader": reader_type,
                    "name": f"{device}/{variable.name or variable.address}",
                    "tags": {"profile": self.name, "device": device, **variable.tags, **extra},
                }
            )
            share_fields_set(instance)  # as Variable(...) does
            if isinstance(reader, DataReader):
                try:
                    validate_for_reader(instance, reader)
                except ValueError as exc:
                    problems.append(
                        f"profile {self.name!r} device {device!r} variable {instance.name!r}: {exc}"
                    )
                    continue
            out.append(instance)
        if problems:
            raise ConfigError(problems)
        return out

    def _check_instance(self, device: object, reader: object, tags: object, id_base: object) -> list[str]:
        where = f"profile {self.name!r} instantiate"
        problems = []
        if not isinstance(device, str) or not device.strip():
            problems.append(f"{where} device: must be a non-empty str, got {device!r}")
        if not isinstance(reader, DataReader) and (not isinstance(reader, str) or not reader.strip()):
            problems.append(f"{where} reader: must be a reader type or a DataReader, got {reader!r}")
        if tags is not None and not _is_tag_map(tags):
            problems.append(f"{where} tags: must map non-blank str names to str values, got {tags!r}")
        if id_base is not None and (not isinstance(id_base, int) or isinstance(id_base, bool) or id_base < 0):
            problems.append(f"{where} id_base: must be an int >= 0, got {id_base!r}")
        return problems


def _is_tag_map(tags: object) -> bool:
    return isinstance(tags, Mapping) and all(
        isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in tags.items()
    )
