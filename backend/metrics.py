"""The shared counters (`worker.metrics`) and gauges in Prometheus text format."""

from __future__ import annotations

import redis

from worker.metrics import count, counters

__all__ = ["count", "render"]


def render(connection: redis.Redis, gauges: dict[str, float], labelled: dict[str, dict[tuple, float]] | None = None) -> str:
    """`labelled`: gauge name -> {((label, value), ...): number}."""
    lines = []
    for name, value in sorted(counters(connection).items()):
        lines += [f"# TYPE seggpt_{name}_total counter", f"seggpt_{name}_total {value}"]
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE seggpt_{name} gauge", f"seggpt_{name} {value}"]
    for name, series in sorted((labelled or {}).items()):
        lines.append(f"# TYPE seggpt_{name} gauge")
        for labels, value in sorted(series.items()):
            text = ",".join(f'{key}="{str(val)}"' for key, val in labels)
            lines.append(f"seggpt_{name}{{{text}}} {value}")
    return "\n".join(lines) + "\n"
