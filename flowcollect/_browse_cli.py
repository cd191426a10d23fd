"""``flowcollect browse``: OPC UA browse on the command line (asyncua imported only when run)."""

from __future__ import annotations

import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from flowcollect._exit import exit_with
from flowcollect.errors import ConfigError

__all__ = ["browse_command"]


class BrowseFormat(StrEnum):
    tree = "tree"
    csv = "csv"
    python = "python"


def browse_command(
    url: Annotated[str, typer.Argument(help="The server's endpoint: opc.tcp://HOST:PORT[/path].")],
    path: Annotated[
        str | None, typer.Option("--path", help="Start here: a browse path such as /2:Plant/2:Line1.")
    ] = None,
    depth: Annotated[
        int | None, typer.Option("--depth", min=1, help="Levels to descend (all by default).")
    ] = None,
    match: Annotated[
        str | None,
        typer.Option("--match", help="Only nodes matching: /2:Plant/*/2:Temp*, /2:Plant/**/Alarm*, Temp*."),
    ] = None,
    output: Annotated[
        BrowseFormat, typer.Option("--format", help="tree, csv (a tag list) or python (a pipeline).")
    ] = BrowseFormat.tree,
    security_policy: Annotated[
        str | None, typer.Option("--security-policy", help="Basic256Sha256, ...")
    ] = None,
    security_mode: Annotated[
        str | None, typer.Option("--security-mode", help="Sign or SignAndEncrypt.")
    ] = None,
    certificate: Annotated[Path | None, typer.Option("--certificate", help="The client certificate.")] = None,
    private_key: Annotated[
        Path | None, typer.Option("--private-key", help="The client's private key.")
    ] = None,
    server_certificate: Annotated[
        Path | None, typer.Option("--server-certificate", help="Trust only this server certificate.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", help="Sign in as this user.")] = None,
    password_env: Annotated[
        str,
        typer.Option(
            "--password-env",
            help="The environment variable holding the password (never a command-line argument).",
        ),
    ] = "OPCUA_PASSWORD",  # noqa: S107 - the name of a variable, not a password
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds for each call.")] = 5.0,
    page: Annotated[
        int,
        typer.Option(
            "--page", min=1, help="References per node in one answer (continuation points fetch the rest)."
        ),
    ] = 1000,
    max_time: Annotated[
        float, typer.Option("--max-time", min=1, help="Seconds the whole browse may take.")
    ] = 300.0,
    include_server: Annotated[
        bool, typer.Option("--include-server", help="Also browse the server's own Server object.")
    ] = False,
) -> None:
    """Walk an OPC UA server's address space: each node's browse path, node id, class, data type,
    access level and value; as a tree, a tag list (csv) or a pipeline file (python)."""
    try:
        from flowcollect.readers.opcua import browse, browse_csv, browse_python, browse_tree
    except ImportError as exc:
        exit_with(f"OPC UA is not available (pip install flowcollect[opcua]): {exc}")
    security: dict[str, str | Path] = {}
    for key, value in (
        ("security_policy", security_policy),
        ("security_mode", security_mode),
        ("certificate", certificate),
        ("private_key", private_key),
        ("server_certificate", server_certificate),
    ):
        if value is not None:
            security[key] = value
    options: dict[str, Any] = {"timeout_s": timeout, **security}
    if username is not None:
        options["username"] = username
        options["password"] = os.environ.get(password_env, "")
    interactive = sys.stderr.isatty()

    def progress(count: int) -> None:
        if interactive:
            sys.stderr.write(f"\rbrowsed {count:,} nodes")
            sys.stderr.flush()

    started = time.monotonic()
    try:
        nodes = browse(
            url, path=path, depth=depth, match=match, page=page, max_time_s=max_time,
            include_server=include_server, progress=progress, values=output is BrowseFormat.tree, **options,
        )  # fmt: skip
    except (ConfigError, ValueError) as exc:
        exit_with(exc)
    except Exception as exc:  # a network or server failure, said in one line
        exit_with(f"browsing {url} failed: {type(exc).__name__}: {exc}")
    if output is BrowseFormat.csv:
        sys.stdout.write(browse_csv(nodes))
    elif output is BrowseFormat.python:
        # The reader the file makes connects as the browse did (the password by its variable).
        sys.stdout.write(
            browse_python(nodes, url, security=security, username=username, password_env=password_env)
        )
    else:
        sys.stdout.write(browse_tree(nodes))
    variables = sum(1 for node in nodes if node.node_class == "Variable")
    sys.stderr.write(
        f"{chr(13) if interactive else ''}browsed {url}: {len(nodes):,} nodes, {variables:,} variables "
        f"in {time.monotonic() - started:.1f} s\n"
    )
