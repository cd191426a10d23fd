"""The ``flowcollect`` command: run, check and plan pipeline files; serve the Modbus simulator.

Errors are one line each on stderr (``error: ...``) with exit code 1, a traceback only with
``--log-level debug``. ``run`` stops cleanly on SIGINT or SIGTERM: the signal only sets an
event, the main thread then closes the collector (writers flushed) and prints the summary; it
exits 0 (130 after SIGINT), or 3/4 when the run stored or read nothing real (docs/cli.md).

Commands that run a pipeline work in the pipeline file's folder, so relative paths in the file
(``out/line1.csv``) are beside it, wherever the command was started from.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from flowcollect import _discoveries
from flowcollect._browse_cli import browse_command
from flowcollect.collector import DataCollector
from flowcollect.errors import ConfigError, FlowcollectError, PreflightError
from flowcollect.group import (
    GroupMembership,
    GroupOptions,
    GroupStats,
    GroupStatsCollector,
    group_app,
    run_in_group,
)
from flowcollect.importers import import_app
from flowcollect.pipeline import (
    EXIT_ALL_ERRORS,
    EXIT_ERROR,
    OnceResult,
    Pipeline,
    RunSummary,
    load_pipeline,
    port_in_use,
    writer_figures,
)
from flowcollect.scan import scan_command
from flowcollect.stats import CollectorStats

__all__ = ["app", "main"]

_log = logging.getLogger("flowcollect.cli")

app = typer.Typer(
    name="flowcollect",
    help="Collect industrial variables at exact intervals: run, check and plan pipeline files.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(group_app, name="group")
app.add_typer(import_app, name="import")
app.command("scan")(scan_command)
app.command("browse")(browse_command)

# Libraries whose INFO lines are noise for an operator (connection chatter); debug shows them.
# (pymodbus's own ERROR lines for failures the Modbus reader reports are kept out by the reader,
# around its calls; pymodbus's other warnings, a server's say, still show.)
_CHATTY = ("pymodbus", "urllib3", "influxdb_client", "asyncio", "uvicorn")


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class OutputFormat(StrEnum):
    TEXT = "text"
    MERMAID = "mermaid"
    DOT = "dot"


PipelineArg = Annotated[
    Path, typer.Argument(metavar="PIPELINE", help="A pipeline file: a Python module defining `pipeline`.")
]
ContextOpt = Annotated[
    list[int] | None,
    typer.Option("--context", "-c", help="Only this context id (repeat for several); default: all."),
]
LogLevelOpt = Annotated[
    LogLevel, typer.Option("--log-level", "-l", help="debug also prints tracebacks of errors.")
]


# -- errors and logging --------------------------------------------------------------------------


def _fail(exc: BaseException, debug: bool) -> NoReturn:
    """Print the error as one line per problem on stderr and exit 1."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ConfigError):
        lines = exc.problems
    elif isinstance(exc, PreflightError):
        lines = str(exc).split("; ")
    elif isinstance(exc, FlowcollectError | OSError | ValueError):
        lines = [f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)]
    else:
        hint = "" if debug else " (run with --log-level debug for the traceback)"
        lines = [f"unexpected {type(exc).__name__}: {exc}{hint}"]
    for line in lines:
        sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    raise typer.Exit(EXIT_ERROR)


def _setup_logging(level: LogLevel, console: Console | None = None) -> None:
    """Log to stderr: through rich beside a live status on a terminal, plain lines otherwise."""
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(
            numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )
    # Never print "--- Logging error ---" tracebacks to a service log for a closed pipe.
    logging.raiseExceptions = False


def _load(path: Path, debug: bool, enter: bool = False) -> Pipeline:
    """Load the pipeline file; with ``enter``, make its folder the working directory first, so
    its relative paths (a CSV file, a spool folder) mean "beside the pipeline file"."""
    try:
        pipeline = load_pipeline(path)
    except Exception as exc:
        _fail(exc, debug)
    if enter:
        # After loading, so errors name the file as it was given.
        os.chdir(path.resolve().parent)
    return pipeline


# -- run -----------------------------------------------------------------------------------------


@contextmanager
def _stop_on_signals(stop: threading.Event, received: list[str]) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop``; a second one acts at once (the default action)."""
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        # Only set the event (and note which signal): closing and logging happen on the main
        # thread after the handler returned, so no lock the interrupted code holds (a logging
        # handler's, the collector's) is ever taken here.
        received.append(signal.Signals(signum).name)
        stop.set()
        for restored, old in previous.items():
            signal.signal(restored, old)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Status:
    """Values/s, errors, writer figures and lateness, from successive stats snapshots.

    The writer figures are ``writer_figures``: the very numbers of the summary and the metrics.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.began = time.monotonic()
        self._last: tuple[float, int] | None = None

    def reset(self) -> None:
        """Count from now: collection has just started."""
        self.began = time.monotonic()
        self._last = (self.began, 0)

    def measure(self, stats: CollectorStats) -> dict[str, Any]:
        now = time.monotonic()
        values = sum(r.values for r in stats.readers.values())
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = (values - self._last[1]) / (now - self._last[0])
        self._last = (now, values)
        lateness = [r.lateness_ms_p99 for r in stats.readers.values() if r.lateness_ms_p99 is not None]
        delivery = [r.delivery_ms_p99 for r in stats.readers.values() if r.delivery_ms_p99 is not None]
        states = [c.state for c in stats.contexts.values()]
        figures = [writer_figures(w) for w in stats.writers.values()]
        return {
            "elapsed_s": now - self.began,
            "rate": rate,
            "values": values,
            "errors": sum(r.errors for r in stats.readers.values()),
            "written": sum(f.written for f in figures),
            "failed": sum(f.failed for f in figures),
            "queued": sum(f.pending for f in figures),
            "dropped": sum(f.dropped for f in figures),
            "lateness_p99": max(lateness, default=None),
            "delivery_p99": max(delivery, default=None),
            "running": states.count("running"),
            "paused": states.count("paused"),
        }

    def line(self, stats: CollectorStats) -> str:
        m = self.measure(stats)
        rate = "-" if m["rate"] is None else f"{m['rate']:,.0f}"
        late = "-" if m["lateness_p99"] is None else f"{m['lateness_p99']:.1f} ms"
        deliv = "-" if m["delivery_p99"] is None else f"{m['delivery_p99']:.1f} ms"
        return (
            f"status {self.name}: {rate} values/s, {m['values']:,} values, {m['errors']:,} errors, "
            f"{m['written']:,} written, {m['failed']:,} failed, "
            f"{m['queued']:,} queued in writers, {m['dropped']:,} dropped, lateness p99 {late}, "
            f"delivery p99 {deliv}, "
            f"contexts {m['running']} running {m['paused']} paused"
            + "".join(f"; {name} {text}" for name, text in _spools(stats))
        )

    def table(self, stats: CollectorStats, group: GroupStats | None = None) -> Group:
        m = self.measure(stats)
        rate = "-" if m["rate"] is None else f"{m['rate']:,.0f}"
        head = Text.assemble(
            (f"flowcollect {self.name}", "bold"),
            f"  {m['elapsed_s']:.0f} s  {rate} values/s  {m['values']:,} values  ",
            (f"{m['errors']:,} errors", "red" if m["errors"] else ""),
            f"  contexts: {m['running']} running, {m['paused']} paused",
        )
        hint = Text("Ctrl-C stops: writers are flushed first", style="dim")
        readers = Table(
            "reader", "values", "errors", "overruns", "lateness p99", "delivery p99", "read p99", box=None
        )
        for name, r in stats.readers.items():
            readers.add_row(
                name,
                f"{r.values:,}",
                f"{r.errors:,}",
                f"{r.overruns:,}",
                _ms(r.lateness_ms_p99),
                _ms(r.delivery_ms_p99),
                _ms(r.read_ms_p99),
            )
        writers = Table("writer", "written", "queued or buffered", "failed", "dropped", box=None)
        for name, w in stats.writers.items():
            f = writer_figures(w)
            writers.add_row(name, f"{f.written:,}", f"{f.pending:,}", f"{f.failed:,}", f"{f.dropped:,}")
        extra = [Text(f"{name} {text}", style="dim") for name, text in _spools(stats)]
        if group is not None:
            # A member that is not collecting (fenced, joining) is the line to notice.
            extra.append(
                Text(
                    f"group {group.group}: {group.line()}", style="" if group.state == "active" else "yellow"
                )
            )
        return Group(head, readers, writers, *extra, hint)


def _spools(stats: CollectorStats) -> list[tuple[str, str]]:
    """Each spooled writer's disk backlog (docs/spool.md), for the status."""
    out = []
    for name, w in stats.writers.items():
        extra = w.extra
        if "spool_bytes" in extra:
            values = int(extra.get("spool_values", 0))
            megabytes = extra["spool_bytes"] / 1e6
            oldest = extra.get("spool_oldest_age_s", 0.0)
            out.append((name, f"spool: {values:,} values, {megabytes:,.1f} MB, oldest {oldest:,.0f} s"))
    return out


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


NoPreflightOpt = Annotated[
    bool,
    typer.Option(
        "--no-preflight",
        help="Do not ask the writers whether their destinations can work before starting.",
    ),
]


@app.command()
def run(
    pipeline_file: PipelineArg,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration", "-d", min=0.001, help="Stop after this many seconds; default: until stopped."
        ),
    ] = None,
    context: ContextOpt = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Read every variable once, print a table of values and errors, write nothing, exit.",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port (0: any free one).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics endpoint listens on.")
    ] = "127.0.0.1",
    log_level: LogLevelOpt = LogLevel.INFO,
    status_every: Annotated[
        float,
        typer.Option(
            "--status-every",
            min=0,
            help="Seconds between status log lines when stderr is not a terminal (0: none).",
        ),
    ] = 10.0,
    json_summary: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
    no_preflight: NoPreflightOpt = False,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="etcd://HOST:PORT[,HOST:PORT...]/NAME",
            help="Run as a member of this group: lanes shared out, taken over on failure (docs/scaling.md).",
        ),
    ] = None,
    member: Annotated[
        str | None, typer.Option("--member", help="Member id in the group; default: host name-process id.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A label of this member (repeat), for --pin.")
    ] = None,
    pin: Annotated[
        list[str] | None,
        typer.Option(
            "--pin", metavar="LANE_GLOB=LABEL", help="Only members with LABEL may own these lanes (repeat)."
        ),
    ] = None,
    group_ttl: Annotated[
        int, typer.Option("--group-ttl", help="Seconds a dead member's lanes wait for takeover (lease TTL).")
    ] = 10,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Serve the HTTP API (docs/service.md) here; the run then lasts until stopped or --duration.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="The API token (else $FLOWCOLLECT_API_TOKEN); changes need it."),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve the API over TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The key of --tls-cert.")] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Record API-started contexts here; they come back after a restart."),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Reload the pipeline when its file changes (with --http, not --group)."),
    ] = False,
) -> None:
    """Run a pipeline until --duration, until every context has ended, or until SIGINT/SIGTERM.

    Exit codes: 0 a clean end (duration, contexts ended, SIGTERM); 1 nothing started (an error);
    3 a writer stored none of its values; 4 every value read was an error; 130 after SIGINT.
    """
    console = Console(stderr=True)
    live_status = console.is_terminal and not json_summary and not once
    _setup_logging(log_level, console if live_status else None)
    debug = log_level is LogLevel.DEBUG
    try:
        options = (
            None if group is None else GroupOptions.parse(group, member, label or (), pin or (), group_ttl)
        )
        if options is not None and once:
            raise ConfigError("--once reads every variable once and writes nothing: it joins no --group")
        service_options = _http_options(
            http, (token_file, tls_cert, tls_key, state_dir), once, group, pipeline_file, watch
        )
    except ConfigError as exc:
        _fail(exc, debug)
    pipeline = _load(pipeline_file, debug, enter=True)
    if once:
        _once(pipeline, context, json_summary, debug)
        return
    try:
        result = _run(
            pipeline,
            duration,
            context,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            status_every=status_every,
            console=console,
            live_status=live_status,
            preflight=not no_preflight,
            group=options,
            http=service_options,
        )
    except Exception as exc:
        _fail(exc, debug)
    summary, signal_name, final = result.summary, result.signal, result.group
    code = summary.exit_code(signal_name)
    if json_summary:
        group_figures = {} if final is None else {"group": final.as_dict()}
        typer.echo(json.dumps(summary.as_dict() | {"signal": signal_name, "exit_code": code} | group_figures))
    else:
        lines = summary.lines()
        if final is not None:  # before the verdict, which stays the last line
            lines.insert(-1, f"  group {final.group}: {final.line()}")
        typer.echo("\n".join(lines))
    for _, text in summary.problems():
        sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _http_options(
    http: str | None,
    paths: tuple[Path | None, Path | None, Path | None, Path | None],
    once: bool,
    group: str | None,
    pipeline_file: Path,
    watch: bool,
) -> Any:
    """The service's options, paths made absolute before ``run`` enters the pipeline's folder.
    ``paths``: the token file, TLS certificate and key, and the state folder."""
    names = ("--token-file", "--tls-cert", "--tls-key", "--state-dir")
    given = [n for n, v in zip(names, paths, strict=True) if v is not None] + (["--watch"] if watch else [])
    if http is None:
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --http HOST:PORT")
        return None
    if once:
        raise ConfigError("--once reads every variable once and exits: it serves no --http")
    if group is not None and watch:
        # Every member runs the same file: one member reloading alone would split the group.
        raise ConfigError("--watch with --group: a group member does not reload; restart the members")
    from flowcollect.service import HttpOptions

    token_file, tls_cert, tls_key, state_dir = (None if p is None else p.absolute() for p in paths)
    return HttpOptions(http, token_file, tls_cert, tls_key, state_dir, pipeline_file.absolute(), watch)


def _shown(api: Any, stats: CollectorStats) -> CollectorStats:
    """The figures people see: without the API's own latest-values writer (an internal store,
    not a destination: it would double every total)."""
    return stats if api is None else api.visible(stats)


def _service(pipeline: Pipeline, http: Any, membership: Callable[[], GroupStats | None] | None) -> Any:
    began = time.perf_counter()
    from flowcollect.service import ServiceRun

    _log.debug("the HTTP API's modules loaded in %.0f ms", (time.perf_counter() - began) * 1000)
    return ServiceRun(pipeline, http, membership)


@dataclass(frozen=True, slots=True)
class _RunResult:
    """What ``run`` reports after ``_run``: the summary, the signal that stopped the run (None:
    it ended by itself) and, in a group, the membership's final figures."""

    summary: RunSummary
    signal: str | None
    group: GroupStats | None


def _run(  # noqa: PLR0912, PLR0915 -- one place wires metrics, group, API and status
    pipeline: Pipeline,
    duration: float | None,
    context_ids: Sequence[int] | None,
    *,
    metrics_port: int | None,
    metrics_host: str,
    status_every: float,
    console: Console,
    live_status: bool,
    preflight: bool,
    group: GroupOptions | None = None,
    http: Any = None,
) -> _RunResult:
    ids = context_ids or None
    received: list[str] = []  # filled by the signal handler
    memberships: list[GroupMembership] = []  # filled by run_in_group once it has joined
    holder: list[DataCollector] = []
    metrics = None
    if metrics_port is not None:
        from flowcollect.metrics import serve_metrics

        # Bound before anything starts: a port in use fails the run with nothing started.
        try:
            metrics = serve_metrics(
                lambda: _shown(api, holder[0].stats()) if holder else None, metrics_port, metrics_host
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FlowcollectError(
                    f"--metrics-port {metrics_port}: {metrics_host}:{metrics_port} is already in use "
                    "(another flowcollect? pick another port, or 0 for any free one)"
                ) from exc
            raise FlowcollectError(f"--metrics-port {metrics_port}: cannot listen: {exc}") from exc

    def membership() -> GroupStats | None:
        return memberships[0].stats() if memberships else None

    try:
        # Bound before anything starts, like the metrics: a bad option fails with nothing started.
        api = None if http is None else _service(pipeline, http, None if group is None else membership)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise

    if metrics is not None and group is not None:
        metrics.registry.register(GroupStatsCollector(membership))
    status = _Status(pipeline.name)
    live = Live(console=console, auto_refresh=False, transient=True) if live_status else None

    def started(collector: DataCollector) -> None:
        holder.append(collector)
        if api is not None:
            api.started(collector)
        status.reset()
        if live is not None:
            live.start()
            live.update(status.table(collector.stats(), membership()), refresh=True)

    on_status: Callable[[CollectorStats], None] | None = None
    every = status_every
    if live is not None:
        every = 1.0

        def on_status(stats: CollectorStats) -> None:
            live.update(status.table(stats, membership()), refresh=True)

    elif status_every > 0:

        def on_status(stats: CollectorStats) -> None:
            _log.info("%s", status.line(stats))
            group_stats = membership()
            if group_stats is not None:
                _log.info("group %s: %s", group_stats.group, group_stats.line())

    if api is not None and on_status is not None:
        shown = on_status

        def on_status(stats: CollectorStats) -> None:
            shown(_shown(api, stats))

    stop = threading.Event()
    # The interpreter's defaults stay as they are (no gc.freeze(), no shorter switch interval):
    # the engine is meant to be fast without tuning; docs/performance.md has the figures.
    try:
        with _stop_on_signals(stop, received):
            run = (
                functools.partial(pipeline.run, keep_running=api is not None)
                if group is None
                else functools.partial(
                    run_in_group,
                    pipeline,
                    group,
                    on_membership=memberships.append,
                    keep_running=api is not None,
                )
            )
            summary = run(
                duration,
                context_ids=ids,
                stop=stop,
                on_started=started,
                on_status=on_status,
                status_every_s=every if every > 0 else 1.0,
                preflight=preflight,
            )
        if received:
            _log.info("stopped by %s", received[0])
        if api is not None:
            summary = dataclasses.replace(summary, stats=_shown(api, summary.stats))
        return _RunResult(summary, received[0] if received else None, membership())
    finally:
        if live is not None:
            live.stop()
        if metrics is not None:
            metrics.close()
        if api is not None:
            api.close()


def _once(pipeline: Pipeline, context_ids: Sequence[int] | None, as_json: bool, debug: bool) -> None:
    """``run --once``: one read of every variable, as a table; exit 4 when any has no good value."""
    try:
        result = pipeline.read_once(context_ids or None)
    except Exception as exc:
        _fail(exc, debug)
    if as_json:
        rows = [
            {
                "context": row.context_id,
                "variable": row.variable_id,
                "name": row.name,
                "reader": row.reader,
                "address": row.address,
                "value": row.value,
                "error": row.error,
            }
            for row in result.rows
        ]
        typer.echo(json.dumps({"pipeline": pipeline.name, "values": rows, "errors": result.errors}))
    else:
        typer.echo(_once_table(pipeline.name, result))
    raise typer.Exit(EXIT_ALL_ERRORS if result.errors else 0)


def _once_table(name: str, result: OnceResult) -> str:
    header = ("context", "variable", "reader", "address", "value", "error")
    rows = [
        (
            str(row.context_id),
            str(row.variable_id) + (f" {row.name}" if row.name else ""),
            row.reader,
            row.address,
            "" if row.value is None else repr(row.value) if isinstance(row.value, str) else str(row.value),
            row.error or "",
        )
        for row in result.rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    good = len(result.rows) - result.errors
    lines = [fmt(header), *(fmt(r) for r in rows)]
    lines.append(
        f"pipeline {name}: read once: {_n(good, 'value')}, {_n(result.errors, 'error')}; nothing written"
    )
    return "\n".join(lines)


# -- check and plan ------------------------------------------------------------------------------


@app.command()
def check(
    pipeline_file: PipelineArg,
    context: ContextOpt = None,
    log_level: LogLevelOpt = LogLevel.INFO,
    no_preflight: NoPreflightOpt = False,
) -> None:
    """Validate everything start would (models, readers, addresses, interval limits) and ask each
    writer whether its destination can work; touch no device."""
    _setup_logging(log_level)
    debug = log_level is LogLevel.DEBUG
    pipeline = _load(pipeline_file, debug, enter=True)
    try:
        problems = pipeline.check(context or None)
        contexts = pipeline.select(context or None)
        left_out = pipeline.left_out(context or None)
        if not no_preflight:
            problems.extend(pipeline.preflight())
    except Exception as exc:
        _fail(exc, debug)
    for line in left_out:
        sys.stderr.write(f"warning: {line}\n")
    if problems:
        _fail(ConfigError(problems), False)
    # Modbus lines that cannot serve their due requests within the tick (from the baud rate).
    for line in pipeline.plan(context or None).line_warnings:
        sys.stderr.write(f"warning: {line}\n")
    counts = [
        (len(contexts), "context"),
        (Pipeline.distinct_variables(contexts), "variable"),
        (len(pipeline.readers), "reader"),
        (len(pipeline.writers), "writer"),
    ]
    what = ", ".join(_n(n, noun) for n, noun in counts)
    if left_out:
        typer.echo(
            f"pipeline {pipeline.name}: {_n(len(left_out), 'variable')} not collected, "
            f"see the warnings ({what})"
        )
    else:
        typer.echo(f"pipeline {pipeline.name}: OK ({what})")


@app.command()
def plan(
    pipeline_file: PipelineArg,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text, mermaid or dot")] = (
        OutputFormat.TEXT
    ),
    context: ContextOpt = None,
    log_level: LogLevelOpt = LogLevel.WARNING,
    full: Annotated[
        bool, typer.Option("--full", help="Every reader in full, also the devices of one profile.")
    ] = False,
) -> None:
    """Show the compiled plan: GCD ticks, reads per instant, requests, contexts, the graph.
    Devices instantiated from one profile are summarised unless --full."""
    from flowcollect.plan import render_dot, render_mermaid, render_text

    _setup_logging(log_level)
    debug = log_level is LogLevel.DEBUG
    _discoveries.taken()
    pipeline = _load(pipeline_file, debug)
    # How many variables each OPC UA pattern of the file matched (no match is already a warning).
    for found in _discoveries.taken():
        if found.variables:
            sys.stderr.write(f"{found}\n")
    try:
        compiled = pipeline.plan(context or None)
    except Exception as exc:
        _fail(exc, debug)
    if output_format is OutputFormat.TEXT:
        text = render_text(compiled, full=full)
    else:
        text = (render_mermaid if output_format is OutputFormat.MERMAID else render_dot)(compiled)
    typer.echo(text, nl=False)


# -- simulate ------------------------------------------------------------------------------------


@app.command()
def simulate(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option("--port", "-p", min=0, max=65535, help="TCP port (5020; with --opcua 4840).")
    ] = None,
    log_level: LogLevelOpt = LogLevel.INFO,
    opcua: Annotated[bool, typer.Option("--opcua", help="Serve the OPC UA plant instead.")] = False,
    serial: Annotated[
        bool,
        typer.Option("--serial", help="Units 1, 2, 3 on a serial line (a socat pty pair); prints the pty."),
    ] = False,
    rtu: Annotated[
        bool, typer.Option("--rtu", help="Units 1, 2, 3 speaking RTU over TCP (a gateway).")
    ] = False,
    silent: Annotated[
        list[int] | None,
        typer.Option(
            "--silent",
            metavar="UNIT",
            help="With --serial/--rtu: this unit (1, 2 or 3) receives requests and never answers, "
            "as a unit that is off (repeat for several). Units other than 1, 2, 3 never answer.",
        ),
    ] = None,
    link: Annotated[
        Path | None,
        typer.Option(
            "--link",
            metavar="PATH",
            help="With --serial: the pty also at PATH (a symbolic link, the same on every start).",
        ),
    ] = None,
) -> None:
    """Serve the simulated Modbus TCP plant (a line of units with --serial or --rtu, the OPC UA
    plant with --opcua) until SIGINT/SIGTERM."""
    _setup_logging(log_level)
    debug = log_level is LogLevel.DEBUG
    silent = silent or []
    if silent and not (serial or rtu):
        _fail(ConfigError("--silent: only a line of units (--serial or --rtu) has units to silence"), debug)
    if any(unit not in (1, 2, 3) for unit in silent):
        _fail(ConfigError(f"--silent: the line serves units 1, 2, 3, got {sorted(set(silent))}"), debug)
    if link is not None and not serial:
        _fail(ConfigError("--link PATH: only a serial line (--serial) has a pty to link"), debug)
    if opcua:
        _simulate_opcua(host, 4840 if port is None else port, debug)
        return
    port = 5020 if port is None else port
    try:
        from flowcollect import simulator
    except ImportError as exc:
        _fail(FlowcollectError(f"the Modbus simulator is not available: {exc}"), debug)
    if port and port_in_use(host, port):
        _fail(
            FlowcollectError(
                f"--port {port}: {host}:{port} is already in use (another simulator or server?); "
                "pick another port, or 0 for any free one"
            ),
            debug,
        )
    # SIGTERM (a service manager's stop) ends it like Ctrl-C: the simulator closes its server.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if serial or rtu:
            simulator.serve_line(
                serial=serial, host=host, port=port, silent=silent, link=None if link is None else str(link)
            )
        else:
            simulator.serve(host=host, port=port)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        _fail(exc, debug)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _simulate_opcua(host: str, port: int, debug: bool) -> None:
    try:
        from flowcollect.simulator import opcua
    except ImportError as exc:
        _fail(
            FlowcollectError(
                f"the OPC UA simulator is not available (pip install flowcollect[opcua]): {exc}"
            ),
            debug,
        )
    if port and port_in_use(host, port):
        _fail(FlowcollectError(f"--port {port}: {host}:{port} is already in use; pick another, or 0"), debug)
    if not debug:
        # asyncua logs every node of its standard address space at INFO while it starts.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
    try:
        opcua.serve(host=host, port=port)  # SIGTERM ends it like Ctrl-C
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        _fail(exc, debug)


def main(argv: Sequence[str] | None = None) -> None:
    """The console entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="flowcollect")
