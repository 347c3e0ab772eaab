"""stats: histogram buckets follow Prometheus' upper-inclusive `le` semantics."""

from __future__ import annotations

from fopproxy.stats import Histogram


def test_a_value_on_a_bound_counts_in_that_bucket_and_beyond_the_last_in_inf() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for value in (0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 30.0):
        histogram.observe(value)
    assert histogram.counts == [3, 2, 2, 2]
    assert histogram.count == 9
    assert abs(histogram.sum - 30.3626) < 1e-9
