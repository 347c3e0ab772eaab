"""The metrics/health HTTP listener: one asyncio implementation for a worker and the supervisor.

Scrapers and probes send one short GET; each connection gets one answer with `Connection: close`,
which keeps this free of keep-alive state while staying correct HTTP/1.1. The port must stay
answerable whatever its other clients do, because a liveness probe that times out restarts the
proxy: connections are capped (when full, the oldest one still without a request head makes
room, so a fresh probe always gets in), a request head must arrive within `HEAD_TIMEOUT`, and an
answer the client does not read within `SEND_TIMEOUT` is reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

if TYPE_CHECKING:
    from fopproxy.config import TcpAddress

log = logging.getLogger("fopproxy.metrics")

# A request head larger than this is not a scraper or a health probe.
MAX_REQUEST_HEAD = 16 * 1024
# Scrapers and probes send their whole request at once; anyone slower is dropped (slowloris).
HEAD_TIMEOUT = 3.0
# From a complete request head to the answer taken by the client (the supervisor asks each worker
# first, up to 2 s each); then the connection is reset: close() alone waits for a reader forever.
SEND_TIMEOUT = 10.0
# Open connections on the metrics port; Prometheus and the kubelet need a handful.
MAX_CLIENTS = 64


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


class Clients:
    """The listener's open connections, oldest first: the cap, and who makes room when full."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self.open: dict[MetricsHTTPProtocol, None] = {}  # insertion order is age
        self.evicted = 0

    def admit(self, conn: MetricsHTTPProtocol) -> bool:
        if len(self.open) >= self.limit:
            waiting = next((c for c in self.open if not c.answered), None)
            if waiting is None:  # every slot is sending an answer: the newcomer waits its turn
                return False
            self.evicted += 1
            waiting.abort()
        self.open[conn] = None
        return True

    def remove(self, conn: MetricsHTTPProtocol) -> None:
        self.open.pop(conn, None)

    def abort_all(self) -> None:
        for conn in list(self.open):
            conn.abort()

    def fds(self) -> list[int]:
        """The client sockets' descriptors (a forked worker closes its copies)."""
        return [fd for conn in self.open if (fd := conn.fileno()) >= 0]


class MetricsHTTPProtocol(asyncio.Protocol):
    """One request per connection, answered, then closed; every stage has a deadline.

    `offload`: where to compute answers that may block (the supervisor's /metrics and /readyz
    query each worker); /healthz is always answered on the loop, at once.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        clients: Clients | None = None,
        offload: Executor | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.clients = clients if clients is not None else Clients()
        self.offload = offload
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.pending: asyncio.Future[Response] | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's class is not asyncio's
        if not self.clients.admit(self):
            self.transport.abort()
            return
        self._deadline(HEAD_TIMEOUT)

    def _deadline(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.abort)

    def fileno(self) -> int:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        return sock.fileno() if sock is not None else -1

    def abort(self) -> None:
        # Out of the count now: the transport lets go of its socket only on the next loop pass.
        self.clients.remove(self)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.answered:
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
        head_only = method == "HEAD"
        self.answered = True
        self._deadline(SEND_TIMEOUT)  # the head is in: now the answer's deadline, not the head's
        if self.offload is None or target.split("?", 1)[0] == "/healthz":
            self._send(self._respond(method, target, accept), head_only=head_only)
            return
        loop = asyncio.get_running_loop()
        self.pending = loop.run_in_executor(self.offload, self._respond, method, target, accept)
        self.pending.add_done_callback(lambda done: self._answer(done, head_only))

    def _respond(self, method: str, target: str, accept: str | None) -> Response:
        try:
            return respond(method, target, accept, self.registry, self.ready)
        except Exception:  # a broken collector must not kill the loop the proxy runs on
            log.exception("metrics scrape failed")
            return Response(500, TEXT, b"scrape failed, see the log\n")

    def _answer(self, done: asyncio.Future[Response], head_only: bool) -> None:
        if not done.cancelled() and self.transport is not None:
            self._send(done.result(), head_only=head_only)

    def _send(self, response: Response, *, head_only: bool) -> None:
        assert self.transport is not None
        self.answered = True
        self._deadline(SEND_TIMEOUT)
        self.transport.write(encode_response(response, head_only=head_only))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.pending is not None:
            self.pending.cancel()
        self.clients.remove(self)
        self.transport = None


def bind_error(address: TcpAddress, exc: OSError) -> OSError:
    """The CLI names `filename` as what could not be bound (else the TLS address)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's text repeats the address
    return OSError(exc.errno, reason, f"metrics.listen {address}")


class MetricsListener:
    """`metrics.listen` bound on the running loop: /metrics, /healthz, /readyz."""

    def __init__(self, server: asyncio.Server, clients: Clients) -> None:
        self.server = server
        self.clients = clients

    @classmethod
    async def start(
        cls,
        address: TcpAddress,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        *,
        offload: Executor | None = None,
        limit: int = MAX_CLIENTS,
    ) -> MetricsListener:
        clients = Clients(limit)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: MetricsHTTPProtocol(registry, ready, clients, offload),
                address.host, address.port, reuse_address=True,
            )
        except OSError as exc:
            raise bind_error(address, exc) from exc
        return cls(server, clients)

    def fds(self) -> list[int]:
        """Every descriptor the listener holds: what a forked worker must close."""
        return [s.fileno() for s in self.server.sockets] + self.clients.fds()

    async def close(self) -> None:
        self.server.close()
        self.clients.abort_all()
        await self.server.wait_closed()
