"""``SparkplugDataWriter``: the collector as a Sparkplug B 3.0 edge node on an MQTT broker.

The session logic (births, deaths, ``seq`` and ``bdSeq``, rebirths, the primary host, what is
held and replayed as historical) is the pure ``EdgeNode`` of ``flowcollect.sparkplug._session``;
this module runs it on one thread of its own (the *driver*) and carries out what it says on a
``flowcollect.mqtt.MqttConnection``. Everything that touches the node goes through the driver's
inbox, so the node is owned by that one thread and the messages leave in the order the node
numbered them: paho's callbacks (connected, lost, a message, a receipt) only post events.

Written means: at ``qos=0`` handed to the socket while the session is up (the connection's
``DONE`` receipt); at ``qos=1`` acknowledged by the broker (PUBACK). A QoS 0 message caught by
a dropped connection is held again and goes out, flagged historical, in the next session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import ConfigError
from flowcollect.sparkplug import (
    Carried,
    DataType,
    EdgeNode,
    Note,
    Publish,
    Reconnect,
    Settle,
    Subscribe,
    check_id,
    datatype_of,
    ndeath_payload,
)
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter

if TYPE_CHECKING:
    from flowcollect.mqtt import MqttConnection, MqttEndpoint, MqttOptions, Outcome

__all__ = ["SparkplugDataWriter"]

logger = logging.getLogger("flowcollect.writers.sparkplug")


def _node_problems(where: str, ids: Mapping[str, str | None], qos: object, hold_limit: object) -> list[str]:
    problems: list[str] = []
    for kind, value in ids.items():
        if value is None and kind == "primary_host_id":
            continue  # optional
        problem = check_id(kind, value or "")
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if isinstance(qos, bool) or qos not in (0, 1):
        problems.append(f"{where} qos: must be 0 or 1 (Sparkplug uses no QoS 2), got {qos!r}")
    if isinstance(hold_limit, bool) or not isinstance(hold_limit, int) or hold_limit < 1:
        problems.append(f"{where} hold_limit: must be a positive int, got {hold_limit!r}")
    return problems


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class _Token:
    """What a published message's receipt settles."""

    carries: tuple[Carried, ...]
    kind: str


class SparkplugDataWriter(DataWriter):
    """Publishes collected values as a Sparkplug B edge node (``spBv1.0/{group_id}/...``).

    - ``group_id``, ``edge_node_id``: the node's place in the namespace.
    - ``device``: a template naming each variable's device (``{reader}``, ``{context}``, ``{id}``,
      ``{name}``, ``{address}``, ``{tag:KEY}``); a variable's metric name is its name, else its
      address.
    - ``primary_host_id``: births wait for ``spBv1.0/STATE/{primary_host_id}`` to say online;
      data is held meanwhile and replayed, historical, once it does.
    - ``qos``: 0 (the specification's choice for data) or 1 (acknowledged by the broker).
    - Connection: ``client_id``, ``username``, ``password``, ``tls``, ``protocol`` (``"3.1.1"``
      by default: Sparkplug's clean sessions map onto it directly; ``"5"`` works too),
      ``keepalive_s``, as for ``MqttDataWriter``.
    - ``hold_limit``: values held while no session is up, at most (the oldest are dropped
      beyond it, counted). Behind a ``SpooledWriter`` the spool keeps the rest on disk.
    - ``close_timeout_s``: ``close()`` publishes the deaths and waits this long at most.

    Raises ``ConfigError`` naming every bad option.
    """

    acknowledges: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        group_id: str,
        edge_node_id: str,
        device: str = "{reader}",
        primary_host_id: str | None = None,
        qos: int = 0,
        client_id: str | None = None,
        username: str | None = None,
        password: Any = None,
        tls: Any = None,
        protocol: str = "3.1.1",
        keepalive_s: int = 30,
        hold_limit: int = 1_000_000,
        max_pending: int = 10_000,
        close_timeout_s: float = 10.0,
        preflight_timeout_s: float = 10.0,
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        from flowcollect.mqtt import TopicTemplate, options_problems

        where = f"SparkplugDataWriter({group_id}/{edge_node_id})"
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
        ids = {"group_id": group_id, "edge_node_id": edge_node_id, "primary_host_id": primary_host_id}
        problems += _node_problems(where, ids, qos, hold_limit)
        template: TopicTemplate | None = None
        try:
            template = TopicTemplate(device)
        except ValueError as exc:
            problems.append(f"{where} device: {exc}")
        if problems or endpoint is None or options is None or template is None:
            raise ConfigError(problems or [f"{where}: invalid options"])
        self.url = endpoint.url
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.device = device
        self.primary_host_id = primary_host_id
        self.qos = qos
        self.hold_limit = hold_limit
        self.max_pending = max_pending
        self.close_timeout_s = close_timeout_s
        self.preflight_timeout_s = preflight_timeout_s
        self._endpoint: MqttEndpoint = endpoint
        self._options: MqttOptions = options
        self._template = template
        self._clock = clock
        # Owned by the driver thread (and by close() once the driver has ended).
        self._node = EdgeNode(
            group_id,
            edge_node_id,
            device_of=self._device_of,
            primary_host_id=primary_host_id,
            qos=qos,
            hold_limit=hold_limit,
        )
        self._conn: MqttConnection | None = None
        # Guarded by _cond: the driver's inbox, the values in it, the lifecycle flags.
        self._cond = threading.Condition()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._inbox_values = 0
        self._max_inbox_values = 200_000
        self._started = False
        self._closing = False
        self._busy = False  # the driver is carrying out events taken from the inbox
        self._failure: str | None = None  # the driver died of this (a bug): no more values taken
        self._close_deadline = 0.0  # set by close(): the driver's deaths and disconnect end by then
        self._driver: threading.Thread | None = None
        # Guarded by _will_lock: the bdSeq registered in the current (or next) connection's will,
        # and whether that connection is up; paho's callbacks and the driver both touch them.
        self._will_lock = threading.Lock()
        self._will_bdseq = 0
        self._conn_up = False
        # Guarded by _counts_lock: the writer's counters.
        self._counts_lock = threading.Lock()
        self._counts = {"written": 0, "failed": 0, "dropped": 0, "messages": 0, "requeued": 0, "births": 0}
        self._held_snapshot = 0  # the node's held values, as the driver last saw them
        self._log = RateLimitedLog(logger)

    # -- the DataWriter interface ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"sparkplug:{self.group_id}/{self.edge_node_id}"

    def write_batch(self, batch: ValueBatch) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError(f"{self.name} is closed; it takes no more values")
            if self._failure is not None:
                raise RuntimeError(f"{self.name} stopped working: {self._failure}")
            if not self._started:
                self._start_locked()
            # Bounded: the engine's queue in front of this writer is where values wait (and its
            # policy drops) when the broker cannot keep up.
            while self._inbox_values > self._max_inbox_values and not self._closing and not self._failure:
                self._cond.wait(0.5)
            self._inbox.append(("data", batch))
            self._inbox_values += len(batch)
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait (up to ``close_timeout_s``) until everything taken is published and, at QoS 1,
        acknowledged, or held for want of a session."""
        deadline = time.monotonic() + self.close_timeout_s
        with self._cond:
            while (self._inbox or self._busy) and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.1))
        conn = self._conn
        while conn is not None and conn.connected and conn.pending and time.monotonic() < deadline:
            conn.wait_for_room(min(0.1, deadline - time.monotonic()), room=conn.max_pending)

    def preflight(self) -> None:
        """Connect and authenticate once (``flowcollect.mqtt.preflight``)."""
        from flowcollect.mqtt import preflight

        preflight(self._endpoint, self._options, self.preflight_timeout_s)

    def close(self) -> None:
        """The deaths (DDEATH per device, NDEATH), then disconnect; values held or still in the
        inbox are reported dropped (a spool keeps them for the next run)."""
        with self._cond:
            if self._closing:
                return
            self._close_deadline = time.monotonic() + self.close_timeout_s
            self._closing = True
            self._inbox.append(("stop", None))
            self._cond.notify_all()
            driver = self._driver
        if driver is not None:
            driver.join(self.close_timeout_s + 2.0)
            if driver.is_alive():
                # It still owns the node: what it holds is reported as it ends (_stop).
                logger.error("%s: the driver thread did not end within close_timeout_s", self.name)
                return
        self._drop_leftovers()

    def stats(self) -> Mapping[str, float]:
        """``written``, ``failed``, ``dropped`` (values), ``held`` (waiting for a session),
        ``messages`` published, ``requeued`` (messages a dropped connection caught), ``births``
        (NBIRTHs), ``bdseq``, and the connection's own counters (``connected``, ``connects``,
        ``pending``...)."""
        with self._counts_lock:
            out = {k: float(v) for k, v in self._counts.items()}
        out["held"] = float(self._held_snapshot)
        with self._will_lock:
            out["bdseq"] = float(self._will_bdseq)
        conn = self._conn
        if conn is not None:
            out.update(conn.stats())
        return out

    def __repr__(self) -> str:
        return (
            f"SparkplugDataWriter({self.url!r}, group_id={self.group_id!r}, "
            f"edge_node_id={self.edge_node_id!r}, device={self.device!r}, "
            f"primary_host_id={self.primary_host_id!r}, qos={self.qos})"
        )

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        """Every variable this writer receives has a valid device name (the template), and no
        two of a device share a metric name with different datatypes."""
        routing = self.routing
        problems: list[str] = []
        seen: dict[tuple[str, str], tuple[int, DataType]] = {}
        for spec in variables:
            if routing is not None and not routing.wants_variable(spec.context_id, spec.id, spec.name):
                continue
            label = (
                f"writer {self.name}: context {spec.context_id}, variable {spec.id} "
                f"({spec.name or spec.address!r})"
            )
            try:
                device = self._device_of(spec)
            except ValueError as exc:
                problems.append(f"{label}: {exc}")
                continue
            metric = spec.name or spec.address
            datatype = datatype_of(spec)
            first = seen.setdefault((device, metric), (spec.id, datatype))
            if first[1] != datatype:
                problems.append(
                    f"{label}: metric {metric!r} of device {device!r} is {datatype.name} here and "
                    f"{first[1].name} for variable {first[0]}; a metric has one datatype"
                )
        return problems

    # -- devices ---------------------------------------------------------------------------------

    def _device_of(self, spec: VariableSpec) -> str:
        try:
            device = self._template.render(spec)
        except KeyError as exc:
            raise ValueError(
                f"the device template {self.device!r} names the tag {exc.args[0]!r}, "
                "which the variable does not have"
            ) from None
        problem = check_id("device", device)
        if problem is not None:
            raise ValueError(f"{problem} (from the device template {self.device!r})")
        return device

    # -- the driver thread -----------------------------------------------------------------------

    def _start_locked(self) -> None:
        self._started = True
        self._driver = threading.Thread(
            target=self._drive, name=f"flowcollect-sparkplug-{self.name}", daemon=True
        )
        self._driver.start()

    def _post(self, kind: str, item: Any = None) -> None:
        with self._cond:
            self._inbox.append((kind, item))
            self._cond.notify_all()

    def _drive(self) -> None:
        try:
            self._connect()
            while True:
                with self._cond:
                    while not self._inbox:
                        self._cond.wait()
                    events = list(self._inbox)
                    self._inbox.clear()
                    self._inbox_values = 0
                    self._busy = True
                    self._cond.notify_all()
                try:
                    for k, (kind, item) in enumerate(events):
                        if kind == "stop":
                            with self._cond:  # receipts that came meanwhile: close() settles them
                                self._inbox.extendleft(reversed(events[k + 1 :]))
                            self._stop()
                            return
                        try:
                            self._handle(kind, item)
                        except Exception as exc:  # a bug for one event must not stop the node
                            logger.exception("%s: handling %s failed", self.name, kind)
                            if kind == "data":
                                self.acknowledge(item, 0, len(item), 0, f"{type(exc).__name__}: {exc}")
                                with self._counts_lock:
                                    self._counts["failed"] += len(item)
                finally:
                    self._held_snapshot = self._node.held_values
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        except Exception as exc:
            logger.exception("%s: the Sparkplug driver failed; values it holds are dropped", self.name)
            with self._cond:
                self._failure = f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()

    def _handle(self, kind: str, item: Any) -> None:
        now = self._clock()
        node = self._node
        if kind == "data":
            self._carry_out(node.data(item, now))
        elif kind == "connected":
            conn, bdseq = item
            if conn is self._conn:
                node.set_bdseq(bdseq)
                self._carry_out(node.connected(now))
        elif kind == "lost":
            if item is self._conn:
                node.connection_lost()
                if self.qos == 1 and item is not None:
                    self._renew(item)
        elif kind == "message":
            topic, payload = item
            self._carry_out(node.received(topic, payload, now))
        elif kind == "requeue":
            node.requeue(item)
            with self._counts_lock:
                self._counts["requeued"] += 1

    def _carry_out(self, actions: list[Any]) -> None:
        conn = self._conn
        unsent: list[Carried] = []
        for action in actions:
            if isinstance(action, Publish):
                if conn is None or not self._publish(conn, action):
                    unsent.extend(action.carries)
            elif isinstance(action, Settle):
                self.acknowledge(action.batch, 0, action.failed, action.dropped, action.reason)
                with self._counts_lock:
                    self._counts["failed"] += action.failed
                    self._counts["dropped"] += action.dropped
                # Once a minute per cause: a variable without a device fails at every instant.
                self._log.log(logging.WARNING, ("settle", action.reason), "%s: %s", self.name, action.reason)
            elif isinstance(action, Subscribe):
                if conn is not None:
                    conn.set_subscriptions(dict(action.topics))
            elif isinstance(action, Reconnect):
                self._reconnect(action.reason)
                conn = self._conn
            elif isinstance(action, Note):
                level = logging.WARNING if action.level == "warning" else logging.INFO
                self._log.log(level, ("note", action.text), "%s: %s", self.name, action.text)
        if unsent:
            self._node.requeue(unsent)

    def _publish(self, conn: MqttConnection, message: Publish) -> bool:
        if conn.pending >= conn.max_pending and not self._closing:
            # Bounded by close(): a broker that stalls without dropping the connection (paused)
            # would otherwise hold the driver here until paho's keepalive gives up.
            while not conn.wait_for_room(0.5):
                if not conn.connected or conn.closed or self._closing:
                    break
        if message.kind == "NBIRTH":
            with self._counts_lock:
                self._counts["births"] += 1
        token = _Token(message.carries, message.kind)
        taken = conn.publish(message.topic, message.payload, message.qos, message.retain, token)
        if taken:
            with self._counts_lock:
                self._counts["messages"] += 1
        return taken

    # -- the connection --------------------------------------------------------------------------

    def _new_connection(self) -> MqttConnection:
        from flowcollect.mqtt import MqttConnection

        conn: MqttConnection | None = None

        def on_connect(_session_present: bool) -> None:
            with self._will_lock:
                self._conn_up = True
                bdseq = self._will_bdseq
            self._post("connected", (conn, bdseq))

        def on_disconnect(_reason: str) -> None:
            # Before paho tries again: the next connection's will carries the next bdSeq.
            with self._will_lock:
                if self._conn_up:
                    self._conn_up = False
                    self._will_bdseq = (self._will_bdseq + 1) % 256
                    if conn is not None:
                        conn.set_will(*self._will())
            self._post("lost", conn)

        conn = MqttConnection(
            self._endpoint,
            self._options,
            name=self.name,
            on_done=self._on_done,
            on_message=lambda topic, payload, _qos: self._post("message", (topic, payload)),
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            max_pending=self.max_pending,
        )
        with self._will_lock:
            conn.set_will(*self._will())
        return conn

    def _will(self) -> tuple[str, bytes, int, bool]:
        # Called with _will_lock held.
        topic = f"spBv1.0/{self.group_id}/NDEATH/{self.edge_node_id}"
        return topic, ndeath_payload(self._will_bdseq, self._clock()), 1, False

    def _connect(self) -> None:
        conn = self._new_connection()
        self._conn = conn
        conn.start()

    def _renew(self, old: MqttConnection) -> None:
        """After a lost connection at QoS 1: a new client rather than paho's reconnect, which
        would send the unacknowledged messages of the old session again, with its ``seq``,
        before the new births. Those come back (GIVEN_UP) and go out in the new session,
        historical, numbered in it."""
        self._connect()
        old.close(1.0)

    def _reconnect(self, reason: str) -> None:
        old = self._conn
        if old is not None:
            self._settle_wait(old, 2.0)
            old.close(2.0)
        with self._will_lock:
            if self._conn_up:
                self._conn_up = False
                self._will_bdseq = (self._will_bdseq + 1) % 256
        self._node.connection_lost()
        logger.info("%s: reconnecting (%s)", self.name, reason)
        self._connect()

    @staticmethod
    def _settle_wait(conn: MqttConnection, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while conn.pending and conn.connected and time.monotonic() < deadline:
            conn.wait_for_room(0.05, room=conn.max_pending)

    def _stop(self) -> None:
        conn = self._conn
        deadline = self._close_deadline
        if conn is not None:
            self._carry_out(self._node.stop(self._clock()))
            self._settle_wait(conn, max(0.0, deadline - time.monotonic() - 1.0))
            conn.close(max(0.1, deadline - time.monotonic()))
        self._drop_leftovers()

    def _drop_leftovers(self) -> None:
        with self._cond:
            left = list(self._inbox)
            self._inbox.clear()
            self._inbox_values = 0
        held = self._node.take_held()
        reason = "not published before close (no Sparkplug session, or the broker did not take it)"
        for batch, count in held:
            self._dropped(batch, count, reason)
        for kind, item in left:
            if kind == "data":
                self._dropped(item, len(item), reason)
            elif kind == "requeue":
                for c in item:
                    self._dropped(c.batch, c.count, reason)
        self._held_snapshot = 0

    def _dropped(self, batch: ValueBatch, count: int, reason: str) -> None:
        if count:
            self.acknowledge(batch, 0, 0, count, reason)
            with self._counts_lock:
                self._counts["dropped"] += count

    # -- receipts (paho's thread, or the closing one) --------------------------------------------

    def _on_done(self, token: object, outcome: Outcome, detail: str | None) -> None:
        from flowcollect.mqtt import Outcome

        if not isinstance(token, _Token) or not token.carries:
            return
        if outcome is Outcome.DONE:
            for c in token.carries:
                self.acknowledge(c.batch, c.count - c.failed, c.failed, 0, c.error)
            with self._counts_lock:
                self._counts["written"] += sum(c.count - c.failed for c in token.carries)
                self._counts["failed"] += sum(c.failed for c in token.carries)
        elif outcome is Outcome.REFUSED:
            for c in token.carries:
                self.acknowledge(c.batch, 0, c.count, 0, detail)
            with self._counts_lock:
                self._counts["failed"] += sum(c.count for c in token.carries)
        elif outcome is Outcome.NOT_SENT or (outcome is Outcome.GIVEN_UP and not self._closing):
            # Caught by a dropped (or retired) connection: out again in the next session.
            self._post("requeue", token.carries)
        else:
            for c in token.carries:
                self._dropped(c.batch, c.count, detail or "given up at close")
