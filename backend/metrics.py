"""/metrics in the Prometheus text format, by prometheus_client: counters and histograms shared by every web
process and worker (in Redis, see `worker.metrics`), and gauges read at scrape time."""

from __future__ import annotations

import re
from typing import Iterable

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from worker.metrics import HISTOGRAMS, count, counters, histogram, observe

__all__ = ["count", "observe", "render"]

_VALID_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Snapshot:
    """A collector over one scrape's values: the counters and histograms in Redis plus the given gauges."""

    def __init__(self, connection: redis.Redis, gauges: dict[str, float], labelled: dict[str, tuple[list[str], dict[tuple, float]]]) -> None:
        self.connection, self.gauges, self.labelled = connection, gauges, labelled

    def collect(self) -> Iterable[Metric]:
        for name, value in sorted(counters(self.connection).items()):
            if not _VALID_NAME.match(name):
                continue  # written by an older version from a webhook's action name: not a metric name
            yield CounterMetricFamily(f"seggpt_{name}", f"{name.replace('_', ' ')}, since the installation began", value=value)
        for name, help_text in HISTOGRAMS.items():
            buckets, total = histogram(self.connection, name)
            yield HistogramMetricFamily(f"seggpt_{name}", help_text, buckets=buckets, sum_value=total)
        for name, value in sorted(self.gauges.items()):
            yield GaugeMetricFamily(f"seggpt_{name}", name.replace("_", " "), value=value)
        for name, (labels, series) in sorted(self.labelled.items()):
            family = GaugeMetricFamily(f"seggpt_{name}", name.replace("_", " "), labels=labels)
            for values, value in sorted(series.items()):
                family.add_metric(list(values), value)
            yield family


def render(connection: redis.Redis, gauges: dict[str, float], labelled: dict[str, tuple[list[str], dict[tuple, float]]] | None = None) -> str:
    """`labelled`: gauge name -> (label names, {label values: number})."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(connection, gauges, labelled or {}))
    return generate_latest(registry).decode()
