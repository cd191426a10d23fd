"""``MqttDataWriter``: values published to an MQTT broker, each counted written once acknowledged.

The connection, receipts and reconnects are ``flowcollect.mqtt``'s; the payloads ``_payload``'s.
Here: configuration, the topic check before a run, the outbox that holds messages while the
broker is away, and the receipts to the engine (one per batch, once all its messages settled).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, get_args

from flowcollect._logs import RateLimitedLog
from flowcollect._secret import SecretLike
from flowcollect.errors import ConfigError
from flowcollect.mqtt import (
    MqttConnection,
    Outcome,
    Protocol,
    TlsOptions,
    TopicTemplate,
    options_problems,
    preflight,
)
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter
from flowcollect.writers.mqtt._payload import Encoder, Layout

__all__ = ["MqttDataWriter"]

logger = logging.getLogger("flowcollect.writers.mqtt")
_LAYOUTS = get_args(Layout)
_CLOSED = "closed before the broker acknowledged it"


class _Job:
    """One batch taken: what is left to settle, and how its values ended."""

    __slots__ = ("batch", "dropped", "error", "failed", "remaining", "written")

    def __init__(self, batch: ValueBatch) -> None:
        self.batch = batch
        self.remaining = len(batch)
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.error: str | None = None


class _Msg:
    __slots__ = ("job", "n", "payload", "topic")

    def __init__(self, job: _Job, topic: str, payload: bytes, n: int) -> None:
        self.job = job
        self.topic = topic
        self.payload = payload
        self.n = n


class MqttDataWriter(DataWriter):
    """Publishes values to an MQTT broker (3.1.1 or 5) as JSON; acknowledges what the broker took.

    ``url`` is ``mqtt://host:port`` or ``mqtts://host:port``. ``topic`` is a template of
    ``{context}``, ``{id}``, ``{name}`` (the variable's name, else its address), ``{address}``,
    ``{reader}`` and ``{tag:KEY}``; every variable's topic is checked by ``check`` and ``start``
    before anything runs. ``layout="value"``: a message per value; ``"instant"``: a message per
    topic and instant with the values keyed by name (use a topic of ``{context}`` and
    ``{reader}`` only, e.g. ``"plant/{context}"``). See docs/mqtt.md.

    Written means acknowledged: at ``qos=1`` a value is written at its PUBACK, at ``qos=2`` at its
    PUBCOMP, at ``qos=0`` once handed to the socket. While the broker is away, messages wait
    (``buffer_limit`` values; beyond it the oldest are dropped, counted) and QoS 1/2 messages in
    flight are sent again after the reconnect: a subscriber may see a QoS 1 message twice.
    ``password`` never shows in logs, errors or ``repr``.
    """

    acknowledges: ClassVar[bool] = True

    max_pending = 10_000
    """QoS 0 messages handed to the connection and awaiting their receipt, at most. At QoS 1 and
    2 it is ``max_inflight``: paho sends every message it holds at once after a reconnect, and
    a broker must never get more than its receive maximum (Mosquitto drops QoS 2 messages beyond
    it; other brokers disconnect)."""
    max_inflight = 20
    """QoS 1/2 messages on the wire at once (the broker's receive maximum; Mosquitto's is 20)."""
    buffer_limit = 100_000
    """Values waiting for the connection (beyond ``max_pending``) before the oldest are dropped."""
    timeout_s = 10.0
    """How long ``flush`` and ``close`` wait for receipts."""
    preflight_timeout_s = 10.0
    reconnect_min_s = 0.5
    """The first reconnect waits this long; each failure doubles it, up to ``reconnect_max_s``."""
    reconnect_max_s = 30.0

    def __init__(
        self,
        url: str,
        *,
        topic: str = "flowcollect/{context}/{name}",
        layout: Layout = "value",
        qos: int = 1,
        retain: bool = False,
        client_id: str | None = None,
        username: str | None = None,
        password: SecretLike | None = None,
        tls: TlsOptions | Mapping[str, Any] | bool | None = None,
        protocol: Protocol = "5",
        keepalive_s: int = 30,
    ) -> None:
        where = "MqttDataWriter"
        endpoint, options, problems = options_problems(
            where,
            url,
            client_id=client_id,
            username=username,
            password=password,
            tls=tls,
            protocol=protocol,
            keepalive_s=keepalive_s,
        )
        template: TopicTemplate | None = None
        try:
            template = TopicTemplate(topic)
        except ValueError as exc:
            problems.append(f"{where} topic: {exc}")
        if layout not in _LAYOUTS:
            problems.append(f"{where} layout: must be 'value' or 'instant', got {layout!r}")
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            problems.append(f"{where} qos: must be 0, 1 or 2, got {qos!r}")
        given: object = retain  # from a pipeline file it may be anything
        if not isinstance(given, bool):
            problems.append(f"{where} retain: must be True or False, got {given!r}")
        if problems or endpoint is None or options is None or template is None:
            raise ConfigError(problems)
        self.url = endpoint.url
        self.topic = topic
        self.layout: Layout = layout
        self.qos = qos
        self.retain = retain
        self.options = options
        self._endpoint = endpoint
        self._template = template
        self._encoder = Encoder(template, layout)
        self._log = RateLimitedLog(logger, window_s=3600.0)
        # Guarded by _cond: the outbox, its value count, the jobs not yet settled, the counters.
        self._cond = threading.Condition()
        self._outbox: deque[_Msg] = deque()
        self._outbox_values = 0
        self._open_jobs = 0
        self._counts = dict.fromkeys(("written", "failed", "dropped", "unwritable", "messages"), 0)
        # Only one thread publishes at a time (the writer's, or the pump when the broker is
        # back), so messages leave in the order they came.
        self._publishing = threading.Lock()
        self._conn: MqttConnection | None = None
        self._pump: threading.Thread | None = None
        self._stop = False
        self._closed = False

    # -- the DataWriter contract -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"mqtt:{self._endpoint.host}:{self._endpoint.port}/{self.topic}"

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        """Every variable this writer receives renders to a valid topic; with ``"instant"``, no
        two of a context share a key in one topic, and no topic mixes readers (their values would
        come in separate batches: two messages for one topic and instant)."""
        routing = self.routing
        problems: list[str] = []
        seen: dict[tuple[int, str], tuple[str, dict[str, int]]] = {}
        for spec in variables:
            if routing is not None and not routing.wants_variable(spec.context_id, spec.id, spec.name):
                continue
            label = (
                f"writer {self.name}: context {spec.context_id}, variable {spec.id} "
                f"({spec.name or spec.address!r})"
            )
            problem = self._template.problem(spec)
            if problem is not None:
                problems.append(f"{label}: {problem}")
                continue
            if self.layout != "instant":
                continue
            topic = self._template.render(spec)
            key = spec.name if spec.name is not None else spec.address
            reader, keys = seen.setdefault((spec.context_id, topic), (spec.reader, {}))
            if reader != spec.reader:
                problems.append(
                    f"{label}: its topic {topic!r} also gets variables of reader {reader!r}, whose values "
                    "come in other batches; add {reader} to the topic template"
                )
            elif key in keys:
                problems.append(
                    f"{label}: variable {keys[key]} has the same key {key!r} in the topic {topic!r}; "
                    "give one of them a name"
                )
            else:
                keys[key] = spec.id
        return problems

    def preflight(self) -> None:
        """Connect and authenticate once (``PreflightError`` naming the cause)."""
        preflight(self._endpoint, self.options, self.preflight_timeout_s)

    def write_batch(self, batch: ValueBatch) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed; it takes no more values")
        job = _Job(batch)
        if job.remaining == 0:
            self.acknowledge(batch, 0)
            return
        self._ensure_started()
        encoded = self._encoder.encode(batch)
        settled: list[_Job] = []
        with self._cond:
            self._open_jobs += 1
            if encoded.unwritable:
                for i, reason in encoded.unwritable:
                    spec = batch.variables[i]
                    self._log.warning(
                        ("unwritable", spec.context_id, spec.id),
                        "%s: not publishing context %s variable %s (%s): %s",
                        self.name,
                        spec.context_id,
                        spec.id,
                        spec.address,
                        reason,
                    )
                job.failed += len(encoded.unwritable)
                job.remaining -= len(encoded.unwritable)
                job.error = f"not published: {encoded.unwritable[0][1]}"
                self._counts["unwritable"] += len(encoded.unwritable)
                self._settle(job, settled)
            for topic, payload, n in encoded.messages:
                self._outbox.append(_Msg(job, topic, payload, n))
                self._outbox_values += n
            self._trim(settled)
        self._acknowledge(settled)
        self._drain(wait=False)

    def flush(self) -> None:
        """Wait until every message taken is acknowledged, or ``timeout_s`` passed (logged)."""
        if self._conn is None:
            return
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._cond.notify_all()
            while self._open_jobs and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            left = self._open_jobs
        if left:
            logger.warning(
                "%s: flush timed out after %s s with %d batches not yet acknowledged (%s)",
                self.name,
                self.timeout_s,
                left,
                self._conn.last_error or "the broker has not answered",
            )

    def close(self) -> None:
        """Flush (bounded by ``timeout_s``), disconnect; what is still unacknowledged is dropped
        (a spool in front keeps it for the next run)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        conn, pump = self._conn, self._pump
        if pump is not None:
            pump.join(2.0)
        if conn is not None:
            conn.close(2.0)  # each message still awaited comes back GIVEN_UP: dropped
        settled: list[_Job] = []
        with self._cond:
            while self._outbox:
                msg = self._outbox.popleft()
                self._outbox_values -= msg.n
                self._lost(msg, _CLOSED, settled)
        self._acknowledge(settled)

    def stats(self) -> Mapping[str, float]:
        """``written``, ``failed``, ``dropped`` (values), ``unwritable`` (values JSON cannot carry),
        ``messages`` (acknowledged), ``buffered`` (values waiting for the connection) and the
        connection's ``connected``, ``connects``, ``disconnects``, ``pending`` (receipts
        awaited), ``refused``, ``not_sent``, ``published``."""
        with self._cond:
            out = {k: float(v) for k, v in self._counts.items()}
            out["buffered"] = float(self._outbox_values)
        if self._conn is not None:
            conn = self._conn.stats()
            for key in (
                "connected",
                "connects",
                "disconnects",
                "pending",
                "refused",
                "not_sent",
                "published",
            ):
                out[key] = conn[key]
        return out

    @property
    def last_error(self) -> str | None:
        return None if self._conn is None else self._conn.last_error

    def __repr__(self) -> str:
        o = self.options
        return (
            f"MqttDataWriter(url={self.url!r}, topic={self.topic!r}, layout={self.layout!r}, qos={self.qos}, "
            f"retain={self.retain}, client_id={o.client_id!r}, username={o.username!r}, "
            f"password={'<set>' if o.password is not None else None}, tls={o.tls!r}, protocol={o.protocol!r})"
        )

    def __enter__(self) -> MqttDataWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._conn is not None:
            return
        conn = MqttConnection(
            self._endpoint,
            self.options,
            name=self.name,
            on_done=self._on_done,
            on_connect=self._on_connect,
            max_pending=self.max_pending if self.qos == 0 else min(self.max_pending, self.max_inflight),
            max_inflight=self.max_inflight,
            reconnect_min_s=self.reconnect_min_s,
            reconnect_max_s=self.reconnect_max_s,
        )
        conn.start()
        self._conn = conn
        pump = threading.Thread(target=self._pump_loop, name=f"flowcollect-mqtt-{self.name}", daemon=True)
        pump.start()
        self._pump = pump

    def _drain(self, *, wait: bool) -> None:
        """Publish from the outbox's front while the connection has room. One publisher at a
        time, so messages leave in order: the writer's thread and paho's (refilling the window
        as receipts come) do not wait (``wait=False``) for one another, and whoever held the
        lock looks again after letting it go, so a place freed meanwhile is never left empty."""
        conn = self._conn
        if conn is None:
            return
        while self._publishing.acquire(blocking=wait):
            try:
                if not self._publish_some(conn):
                    return
            finally:
                self._publishing.release()
            if not (self._outbox and conn.connected and conn.pending < conn.max_pending and not self._stop):
                return
            wait = False

    def _publish_some(self, conn: MqttConnection) -> bool:
        """Under ``_publishing``: fill the window; False when a message was not taken."""
        qos, retain, cond = self.qos, self.retain, self._cond
        while True:
            with cond:
                room = conn.max_pending - conn.pending
                if not self._outbox or room <= 0 or not conn.connected or self._stop:
                    return True
                take = [self._outbox.popleft() for _ in range(min(room, len(self._outbox), 500))]
                self._outbox_values -= sum(m.n for m in take)
            for k, msg in enumerate(take):
                if not conn.publish(msg.topic, msg.payload, qos, retain, msg):
                    with cond:  # not taken (QoS 0 while disconnected): back to the front
                        rest = take[k:]
                        self._outbox.extendleft(reversed(rest))
                        self._outbox_values += sum(m.n for m in rest)
                    return False

    def _pump_loop(self) -> None:
        conn = self._conn
        if conn is None:  # set before the thread starts
            return
        try:
            while True:
                with self._cond:
                    while not self._stop and not (
                        self._outbox and conn.connected and conn.pending < conn.max_pending
                    ):
                        self._cond.wait(0.5)
                    if self._stop:
                        return
                self._drain(wait=True)
        except Exception:
            logger.exception("%s: the publishing thread failed; values wait until close", self.name)

    def _on_connect(self, _session_present: bool) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_done(self, token: object, outcome: Outcome, detail: str | None) -> None:
        msg = token
        if not isinstance(msg, _Msg):
            return
        settled: list[_Job] = []
        with self._cond:
            job = msg.job
            if outcome is Outcome.DONE:
                job.written += msg.n
                job.remaining -= msg.n
                self._counts["messages"] += 1
                self._settle(job, settled)
            elif outcome is Outcome.NOT_SENT:
                # QoS 0 lost in a drop before it was written: send it again after the reconnect.
                self._outbox.appendleft(msg)
                self._outbox_values += msg.n
            elif outcome is Outcome.REFUSED:
                job.failed += msg.n
                job.remaining -= msg.n
                job.error = detail
                self._settle(job, settled)
                self._log.warning(("refused", detail), "%s: %s (topic %r)", self.name, detail, msg.topic)
            else:
                self._lost(msg, detail or _CLOSED, settled)
            if settled:  # flush() waits for settled batches; not a wake-up per receipt
                self._cond.notify_all()
        self._acknowledge(settled)
        if outcome is not Outcome.NOT_SENT and self._outbox:
            # Refill the window from here, paho's thread, as each receipt frees a place: handing
            # it to another thread costs a wake-up per message (measured: 6x slower at QoS 1).
            self._drain(wait=False)

    def _lost(self, msg: _Msg, why: str, settled: list[_Job]) -> None:
        job = msg.job
        job.dropped += msg.n
        job.remaining -= msg.n
        job.error = why
        self._settle(job, settled)

    def _trim(self, settled: list[_Job]) -> None:
        """Drop the oldest waiting messages beyond ``buffer_limit`` values (under ``_cond``)."""
        over = self._outbox_values - self.buffer_limit
        if over <= 0:
            return
        dropped = 0
        while self._outbox_values > self.buffer_limit and self._outbox:
            msg = self._outbox.popleft()
            self._outbox_values -= msg.n
            dropped += msg.n
            self._lost(msg, f"dropped: more than buffer_limit={self.buffer_limit} values waiting", settled)
        self._log.warning(
            ("dropped",),
            "%s: the broker is not taking messages fast enough (%s); dropped the oldest %d values",
            self.name,
            (self._conn.last_error if self._conn is not None else None) or "not connected",
            dropped,
        )

    def _settle(self, job: _Job, settled: list[_Job]) -> None:
        if job.remaining == 0:
            self._open_jobs -= 1
            self._counts["written"] += job.written
            self._counts["failed"] += job.failed
            self._counts["dropped"] += job.dropped
            settled.append(job)

    def _acknowledge(self, settled: list[_Job]) -> None:
        for job in settled:
            self.acknowledge(job.batch, job.written, job.failed, job.dropped, job.error)
