"""``flowcollect group status|pause|resume|stop``: the group's command line (cli.py adds it).

Every command names its group with ``--group etcd://HOST:PORT[,HOST:PORT...]/NAME`` (or
``$FLOWCOLLECT_GROUP``), talks to etcd once and exits: 0 when done, 1 with one line on stderr
(``error: ...``) when the address is wrong or no etcd endpoint answers.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flowcollect.errors import ConfigError
from flowcollect.group._etcd import EtcdUnavailable
from flowcollect.group._options import parse_pins

__all__ = ["group_app"]

group_app = typer.Typer(
    name="group",
    help="Inspect and control a group of `flowcollect run --group` members on etcd.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

GroupOpt = Annotated[
    str,
    typer.Option(
        "--group",
        "-g",
        envvar="FLOWCOLLECT_GROUP",
        metavar="etcd://HOST:PORT[,HOST:PORT...]/NAME",
        help="The group's etcd endpoints and name.",
    ),
]
ContextArg = Annotated[int, typer.Argument(metavar="CONTEXT_ID", min=0, help="The context's id.")]


def _fail(exc: BaseException) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@group_app.command("status")
def status(
    group: GroupOpt,
    json_output: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    pin: Annotated[
        list[str] | None,
        typer.Option(
            "--pin", metavar="LANE_GLOB=LABEL", help="The members' pins, to show who should own what."
        ),
    ] = None,
) -> None:
    """Members (lease ages, lanes held), every lane with its owner and fencing token, context control."""
    from flowcollect.group._control import group_status

    try:
        result = group_status(group, parse_pins(pin or []))
    except (ConfigError, EtcdUnavailable) as exc:
        raise _fail(exc) from None
    if json_output:
        typer.echo(json.dumps(result.as_dict()))
    else:
        typer.echo("\n".join(result.lines()))


def _control(group: str, context_id: int, state: str, verb: str) -> None:
    from flowcollect.group._control import set_context_state

    try:
        revision = set_context_state(group, context_id, state)
    except (ConfigError, EtcdUnavailable) as exc:
        raise _fail(exc) from None
    typer.echo(f"context {context_id}: {verb} on every member of {group} (etcd revision {revision})")


@group_app.command("pause")
def pause(context_id: ContextArg, group: GroupOpt) -> None:
    """Pause a context on every member, now and on members that join later."""
    _control(group, context_id, "paused", "paused")


@group_app.command("resume")
def resume(context_id: ContextArg, group: GroupOpt) -> None:
    """Resume a paused context on every member."""
    _control(group, context_id, "running", "resumed")


@group_app.command("stop")
def stop(context_id: ContextArg, group: GroupOpt) -> None:
    """Stop a context on every member (for good: members that join later do not start it)."""
    _control(group, context_id, "stopped", "stopped")
