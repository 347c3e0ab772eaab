"""Metric families built the same way wherever they are exported (tcp mode, http mode)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily


def counter_by(
    name: str, documentation: str, label: str, counts: Mapping[str, int], fixed: Iterable[str]
) -> CounterMetricFamily:
    """A counter with one bounded label; every value of the fixed set appears (at 0), so alerts
    see a series before the event."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in {**dict.fromkeys(fixed, 0), **counts}.items():
        family.add_metric([value], count)
    return family


def histogram_family(
    name: str, documentation: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> HistogramMetricFamily:
    """A histogram from per-bucket counts (the last one +Inf), made cumulative as Prometheus
    wants them."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", running + counts[-1]))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets, total)
    return family
