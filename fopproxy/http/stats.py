"""Per-request counters of `mode: http`, and the Prometheus families they become at scrape time.

Like `fopproxy/stats.py`, the hot path only adds to plain numbers; labels are bounded: the method
is one of request.KNOWN_METHODS or OTHER, the code a three-digit status, the error reason one of
ERROR_REASONS. The metric names are public API (deploy/prometheus uses them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from fopproxy.metrics.families import counter_by, histogram_family
from fopproxy.stats import Histogram, add_counts

# First request byte to last response byte: payment APIs answer in tens of milliseconds to a few
# seconds; the top buckets catch the backend timeouts.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# Why the proxy answered a request itself (or could not answer it at all).
ERROR_REASONS = (
    "bad_request", "bad_version", "transfer_encoding", "host", "connection_header",
    "header_too_large", "pipeline_too_deep", "upgrade_refused", "backend_unavailable",
    "backend_timeout", "backend_reset", "bad_response",
)


class HttpStats:
    """What one worker counted; monotonic."""

    __slots__ = ("duration", "errors", "request_body_bytes", "requests", "response_body_bytes")

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.duration = Histogram(DURATION_BUCKETS)
        self.request_body_bytes = 0
        self.response_body_bytes = 0
        self.errors: defaultdict[str, int] = defaultdict(int)

    def snapshot(self) -> HttpSnapshot:
        return HttpSnapshot(
            requests={(m, c): n for (m, c), n in self.requests.items()},
            duration_counts=tuple(self.duration.counts),
            duration_sum=self.duration.sum,
            request_body_bytes=self.request_body_bytes,
            response_body_bytes=self.response_body_bytes,
            errors=dict(self.errors),
        )



@dataclass(frozen=True)
class HttpSnapshot:
    """One worker's counts, or the sum over workers (see metrics.Snapshot)."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    duration_counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    duration_sum: float = 0.0
    request_body_bytes: int = 0
    response_body_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: HttpSnapshot) -> HttpSnapshot:
        return HttpSnapshot(
            requests=add_counts(self.requests, other.requests),
            duration_counts=tuple(
                a + b for a, b in zip(self.duration_counts, other.duration_counts, strict=True)
            ),
            duration_sum=self.duration_sum + other.duration_sum,
            request_body_bytes=self.request_body_bytes + other.request_body_bytes,
            response_body_bytes=self.response_body_bytes + other.response_body_bytes,
            errors=add_counts(self.errors, other.errors),
        )

    def to_jsonable(self) -> dict[str, Any]:
        return {
            "requests": [[m, c, n] for (m, c), n in self.requests.items()],
            "duration": [list(self.duration_counts), self.duration_sum],
            "request_body_bytes": self.request_body_bytes,
            "response_body_bytes": self.response_body_bytes,
            "errors": self.errors,
        }

    @classmethod
    def from_jsonable(cls, raw: Mapping[str, Any]) -> HttpSnapshot:
        """Raises KeyError/TypeError/ValueError on a malformed document (the caller's contract)."""
        counts, total = raw["duration"]
        if len(counts) != len(DURATION_BUCKETS) + 1:
            raise ValueError("http duration histogram bucket count differs")
        return cls(
            requests={(str(m), int(c)): int(n) for m, c, n in raw["requests"]},
            duration_counts=tuple(int(c) for c in counts),
            duration_sum=float(total),
            request_body_bytes=int(raw["request_body_bytes"]),
            response_body_bytes=int(raw["response_body_bytes"]),
            errors={str(k): int(v) for k, v in raw["errors"].items()},
        )


def http_families(snap: HttpSnapshot) -> Iterator[Metric]:
    """The public http-mode metric families for one scrape."""
    requests = CounterMetricFamily(
        "fopproxy_http_requests",
        "HTTP requests answered, by method (known methods, else OTHER) and status code; "
        "answers the proxy made itself included",
        labels=["method", "code"],
    )
    for (method, code), count in sorted(snap.requests.items()):
        requests.add_metric([method, str(code)], count)
    yield requests
    yield histogram_family(
        "fopproxy_http_request_duration_seconds",
        "Time from a request's first byte to its response's last byte",
        DURATION_BUCKETS, snap.duration_counts, snap.duration_sum,
    )
    yield CounterMetricFamily(
        "fopproxy_http_request_body_bytes", "Request body bytes relayed to the backend",
        value=snap.request_body_bytes,
    )
    yield CounterMetricFamily(
        "fopproxy_http_response_body_bytes", "Response body bytes relayed to clients",
        value=snap.response_body_bytes,
    )
    yield counter_by(
        "fopproxy_http_errors",
        "Requests the proxy answered itself or could not finish, by reason",
        "reason", snap.errors, ERROR_REASONS,
    )
