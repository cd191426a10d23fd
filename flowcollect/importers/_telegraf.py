"""``flowcollect import telegraf``: a Telegraf configuration as a flowcollect pipeline file.

Translated: ``[[inputs.modbus]]`` (``register`` and ``request`` styles, TCP, RTU over TCP, serial
RTU), ``[[inputs.opcua]]``, ``[[inputs.opcua_listener]]``, ``[[outputs.influxdb]]``,
``[[outputs.influxdb_v2]]``, ``[agent]`` (interval, hostname, batch and buffer sizes) and
``[global_tags]``. The writers use ``schema="fields"``: the points keep Telegraf's measurement,
field and tag names, so existing dashboards keep working. Every option that is not carried over
is listed with the reason, in the file's header and in ``ImportResult.notes``.

Secrets are never copied: an option Telegraf read from the environment (``"${INFLUX_TOKEN}"``)
is read from the same variable; a literal one is replaced by an environment variable the note
names.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from flowcollect.errors import ConfigError
from flowcollect.importers._modbus import ImportedVariable, ModbusDevice, translate_modbus
from flowcollect.importers._opcua import OpcUaImport, translate_opcua
from flowcollect.importers._values import Options, duration_ms, identifier

__all__ = ["ImportResult", "import_telegraf"]

_ENVIRONMENT = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_AGENT_REASONS: Final = {
    "round_interval": "flowcollect always collects on the interval's grid",
    "collection_jitter": "flowcollect reads every device at the grid instant, without jitter",
    "collection_offset": "not carried over (no flowcollect equivalent)",
    "flush_interval": "writers send within flush_interval_ms (1 s) of a value",
    "flush_jitter": "not carried over (no flowcollect equivalent)",
    "precision": "timestamps are the grid instants, exact to the millisecond",
    "debug": "use flowcollect's --verbose",
    "quiet": "not carried over (logging options)",
    "logtarget": "not carried over (logging options)",
    "logfile": "not carried over (logging options)",
    "logfile_rotation_interval": "not carried over (logging options)",
    "logfile_rotation_max_size": "not carried over (logging options)",
    "logfile_rotation_max_archives": "not carried over (logging options)",
    "log_with_timezone": "not carried over (logging options)",
}
_PLUGIN_KEYS: Final = ("interval", "name_override", "name_prefix", "name_suffix")
_FILTERS: Final = ("namepass", "namedrop", "fieldpass", "fielddrop", "fieldinclude", "fieldexclude",
                   "tagpass", "tagdrop", "taginclude", "tagexclude", "alias", "log_level", "precision",
                   "collection_jitter", "collection_offset", "startup_error_behavior")  # fmt: skip


@dataclass
class ImportResult:
    """The pipeline file's text, and what was not carried over (``"where option: reason"``)."""

    source: str
    notes: list[str] = field(default_factory=list)


class _Host:
    """The ``host`` tag Telegraf adds: the collecting machine's name, found when the file runs."""

    def __repr__(self) -> str:
        return "HOST"


def _py(value: object) -> str:
    """Python source for a value of the file: strings double-quoted (JSON's escapes are Python's)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


HOST: Final = _Host()


def import_telegraf(config: str | Path, *, name: str | None = None) -> ImportResult:
    """Translate a Telegraf configuration (a path) into a pipeline file's text.

    Raises ``ConfigError`` for a file that is not TOML or has nothing this importer translates.
    """
    path = Path(config)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file Telegraf could read: {exc}") from exc
    return _Importer(path, data, name or path.stem).run()


class _Importer:
    def __init__(self, path: Path, data: dict[str, Any], name: str) -> None:
        self.path = path
        self.data = data
        self.name = name
        self.notes: list[str] = []
        self.types: set[str] = set()
        self.devices: list[ModbusDevice] = []
        self.opcua: list[OpcUaImport] = []
        self.variables: list[ImportedVariable] = []
        self.writers: list[str] = []
        self.environment: set[str] = set()

    def note(self, where: str, reason: str) -> None:
        self.notes.append(f"{where}: {reason}")

    def unique_type(self, wanted: str) -> str:
        candidate, n = wanted, 2
        while candidate in self.types:
            candidate, n = f"{wanted}-{n}", n + 1
        self.types.add(candidate)
        return candidate

    def environment_reference(self, where: str, value: object, default: str = "") -> str | None:
        """The environment variable a secret comes from; a literal is never copied (noted)."""
        if value is None or value == "":
            return None
        match = _ENVIRONMENT.fullmatch(str(value))
        if match is not None:
            return match.group(1) or match.group(2)
        variable = default or re.sub(r"\W+", "_", where.rsplit(maxsplit=1)[-1]).upper()
        self.note(
            where,
            f"a literal secret is not copied into the pipeline file; set the environment variable {variable}",
        )
        return variable

    def run(self) -> ImportResult:
        agent = Options("agent", self.data.get("agent") or {})
        interval_ms = round(duration_ms(agent.take("interval", "10s")))
        omit_host = bool(agent.take("omit_hostname", False))
        hostname = agent.take("hostname") or ""
        self.batch_size = agent.take("metric_batch_size")
        self.buffer_limit = agent.take("metric_buffer_limit")
        for key in agent.left():
            self.note(f"agent {key}", _AGENT_REASONS.get(key, "not carried over (no flowcollect equivalent)"))
        base_tags: dict[str, object] = {
            str(k): str(v) for k, v in (self.data.get("global_tags") or {}).items()
        }
        if not omit_host:
            base_tags = {"host": hostname or HOST, **base_tags}
        self.uses_host = not omit_host and not hostname
        for key in self.data:
            if key not in ("agent", "global_tags", "inputs", "outputs"):
                self.note(
                    f"[{key}]",
                    "not carried over (processors, aggregators and secret stores have no equivalent)",
                )
        for plugin, tables in (self.data.get("inputs") or {}).items():
            for index, table in enumerate(tables if isinstance(tables, list) else [tables]):
                self._input(plugin, index, table, interval_ms, base_tags)
        for plugin, tables in (self.data.get("outputs") or {}).items():
            for index, table in enumerate(tables if isinstance(tables, list) else [tables]):
                self._output(plugin, index, table)
        if not self.variables:
            raise ConfigError(
                f"{self.path}: no [[inputs.modbus]], [[inputs.opcua]] or [[inputs.opcua_listener]] "
                "with a field to collect" + (f" ({'; '.join(self.notes)})" if self.notes else "")
            )
        if not self.writers:
            self.writers.append('CsvFileDataWriter("out/telegraf.csv")')
            self.note(
                "outputs",
                "no [[outputs.influxdb]] or [[outputs.influxdb_v2]]: the values go to out/telegraf.csv",
            )
        return ImportResult(self._render(), self.notes)

    # -- plugins ---------------------------------------------------------------------------------

    def _input(
        self,
        plugin: str,
        index: int,
        table: Mapping[str, Any],
        interval_ms: int,
        base_tags: dict[str, object],
    ) -> None:
        where = f"inputs.{plugin}[{index}]"
        if plugin not in ("modbus", "opcua", "opcua_listener"):
            self.note(where, "not a plugin the importer translates (modbus, opcua, opcua_listener)")
            return
        table = dict(table)
        own = Options(where, {k: table.pop(k) for k in (*_PLUGIN_KEYS, *_FILTERS) if k in table})
        interval = own.take("interval")
        every = round(duration_ms(interval)) if interval is not None else interval_ms
        override, prefix, suffix = (
            own.take("name_override"),
            own.take("name_prefix", ""),
            own.take("name_suffix", ""),
        )

        def measurement_of(metric: str) -> str:
            return str(override) if override else f"{prefix}{metric}{suffix}"

        for key in own.left():
            self.note(f"{where} {key}", "filters and per-plugin agent settings are not carried over")
        if plugin == "modbus":
            result = translate_modbus(
                where, table, interval_ms=every, base_tags=base_tags, measurement_of=measurement_of,
                unique_type=self.unique_type, note=self.note,
            )  # fmt: skip
            if result is not None:
                self.devices += result.devices
                self.variables += result.variables
            return
        imported = translate_opcua(
            where, table, listener=plugin == "opcua_listener", interval_ms=every, base_tags=base_tags,
            measurement_of=measurement_of, unique_type=self.unique_type,
            environment_reference=self.environment_reference, note=self.note,
        )  # fmt: skip
        if imported is not None:
            self.opcua.append(imported)
            self.variables += imported.variables

    def _output(self, plugin: str, index: int, table: Mapping[str, Any]) -> None:
        where = f"outputs.{plugin}[{index}]"
        if plugin not in ("influxdb", "influxdb_v2"):
            self.note(where, "not an output the importer translates (influxdb, influxdb_v2)")
            return
        options = Options(where, table)
        urls = options.take("urls") or ["http://127.0.0.1:8086"]
        if len(urls) > 1:
            self.note(f"{where} urls", f"only the first of {len(urls)} is written to ({urls[0]})")
        args = [_py(str(urls[0]))]
        if plugin == "influxdb":
            args += ['api="v1"', f"database={_py(str(options.take('database', 'telegraf')))}"]
            policy = options.take("retention_policy")
            if policy:
                args.append(f"retention_policy={_py(str(policy))}")
            user = options.take("username")
            if user:
                args.append(f"username={_py(str(user))}")
                variable = self.environment_reference(
                    f"{where} password", options.take("password"), "INFLUX_PASSWORD"
                )
                if variable not in (None, "INFLUX_PASSWORD"):  # the writer reads INFLUX_PASSWORD itself
                    args.append(f"password=os.environ.get({_py(variable)})")
                    self.environment.add(str(variable))
        else:
            args += [
                f"org={_py(str(options.take('organization', '')))}",
                f"bucket={_py(str(options.take('bucket', '')))}",
            ]
            variable = self.environment_reference(f"{where} token", options.take("token"), "INFLUX_TOKEN")
            if variable not in (None, "INFLUX_TOKEN"):  # the writer reads INFLUX_TOKEN itself
                args.append(f"token=os.environ.get({_py(variable)})")
                self.environment.add(str(variable))
        timeout = options.take("timeout")
        if timeout is not None:
            args.append(f"timeout_s={duration_ms(timeout) / 1000!r}")
        if self.batch_size:
            args.append(f"batch_size={int(self.batch_size)}")
        if self.buffer_limit:
            args.append(f"buffer_limit={int(self.buffer_limit)}")
        args += ['measurement="telegraf"', 'schema="fields"']
        for key in options.left():
            self.note(
                f"{where} {key}", "not carried over (set it on InfluxDBDataWriter where it has an equivalent)"
            )
        self.writers.append(f"InfluxDBDataWriter({', '.join(args)})")

    # -- the file --------------------------------------------------------------------------------

    def _render(self) -> str:
        out = [
            f'"""Imported from {self.path.name} by `flowcollect import telegraf`.',
            "",
            "The points keep Telegraf's measurements, fields and tags (InfluxDB schema='fields').",
            "Check it with `flowcollect check` before running it.",
            '"""',
            "",
        ]
        if self.notes:
            out.append("# Not carried over:")
            out += [f"# - {note}".replace("\n", " ") for note in self.notes]
            out.append("")
        out += ["from __future__ import annotations", ""]
        if self.environment or any(o.secrets for o in self.opcua):
            out.append("import os")
        if self.uses_host:
            out.append("import socket")
        out += ["", "from flowcollect import DataCollectionContext, Pipeline, Variable"]
        readers = []
        if self.devices:
            readers.append("ModbusDataReader")
            if self._needs_lines():
                readers.append("ModbusLine")
        if self.opcua:
            readers.append("OpcUaDataReader")
        out.append(f"from flowcollect.readers import {', '.join(sorted(readers))}")
        writers = sorted({w.split("(")[0] for w in self.writers})
        out += [f"from flowcollect.writers import {', '.join(writers)}", ""]
        if self.uses_host:
            out += ["HOST = socket.gethostname()", '"""The `host` tag Telegraf adds to every point."""', ""]
        out += self._render_readers()
        out += self._render_contexts()
        names = [identifier(d.type) for d in self.devices] + [identifier(o.type) for o in self.opcua]
        contexts = sorted({v.interval_ms for v in self.variables})
        out += [
            "pipeline = Pipeline(",
            f"    name={_py(self.name)},",
            f"    readers=[{', '.join(names)}],",
            "    writers=[",
            *[f"        {w}," for w in self.writers],
            "    ],",
            "    contexts=[",
            *[
                f"        DataCollectionContext(id={i}, interval_ms={ms}, duration_s=None, "
                f"variables=VARIABLES_{ms}_MS),"
                for i, ms in enumerate(contexts, 1)
            ],
            "    ],",
            ")",
            "",
        ]
        return "\n".join(out)

    def _needs_lines(self) -> bool:
        return any(self._line_of(d) is not None for d in self.devices)

    def _line_of(self, device: ModbusDevice) -> str | None:
        shared = sum(1 for d in self.devices if d.endpoint == device.endpoint) > 1
        if device.endpoint[0] == "tcp" and not shared and not device.line_options:
            return None
        return "line_" + re.sub(r"\W+", "_", str(device.endpoint[1])).strip("_")

    def _render_readers(self) -> list[str]:
        out: list[str] = []
        lines_done: set[str] = set()
        for device in self.devices:
            line = self._line_of(device)
            kind, where = device.endpoint
            if line is None:
                host, port = str(where).rsplit(":", 1)
                out.append(
                    f"{identifier(device.type)} = ModbusDataReader({_py(device.type)}, host={_py(host)}, "
                    f"port={port}, unit={device.unit}, timeout_s={device.timeout_s!r})"
                )
                continue
            if line not in lines_done:
                lines_done.add(line)
                options = "".join(f", {k}={_py(v)}" for k, v in device.line_options.items())
                if kind == "serial":
                    out.append(f"{line} = ModbusLine({_py(str(where))}{options})")
                else:
                    host, port = str(where).rsplit(":", 1)
                    framer = ', framer="rtu"' if kind == "rtu-tcp" else ""
                    out.append(f"{line} = ModbusLine(host={_py(host)}, port={port}{framer}{options})")
            out.append(
                f"{identifier(device.type)} = ModbusDataReader({_py(device.type)}, line={line}, "
                f"unit={device.unit}, timeout_s={device.timeout_s!r})"
            )
        for reader in self.opcua:
            arguments = [_py(reader.type), _py(reader.endpoint)]
            arguments += [f"{k}={_py(v)}" for k, v in reader.options.items()]
            arguments += [f"{k}=os.environ.get({_py(v)})" for k, v in reader.secrets.items()]
            out.append(f"{identifier(reader.type)} = OpcUaDataReader({', '.join(arguments)})")
        return [*out, ""]

    def _render_contexts(self) -> list[str]:
        by_interval: dict[int, list[ImportedVariable]] = defaultdict(list)
        for variable in self.variables:
            by_interval[variable.interval_ms].append(variable)
        out: list[str] = []
        vid = 0
        for ms in sorted(by_interval):
            out.append(f"VARIABLES_{ms}_MS = [")
            for variable in by_interval[ms]:
                vid += 1
                fields = [f"id={vid}", f"name={_py(variable.name)}", f"address={_py(variable.address)}",
                          f"reader={_py(variable.reader)}"]  # fmt: skip
                if variable.value_type is not None:
                    fields.append(f"value_type={_py(variable.value_type)}")
                if variable.scale is not None:
                    fields.append(f"scale={variable.scale!r}")
                tags = ", ".join(f"{_py(k)}: {_py(v)}" for k, v in variable.tags.items())
                fields.append(f"tags={{{tags}}}")
                out.append(f"    Variable({', '.join(fields)}),")
            out += ["]", ""]
        return out
