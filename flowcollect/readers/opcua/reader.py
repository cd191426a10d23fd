"""The OPC UA reader: polled (Read calls chunked by the server's limits) or subscribed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from flowcollect._secret import SecretLike, reveal
from flowcollect.errors import ConfigError
from flowcollect.models import Variable
from flowcollect.readers.base import DataReader, Emit, closing_task, engine_loop
from flowcollect.readers.opcua._client import Link, LinkSettings, LoopThread
from flowcollect.readers.opcua._security import MODES, POLICIES, ensure_client_certificate
from flowcollect.readers.opcua._values import decode
from flowcollect.readers.opcua.address import OpcUaAddress, parse_address
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

__all__ = ["OpcUaDataReader"]

Mode = Literal["poll", "subscribe"]

_T = TypeVar("_T")

_VALUE_TYPES: Final = ("float", "int", "bool", "str")
_TIMESTAMPS: Final = ("source", "server", "instant")


class OpcUaDataReader(DataReader):
    """Reads variables (node ids or browse paths) from one OPC UA server, polled or subscribed.

    - ``mode="poll"``: at each due instant, one Read call per chunk of at most the server's
      MaxNodesPerRead (``max_nodes_per_read`` caps it, and is the limit when the server gives
      none), for the due nodes only.
    - ``mode="subscribe"``: one subscription with a monitored item per variable (sampling
      interval = the variable's interval, ``deadband`` as an absolute data-change filter),
      created in calls of at most the server's MaxMonitoredItemsPerCall; values are pushed.

    ``timestamps``: what a value's time is. ``"instant"`` (the default): the grid instant it was
    due at, with the node's ``SourceTimestamp`` beside it (``source_time``: a CSV column, an
    InfluxDB field), so a value polled twice between two changes of the source is two points,
    never one. ``"source"`` or ``"server"``: the node's ``SourceTimestamp`` or
    ``ServerTimestamp`` is the value's time.

    A server that is down, restarted or cut off gives errors, never an exception; the reader
    reconnects by itself with backoff, resolves browse paths and ``nsu=`` ids again and re-creates
    its monitored items. See ``docs/opcua.md``.

    Where the client runs: opened on the engine's event loop (``readers.base.engine_loop``: the
    engine then awaits ``read_batch_async``), the client lives on that loop and the reader has no
    thread; opened anywhere else (a direct caller of ``read_batch``, a notebook, a test), on a
    loop thread of the reader's own, which ``read``/``read_batch`` call into with a bounded
    wait and ``read_batch_async`` awaits from any loop.
    """

    def __init__(
        self,
        type: str,  # noqa: A002 - the contract's name for a reader's type
        endpoint: str,
        *,
        mode: Mode = "poll",
        timestamps: Literal["source", "server", "instant"] = "instant",
        security_policy: str | None = None,
        security_mode: str | None = None,
        certificate: str | Path | None = None,
        private_key: str | Path | None = None,
        server_certificate: str | Path | None = None,
        username: str | None = None,
        password: SecretLike | None = None,
        timeout_s: float = 2.0,
        min_interval_ms: int = 50,
        max_nodes_per_read: int = 1000,
        max_items_per_call: int = 1000,
        queue_size: int = 10,
        publishing_interval_ms: int | None = None,
    ) -> None:
        password = reveal(password)  # a Secret (secret_from_env/secret_from_file) or a str
        problems = _check_settings(
            type,
            endpoint,
            mode,
            timestamps,
            security_policy,
            security_mode,
            certificate,
            private_key,
            server_certificate,
            username,
            password,
            timeout_s,
            min_interval_ms,
            max_nodes_per_read,
            max_items_per_call,
            queue_size,
            publishing_interval_ms,
        )
        if problems:
            raise ConfigError(problems)
        self._type = type
        self._endpoint = endpoint
        self.mode: Mode = mode
        self.timestamps = timestamps
        self.security_policy = None if security_policy in (None, "None") else security_policy
        self.security_mode = security_mode if self.security_policy else None
        if self.security_policy and self.security_mode is None:
            self.security_mode = "SignAndEncrypt"
        self.certificate = Path(certificate) if certificate is not None else None
        self.private_key = Path(private_key) if private_key is not None else None
        self.server_certificate = Path(server_certificate) if server_certificate is not None else None
        self.username = username
        self.__password = password
        self.timeout_s = float(timeout_s)
        self._min_interval_ms = min_interval_ms
        self.max_nodes_per_read = max_nodes_per_read
        self.max_items_per_call = max_items_per_call
        self.queue_size = queue_size
        self.publishing_interval_ms = publishing_interval_ms

        self._addresses: dict[str, OpcUaAddress] = {}
        self._thread = LoopThread(f"flowcollect-opcua-{type}")
        # The loop the link lives on: the engine's (the reader was opened on it) or the loop
        # thread's. Written by open and close, which the engine calls one at a time on the lane.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None
        self._closing: asyncio.Task[None] | None = None  # a close's goodbye on the engine's loop
        self._changes: set[asyncio.Task[None]] = set()  # plan changes applying on the engine's loop
        self._emit: Emit | None = None
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "read_calls",
                "read_call_errors",
                "values_read",
                "value_errors",
                "uncertain",
                "timeouts",
                "connect_attempts",
                "connect_failures",
                "connects",
                "reconnects",
                "resolve_calls",
                "resolve_failures",
                "subscriptions_created",
                "item_calls",
                "items_created",
                "items_deleted",
                "item_errors",
                "notifications",
                "values_pushed",
                "publishing_interval_ms",
                "learned_read_limit",
            ),
            0,
        )
        self._watched: list[VariableSpec] = []

    # ------------------------------------------------------------------ settings

    @property
    def type(self) -> str:
        return self._type

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @endpoint.setter
    def endpoint(self, value: str) -> None:
        # An embedded simulator points the reader at the port it got, before the reader opens.
        if not isinstance(value, str) or not value.startswith("opc.tcp://"):
            raise ConfigError(f"OpcUaDataReader endpoint: must start with opc.tcp://, got {value!r}")
        self._endpoint = value

    @property
    def min_interval_ms(self) -> int:
        return self._min_interval_ms

    @property
    def lane(self) -> str:
        return self._endpoint

    @property
    def pushes(self) -> bool:
        return self.mode == "subscribe"

    @property
    def stale_after_ms(self) -> int:
        # The subscription sends a keep-alive about every 5 s when nothing changes (and the
        # reader emits errors at once when it loses the session): three missed ones is silence.
        return 15_000

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.connected

    @property
    def connection_error(self) -> str | None:
        """Why the reader is not connected (the text its values carry), or None when it is."""
        link = self._link
        if link is None:
            return "not opened"
        return None if link.connected else link.down_text

    def natural_value_type(self, address: str) -> None:
        # An OPC UA address does not say its node's type, and asking the server here would be
        # I/O (and could differ between two runs): variables give their value_type.
        return None

    def validate(self, variable: Variable) -> None:
        self._parse(variable.address)
        # None: the variable takes the natural type, and an OPC UA address has none (float).
        if variable.value_type is not None and variable.value_type not in _VALUE_TYPES:
            raise ValueError(f"value_type {variable.value_type!r} is not one of {', '.join(_VALUE_TYPES)}")
        deadband = getattr(variable, "deadband", None)
        if (
            deadband is not None
            and self.mode == "subscribe"
            and variable.value_type not in (None, "float", "int")
        ):
            raise ValueError(
                f"a deadband needs a numeric value_type; variable {variable.id} is {variable.value_type!r}"
            )

    def _parse(self, text: str) -> OpcUaAddress:
        address = self._addresses.get(text)
        if address is None:
            address = parse_address(text)
            self._addresses[text] = address
        return address

    # ------------------------------------------------------------------ lifecycle

    def link_settings(self, *, ensure_certificate: bool = True) -> LinkSettings:
        """How to connect: what the reader's link uses, and ``flowcollect browse`` too. Makes the
        client certificate pair first when security asks for one and none exists (unless
        ``ensure_certificate`` is False: the engine's loop has it made off the loop)."""
        if ensure_certificate:
            self._ensure_certificate()
        settings = LinkSettings(
            reader=self._type,
            endpoint=self._endpoint,
            mode=self.mode,
            timestamps=self.timestamps,
            timeout_s=self.timeout_s,
            max_nodes_per_read=self.max_nodes_per_read,
            max_items_per_call=self.max_items_per_call,
            queue_size=self.queue_size,
            publishing_interval_ms=self.publishing_interval_ms,
            security_policy=self.security_policy,
            security_mode=self.security_mode,
            certificate=self.certificate,
            private_key=self.private_key,
            server_certificate=self.server_certificate,
            username=self.username,
            password=self.__password,
        )
        return settings

    def _needs_certificate(self) -> bool:
        return (
            self.security_policy is not None and self.certificate is not None and self.private_key is not None
        )

    def _ensure_certificate(self) -> None:
        if self.certificate is not None and self.private_key is not None and self._needs_certificate():
            # Generated here, once, before any connection: later starts load the same pair.
            try:
                ensure_client_certificate(self.certificate, self.private_key)
            except OSError as exc:
                raise ConfigError(f"OpcUaDataReader certificate/private_key ({self._type}): {exc}") from exc

    def open(self) -> None:
        """Connect. On the engine's event loop nothing waits: the client's supervisor starts on
        that loop and the lane awaits its first attempt before the first tick. Anywhere else (a
        direct caller, a notebook's or a user's event loop), on the reader's own loop thread,
        and ``open`` waits for that first attempt (at most 2 x timeout + 0.5 s)."""
        if self._link is not None and (self._thread.running or self._loop is _running_loop()):
            return
        quiet_asyncua()
        running = engine_loop()
        if running is not None and running is _running_loop():
            # A key pair to generate is CPU and file work: the link has it made on a thread of
            # the loop's executor before it connects, never on the loop.
            prepare = self._ensure_certificate if self._needs_certificate() else None
            link = Link(self.link_settings(ensure_certificate=False), self._counters, prepare)
            self._loop, self._link = running, link
            link.start()
            return
        link = Link(self.link_settings(), self._counters)
        loop = self._thread.start()
        self._loop, self._link = loop, link
        loop.call_soon_threadsafe(link.start)
        # The first tick should find the session when the server is up; a server that is down
        # or silent costs open() at most this wait, and its values are errors until it is back.
        link.first_attempt.wait(self._first_wait_s)

    @property
    def _first_wait_s(self) -> float:
        return self.timeout_s * 2 + 0.5

    def close(self) -> None:
        """Disconnect. On the link's own event loop (the engine's) it returns at once: a task
        says goodbye (at most ``timeout_s``) and closes the socket, cancelled or not. Elsewhere
        it waits for that goodbye, at most 2 x timeout + 1 s."""
        link, self._link = self._link, None
        loop, self._loop = self._loop, None
        changes, self._changes = self._changes, set()
        if link is not None and loop is not None:
            if loop is _running_loop():
                for change in changes:  # plan changes still applying: of no use now
                    change.cancel()
                # The goodbye's own bound (the supervisor's end, then the goodbye: a timeout each)
                # and a margin: past it the task is cancelled, and the socket closes anyway.
                bound = self.timeout_s * 2 + 0.5
                self._closing = closing_task(link.shutdown(), f"opcua reader {self._type!r}", bound)
            elif not loop.is_closed():
                with contextlib.suppress(TimeoutError, RuntimeError):
                    self._call(loop, link.shutdown(), self.timeout_s * 2 + 1.0)
        self._thread.stop(self.timeout_s + 1.0)

    def abort(self) -> None:
        """From the collector's closing thread, under a read still running: the socket closes on
        the link's loop at once, without a goodbye; nothing waits for the read."""
        link, self._link = self._link, None
        loop, self._loop = self._loop, None
        if link is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: so is the socket
                loop.call_soon_threadsafe(link.drop_now)
        if self._thread.running:
            self._thread.stop(1.0)

    def _call(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, _T],
        timeout_s: float,
        *,
        cancel: bool = True,
    ) -> _T:
        """Run ``coro`` on ``loop`` (another thread's) and wait at most ``timeout_s``; ``cancel``:
        whether a call that timed out is cancelled (a tick's reads are of no use late) or goes
        on in the background (a plan change must be applied whole)."""
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            if cancel:
                future.cancel()
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None

    def _on_link_loop(self, fn: Callable[[], None]) -> None:
        """``fn`` on the link's loop: now when called there, else posted."""
        loop = self._loop
        if loop is None:
            return
        if loop is _running_loop():
            fn()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected (or ``timeout_s`` passes); for tools and tests, not the engine."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected:
                return True
            time.sleep(0.02)
        return self.connected

    # ------------------------------------------------------------------ polling

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        # The per-value form, for engines and tools that use it: one batch, copied back.
        specs = [
            VariableSpec(v.id, v.context_id, v.address, v.value_type, v.reader, v.interval_ms)
            for v in variables
        ]
        batch = ValueBatch(0, specs, reader=self._type)
        self.read_batch(batch)
        for i, variable in enumerate(variables):
            variable.value = batch.values[i]
            variable.error = batch.errors[i]
            variable.quality = batch.quality[i] if batch.quality is not None else None
            if batch.source_ns is not None and batch.source_ns[i] is not None:
                variable.time = batch.time_of(i)
            variable.source_time = batch.source_time_of(i)

    def read_batch(self, batch: ValueBatch) -> None:
        """One tick's reads from a thread other than the link's loop, waiting at most
        ``timeout_s`` + 0.5 s (the engine awaits ``read_batch_async`` instead)."""
        begun = self._begin(batch)
        if begun is None:
            return
        link, addresses, invalid = begun
        loop = self._loop
        outcome: Any
        if loop is None:
            outcome = "the reader is not open"
        elif loop is _running_loop():
            # Blocking here would wait for the loop this very call holds.
            outcome = "read_batch called on the reader's event loop: await read_batch_async there"
        else:
            try:
                outcome = self._call(loop, link.read(addresses), self.timeout_s + 0.5)
            except TimeoutError:
                outcome = f"no response within {self.timeout_s:g} s"
            except RuntimeError as exc:
                outcome = str(exc)
        self._finish(batch, outcome, invalid)

    async def read_batch_async(self, batch: ValueBatch) -> None:
        """``read_batch`` awaited on the engine's event loop, where the reader's client lives:
        the same Read calls, texts and counters, with no thread in between. The first read
        after ``open`` awaits the first connection attempt (at most 2 x timeout + 0.5 s)."""
        begun = self._begin(batch)
        if begun is None:
            return
        link, addresses, invalid = begun
        loop = self._loop
        outcome: Any
        try:
            if loop is None:
                outcome = "the reader is not open"
            elif loop is asyncio.get_running_loop():
                await link.settled(self._first_wait_s)
                async with asyncio.timeout(self.timeout_s + 0.5):
                    outcome = await link.read(addresses)
            else:  # opened off this loop (on its own loop thread): await that loop's answer
                future = asyncio.run_coroutine_threadsafe(link.read(addresses), loop)
                async with asyncio.timeout(self.timeout_s + 0.5):
                    outcome = await asyncio.wrap_future(future)
        except TimeoutError:
            outcome = f"no response within {self.timeout_s:g} s"
        except RuntimeError as exc:
            outcome = str(exc)
        self._finish(batch, outcome, invalid)

    def _begin(self, batch: ValueBatch) -> tuple[Link, tuple[str, ...], set[int]] | None:
        """The tick's addresses (those that parse; the others' errors are set) and the link;
        None when there is nothing to ask (no variables, or the reader is not open: said)."""
        variables = batch.variables
        if not variables:
            return None
        invalid = self._invalid(variables, batch.errors)
        link = self._link
        if link is None:
            self._finish(batch, "the reader is not open", invalid)
            return None
        # An address that does not parse is an error on its value; the others are still read.
        addresses = tuple(spec.address for i, spec in enumerate(variables) if i not in invalid)
        return link, addresses, invalid

    def _finish(self, batch: ValueBatch, outcome: Any, invalid: set[int]) -> None:
        n = len(batch.variables)
        values, errors = batch.values, batch.errors
        if isinstance(outcome, str):
            for i in range(n):
                values[i] = None
                if errors[i] is None:
                    errors[i] = outcome
            self._counters["value_errors"] += n
            return
        if invalid:
            answers = iter(outcome)
            outcome = [None if i in invalid else next(answers) for i in range(n)]
        self._fill(batch, outcome, invalid)

    def _fill(self, batch: ValueBatch, outcome: list[Any], invalid: set[int]) -> None:
        variables, values, errors = batch.variables, batch.values, batch.errors
        n = len(variables)
        counters = self._counters
        timestamps = self.timestamps
        source: list[int | None] = [None] * n
        quality: list[str | None] | None = None
        bad = 0
        for i, data in enumerate(outcome):
            if i in invalid:
                bad += 1
                continue
            if isinstance(data, str):
                values[i] = None
                errors[i] = data
                bad += 1
                continue
            value, error, doubt, when = decode(data, variables[i].value_type, timestamps)
            values[i] = value
            errors[i] = error
            if error is not None:
                bad += 1
            if doubt is not None:
                if quality is None:
                    quality = [None] * n
                quality[i] = doubt
                counters["uncertain"] += 1
            source[i] = when
        if timestamps == "instant":
            batch.source_time_ns = source
        else:
            batch.source_ns = source
        batch.quality = quality
        counters["values_read"] += n - bad
        counters["value_errors"] += bad

    def _invalid(self, variables: Sequence[VariableSpec], errors: list[str | None]) -> set[int]:
        invalid: set[int] = set()
        for i, spec in enumerate(variables):
            if spec.address not in self._addresses:
                try:
                    self._parse(spec.address)
                except ValueError as exc:
                    errors[i] = f"invalid address: {exc}"
                    invalid.add(i)
        return invalid

    # ------------------------------------------------------------------ subscribing

    def start_pushing(self, emit: Emit) -> None:
        """On the engine's loop the items are created by a task of the loop (nothing waits);
        elsewhere this waits for them, at most 4 x timeout (then they come in the background)."""
        self._emit = emit
        link, loop = self._link, self._loop
        if link is None or loop is None:
            return
        if loop is _running_loop():
            link.emit = emit
            self._start(link.start_emitting(emit), "emitting")
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._call(loop, link.start_emitting(emit), self.timeout_s * 4, cancel=False)

    def plan_changed(self, variables: Sequence[VariableSpec]) -> Coroutine[Any, Any, None] | None:
        """What to serve from now on. Subscribed, on the engine's loop: the items are made to
        match by a task, and the coroutine returned (the lane awaits it before the plan's first
        tick) waits for the first connection attempt, the items and their first values, at most
        2 x timeout + 0.5 s and then 4 x timeout (the task goes on past that). Subscribed
        elsewhere: waited for here, with the same bounds. Polled: the addresses are parsed here,
        resolved by the first read; on the engine's loop the coroutine returned before the first
        connection attempt is over waits for it (at most 2 x timeout + 0.5 s)."""
        valid = []
        for spec in variables:
            try:
                self._parse(spec.address)
            except ValueError:
                continue
            valid.append(spec)
        self._watched = valid
        link, loop = self._link, self._loop
        if link is None or loop is None:
            return None
        if self.mode != "subscribe":
            # Parsed here (they validated); resolved on the loop, which owns the link's state.
            addresses = [spec.address for spec in valid]
            self._on_link_loop(lambda: link.know(addresses))
            if loop is _running_loop() and not link.first_attempt.is_set():
                # The first tick finds the session of a server that is up, as after a direct
                # caller's open: the lane waits for the first attempt, not the tick's read.
                return link.settled(self._first_wait_s)
            return None
        if loop is not _running_loop():
            # On a timeout it is applied in the background: the lane must not wait for a slow server.
            with contextlib.suppress(TimeoutError, RuntimeError):
                self._call(loop, link.watch(valid), self.timeout_s * 4, cancel=False)
            return None
        link.want(valid)
        task = self._start(self._apply_wanted(link), "plan")
        return self._ready(task)

    async def _apply_wanted(self, link: Link) -> None:
        await link.settled(self._first_wait_s)
        await link.apply_wanted()

    async def _ready(self, task: asyncio.Task[None]) -> None:
        # Bounded, and never cancelling the change itself: it is applied whole, late if slow.
        await asyncio.wait({task}, timeout=self._first_wait_s + self.timeout_s * 4)

    def _start(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A change of the subscription as a task of the engine's loop, kept until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=f"flowcollect-opcua-{self._type}-{what}")
        self._changes.add(task)
        task.add_done_callback(self._changed)
        return task

    def _changed(self, task: asyncio.Task[None]) -> None:
        self._changes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("opcua reader %r: applying a plan change failed: %r", self._type, task.exception())

    # ------------------------------------------------------------------ plans and figures

    def describe_requests(self, variables: Sequence[VariableSpec]) -> Sequence[str]:
        addresses = list(dict.fromkeys(spec.address for spec in variables))
        if not addresses:
            return ()
        link = self._link
        if self.mode == "subscribe":
            per_call = link.max_items if link is not None else self.max_items_per_call
            keys = {(spec.address, spec.interval_ms, spec.deadband) for spec in variables}
            by_interval: dict[int, int] = {}
            for _address, interval, _deadband in keys:
                by_interval[interval] = by_interval.get(interval, 0) + 1
            sampled = ", ".join(
                f"{count} every {interval} ms" for interval, count in sorted(by_interval.items())
            )
            calls = math.ceil(len(keys) / per_call)
            # One line: no request is sent per tick, the server pushes.
            return [
                f"monitored items: {len(keys)} ({sampled}), pushed by the server, no request per tick; "
                f"created once in {calls} CreateMonitoredItems call(s) of at most {per_call}"
            ]
        per_read = link.max_read if link is not None else self.max_nodes_per_read
        lines = []
        for start in range(0, len(addresses), per_read):
            part = addresses[start : start + per_read]
            span = part[0] if len(part) == 1 else f"{part[0]} .. {part[-1]}"
            lines.append(f"Read: {len(part)} node(s) ({span})")
        return lines

    def stats(self) -> Mapping[str, float]:
        result: dict[str, float] = dict(self._counters)
        link = self._link
        result["connected"] = 1 if link is not None and link.connected else 0
        result["max_nodes_per_read"] = link.max_read if link is not None else self.max_nodes_per_read
        result["monitored_items"] = link.items_active if link is not None else 0
        return result

    def __repr__(self) -> str:
        security = f", security={self.security_policy}/{self.security_mode}" if self.security_policy else ""
        user = f", username={self.username!r}" if self.username is not None else ""
        return f"OpcUaDataReader(type={self._type!r}, {self._endpoint}, mode={self.mode!r}{security}{user})"


_log = logging.getLogger("flowcollect.readers.opcua")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _DropLostPublish(logging.Filter):
    """Drops asyncua's traceback for a publish request on a connection that just closed: the
    reader reports the loss itself, once, and reconnects."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Publish iteration crashed") and record.exc_info:
            return not isinstance(record.exc_info[1], ConnectionError)
        return True


_QUIET = _DropLostPublish()


def quiet_asyncua() -> None:
    """asyncua logs each connect, session and subscription at INFO, and a traceback when a
    server goes away; the reader logs what matters itself (rate-limited). Unless the user set
    asyncua's level, it is WARNING from the first reader's open."""
    logger = logging.getLogger("asyncua")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    session = logging.getLogger("asyncua.client.ua_session.UaSession")
    if _QUIET not in session.filters:
        session.addFilter(_QUIET)


def _check_settings(  # noqa: PLR0912 - one branch per setting
    type_: object,
    endpoint: object,
    mode: object,
    timestamps: object,
    security_policy: object,
    security_mode: object,
    certificate: object,
    private_key: object,
    server_certificate: object,
    username: object,
    password: object,
    timeout_s: object,
    min_interval_ms: object,
    max_nodes_per_read: object,
    max_items_per_call: object,
    queue_size: object,
    publishing_interval_ms: object = None,
) -> list[str]:
    where = "OpcUaDataReader"
    problems: list[str] = []
    if not isinstance(type_, str) or not type_.strip():
        problems.append(f"{where} type: must be a non-empty str, got {type_!r}")
    if (
        not isinstance(endpoint, str)
        or not endpoint.startswith("opc.tcp://")
        or len(endpoint) <= len("opc.tcp://")
    ):
        problems.append(f"{where} endpoint: must be opc.tcp://<host>:<port>[/path], got {endpoint!r}")
    elif "@" in endpoint.split("/", 3)[2]:
        problems.append(f"{where} endpoint: give credentials as username and password, not in the URL")
    if mode not in ("poll", "subscribe"):
        problems.append(f"{where} mode: must be 'poll' or 'subscribe', got {mode!r}")
    if timestamps not in _TIMESTAMPS:
        problems.append(f"{where} timestamps: must be one of {', '.join(_TIMESTAMPS)}, got {timestamps!r}")
    secured = security_policy not in (None, "None")
    if secured and security_policy not in POLICIES:
        names = ", ".join(["None", *POLICIES])
        problems.append(f"{where} security_policy: must be one of {names}, got {security_policy!r}")
    if security_mode is not None and security_mode not in MODES:
        problems.append(f"{where} security_mode: must be one of {', '.join(MODES)}, got {security_mode!r}")
    if security_mode is not None and not secured:
        problems.append(f"{where} security_mode: needs a security_policy other than None")
    for name, value in (("certificate", certificate), ("private_key", private_key)):
        if value is not None and not isinstance(value, str | Path):
            problems.append(f"{where} {name}: must be a file path, got {type(value).__name__}")
        elif secured and value is None:
            problems.append(
                f"{where} {name}: a security_policy needs the client's {name.replace('_', ' ')} file "
                "(generated there once when neither file exists)"
            )
    if secured and isinstance(certificate, str | Path) and isinstance(private_key, str | Path):
        has_cert, has_key = Path(certificate).is_file(), Path(private_key).is_file()
        if has_cert != has_key:
            missing, there = ("private_key", "certificate") if has_cert else ("certificate", "private_key")
            problems.append(
                f"{where} {missing}: the file is missing but the {there} exists; restore it, or remove "
                "both to have a new pair generated (the server must then trust the new certificate)"
            )
    if server_certificate is not None:
        if not isinstance(server_certificate, str | Path):
            problems.append(f"{where} server_certificate: must be a file path")
        elif not Path(server_certificate).is_file():
            problems.append(f"{where} server_certificate: no such file: {server_certificate}")
        elif not secured:
            problems.append(f"{where} server_certificate: needs a security_policy other than None")
    if username is not None and (not isinstance(username, str) or not username):
        problems.append(f"{where} username: must be a non-empty str")
    if password is not None and not isinstance(password, str):
        # Never echo the value: it may be a secret of the wrong type.
        problems.append(f"{where} password: must be a str or a Secret")
    if (password is None) != (username is None):
        problems.append(f"{where} username and password: give both or neither")
    if (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not 0 < timeout_s < float("inf")
    ):
        problems.append(f"{where} timeout_s: must be a positive number of seconds, got {timeout_s!r}")
    for name, value, low in (
        ("min_interval_ms", min_interval_ms, 1),
        ("max_nodes_per_read", max_nodes_per_read, 1),
        ("max_items_per_call", max_items_per_call, 1),
        ("queue_size", queue_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{where} {name}: must be an int {low} or more, got {value!r}")
    if publishing_interval_ms is not None and (
        not isinstance(publishing_interval_ms, int)
        or isinstance(publishing_interval_ms, bool)
        or publishing_interval_ms < 1
    ):
        problems.append(
            f"{where} publishing_interval_ms: must be None or an int 1 or more, "
            f"got {publishing_interval_ms!r}"
        )
    return problems
