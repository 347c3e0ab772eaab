"""http-mode counters: the exposition (read by an independent parser), and sums across workers."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fopproxy.http.stats import HttpSnapshot, HttpStats
from fopproxy.metrics.collector import make_registry
from fopproxy.metrics.snapshot import MetricsSnapshot as Snapshot


def _stats() -> HttpStats:
    stats = HttpStats()
    stats.requests[("POST", 200)] += 3
    stats.requests[("GET", 502)] += 1
    for seconds in (0.002, 0.02, 0.2, 90.0):
        stats.duration.observe(seconds)
    stats.request_body_bytes = 100
    stats.response_body_bytes = 2000
    stats.errors["backend_unavailable"] += 1
    return stats


def test_exposition_names_labels_and_values() -> None:
    text = generate_latest(make_registry(lambda: Snapshot(http=_stats().snapshot()))).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("fopproxy_http_requests_total", (("code", "200"), ("method", "POST")))] == 3
    assert samples[("fopproxy_http_requests_total", (("code", "502"), ("method", "GET")))] == 1
    assert samples[("fopproxy_http_request_duration_seconds_count", ())] == 4
    assert samples[("fopproxy_http_request_duration_seconds_bucket", (("le", "0.025"),))] == 2
    assert samples[("fopproxy_http_request_duration_seconds_bucket", (("le", "60.0"),))] == 3
    assert samples[("fopproxy_http_request_body_bytes_total", ())] == 100
    assert samples[("fopproxy_http_response_body_bytes_total", ())] == 2000
    assert samples[("fopproxy_http_errors_total", (("reason", "backend_unavailable"),))] == 1
    assert samples[("fopproxy_http_errors_total", (("reason", "backend_timeout"),))] == 0  # present before the event


def test_snapshot_survives_the_worker_json_and_adds_up() -> None:
    """A worker's snapshot crosses the supervisor's socket as JSON and sums with another's."""
    one = Snapshot(http=_stats().snapshot())
    back = Snapshot.from_json(one.to_json())
    assert back.http == one.http
    total = (back + back).http
    assert total.requests == {("POST", 200): 6, ("GET", 502): 2}
    assert sum(total.duration_counts) == 8 and total.request_body_bytes == 200
    assert HttpSnapshot() + HttpSnapshot() == HttpSnapshot()
