"""What ``flowcollect browse`` prints: a tree for a person, a tag list, or a pipeline fragment."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from flowcollect._ids import stable_id
from flowcollect.readers.opcua._browse import BrowsedNode

__all__ = ["browse_csv", "browse_python", "browse_tree"]

_VALUE_WIDTH = 40
_SECURITY: Final = ("security_policy", "security_mode", "certificate", "private_key", "server_certificate")
_FILES: Final = frozenset({"certificate", "private_key", "server_certificate"})
_LINE: Final = 100


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def browse_tree(nodes: Sequence[BrowsedNode]) -> str:
    """One line a node, indented by depth: name, class, node id; type, access and value of a
    variable."""
    lines = []
    for node in nodes:
        indent = "  " * (node.depth - 1)
        leaf = node.name.rsplit("/", 1)[-1]
        if node.node_class == "Variable":
            described = f"{node.data_type or '?'} {node.access or '?'} = {_shown(node.value)}"
            lines.append(f"{indent}{leaf}  {node.node_id}  {described}")
        else:
            lines.append(f"{indent}{leaf}/  {node.node_id}")
    return "\n".join(lines) + ("\n" if lines else "")


def browse_csv(nodes: Sequence[BrowsedNode]) -> str:
    """The variables as a tag list (``flowcollect.tags.read_csv``): name, address (the browse path
    with namespace URIs), value type (empty where the data type has no equivalent)."""
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(["name", "address", "value_type"])
    for node in nodes:
        if node.node_class == "Variable":
            rows.writerow([node.name, node.path, node.value_type or ""])
    return out.getvalue()


def browse_python(
    nodes: Sequence[BrowsedNode],
    endpoint: str,
    reader: str = "opcua",
    *,
    security: Mapping[str, str | Path] | None = None,
    username: str | None = None,
    password_env: str | None = None,
) -> str:
    """A pipeline file that runs as printed: the reader, the variables (stable ids, see
    ``discover``), a context at 1 s and a CSV writer.

    The reader gets the options the browse connected with, so the file reaches a server that
    wants them: ``security`` (``security_policy``, ``security_mode``, ``certificate``,
    ``private_key``, ``server_certificate``; files as absolute paths, so the file runs from any
    folder), ``username``, and the password as ``secret_from_env(password_env)``, never its text.
    """

    def py(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    unknown = sorted(set(security or {}) - set(_SECURITY))
    if unknown:
        raise ValueError(f"browse_python security: unknown options {unknown}; use {', '.join(_SECURITY)}")
    arguments = [py(reader), py(endpoint)]
    for key in _SECURITY:
        value = (security or {}).get(key)
        if value is None:
            continue
        text = str(Path(value).resolve()) if key in _FILES else str(value)
        arguments.append(f"{key}={py(text)}")
    if username is not None:
        arguments.append(f"username={py(username)}")
        if password_env:
            arguments.append(f"password=secret_from_env({py(password_env)})")
    secret = username is not None and bool(password_env)

    lines = [
        f'"""Variables browsed on {endpoint} by `flowcollect browse`."""',
        "",
        "from __future__ import annotations",
        "",
        "from flowcollect import DataCollectionContext, Pipeline, Variable"
        + (", secret_from_env" if secret else ""),
        "from flowcollect.readers import OpcUaDataReader",
        "from flowcollect.writers import CsvFileDataWriter",
        "",
        *_call("opcua = OpcUaDataReader", arguments),
        "",
        "VARIABLES = [",
    ]
    skipped = 0
    for node in nodes:
        if node.node_class != "Variable":
            continue
        if node.value_type is None:
            skipped += 1
            lines.append(
                f"    # {node.name}: data type {node.data_type or 'unknown'} has no value type; left out"
            )
            continue
        lines.append(
            f"    Variable(id={stable_id(reader, node.path)}, name={py(node.name)}, address={py(node.path)}, "
            f"value_type={py(node.value_type)}, reader={py(reader)}),"
        )
    lines += [
        "]",
        "",
        "pipeline = Pipeline(",
        '    name="browsed",',
        "    readers=[opcua],",
        '    writers=[CsvFileDataWriter("out/browsed.csv")],',
        "    contexts=[DataCollectionContext(id=1, interval_ms=1000, variables=VARIABLES)],",
        ")",
        "",
    ]
    return "\n".join(lines)


def _call(head: str, arguments: list[str]) -> list[str]:
    """``head(arguments)`` on one line, or one argument a line when that line would be long."""
    line = f"{head}({', '.join(arguments)})"
    if len(line) <= _LINE:
        return [line]
    return [f"{head}(", *(f"    {argument}," for argument in arguments), ")"]
