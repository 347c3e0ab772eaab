"""Per-process event counts, kept as plain Python numbers so the hot path pays a dict update.

The Prometheus exposition (`metrics.py`) reads these at scrape time; nothing here knows about
Prometheus, so connections never pay for label look-ups or locks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

# Handshake failure reasons: a small fixed set, so label cardinality is bounded.
HANDSHAKE_ERROR_REASONS = (
    "unsupported_protocol",
    "no_shared_cipher",
    "timeout",
    "client_eof",
    "not_tls",
    "cert_rejected",
    "invalid_sni",
    "other",
)
BACKEND_ERROR_REASONS = ("refused", "timeout", "unreachable", "dns", "reset", "other")
REJECT_REASONS = ("limit", "draining")
RELOAD_RESULTS = ("success", "failure")

# Histogram buckets (seconds) shared with the exposition.
HANDSHAKE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Bucket counts plus sum; `observe` finds the bucket with one C-level bisection."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        # Prometheus buckets are upper-inclusive (le): the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)


class Stats:
    """Every counter a worker keeps; monotonic except `connections_active`."""

    __slots__ = (
        "backend_connect_duration",
        "backend_connect_errors",
        "bytes_to_backend",
        "bytes_to_client",
        "client_auth_failures",
        "connections_active",
        "connections_rejected",
        "handshake_duration",
        "handshake_errors",
        "handshakes",
        "last_reload_success",
        "reloads",
        "resumptions",
        "ticket_key_reload_failures",
    )

    def __init__(self) -> None:
        self.handshakes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.handshake_errors: defaultdict[str, int] = defaultdict(int)
        # Refused client certificates, by clientauth.FAILURE_REASONS (also a handshake error).
        self.client_auth_failures: defaultdict[str, int] = defaultdict(int)
        self.handshake_duration = Histogram(HANDSHAKE_BUCKETS)
        self.connections_active = 0
        self.connections_rejected: defaultdict[str, int] = defaultdict(int)
        self.bytes_to_backend = 0
        self.bytes_to_client = 0
        self.backend_connect_errors: defaultdict[str, int] = defaultdict(int)
        self.backend_connect_duration = Histogram(CONNECT_BUCKETS)
        self.reloads: defaultdict[str, int] = defaultdict(int)
        self.last_reload_success = 0.0
        # Handshakes that resumed a session (ID, ticket or TLS 1.3 PSK), by protocol version.
        self.resumptions: defaultdict[str, int] = defaultdict(int)
        self.ticket_key_reload_failures = 0


def add_counts(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    """Two workers' counts of one labelled counter, summed (for the metrics snapshots)."""
    total = dict(a)
    for key, value in b.items():
        total[key] = total.get(key, 0) + value
    return total
