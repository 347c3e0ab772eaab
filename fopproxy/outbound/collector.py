"""The outbound metric families: a per-outbound snapshot, its JSON form, and the collector.

The names are public API (README, alerts, dashboard). Labels stay bounded: `outbound` is a
configured name, `reason` a fixed set exported at 0 from the start, `version`/`cipher` what the
profile allows. With `workers: N` the supervisor adds the workers' snapshots (`combine`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fopproxy.outbound.reasons import HANDSHAKE_ERROR_REASONS
from fopproxy.outbound.stats import DIRECTIONS
from fopproxy.stats import add_counts

if TYPE_CHECKING:
    from fopproxy.outbound.service import OutboundService


@dataclass(frozen=True)
class ClientCertificateGauge:
    name: str
    serial: str
    key_type: str
    not_before: float
    not_after: float


@dataclass(frozen=True)
class OutboundSnapshot:
    """One outbound's counters at a scrape."""

    name: str
    handshakes: dict[tuple[str, str], int] = field(default_factory=dict)
    handshake_errors: dict[str, int] = field(default_factory=dict)
    resumed: int = 0
    active: int = 0
    bytes_to_server: int = 0
    bytes_to_app: int = 0
    peer_not_after: float = 0.0
    client_certificate: ClientCertificateGauge | None = None

    def __add__(self, other: OutboundSnapshot) -> OutboundSnapshot:
        """Two workers' counts of the same outbound: counters and open connections add up."""
        return OutboundSnapshot(
            name=self.name,
            handshakes=add_counts(self.handshakes, other.handshakes),
            handshake_errors=add_counts(self.handshake_errors, other.handshake_errors),
            resumed=self.resumed + other.resumed,
            active=self.active + other.active,
            bytes_to_server=self.bytes_to_server + other.bytes_to_server,
            bytes_to_app=self.bytes_to_app + other.bytes_to_app,
            peer_not_after=max(self.peer_not_after, other.peer_not_after),
            client_certificate=other.client_certificate or self.client_certificate,
        )

    def to_json(self) -> dict[str, Any]:
        cert = self.client_certificate
        return {
            "name": self.name,
            "handshakes": [[v, c, n] for (v, c), n in self.handshakes.items()],
            "handshake_errors": self.handshake_errors,
            "resumed": self.resumed,
            "active": self.active,
            "bytes_to_server": self.bytes_to_server,
            "bytes_to_app": self.bytes_to_app,
            "peer_not_after": self.peer_not_after,
            "client_certificate": None if cert is None else [
                cert.name, cert.serial, cert.key_type, cert.not_before, cert.not_after
            ],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OutboundSnapshot:
        cert = raw.get("client_certificate")
        return cls(
            name=str(raw["name"]),
            handshakes={(str(v), str(c)): int(n) for v, c, n in raw["handshakes"]},
            handshake_errors={str(k): int(n) for k, n in raw["handshake_errors"].items()},
            resumed=int(raw["resumed"]),
            active=int(raw["active"]),
            bytes_to_server=int(raw["bytes_to_server"]),
            bytes_to_app=int(raw["bytes_to_app"]),
            peer_not_after=float(raw["peer_not_after"]),
            client_certificate=None if cert is None else ClientCertificateGauge(
                str(cert[0]), str(cert[1]), str(cert[2]), float(cert[3]), float(cert[4])
            ),
        )



def combine(parts: Iterable[Iterable[OutboundSnapshot]]) -> tuple[OutboundSnapshot, ...]:
    """Sum several processes' snapshots per outbound name, in first-seen order."""
    total: dict[str, OutboundSnapshot] = {}
    for snapshots in parts:
        for snap in snapshots:
            total[snap.name] = total[snap.name] + snap if snap.name in total else snap
    return tuple(total.values())


def take_snapshots(service: OutboundService | None) -> tuple[OutboundSnapshot, ...]:
    """Read every outbound's counters now (on the loop that owns them)."""
    if service is None:
        return ()
    snapshots = []
    for stats, store in zip(service.stats, service.stores, strict=True):
        client = store.current.client
        snapshots.append(
            OutboundSnapshot(
                name=stats.name,
                handshakes=dict(stats.handshakes),
                handshake_errors=dict(stats.handshake_errors),
                resumed=stats.resumed,
                active=stats.active,
                bytes_to_server=stats.bytes_to_server,
                bytes_to_app=stats.bytes_to_app,
                peer_not_after=stats.peer_not_after,
                client_certificate=None if client is None else ClientCertificateGauge(
                    client.label, client.serial_hex, client.key_type,
                    client.not_before.timestamp(), client.not_after.timestamp(),
                ),
            )
        )
    return tuple(snapshots)


def outbound_families(snapshots: Iterable[OutboundSnapshot]) -> Iterator[Metric]:
    snaps = tuple(snapshots)
    handshakes = CounterMetricFamily(
        "fopproxy_outbound_tls_handshakes_total",
        "Completed outbound TLS handshakes (server verified), by outbound, version and suite",
        labels=["outbound", "version", "cipher"],
    )
    errors = CounterMetricFamily(
        "fopproxy_outbound_tls_handshake_errors_total",
        "Outbound connections refused before any byte of the request was sent, by reason",
        labels=["outbound", "reason"],
    )
    resumed = CounterMetricFamily(
        "fopproxy_outbound_tls_sessions_resumed_total",
        "Outbound handshakes that resumed an earlier session (no full handshake)",
        labels=["outbound"],
    )
    active = GaugeMetricFamily(
        "fopproxy_outbound_connections_active", "Open outbound connections", labels=["outbound"]
    )
    moved = CounterMetricFamily(
        "fopproxy_outbound_bytes_total",
        "Plaintext bytes relayed: to_server (app to TLS server), to_app (server to app)",
        labels=["outbound", "direction"],
    )
    peer = GaugeMetricFamily(
        "fopproxy_outbound_peer_certificate_not_after_timestamp_seconds",
        "Expiry of the certificate the outbound's server showed last (absent before any)",
        labels=["outbound"],
    )
    labels = ["outbound", "name", "serial", "key_type"]
    client_after = GaugeMetricFamily(
        "fopproxy_outbound_client_certificate_not_after_timestamp_seconds",
        "Expiry of the outbound's client certificate (mutual TLS)", labels=labels,
    )
    client_before = GaugeMetricFamily(
        "fopproxy_outbound_client_certificate_not_before_timestamp_seconds",
        "Start of validity of the outbound's client certificate", labels=labels,
    )
    for snap in snaps:
        for (version, cipher), count in snap.handshakes.items():
            handshakes.add_metric([snap.name, version, cipher], count)
        for reason, count in {**dict.fromkeys(HANDSHAKE_ERROR_REASONS, 0),
                              **snap.handshake_errors}.items():
            errors.add_metric([snap.name, reason], count)
        resumed.add_metric([snap.name], snap.resumed)
        active.add_metric([snap.name], snap.active)
        values = (snap.bytes_to_server, snap.bytes_to_app)
        for direction, value in zip(DIRECTIONS, values, strict=True):
            moved.add_metric([snap.name, direction], value)
        if snap.peer_not_after:
            peer.add_metric([snap.name], snap.peer_not_after)
        cert = snap.client_certificate
        if cert is not None:
            cert_labels = [snap.name, cert.name, cert.serial, cert.key_type]
            client_after.add_metric(cert_labels, cert.not_after)
            client_before.add_metric(cert_labels, cert.not_before)
    yield from (handshakes, errors, resumed, active, moved, peer, client_after, client_before)


class OutboundCollector(Collector):
    """The outbound families, from `source` at each scrape."""

    def __init__(self, source: Callable[[], Iterable[OutboundSnapshot]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from outbound_families(self.source())
