"""The Prometheus collector: turns a `MetricsSnapshot` into the public metric families.

The metric names here are public API: dashboards and alert rules in `deploy/prometheus/` use
them, and a test checks every name they use is exported. The collector lives on a registry of
our own, never the global one.
"""

from __future__ import annotations

import platform
import ssl
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from fopproxy import __version__
from fopproxy.clientauth import FAILURE_REASONS
from fopproxy.http.stats import http_families
from fopproxy.metrics.families import counter_by, histogram_family
from fopproxy.metrics.snapshot import MetricsSnapshot
from fopproxy.outbound.collector import outbound_families
from fopproxy.stats import (
    BACKEND_ERROR_REASONS,
    CONNECT_BUCKETS,
    HANDSHAKE_BUCKETS,
    HANDSHAKE_ERROR_REASONS,
    REJECT_REASONS,
    RELOAD_RESULTS,
)

BUILD_LABELS = {
    "version": __version__,
    "python": platform.python_version(),
    "openssl": ssl.OPENSSL_VERSION,
}


class FopproxyCollector(Collector):
    """Turns a MetricsSnapshot into the public metric families, once per scrape."""

    def __init__(self, source: Callable[[], MetricsSnapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        yield from self._tls(snap)
        yield from self._connections(snap)
        yield from self._backend(snap)
        yield from self._certificates(snap)
        yield from outbound_families(snap.outbound)
        yield from http_families(snap.http)
        info = GaugeMetricFamily(
            "fopproxy_build_info", "fopproxy build: version, Python and OpenSSL (value 1)",
            labels=list(BUILD_LABELS),
        )
        info.add_metric(list(BUILD_LABELS.values()), 1)
        yield info

    @staticmethod
    def _tls(snap: MetricsSnapshot) -> Iterator[Metric]:
        handshakes = CounterMetricFamily(
            "fopproxy_tls_handshakes", "Successful TLS handshakes by protocol version and cipher",
            labels=["version", "cipher"],
        )
        for (version, cipher), count in sorted(snap.handshakes.items()):
            handshakes.add_metric([version, cipher], count)
        yield handshakes
        yield counter_by(
            "fopproxy_tls_handshake_errors", "Failed TLS handshakes by reason",
            "reason", snap.handshake_errors, HANDSHAKE_ERROR_REASONS,
        )
        yield counter_by(
            "fopproxy_tls_client_auth_failures",
            "Client certificates refused (tls.client_auth), by reason",
            "reason", snap.client_auth_failures, FAILURE_REASONS,
        )
        resumed = CounterMetricFamily(
            "fopproxy_tls_resumptions",
            "TLS handshakes that resumed a session (ID, ticket or TLS 1.3 PSK), by protocol "
            "version; the rest of fopproxy_tls_handshakes_total were full handshakes",
            labels=["version"],
        )
        for version in sorted({"TLSv1.2", *snap.resumptions}):
            resumed.add_metric([version], snap.resumptions.get(version, 0))
        yield resumed
        yield CounterMetricFamily(
            "fopproxy_tls_ticket_key_rotations",
            "Session-ticket key changes: a scheduled rotation or a new key file",
            value=snap.ticket_key_rotations,
        )
        yield CounterMetricFamily(
            "fopproxy_tls_ticket_key_reload_failures",
            "Session-ticket key files that could not be used (the keys in force stayed)",
            value=snap.ticket_key_reload_failures,
        )
        yield histogram_family(
            "fopproxy_tls_handshake_duration_seconds",
            "Time from accept to a completed TLS handshake",
            HANDSHAKE_BUCKETS, snap.handshake_duration.counts, snap.handshake_duration.sum,
        )

    @staticmethod
    def _connections(snap: MetricsSnapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "fopproxy_connections_active", "Client connections open now",
            value=snap.connections_active,
        )
        yield counter_by(
            "fopproxy_connections_rejected", "Connections refused before TLS, by reason",
            "reason", snap.connections_rejected, REJECT_REASONS,
        )
        traffic = CounterMetricFamily(
            "fopproxy_bytes", "Plaintext bytes relayed, by direction", labels=["direction"]
        )
        traffic.add_metric(["to_backend"], snap.bytes_to_backend)
        traffic.add_metric(["to_client"], snap.bytes_to_client)
        yield traffic

    @staticmethod
    def _backend(snap: MetricsSnapshot) -> Iterator[Metric]:
        yield counter_by(
            "fopproxy_backend_connect_errors", "Failed backend connection attempts by reason",
            "reason", snap.backend_connect_errors, BACKEND_ERROR_REASONS,
        )
        yield histogram_family(
            "fopproxy_backend_connect_duration_seconds", "Time to connect to the backend",
            CONNECT_BUCKETS, snap.backend_connect_duration.counts,
            snap.backend_connect_duration.sum,
        )

    @staticmethod
    def _certificates(snap: MetricsSnapshot) -> Iterator[Metric]:
        labels = ["name", "serial", "key_type"]
        not_after = GaugeMetricFamily(
            "fopproxy_certificate_not_after_timestamp_seconds",
            "End of validity (notAfter) of each served certificate, Unix time", labels=labels,
        )
        not_before = GaugeMetricFamily(
            "fopproxy_certificate_not_before_timestamp_seconds",
            "Start of validity (notBefore) of each served certificate, Unix time", labels=labels,
        )
        for cert in sorted(snap.certificates, key=lambda c: (c.name, c.key_type, c.serial)):
            values = [cert.name, cert.serial, cert.key_type]
            not_after.add_metric(values, cert.not_after)
            not_before.add_metric(values, cert.not_before)
        yield not_after
        yield not_before
        yield counter_by(
            "fopproxy_certificate_reloads", "Certificate reload attempts by result",
            "result", snap.reloads, RELOAD_RESULTS,
        )
        yield GaugeMetricFamily(
            "fopproxy_certificate_last_reload_success_timestamp_seconds",
            "When the served certificates were last loaded successfully (start included), "
            "Unix time",
            value=snap.last_reload_success,
        )


def make_registry(source: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FopproxyCollector(source))
    return registry

