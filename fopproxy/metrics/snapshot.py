"""What one scrape shows (`MetricsSnapshot`), how a worker takes it, and its JSON wire format.

The hot path only bumps ints in `Stats`; a scrape copies them into a frozen `MetricsSnapshot`.
With `workers: N` each worker sends its snapshot as JSON over a Unix socket and the supervisor
adds them up, so the wire format lives next to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fopproxy.http.stats import HttpSnapshot
from fopproxy.outbound.collector import OutboundSnapshot, combine, take_snapshots
from fopproxy.stats import CONNECT_BUCKETS, HANDSHAKE_BUCKETS, Histogram, Stats, add_counts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fopproxy.certs import CertificateSet
    from fopproxy.relay import Relay
    from fopproxy.server import Worker
    from fopproxy.tickets import KeyRing

@dataclass(frozen=True)
class CertificateInfo:
    """What the certificate gauges show for one served certificate."""

    name: str
    serial: str
    key_type: str
    not_before: float
    not_after: float


@dataclass(frozen=True)
class HistogramData:
    counts: tuple[int, ...]  # per bucket, not cumulative; the last one is +Inf
    sum: float

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> HistogramData:
        return cls((0,) * (len(bounds) + 1), 0.0)

    @classmethod
    def of(cls, histogram: Histogram) -> HistogramData:
        return cls(tuple(histogram.counts), histogram.sum)

    def __add__(self, other: HistogramData) -> HistogramData:
        if len(self.counts) != len(other.counts):
            raise ValueError("histograms with different buckets")
        return HistogramData(
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.sum + other.sum,
        )



@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape shows, from one worker or summed over several."""

    handshakes: dict[tuple[str, str], int] = field(default_factory=dict)
    handshake_errors: dict[str, int] = field(default_factory=dict)
    client_auth_failures: dict[str, int] = field(default_factory=dict)
    handshake_duration: HistogramData = field(
        default_factory=lambda: HistogramData.empty(HANDSHAKE_BUCKETS)
    )
    connections_active: int = 0
    connections_rejected: dict[str, int] = field(default_factory=dict)
    bytes_to_backend: int = 0
    bytes_to_client: int = 0
    backend_connect_errors: dict[str, int] = field(default_factory=dict)
    backend_connect_duration: HistogramData = field(
        default_factory=lambda: HistogramData.empty(CONNECT_BUCKETS)
    )
    reloads: dict[str, int] = field(default_factory=dict)
    last_reload_success: float = 0.0
    certificates: tuple[CertificateInfo, ...] = ()
    ready: bool = False
    resumptions: dict[str, int] = field(default_factory=dict)
    # Every worker steps the same ticket-key schedule: the count is the largest, not a sum.
    ticket_key_rotations: int = 0
    ticket_key_reload_failures: int = 0
    outbound: tuple[OutboundSnapshot, ...] = ()
    http: HttpSnapshot = field(default_factory=HttpSnapshot)  # mode: http (fopproxy/http/)

    def add_counters(self, other: MetricsSnapshot) -> MetricsSnapshot:
        """Self plus the monotonic parts of `other` (what a dead worker leaves behind)."""
        return replace(
            self,
            handshakes=add_counts(self.handshakes, other.handshakes),
            handshake_errors=add_counts(self.handshake_errors, other.handshake_errors),
            client_auth_failures=add_counts(
                self.client_auth_failures, other.client_auth_failures
            ),
            handshake_duration=self.handshake_duration + other.handshake_duration,
            connections_rejected=add_counts(self.connections_rejected, other.connections_rejected),
            bytes_to_backend=self.bytes_to_backend + other.bytes_to_backend,
            bytes_to_client=self.bytes_to_client + other.bytes_to_client,
            backend_connect_errors=add_counts(
                self.backend_connect_errors, other.backend_connect_errors
            ),
            backend_connect_duration=self.backend_connect_duration + other.backend_connect_duration,
            reloads=add_counts(self.reloads, other.reloads),
            last_reload_success=max(self.last_reload_success, other.last_reload_success),
            resumptions=add_counts(self.resumptions, other.resumptions),
            ticket_key_rotations=max(self.ticket_key_rotations, other.ticket_key_rotations),
            ticket_key_reload_failures=max(
                self.ticket_key_reload_failures, other.ticket_key_reload_failures
            ),
            # A dead worker's outbound connections are not open any more; its counts stay.
            outbound=combine(
                (self.outbound, (replace(o, active=0) for o in other.outbound))
            ),
            http=self.http + other.http,
        )

    def __add__(self, other: MetricsSnapshot) -> MetricsSnapshot:
        """Two live workers: counters and active connections add up, certificates merge."""
        merged = {
            (c.name, c.serial, c.key_type): c for c in (*self.certificates, *other.certificates)
        }
        return replace(
            self.add_counters(other),
            connections_active=self.connections_active + other.connections_active,
            certificates=tuple(merged.values()),
            outbound=combine((self.outbound, other.outbound)),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "handshakes": [[v, c, n] for (v, c), n in self.handshakes.items()],
                "handshake_errors": self.handshake_errors,
                "client_auth_failures": self.client_auth_failures,
                "handshake_duration": [list(self.handshake_duration.counts),
                                       self.handshake_duration.sum],
                "connections_active": self.connections_active,
                "connections_rejected": self.connections_rejected,
                "bytes_to_backend": self.bytes_to_backend,
                "bytes_to_client": self.bytes_to_client,
                "backend_connect_errors": self.backend_connect_errors,
                "backend_connect_duration": [list(self.backend_connect_duration.counts),
                                             self.backend_connect_duration.sum],
                "reloads": self.reloads,
                "last_reload_success": self.last_reload_success,
                "certificates": [
                    [c.name, c.serial, c.key_type, c.not_before, c.not_after]
                    for c in self.certificates
                ],
                "ready": self.ready,
                "resumptions": self.resumptions,
                "ticket_key_rotations": self.ticket_key_rotations,
                "ticket_key_reload_failures": self.ticket_key_reload_failures,
                "outbound": [o.to_json() for o in self.outbound],
                "http": self.http.to_jsonable(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MetricsSnapshot:
        """Parse a worker's answer; ValueError if it is not one (a half-written reply)."""
        try:
            raw = json.loads(data)
            return cls(
                handshakes={(str(v), str(c)): int(n) for v, c, n in raw["handshakes"]},
                handshake_errors=_int_map(raw["handshake_errors"]),
                client_auth_failures=_int_map(raw["client_auth_failures"]),
                handshake_duration=_histogram(raw["handshake_duration"], HANDSHAKE_BUCKETS),
                connections_active=int(raw["connections_active"]),
                connections_rejected=_int_map(raw["connections_rejected"]),
                bytes_to_backend=int(raw["bytes_to_backend"]),
                bytes_to_client=int(raw["bytes_to_client"]),
                backend_connect_errors=_int_map(raw["backend_connect_errors"]),
                backend_connect_duration=_histogram(
                    raw["backend_connect_duration"], CONNECT_BUCKETS
                ),
                reloads=_int_map(raw["reloads"]),
                last_reload_success=float(raw["last_reload_success"]),
                certificates=tuple(
                    CertificateInfo(str(n), str(s), str(k), float(b), float(a))
                    for n, s, k, b, a in raw["certificates"]
                ),
                ready=bool(raw["ready"]),
                resumptions=_int_map(raw["resumptions"]),
                ticket_key_rotations=int(raw["ticket_key_rotations"]),
                ticket_key_reload_failures=int(raw["ticket_key_reload_failures"]),
                outbound=tuple(OutboundSnapshot.from_json(o) for o in raw.get("outbound", ())),
                http=HttpSnapshot.from_jsonable(raw["http"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a worker snapshot: {exc}") from None


def _int_map(raw: Mapping[str, object]) -> dict[str, int]:
    return {str(k): int(v) for k, v in raw.items()}  # type: ignore[call-overload]  # JSON ints


def _histogram(raw: list[Any], bounds: tuple[float, ...]) -> HistogramData:
    counts, total = raw
    if len(counts) != len(bounds) + 1:
        raise ValueError("histogram bucket count differs")
    return HistogramData(tuple(int(c) for c in counts), float(total))


def certificate_infos(certificates: CertificateSet) -> tuple[CertificateInfo, ...]:
    return tuple(
        CertificateInfo(
            name=c.label,
            serial=c.serial_hex,
            key_type=c.key_type,
            not_before=c.not_before.timestamp(),
            not_after=c.not_after.timestamp(),
        )
        for c in certificates.certificates
    )


def take_snapshot(worker: Worker, started: float) -> MetricsSnapshot:
    """Read one worker's counters now. Runs on the worker's loop, so it sees a consistent state.

    Bytes of connections still open are included (a connection adds its counts to `Stats` when
    it closes, in the same callback that removes it from `relay.active`), so a long download is
    visible while it runs and the counter never steps back when it ends.
    """
    stats: Stats = worker.stats
    relay: Relay | None = worker.relay
    to_backend = stats.bytes_to_backend
    to_client = stats.bytes_to_client
    if relay is not None:
        for conn in relay.active:
            to_backend += conn.to_backend
            to_client += conn.to_client
    return MetricsSnapshot(
        handshakes=dict(stats.handshakes),
        handshake_errors=dict(stats.handshake_errors),
        client_auth_failures=dict(stats.client_auth_failures),
        handshake_duration=HistogramData.of(stats.handshake_duration),
        connections_active=stats.connections_active,
        connections_rejected=dict(stats.connections_rejected),
        bytes_to_backend=to_backend,
        bytes_to_client=to_client,
        backend_connect_errors=dict(stats.backend_connect_errors),
        backend_connect_duration=HistogramData.of(stats.backend_connect_duration),
        reloads=dict(stats.reloads),
        # The initial load is a successful load too: without it a fresh process reads as 1970.
        last_reload_success=stats.last_reload_success or started,
        certificates=certificate_infos(worker.store.current) if worker.store else (),
        ready=worker.ready,
        resumptions=dict(stats.resumptions),
        ticket_key_rotations=_rotations(worker.store.tickets) if worker.store else 0,
        ticket_key_reload_failures=stats.ticket_key_reload_failures,
        outbound=take_snapshots(worker.outbound),
        http=worker.http_stats.snapshot(),
    )


def _rotations(ring: KeyRing | None) -> int:
    if ring is None:
        return 0
    ring.refresh()  # a quiet worker has not stepped its schedule since its last ticket
    return ring.rotations


