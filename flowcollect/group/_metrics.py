"""A member's group state in Prometheus format, read at scrape time like the collector's.

Register it beside the collector's ``StatsCollector``::

    registry.register(GroupStatsCollector(membership.stats))

Names are prefixed ``flowcollect_group_``; every family carries the ``group`` and ``member``
labels, so one Prometheus sees a whole group's members side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flowcollect.group._member import GroupStats

__all__ = ["GroupStatsCollector"]

STATES = ("joining", "active", "fenced", "left")


class GroupStatsCollector:
    def __init__(self, source: Callable[[], GroupStats | None]) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._source()
        if stats is None:
            return
        base = [stats.group, stats.member]
        labels = ["group", "member"]
        state = GaugeMetricFamily(
            "flowcollect_group_state", "1 for the member's current state", labels=[*labels, "state"]
        )
        for name in STATES:
            state.add_metric([*base, name], 1.0 if stats.state == name else 0.0)
        yield state
        gauges = {
            "flowcollect_group_members": ("Live members this member sees", len(stats.members)),
            "flowcollect_group_lanes": ("Lanes of the plan", stats.lanes_total),
            "flowcollect_group_lanes_owned": ("Lanes this member collects", len(stats.owned)),
            "flowcollect_group_lanes_waiting": (
                "Lanes that are this member's but still held by another",
                len(stats.waiting),
            ),
        }
        for name, (text, value) in gauges.items():
            gauge = GaugeMetricFamily(name, text, labels=labels)
            gauge.add_metric(base, float(value))
            yield gauge
        if stats.lease_age_s is not None:
            age = GaugeMetricFamily(
                "flowcollect_group_lease_age_seconds",
                "Since the last keep-alive etcd answered",
                labels=labels,
            )
            age.add_metric(base, stats.lease_age_s)
            yield age
        token = GaugeMetricFamily(
            "flowcollect_group_lane_token",
            "Fencing token of each lane this member holds",
            labels=[*labels, "lane"],
        )
        for lane, value in stats.owned.items():
            token.add_metric([*base, lane], float(value))
        yield token
        counters = {
            "flowcollect_group_lanes_acquired": ("Lanes taken (ownership keys created)", stats.acquired),
            "flowcollect_group_lanes_released": ("Lanes given back to their new owner", stats.released),
            "flowcollect_group_fenced": (
                "Times every lane stopped at the fencing deadline",
                stats.fenced_count,
            ),
            "flowcollect_group_etcd_errors": ("etcd calls that failed on every endpoint", stats.etcd_errors),
        }
        for name, (text, value) in counters.items():
            counter = CounterMetricFamily(name, text, labels=labels)
            counter.add_metric(base, float(value))
            yield counter
