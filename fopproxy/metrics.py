"""Prometheus exposition and the health endpoints, read from plain counters at scrape time.

The hot path only bumps ints in `Stats`; everything Prometheus-shaped happens here, when a scrape
arrives. A scrape takes a `Snapshot` (counters, gauges, the certificates served, readiness) and a
custom collector turns it into metric families on a registry of our own, never the global one.

Two ways to serve it:
- one worker: `serve_metrics` binds `metrics.listen` on the worker's own event loop (no threads);
- `workers: N`: only the supervisor binds `metrics.listen` (from a thread: its main thread sits in
  `sigtimedwait`). Each worker answers a snapshot on a private Unix socket; the supervisor sums
  them. It keeps each worker's last snapshot and, when a worker exits, folds those counts into a
  retained base, so totals never go backwards when a worker is replaced. (Counts a crashed worker
  made after the last scrape are lost: the totals stay monotonic, they only miss those events.)

The metric names below are public API: dashboards and alert rules in `deploy/prometheus/` use
them, and a test checks every name they use is exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from fopproxy import __version__
from fopproxy.http.stats import HttpSnapshot, http_families
from fopproxy.stats import (
    BACKEND_ERROR_REASONS,
    CONNECT_BUCKETS,
    HANDSHAKE_BUCKETS,
    HANDSHAKE_ERROR_REASONS,
    REJECT_REASONS,
    RELOAD_RESULTS,
    Histogram,
    Stats,
)

if TYPE_CHECKING:
    from fopproxy.certs import CertificateSet
    from fopproxy.config import Config, TcpAddress
    from fopproxy.relay import Relay
    from fopproxy.server import Worker

log = logging.getLogger("fopproxy.metrics")

# A request head larger than this is not a scraper or a health probe.
MAX_REQUEST_HEAD = 16 * 1024
# A client that has not sent its request head by then is dropped (slowloris on the metrics port).
REQUEST_TIMEOUT = 10.0
# The supervisor's per-worker snapshot query; a worker busy longer than this keeps its last one.
WORKER_QUERY_TIMEOUT = 2.0
MAX_SNAPSHOT = 4 * 1024 * 1024
MAX_UNIX_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on BSDs


# ---- snapshots -----------------------------------------------------------------------------


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


def _add_counts(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    total = dict(a)
    for key, value in b.items():
        total[key] = total.get(key, 0) + value
    return total


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, from one worker or summed over several."""

    handshakes: dict[tuple[str, str], int] = field(default_factory=dict)
    handshake_errors: dict[str, int] = field(default_factory=dict)
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
    http: HttpSnapshot = field(default_factory=HttpSnapshot)

    def add_counters(self, other: Snapshot) -> Snapshot:
        """Self plus the monotonic parts of `other` (what a dead worker leaves behind)."""
        return replace(
            self,
            handshakes=_add_counts(self.handshakes, other.handshakes),
            handshake_errors=_add_counts(self.handshake_errors, other.handshake_errors),
            handshake_duration=self.handshake_duration + other.handshake_duration,
            connections_rejected=_add_counts(self.connections_rejected, other.connections_rejected),
            bytes_to_backend=self.bytes_to_backend + other.bytes_to_backend,
            bytes_to_client=self.bytes_to_client + other.bytes_to_client,
            backend_connect_errors=_add_counts(
                self.backend_connect_errors, other.backend_connect_errors
            ),
            backend_connect_duration=self.backend_connect_duration + other.backend_connect_duration,
            reloads=_add_counts(self.reloads, other.reloads),
            last_reload_success=max(self.last_reload_success, other.last_reload_success),
            http=self.http + other.http,
        )

    def __add__(self, other: Snapshot) -> Snapshot:
        """Two live workers: counters and active connections add up, certificates merge."""
        merged = {
            (c.name, c.serial, c.key_type): c for c in (*self.certificates, *other.certificates)
        }
        return replace(
            self.add_counters(other),
            connections_active=self.connections_active + other.connections_active,
            certificates=tuple(merged.values()),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "handshakes": [[v, c, n] for (v, c), n in self.handshakes.items()],
                "handshake_errors": self.handshake_errors,
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
                "http": self.http.to_jsonable(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        """Parse a worker's answer; ValueError if it is not one (a half-written reply)."""
        try:
            raw = json.loads(data)
            return cls(
                handshakes={(str(v), str(c)): int(n) for v, c, n in raw["handshakes"]},
                handshake_errors=_int_map(raw["handshake_errors"]),
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


def take_snapshot(worker: Worker, started: float) -> Snapshot:
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
    return Snapshot(
        handshakes=dict(stats.handshakes),
        handshake_errors=dict(stats.handshake_errors),
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
        certificates=certificate_infos(worker.store.current),
        ready=worker.ready,
        http=stats.http.snapshot(),
    )


# ---- the collector -------------------------------------------------------------------------


def _counter_by(
    name: str, documentation: str, label: str, counts: Mapping[str, int], fixed: Iterable[str]
) -> CounterMetricFamily:
    """A counter with one bounded label; every value of the fixed set appears (at 0), so alerts
    see a series before the event."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in {**dict.fromkeys(fixed, 0), **counts}.items():
        family.add_metric([value], count)
    return family


def _histogram_family(
    name: str, documentation: str, bounds: tuple[float, ...], data: HistogramData
) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, data.counts, strict=False):
        running += count
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", running + data.counts[-1]))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets, data.sum)
    return family


BUILD_LABELS = {
    "version": __version__,
    "python": platform.python_version(),
    "openssl": ssl.OPENSSL_VERSION,
}


class FopproxyCollector(Collector):
    """Turns a Snapshot into the public metric families, once per scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        yield from self._tls(snap)
        yield from self._connections(snap)
        yield from self._backend(snap)
        yield from self._certificates(snap)
        yield from http_families(snap.http)
        info = GaugeMetricFamily(
            "fopproxy_build_info", "fopproxy build: version, Python and OpenSSL (value 1)",
            labels=list(BUILD_LABELS),
        )
        info.add_metric(list(BUILD_LABELS.values()), 1)
        yield info

    @staticmethod
    def _tls(snap: Snapshot) -> Iterator[Metric]:
        handshakes = CounterMetricFamily(
            "fopproxy_tls_handshakes", "Successful TLS handshakes by protocol version and cipher",
            labels=["version", "cipher"],
        )
        for (version, cipher), count in sorted(snap.handshakes.items()):
            handshakes.add_metric([version, cipher], count)
        yield handshakes
        yield _counter_by(
            "fopproxy_tls_handshake_errors", "Failed TLS handshakes by reason",
            "reason", snap.handshake_errors, HANDSHAKE_ERROR_REASONS,
        )
        yield _histogram_family(
            "fopproxy_tls_handshake_duration_seconds",
            "Time from accept to a completed TLS handshake",
            HANDSHAKE_BUCKETS, snap.handshake_duration,
        )

    @staticmethod
    def _connections(snap: Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "fopproxy_connections_active", "Client connections open now",
            value=snap.connections_active,
        )
        yield _counter_by(
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
    def _backend(snap: Snapshot) -> Iterator[Metric]:
        yield _counter_by(
            "fopproxy_backend_connect_errors", "Failed backend connection attempts by reason",
            "reason", snap.backend_connect_errors, BACKEND_ERROR_REASONS,
        )
        yield _histogram_family(
            "fopproxy_backend_connect_duration_seconds", "Time to connect to the backend",
            CONNECT_BUCKETS, snap.backend_connect_duration,
        )

    @staticmethod
    def _certificates(snap: Snapshot) -> Iterator[Metric]:
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
        yield _counter_by(
            "fopproxy_certificate_reloads", "Certificate reload attempts by result",
            "result", snap.reloads, RELOAD_RESULTS,
        )
        yield GaugeMetricFamily(
            "fopproxy_certificate_last_reload_success_timestamp_seconds",
            "When the served certificates were last loaded successfully (start included), "
            "Unix time",
            value=snap.last_reload_success,
        )


def make_registry(source: Callable[[], Snapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FopproxyCollector(source))
    return registry


# ---- HTTP: routing shared by the asyncio responder and the supervisor's thread ---------------


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
           500: "Internal Server Error", 400: "Bad Request", 431: "Request Header Fields Too Large"}
TEXT = "text/plain; charset=utf-8"


def respond(
    method: str, target: str, accept: str | None,
    registry: CollectorRegistry, ready: Callable[[], bool],
) -> Response:
    """The three endpoints; HEAD is GET without the body (the writer drops it)."""
    if method not in {"GET", "HEAD"}:
        return Response(405, TEXT, b"only GET and HEAD\n")
    path = target.split("?", 1)[0]
    if path == "/metrics":
        encoder, content_type = choose_encoder(accept or "")
        return Response(200, content_type, encoder(registry))
    if path == "/healthz":
        return Response(200, TEXT, b"ok\n")
    if path == "/readyz":
        if ready():
            return Response(200, TEXT, b"ready\n")
        return Response(503, TEXT, b"not ready\n")
    return Response(404, TEXT, b"not found: try /metrics, /healthz or /readyz\n")


def encode_response(response: Response, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body


class MetricsHTTPProtocol(asyncio.Protocol):
    """A small HTTP/1.1 responder: one request per connection, then close.

    Scrapers and probes send one short GET; answering with `Connection: close` keeps this free
    of keep-alive state while staying correct HTTP/1.1.
    """

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        self.registry = registry
        self.ready = ready
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server gives a Transport
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_REQUEST_HEAD:
                self._send(Response(431, TEXT, b"request head too large\n"), head_only=False)
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._send(Response(400, TEXT, b"bad request\n"), head_only=False)
            return
        method, target, _ = parts
        accept = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        try:
            response = respond(method, target, accept, self.registry, self.ready)
        except Exception:  # a broken collector must not kill the loop the proxy runs on
            log.exception("metrics scrape failed")
            response = Response(500, TEXT, b"scrape failed, see the log\n")
        self._send(response, head_only=method == "HEAD")

    def _send(self, response: Response, *, head_only: bool) -> None:
        assert self.transport is not None
        self.transport.write(encode_response(response, head_only=head_only))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


# ---- one worker: the listener on the worker's loop ------------------------------------------


def _bind_error(address: TcpAddress, exc: OSError) -> OSError:
    """The CLI names `filename` as what could not be bound (else the TLS address)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's text repeats the address
    return OSError(exc.errno, reason, f"metrics.listen {address}")


@contextlib.asynccontextmanager
async def serve_metrics(worker: Worker) -> AsyncIterator[None]:
    """Worker hook: /metrics, /healthz, /readyz on `metrics.listen`, until the worker exits.

    It stays up through the drain (readiness says 503 from the first signal) and closes only
    after the worker has finished, so a probe never sees a refused connection while draining.
    """
    address = worker.config.metrics.listen
    assert address is not None
    started = time.time()
    registry = make_registry(lambda: take_snapshot(worker, started))
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: MetricsHTTPProtocol(registry, lambda: worker.ready),
            address.host, address.port, reuse_address=True,
        )
    except OSError as exc:
        raise _bind_error(address, exc) from exc
    log.info("metrics on http://%s/metrics", address)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


# ---- workers: N: snapshots over Unix sockets, summed by the supervisor ---------------------


class SnapshotProtocol(asyncio.Protocol):
    """Answers every connection with the worker's snapshot as JSON, then closes."""

    def __init__(self, worker: Worker, started: float) -> None:
        self.worker = worker
        self.started = started

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast("asyncio.Transport", transport)  # uvloop's class is not asyncio's
        stream.write(take_snapshot(self.worker, self.started).to_json())
        stream.close()


def snapshot_path(folder: Path, pid: int) -> Path:
    return folder / f"worker-{pid}.sock"


def snapshot_hook(folder: Path) -> Callable[[Worker], contextlib.AbstractAsyncContextManager[None]]:
    """Worker hook for `workers: N`: the snapshot socket the supervisor reads at scrape time."""

    @contextlib.asynccontextmanager
    async def hook(worker: Worker) -> AsyncIterator[None]:
        path = snapshot_path(folder, os.getpid())
        started = time.time()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: SnapshotProtocol(worker, started), str(path))
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()
            path.unlink(missing_ok=True)

    return hook


def query_worker(path: Path, timeout: float = WORKER_QUERY_TIMEOUT) -> Snapshot | None:
    """One worker's snapshot, or None when it does not answer (exiting, busy, not bound yet)."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            while chunk := sock.recv(65536):
                data += chunk
                if len(data) > MAX_SNAPSHOT or time.monotonic() > deadline:
                    return None
    except OSError:
        return None
    try:
        return Snapshot.from_json(bytes(data))
    except ValueError as exc:
        log.warning("worker snapshot %s unreadable: %s", path.name, exc)
        return None


class WorkerAggregator:
    """Sums the workers' snapshots; counts of workers that exited live on in `base`.

    `poll` runs on the metrics thread, `on_child_exit` on the supervisor's main thread; the
    lock guards `last`, `base` and `exited`. Queries happen outside the lock, so a slow worker
    never holds up the supervisor reaping and replacing workers.
    """

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder = folder
        self.workers = workers
        self.lock = threading.Lock()
        self.base = Snapshot()  # counters of workers that have exited; gauges stay at zero
        self.last: dict[int, Snapshot] = {}  # pid -> newest snapshot of a live worker
        self.exited: set[int] = set()  # folded since the last poll: late answers are ignored

    def on_child_exit(self, index: int, pid: int) -> None:
        del index
        with self.lock:
            snap = self.last.pop(pid, None)
            if snap is not None:
                self.base = self.base.add_counters(snap)
            self.exited.add(pid)
            # A crashed worker leaves its socket file; it must not be queried again.
            snapshot_path(self.folder, pid).unlink(missing_ok=True)

    def _worker_pids(self) -> list[int]:
        pids = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.folder.iterdir():
                stem = entry.name.removeprefix("worker-").removesuffix(".sock")
                if entry.name.startswith("worker-") and stem.isdigit():
                    pids.append(int(stem))
        return pids

    def poll(self) -> tuple[Snapshot, int]:
        """The summed snapshot, and how many workers answered ready."""
        folder = self.folder
        answers = {pid: query_worker(snapshot_path(folder, pid)) for pid in self._worker_pids()}
        ready = 0
        with self.lock:
            for pid, snap in answers.items():
                if snap is None or pid in self.exited:
                    continue
                self.last[pid] = snap
                ready += snap.ready
            # Any pid folded before this point had its file removed first: no later poll sees it.
            self.exited.clear()
            total = self.base
            for snap in self.last.values():
                total = total + snap
        return replace(total, ready=ready >= self.workers), ready

    def snapshot(self) -> Snapshot:
        return self.poll()[0]

    def ready(self) -> bool:
        return self.poll()[0].ready


class _Handler(BaseHTTPRequestHandler):
    server: MetricsHTTPServer
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        server = self.server
        try:
            response = respond(
                self.command, self.path, self.headers.get("Accept"), server.registry, server.ready
            )
        except Exception:  # keep serving: one failed scrape must not stop the listener
            log.exception("metrics scrape failed")
            response = Response(500, TEXT, b"scrape failed, see the log\n")
        self.close_connection = True
        self.wfile.write(encode_response(response, head_only=self.command == "HEAD"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer  # http.server's names

    def log_message(self, format: str, *args: Any) -> None:  # the base's signature
        del format, args  # scrapes every few seconds would drown the connection log


class MetricsHTTPServer(HTTPServer):
    """The supervisor's listener; one thread, one request at a time (scrapes are rare)."""

    allow_reuse_address = True

    def __init__(
        self, address: TcpAddress, registry: CollectorRegistry, ready: Callable[[], bool]
    ) -> None:
        self.registry = registry
        self.ready = ready
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self.address_family = family
        try:
            super().__init__((str(sockaddr[0]), int(sockaddr[1])), _Handler)
        except OSError as exc:
            raise _bind_error(address, exc) from exc
        self.thread: threading.Thread | None = None

    def handle_error(self, request: object, client_address: object) -> None:
        # A scraper that hangs up mid-answer is not worth a traceback on stderr.
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def start(self) -> None:
        # Signals are for the supervisor's sigtimedwait: this thread must never take them (a
        # SIGTERM delivered here would kill the process with the default action).
        blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.thread = threading.Thread(
                target=self.serve_forever, kwargs={"poll_interval": 0.5},
                name="metrics-http", daemon=True,
            )
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def stop(self) -> None:
        if self.thread is not None:
            self.shutdown()
            self.thread.join()
        self.server_close()


def snapshot_folder() -> Path:
    """A private (0700) folder for the workers' sockets, short enough for AF_UNIX paths."""
    folder = Path(tempfile.mkdtemp(prefix="fopproxy-"))
    if len(str(snapshot_path(folder, 2**22))) > MAX_UNIX_PATH:  # a long TMPDIR
        folder.rmdir()
        folder = Path(tempfile.mkdtemp(prefix="fopproxy-", dir="/tmp"))  # mkdtemp: mode 0700
    return folder


def run_supervised(config: Config) -> int:
    """`workers: N` with metrics: the supervisor serves the sum of its workers' snapshots."""
    from fopproxy.app import run_worker
    from fopproxy.workers import Supervisor

    address = config.metrics.listen
    assert address is not None
    folder = snapshot_folder()
    aggregator = WorkerAggregator(folder, config.workers)
    try:
        http = MetricsHTTPServer(address, make_registry(aggregator.snapshot), aggregator.ready)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def child_main(config: Config, index: int, ready: Callable[[], None]) -> int:
        del index
        # The forked child holds a copy of the metrics socket: only the supervisor accepts on it.
        http.socket.close()
        return run_worker(config, reuse_port=True, ready=ready, hooks=(snapshot_hook(folder),))

    supervisor = Supervisor(config, child_main=child_main)
    supervisor.on_child_exit.append(aggregator.on_child_exit)
    log.info("metrics on http://%s/metrics (sum of %d workers)", address, config.workers)
    try:
        http.start()
        return supervisor.run()
    finally:
        http.stop()
        shutil.rmtree(folder, ignore_errors=True)

